"""Lock files: the linter that accepts only fully pinned, hashed requirements, and the wheelhouse
check.

A requirements lock is accepted only in the shape `pip-compile --generate-hashes` and
`uv pip compile --generate-hashes` write, because anything looser lets the host resolve something
other than what was tested:

    name==version [; marker] --hash=sha256:<64 hex> [--hash=sha256:<64 hex> ...]

(extras allowed, backslash continuation lines, comments and blank lines ok). Everything else is
refused with its line and reason, and every problem of the file is reported, not just the first:
missing hash, loose or wildcard pins (`>=`, `~=`, `!=`, `===`, `==1.*`, no version), URLs, VCS,
editable and local requirements, option lines (`--index-url`, `-r`, `--no-require-hashes`, ...),
`${VAR}` references, non-sha256 hashes, duplicate packages (the same name twice is allowed only
with different environment markers, as universal locks write it).

A PEP 751 `pylock.toml` (any file named `pylock.toml` or `pylock.*.toml`) is accepted too: every
package needs a name, a version and at least one wheel with a sha256; sdist-only, VCS, directory
and archive packages are refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.markers import InvalidMarker, Marker, default_environment
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from orchestrator.core.hashing import hash_file
from orchestrator.core.yamlio import read_limited
from orchestrator.errors import SpecError

MAX_LOCK_BYTES = 16 << 20

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_REQ = re.compile(
    rf"^(?P<name>{_NAME})\s*(?:\[(?P<extras>[A-Za-z0-9._,\s-]*)\])?\s*"
    r"(?P<spec>[^;]*?)\s*(?:;\s*(?P<marker>.*?))?\s*$")
_PIN = re.compile(r"^==\s*(?P<version>[0-9][A-Za-z0-9.!+_-]*)$")
_HASH = re.compile(r"^--hash[=\s]\s*(?P<algo>[A-Za-z0-9]+):(?P<digest>\S*)$")
_COMMENT = re.compile(r"(^|\s+)#.*$")
# Direct references: "name @ url", bare URLs, VCS ("git+https://"), "file:" paths.
_URL = re.compile(r"@|^[A-Za-z][A-Za-z0-9+.-]*:", re.IGNORECASE)


def normalize_name(name: str) -> str:
    """PEP 503: "Tensorflow_CPU" -> "tensorflow-cpu"."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class LockedPackage:
    name: str                   # PEP 503 normalized
    version: str
    marker: str | None
    hashes: tuple[str, ...]     # sha256, lowercase hex
    line: int | None
    extras: tuple[str, ...] = ()

    def applies(self, environment: Mapping[str, str] | None = None) -> bool:
        """Whether the marker holds in `environment` (default: this interpreter's)."""
        if self.marker is None:
            return True
        return Marker(self.marker).evaluate(dict(environment) if environment else None)


@dataclass(frozen=True)
class Lock:
    file: str
    packages: list[LockedPackage] = field(hash=False)
    sha256: str                 # of the file's bytes
    format: str = "requirements"  # | "pylock"

    def get(self, name: str, environment: Mapping[str, str] | None = None
            ) -> LockedPackage | None:
        """The package named `name` (any spelling) whose marker applies, else None."""
        wanted = normalize_name(name)
        candidates = [p for p in self.packages if p.name == wanted]
        for pkg in candidates:
            if environment is None or pkg.applies(environment):
                return pkg
        return None


@dataclass(frozen=True)
class LintResult:
    lock: Lock | None
    errors: list[SpecError]


def load_lock(path: str | os.PathLike[str]) -> Lock:
    """A clean lock, or a `SpecError` for its first problem (counting the others)."""
    result = lint_lock(path)
    if result.errors:
        raise first_of(result.errors)
    assert result.lock is not None
    return result.lock


def first_of(errors: list[SpecError]) -> SpecError:
    first = errors[0]
    if len(errors) == 1:
        return first
    return SpecError(f"{first.reason} (and {len(errors) - 1} more problems)", file=first.file,
                     line=first.line, field=first.field)


