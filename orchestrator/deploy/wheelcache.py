"""The controller's content-addressed wheel cache, and the wheel set a release installs.

    <cache>/wheels/<sha256>.whl     one file per content hash, written once (tmp + rename)
    <cache>/index.json              {"wheels": {sha256: real filename},
                                     "fills": {"<lock sha>|<python>|<tags hash>": {name: sha256}}}
    <cache>/.lock                   flock around index updates (several deployments at once)

`WheelCache.fill(lock, python_version, platforms)` makes sure every package of the lock that
applies to the host (markers evaluated for its Python and machine) has one wheel in the cache,
downloading only what is not there yet with `pip download --only-binary=:all: --no-deps
--require-hashes --python-version X.Y --implementation cp --platform ...` from the daemon's
configured index (pkgindex.py: a private mirror, its CA and netrc credentials; a failure
other than a hash refusal retried with backoff), for the host's Python and platform, and checks
each file's sha256 against the lock before storing it by hash. A (lock, python, platforms)
filled once is answered from the index without running pip. `from_wheelhouse(lock, dir)` gives
the same answer from a spec's wheelhouse.

A wheel whose bytes the lock does not allow (a tampered index or wheelhouse, or a stale lock) is
refused with one message shape, whichever way it came (`hash_mismatch`):
`scikit-learn==1.5.2: scikit_learn-1.5.2-cp311-...whl has sha256 f8b0..., the lock allows ...`.
pip keeps its own hash enforcement (with hashes it prefers the file the index advertises with a
locked hash, so the file it picks is the locked one); its refusal is parsed into that message,
and what it does download is hashed again here before anything enters the cache.

Both return `{sha256: Wheel}`: `Wheel.path` is the local file to upload and `Wheel.filename` the
real wheel filename the host's installer needs (`HostOps.venv_ensure(wheels=filenames(ws))`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict
from urllib.parse import unquote, urlsplit

from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from orchestrator.core.hashing import hash_file
from orchestrator.core.lockfile import (
    Lock,
    LockedPackage,
    check_wheelhouse,
    load_lock,
    normalize_name,
    target_environment,
)
from orchestrator.core.retry import RetryPolicy, retry
from orchestrator.deploy.pkgindex import PackageIndex
from orchestrator.errors import DeploymentFailed, InvalidInput

PURE_TAGS = ("py3-none-any", "py2.py3-none-any")
OLDEST_MANYLINUX = 17  # manylinux2014: what current binary wheels (TensorFlow, numpy) target
# pip's hash refusal (HashMismatch.body, stable since pip 8): "    <name>==<version> from <url>
# (from -r ...):", then "Expected sha256 ..." lines, then "Got <hex>".
_PIP_REQUIREMENT = re.compile(r"^ {4}(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==\S+ "
                              r"from (?P<url>\S+)")
#: A flaky index: pip already retries each request (`--retries`, 5 by default); this retries
#: the whole download, after a longer pause, within the fill's and the step's time.
INDEX_RETRY = RetryPolicy(attempts=3, base_s=2.0, cap_s=30.0)
_PIP_GOT = re.compile(r"^\s+Got\s+(?P<digest>[0-9a-f]{64})\s*$")


class _Index(TypedDict):
    wheels: dict[str, str]            # sha256 -> real filename
    fills: dict[str, dict[str, str]]  # fill key -> {package name: sha256}


class WheelFetchFailed(DeploymentFailed):
    """The locked wheels could not be had for a host's Python and platform."""

    transient = False  # pip failed otherwise than on a hash: the index may answer next time


@dataclass(frozen=True)
class Wheel:
    sha256: str
    filename: str  # the real wheel filename: name-version-tags.whl
    path: Path     # the local file (cache entry or wheelhouse file)


#: Allowed hashes a tampered-wheel message lists before "... and N more" (a lock lists one
#: hash per platform wheel, 43 for scikit-learn; a few are enough to compare by eye).
SHOWN_HASHES = 3


def hash_mismatch(pkg: LockedPackage, filename: str, digest: str, where: str = "") -> str:
    """The one message for a wheel the lock does not allow, from the cache fill or a wheelhouse:
    package and version, the file, what it hashes to and the hashes the lock allows (the first
    `SHOWN_HASHES`, then how many more), so that an operator can tell a stale lock from a
    tampered index without re-running pip by hand."""
    suffix = f" ({where})" if where else ""
    more = len(pkg.hashes) - SHOWN_HASHES
    shown = ", ".join(pkg.hashes[:SHOWN_HASHES]) + (f" ... and {more} more" if more > 0 else "")
    return (f"{pkg.name}=={pkg.version}: {filename} has sha256 {digest}, the lock allows "
            f"{shown}{suffix}")