def lint_lock(path: str | os.PathLike[str]) -> LintResult:
    """Every problem of a lock file; `lock` is None when there is any."""
    p = Path(path)
    data = read_limited(p, MAX_LOCK_BYTES)
    if is_pylock(p):
        return lint_pylock(data, str(p))
    return lint_requirements(data, str(p))


def is_pylock(path: Path) -> bool:
    return re.fullmatch(r"pylock(\.[^.]+)?\.toml", path.name) is not None


def lint_requirements(data: bytes, file: str = "<lock>") -> LintResult:
    """Lint a requirements lock given as bytes (see the module docstring)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return LintResult(None, [SpecError(f"not UTF-8 (byte {exc.start})", file=file)])
    errors: list[SpecError] = []
    packages: list[LockedPackage] = []
    for line, logical in logical_lines(text):
        try:
            packages.append(parse_requirement(logical, file, line))
        except SpecError as exc:
            errors.append(exc)
    errors.extend(_duplicates(packages, file))
    if not packages and not errors:
        errors.append(SpecError("the lock names no package", file=file))
    sha = hashlib.sha256(data).hexdigest()
    return LintResult(None if errors else Lock(file, packages, sha), errors)


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each non-empty logical line: comments stripped and
    backslash continuations joined, as pip reads them."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = _COMMENT.sub("", raw).rstrip()
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1])
            continue
        buf.append(stripped)
        joined = " ".join(part.strip() for part in buf).strip()
        buf = []
        if joined:
            out.append((start, joined))
    joined = " ".join(part.strip() for part in buf).strip()
    if joined:  # a continuation on the last line: pip accepts it, so do we
        out.append((start, joined))
    return out


def parse_requirement(logical: str, file: str, line: int) -> LockedPackage:
    """One logical line -> a package, or the `SpecError` saying why it is refused."""
    def err(message: str, name: str | None = None) -> SpecError:
        return SpecError(message, file=file, line=line, field=name)

    if "${" in logical:
        raise err("environment variable references (${...}) are not allowed")
    if logical.startswith("-"):
        option = logical.split()[0].split("=")[0]
        raise err(f"option lines are not allowed ({option}): only name==version --hash lines")
    requirement, _, options = logical.partition(" --")
    options = "--" + options if options else ""
    if " -" in requirement:
        option = requirement[requirement.index(" -") + 1:].split()[0]
        raise err(f"option {option!r} is not allowed on a requirement line")
    if _URL.search(requirement.split(";")[0]) or "://" in requirement:
        raise err("URL, VCS and direct references are not allowed: pin name==version")
    if requirement.startswith((".", "/", "~")) or requirement.endswith((".whl", ".zip",
                                                                        ".tar.gz")):
        raise err("local paths are not allowed: pin name==version")
    match = _REQ.match(requirement)
    if match is None:
        raise err(f"not a requirement: {requirement[:60]!r}")
    name = normalize_name(match["name"])
    version = _pinned_version(match["spec"].strip(), lambda m: err(m, name))
    marker = _marker(match["marker"], lambda m: err(m, name))
    hashes = _hashes(options, lambda m: err(m, name))
    extras = tuple(sorted(normalize_name(e.strip())
                          for e in (match["extras"] or "").split(",") if e.strip()))
    return LockedPackage(name, version, marker, hashes, line, extras)


def _pinned_version(spec: str, err: Any) -> str:
    if not spec:
        raise err("no version: pin it with ==version")
    if spec.startswith("==="):
        raise err(f"arbitrary equality {spec!r} is not allowed: pin it with ==version")
    pin = _PIN.match(spec)
    if pin is None:
        kind = "wildcard pin" if "*" in spec else "loose pin"
        raise err(f"{kind} {spec!r}: pin it with ==version")
    return pin["version"]


def _marker(text: str | None, err: Any) -> str | None:
    if text is None:
        return None
    if not text.strip():
        raise err("empty environment marker after ';'")
    try:
        return str(Marker(text))
    except InvalidMarker as exc:
        raise err(f"invalid environment marker {text!r}: {str(exc).splitlines()[0]}") from exc


def _hashes(options: str, err: Any) -> tuple[str, ...]:
    hashes: list[str] = []
    for option in re.split(r"\s+(?=--)", options) if options else []:
        match = _HASH.match(option.strip())
        if match is None:
            raise err(f"option {option.split()[0]!r} is not allowed on a requirement line")
        algo, digest = match["algo"].lower(), match["digest"].lower()
        if algo != "sha256":
            raise err(f"{algo} hash: only sha256 hashes are accepted")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise err(f"malformed sha256 hash {digest[:70]!r}: expected 64 hex digits")
        hashes.append(digest)
    if not hashes:
        raise err("missing hash: every requirement needs --hash=sha256:...")
    return tuple(dict.fromkeys(hashes))


def _duplicates(packages: list[LockedPackage], file: str) -> list[SpecError]:
    """The same name twice is a duplicate unless both carry different markers."""
    errors: list[SpecError] = []
    kept: dict[str, list[LockedPackage]] = {}
    for pkg in packages:
        clash = next((p for p in kept.get(pkg.name, [])
                      if p.marker is None or pkg.marker is None or p.marker == pkg.marker), None)
        if clash is not None:
            errors.append(SpecError(f"duplicate package (first on line {clash.line})",
                                    file=file, line=pkg.line, field=pkg.name))
        kept.setdefault(pkg.name, []).append(pkg)
    return errors


def lint_pylock(data: bytes, file: str = "pylock.toml") -> LintResult:
    """Lint a PEP 751 lock given as bytes."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return LintResult(None, [SpecError(f"invalid TOML: {exc}", file=file)])
    version = str(doc.get("lock-version", ""))
    if version.split(".")[0] != "1":
        return LintResult(None, [SpecError(f"lock-version {version!r}: only 1.x is supported",
                                           file=file, field="lock-version")])
    raw = doc.get("packages")
    if not isinstance(raw, list) or not raw:
        return LintResult(None, [SpecError("no [[packages]]", file=file, field="packages")])
    lines = _package_lines(data.decode("utf-8"), len(raw))
    errors: list[SpecError] = []
    packages: list[LockedPackage] = []
    for i, entry in enumerate(raw):
        try:
            packages.append(_pylock_package(entry, file, lines[i], i))
        except SpecError as exc:
            errors.append(exc)
    errors.extend(_duplicates(packages, file))
    sha = hashlib.sha256(data).hexdigest()
    return LintResult(None if errors else Lock(file, packages, sha, "pylock"), errors)


def _package_lines(text: str, count: int) -> list[int | None]:
    found = [n for n, raw in enumerate(text.splitlines(), start=1)
             if raw.strip() == "[[packages]]"]
    return list(found) if len(found) == count else [None] * count


def _pylock_package(entry: Any, file: str, line: int | None, index: int) -> LockedPackage:
    where = f"packages[{index}]"
    if not isinstance(entry, dict):
        raise SpecError("not a table", file=file, line=line, field=where)
    name, version = entry.get("name"), entry.get("version")
    if not isinstance(name, str) or not re.fullmatch(_NAME, name):
        raise SpecError(f"bad or missing name {name!r}", file=file, line=line, field=where)
    field_ = normalize_name(name)
    for kind in ("vcs", "directory", "archive"):
        if kind in entry:
            raise SpecError(f"{kind} packages are not allowed: lock wheels from an index",
                            file=file, line=line, field=field_)
    if not isinstance(version, str) or not re.fullmatch(r"[0-9][A-Za-z0-9.!+_-]*", version):
        raise SpecError(f"bad or missing version {version!r}", file=file, line=line,
                        field=field_)
    hashes = _wheel_hashes(entry.get("wheels"), file, line, field_)
    marker = entry.get("marker")
    if marker is not None and not isinstance(marker, str):
        raise SpecError("marker must be a string", file=file, line=line, field=field_)
    checked = _marker(marker, lambda m: SpecError(m, file=file, line=line, field=field_))
    return LockedPackage(field_, version, checked, hashes, line)