def filenames(wheels: Mapping[str, Wheel]) -> dict[str, str]:
    """{sha256: real filename}: what `venv-ensure` needs to name the links it installs from."""
    return {sha: w.filename for sha, w in wheels.items()}


def paths(wheels: Mapping[str, Wheel]) -> dict[str, Path]:
    """{sha256: local path}: what `HostOps.push_wheels` uploads."""
    return {sha: w.path for sha, w in wheels.items()}


def platform_tags(machine: str, libc: str) -> list[str]:
    """The manylinux tags a Linux host accepts, newest first: ("x86_64", "glibc 2.36") ->
    manylinux_2_36_x86_64 ... manylinux_2_17_x86_64, manylinux2014_x86_64."""
    name, _, version = libc.partition(" ")
    major, _, minor = version.partition(".")
    if name != "glibc" or major != "2" or not minor.isdigit():
        raise InvalidInput(f"cannot derive wheel platform tags from libc {libc!r} (glibc only)")
    tags = [f"manylinux_2_{m}_{machine}" for m in range(int(minor), OLDEST_MANYLINUX - 1, -1)]
    return [*tags, f"manylinux2014_{machine}"]


def applying(lock: Lock, python_version: str, machine: str) -> list[LockedPackage]:
    env = target_environment(python_version, machine)
    return [p for p in lock.packages if p.applies(env)]


def from_wheelhouse(lock_path: Path, directory: Path, *, python_version: str | None = None,
                    machine: str = "x86_64") -> dict[str, Wheel]:
    """The lock's wheels from a spec's wheelhouse; refuses (InvalidInput, the first problem and a
    count of the others) a wheelhouse missing a locked wheel or holding a file the lock does not
    name. A wheel of a locked package and version with other bytes leads (`hash_mismatch`)."""
    lock = load_lock(lock_path)
    env = target_environment(python_version, machine)
    errors = check_wheelhouse(lock, directory, environment=env)
    if errors:
        tampered = _wheelhouse_mismatches(lock, directory, env)
        if tampered:  # the same file also reads as "not named" and its package as lacking
            names = set(tampered)
            others = [e for e in errors if e.field not in names]
            more = f" (and {len(others)} more problems)" if others else ""
            raise InvalidInput("; ".join(tampered.values()) + more)
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise InvalidInput(f"{errors[0]}{more}")
    by_hash = {h: p for p in applying(lock, python_version or _here(), machine) for h in p.hashes}
    found: dict[str, Wheel] = {}
    for path in sorted(directory.glob("*.whl")):
        digest = hash_file(path)
        if digest in by_hash:
            found[digest] = Wheel(digest, path.name, path)
    return found


def _wheelhouse_mismatches(lock: Lock, directory: Path,
                           env: Mapping[str, str]) -> dict[str, str]:
    """{package: message} for each wheel file named like a locked package and version whose
    sha256 the lock does not list for it. Only regular files: a symlink is never followed
    (check_wheelhouse refuses it on its own)."""
    found: dict[str, str] = {}
    for path in sorted(directory.glob("*.whl")):
        try:
            if path.is_symlink() or not path.is_file():
                continue
            name, version, _, _ = parse_wheel_filename(path.name)
        except (InvalidWheelFilename, OSError):
            continue
        same = [p for p in lock.packages if p.name == name and _same_version(p.version, version)]
        if not same:
            continue
        digest = hash_file(path)
        if any(digest in p.hashes for p in same):
            continue
        pkg = next((p for p in same if p.applies(env)), same[0])
        found.setdefault(pkg.name, hash_mismatch(pkg, path.name, digest,
                                                 f"in the wheelhouse {directory}"))
    return found


def _same_version(locked: str, version: Version) -> bool:
    try:
        return Version(locked) == version
    except InvalidVersion:
        return False


def _here() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


class WheelCache:
    """`<root>/wheels/<sha256>.whl` plus an index of real filenames (module docstring)."""

    def __init__(self, root: Path, *, index_url: str | None = None,
                 find_links: Sequence[Path] = (), no_index: bool = False,
                 pip: Sequence[str] = (sys.executable, "-m", "pip"),
                 timeout_s: float = 1800.0, index: PackageIndex | None = None,
                 retry_policy: RetryPolicy = INDEX_RETRY) -> None:
        self.index = index or PackageIndex(url=index_url)
        self.root, self.find_links = root, tuple(find_links)
        self.no_index, self.pip, self.timeout_s = no_index, tuple(pip), timeout_s
        self.retry_policy = retry_policy
        (root / "wheels").mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / "wheels" / f"{sha256}.whl"

    def get(self, sha256: str) -> Wheel | None:
        filename = self._load_index()["wheels"].get(sha256)
        if filename is None or not self.path(sha256).is_file():
            return None
        return Wheel(sha256, filename, self.path(sha256))

    def fill(self, lock_path: Path, python_version: str, platforms: Sequence[str], *,
             machine: str = "x86_64",
             remaining: Callable[[], float] | None = None) -> dict[str, Wheel]:
        """One wheel per applying locked package, for that Python and those platform tags,
        downloaded at most once (module docstring). Raises WheelFetchFailed naming what pip
        could not get. A pip failure other than a hash refusal is retried with backoff
        (core/retry.py) within `timeout_s` and the caller's `remaining()` (the step's)."""
        lock = load_lock(lock_path)
        packages = applying(lock, python_version, machine)
        tags = hashlib.sha256(",".join(platforms).encode()).hexdigest()[:16]
        key = f"{lock.sha256}|{python_version}|{tags}"
        chosen = self._known(key, packages)
        pending = [p for p in packages if p.name not in chosen]
        if pending:
            end = time.monotonic() + self.timeout_s

            def left() -> float:
                budget = end - time.monotonic()
                return min(budget, remaining()) if remaining is not None else budget

            chosen.update(retry(lambda: self._download(pending, python_version, platforms,
                                                       left()),
                                self.retry_policy, remaining=left,
                                transient=lambda e: isinstance(e, WheelFetchFailed)
                                and e.transient))
        with self._locked() as index:
            index["fills"][key] = chosen
        return {sha: self._wheel(sha) for sha in chosen.values()}

    def _wheel(self, sha: str) -> Wheel:
        wheel = self.get(sha)
        if wheel is None:  # removed under us between download and return
            raise WheelFetchFailed(f"wheel {sha} vanished from the cache at {self.root}")
        return wheel

    def _known(self, key: str, packages: list[LockedPackage]) -> dict[str, str]:
        """{name: sha} already answerable from the cache: this fill's earlier answer, or a
        pure-Python wheel (valid on any platform) with one of the package's hashes."""
        index = self._load_index()
        earlier = index["fills"].get(key, {})
        known: dict[str, str] = {}
        for pkg in packages:
            sha = earlier.get(pkg.name)
            if sha in pkg.hashes and self.get(sha) is not None:
                known[pkg.name] = sha
                continue
            for digest in pkg.hashes:
                name = index["wheels"].get(digest, "")
                if name.endswith(tuple(f"-{t}.whl" for t in PURE_TAGS)) and self.path(
                    digest
                ).is_file():
                    known[pkg.name] = digest
                    break
        return known

    def _download(self, pending: list[LockedPackage], python_version: str,
                  platforms: Sequence[str], budget: float) -> dict[str, str]:
        with tempfile.TemporaryDirectory(prefix="fill-", dir=self.root) as tmp:
            sublock = Path(tmp) / "pending.lock"
            sublock.write_text("".join(
                f"{p.name}=={p.version} " + " ".join(f"--hash=sha256:{h}" for h in p.hashes) + "\n"
                for p in pending))
            dest = Path(tmp) / "dl"
            try:
                proc = subprocess.run(
                    self._pip_argv(sublock, dest, python_version, platforms),
                    capture_output=True, text=True, timeout=max(budget, 1.0), check=False,
                    env=self.index.pip_env(Path(tmp)),
                )
            except subprocess.TimeoutExpired:
                raise WheelFetchFailed(f"pip download from {self._source()} did not finish "
                                       f"within {max(budget, 1.0):.0f} s") from None
            if proc.returncode != 0:
                stderr = self.index.redact(proc.stderr)
                tampered = _pip_mismatches(stderr, pending)
                if tampered:
                    raise WheelFetchFailed("; ".join(tampered))
                tail = " ".join(stderr.strip().splitlines()[-8:])
                error = WheelFetchFailed(f"pip download for Python {python_version} ("
                                         f"{platforms[0] if platforms else 'any'}) from "
                                         f"{self._source()} failed: {tail}")
                error.transient = True
                raise error
            return self._store_downloads(pending, dest)

    def _pip_argv(self, sublock: Path, dest: Path, python_version: str,
                  platforms: Sequence[str]) -> list[str]:
        argv = [*self.pip, "download", "--isolated", "--disable-pip-version-check",
                "--no-input", "--quiet", "--only-binary=:all:", "--no-deps", "--require-hashes",
                "--implementation", "cp", "--python-version", python_version,
                "-r", str(sublock), "-d", str(dest)]
        for tag in platforms:
            argv += ["--platform", tag]
        if self.no_index:
            argv.append("--no-index")
        argv += self.index.pip_args()
        for link in self.find_links:
            argv += ["--find-links", str(link)]
        return argv

    def _store_downloads(self, pending: list[LockedPackage], dest: Path) -> dict[str, str]:
        """Check every file against the lock (pip did too: never trust one check), all of them
        before any enters the cache, and store them by hash; every pending package must have
        got its wheel."""
        by_hash = {h: p for p in pending for h in p.hashes}
        by_name = {p.name: p for p in pending}
        checked: list[tuple[Path, str, LockedPackage]] = []
        refused: list[str] = []
        for path in sorted(dest.glob("*.whl")) if dest.is_dir() else []:
            digest, name = hash_file(path), normalize_name(path.name.split("-")[0])
            pkg = by_hash.get(digest)
            if pkg is not None and name == pkg.name:
                checked.append((path, digest, pkg))
            elif name in by_name:
                refused.append(hash_mismatch(by_name[name], path.name, digest,
                                             f"downloaded from {self._source()}"))
            else:
                refused.append(f"downloaded {path.name} (sha256 {digest}) is not in the lock: "
                               "refused")
        if refused:
            raise WheelFetchFailed("; ".join(refused))
        got: dict[str, str] = {}
        names: dict[str, str] = {}
        for path, digest, pkg in checked:
            target = self.path(digest)
            if not target.is_file():
                os.replace(path, target)  # same filesystem: the temp dir is inside the cache
            got[pkg.name], names[digest] = digest, path.name
        lacking = [f"{p.name}=={p.version}" for p in pending if p.name not in got]
        if lacking:
            raise WheelFetchFailed(f"no wheel downloaded for {', '.join(lacking)}")
        with self._locked() as index:
            index["wheels"].update(names)
        return got

    def _source(self) -> str:
        """Where pip was told to look, for a refusal that has no URL from pip to show."""
        links = ", ".join(str(link) for link in self.find_links)
        if not self.index.configured and (links or self.no_index):
            return links or "no index"
        return " and ".join(filter(None, (self.index.describe(), links)))

    def _load_index(self) -> _Index:
        try:
            data = json.loads((self.root / "index.json").read_text())
        except FileNotFoundError:
            data = {}
        return {"wheels": dict(data.get("wheels", {})), "fills": dict(data.get("fills", {}))}

    @contextmanager
    def _locked(self) -> Iterator[_Index]:
        """The index, read and written back atomically under an exclusive lock."""
        with open(self.root / ".lock", "a+b") as lockf:
            fcntl.flock(lockf, fcntl.LOCK_EX)
            index = self._load_index()
            yield index
            fd, tmp = tempfile.mkstemp(prefix=".index-", dir=self.root)
            with os.fdopen(fd, "w") as fh:
                json.dump(index, fh, indent=1, sort_keys=True)
            os.replace(tmp, self.root / "index.json")


def _pip_mismatches(stderr: str, pending: list[LockedPackage]) -> list[str]:
    """pip's hash refusal as `hash_mismatch` messages, one per wheel pip named; [] when stderr
    is not that refusal (then the caller shows pip's own tail). The version and the allowed
    hashes come from the lock, the file and its sha256 from what pip hashed."""
    by_name = {p.name: p for p in pending}
    found: list[str] = []
    current: tuple[LockedPackage, str] | None = None
    for line in stderr.splitlines():
        if match := _PIP_REQUIREMENT.match(line):
            pkg = by_name.get(normalize_name(match["name"]))
            current = (pkg, match["url"]) if pkg is not None else None
        elif (match := _PIP_GOT.match(line)) and current is not None:
            pkg, url = current
            source = url.partition("#")[0]
            filename = unquote(urlsplit(source).path).rpartition("/")[2]
            found.append(hash_mismatch(pkg, filename, match["digest"], f"from {source}"))
            current = None
    return found