def _wheel_hashes(wheels: Any, file: str, line: int | None, name: str) -> tuple[str, ...]:
    if not isinstance(wheels, list) or not wheels:
        raise SpecError("no wheels (sdist-only packages are not allowed)", file=file,
                        line=line, field=name)
    hashes: list[str] = []
    for wheel in wheels:
        digest = wheel.get("hashes", {}).get("sha256") if isinstance(wheel, dict) else None
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise SpecError("a wheel without a sha256 hash", file=file, line=line, field=name)
        hashes.append(digest.lower())
    return tuple(dict.fromkeys(hashes))


def target_environment(python: str | None = None, machine: str = "x86_64"
                       ) -> dict[str, str]:
    """Marker environment of a Linux host with Python `python` ("3.11")."""
    env = {k: str(v) for k, v in default_environment().items()}
    env.update(sys_platform="linux", platform_system="Linux", os_name="posix",
               platform_machine=machine)
    if python:
        env.update(python_version=python, python_full_version=f"{python}.0")
    return env


def supported_tags(python: str, machine: str = "x86_64") -> frozenset[Tag]:
    """Wheel tags a glibc Linux host with CPython `python` ("3.11") can install. Every manylinux
    level is accepted: whether the host's glibc is new enough is the preflight's question."""
    major, minor = (int(part) for part in python.split(".")[:2])
    platforms = [f"manylinux_2_{n}_{machine}" for n in range(60, 4, -1)]
    platforms += [f"manylinux{v}_{machine}" for v in ("2014", "2010", "1")] + [f"linux_{machine}"]
    version = (major, minor)
    return frozenset([*cpython_tags(version, platforms=platforms),
                      *compatible_tags(version, f"cp{major}{minor}", platforms)])


def check_wheelhouse(lock: Lock, directory: str | os.PathLike[str], *,
                     environment: Mapping[str, str] | None = None,
                     python: str | None = None, machine: str = "x86_64") -> list[SpecError]:
    """Every locked package whose marker applies has a wheel in `directory` whose sha256 is one
    of its hashes (and, given `python`, that installs on Linux `machine` with that Python), and
    `directory` holds nothing the lock does not name. Returns every problem."""
    root = Path(directory)
    env = environment if environment is not None else target_environment(python, machine)
    tags = supported_tags(python, machine) if python else None
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        return [SpecError(f"cannot list the wheelhouse: {exc.strerror}", file=str(root))]
    by_hash = {h: pkg for pkg in lock.packages for h in pkg.hashes}
    covered: set[int] = set()
    elsewhere: dict[int, list[str]] = {}  # locked wheels present, but for another platform
    errors: list[SpecError] = []
    for entry in entries:
        path = root / entry.name
        try:
            if not entry.is_file(follow_symlinks=False):
                raise InvalidWheelFilename(entry.name)
            wheel_name, _, _, wheel_tags = parse_wheel_filename(entry.name)
        except InvalidWheelFilename:
            errors.append(SpecError("not a wheel file; the wheelhouse holds only locked wheels",
                                    file=str(path)))
            continue
        digest = hash_file(path)
        pkg = by_hash.get(digest)
        if pkg is None or pkg.name != wheel_name:
            errors.append(SpecError("wheel not named by the lock (no package has its sha256)",
                                    file=str(path), field=str(wheel_name)))
            continue
        owners = [id(p) for p in lock.packages if digest in p.hashes]
        if tags is None or wheel_tags & tags:
            covered.update(owners)
        else:
            for owner in owners:
                elsewhere.setdefault(owner, []).append(entry.name)
    for pkg in lock.packages:
        if id(pkg) not in covered and pkg.applies(env):
            target = f" installable on Linux {machine} with Python {python}" if python else ""
            others = elsewhere.get(id(pkg))
            note = f" (only for other platforms: {', '.join(others)})" if others else ""
            errors.append(SpecError(f"no wheel in {root}{target} has one of the locked sha256 "
                                    f"hashes of {pkg.name}=={pkg.version}{note}",
                                    file=lock.file, line=pkg.line, field=pkg.name))
    return errors
