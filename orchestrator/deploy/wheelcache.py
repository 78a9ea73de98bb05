"""The controller's content-addressed wheel cache, and the wheel set a release installs.

    <cache>/wheels/<sha256>.whl     one file per content hash, written once (tmp + rename)
    <cache>/index.json              {"wheels": {sha256: real filename},
                                     "fills": {"<lock sha>|<python>|<tags hash>": {name: sha256}}}
    <cache>/.lock                   flock around index updates (several deployments at once)

`WheelCache.fill(lock, python_version, platforms)` makes sure every package of the lock that
applies to the host (markers evaluated for its Python and machine) has one wheel in the cache,
downloading only what is not there yet with `pip download --only-binary=:all: --no-deps
--require-hashes --python-version X.Y --implementation cp --platform ...` from the daemon's
configured index, for the host's Python and platform, and checks each file's sha256 against the
lock before storing it by hash. A (lock, python, platforms) filled once is answered from the index
without running pip. `from_wheelhouse(lock, dir)` gives the same answer from a spec's wheelhouse.

Both return `{sha256: Wheel}`: `Wheel.path` is the local file to upload and `Wheel.filename` the
real wheel filename the host's installer needs (`HostOps.venv_ensure(wheels=filenames(ws))`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from orchestrator.core.hashing import hash_file
from orchestrator.core.lockfile import (
    Lock,
    LockedPackage,
    check_wheelhouse,
    load_lock,
    normalize_name,
    target_environment,
)
from orchestrator.errors import DeploymentFailed, InvalidInput

PURE_TAGS = ("py3-none-any", "py2.py3-none-any")
OLDEST_MANYLINUX = 17  # manylinux2014: what current binary wheels (TensorFlow, numpy) target


class _Index(TypedDict):
    wheels: dict[str, str]            # sha256 -> real filename
    fills: dict[str, dict[str, str]]  # fill key -> {package name: sha256}


class WheelFetchFailed(DeploymentFailed):
    """The locked wheels could not be had for a host's Python and platform."""


@dataclass(frozen=True)
class Wheel:
    sha256: str
    filename: str  # the real wheel filename: name-version-tags.whl
    path: Path     # the local file (cache entry or wheelhouse file)


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
    """The lock's wheels from a spec's wheelhouse; refuses (InvalidInput, every problem in the
    message) a wheelhouse missing a locked wheel or holding a file the lock does not name."""
    lock = load_lock(lock_path)
    env = target_environment(python_version, machine)
    errors = check_wheelhouse(lock, directory, environment=env)
    if errors:
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise InvalidInput(f"{errors[0]}{more}")
    by_hash = {h: p for p in applying(lock, python_version or _here(), machine) for h in p.hashes}
    found: dict[str, Wheel] = {}
    for path in sorted(directory.glob("*.whl")):
        digest = hash_file(path)
        if digest in by_hash:
            found[digest] = Wheel(digest, path.name, path)
    return found


def _here() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


class WheelCache:
    """`<root>/wheels/<sha256>.whl` plus an index of real filenames (module docstring)."""

    def __init__(self, root: Path, *, index_url: str | None = None,
                 find_links: Sequence[Path] = (), no_index: bool = False,
                 pip: Sequence[str] = (sys.executable, "-m", "pip"),
                 timeout_s: float = 1800.0) -> None:
        self.root, self.index_url, self.find_links = root, index_url, tuple(find_links)
        self.no_index, self.pip, self.timeout_s = no_index, tuple(pip), timeout_s
        (root / "wheels").mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / "wheels" / f"{sha256}.whl"

    def get(self, sha256: str) -> Wheel | None:
        filename = self._load_index()["wheels"].get(sha256)
        if filename is None or not self.path(sha256).is_file():
            return None
        return Wheel(sha256, filename, self.path(sha256))

    def fill(self, lock_path: Path, python_version: str, platforms: Sequence[str], *,
             machine: str = "x86_64") -> dict[str, Wheel]:
        """One wheel per applying locked package, for that Python and those platform tags,
        downloaded at most once (module docstring). Raises WheelFetchFailed naming what pip
        could not get."""
        lock = load_lock(lock_path)
        packages = applying(lock, python_version, machine)
        tags = hashlib.sha256(",".join(platforms).encode()).hexdigest()[:16]
        key = f"{lock.sha256}|{python_version}|{tags}"
        chosen = self._known(key, packages)
        pending = [p for p in packages if p.name not in chosen]
        if pending:
            chosen.update(self._download(pending, python_version, platforms))
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
                  platforms: Sequence[str]) -> dict[str, str]:
        with tempfile.TemporaryDirectory(prefix="fill-", dir=self.root) as tmp:
            sublock = Path(tmp) / "pending.lock"
            sublock.write_text("".join(
                f"{p.name}=={p.version} " + " ".join(f"--hash=sha256:{h}" for h in p.hashes) + "\n"
                for p in pending))
            dest = Path(tmp) / "dl"
            proc = subprocess.run(
                self._pip_argv(sublock, dest, python_version, platforms),
                capture_output=True, text=True, timeout=self.timeout_s, check=False,
                env=_pip_env(Path(tmp)),
            )
            if proc.returncode != 0:
                tail = " ".join(proc.stderr.strip().splitlines()[-8:])
                raise WheelFetchFailed(f"pip download for Python {python_version} "
                                       f"({platforms[0] if platforms else 'any'}) failed: {tail}")
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
        if self.index_url:
            argv += ["--index-url", self.index_url]
        for link in self.find_links:
            argv += ["--find-links", str(link)]
        return argv

    def _store_downloads(self, pending: list[LockedPackage], dest: Path) -> dict[str, str]:
        """Check every file against the lock (pip did too: never trust one check) and store
        it by hash; every pending package must have got its wheel."""
        by_hash = {h: p for p in pending for h in p.hashes}
        got: dict[str, str] = {}
        names: dict[str, str] = {}
        for path in sorted(dest.glob("*.whl")) if dest.is_dir() else []:
            digest = hash_file(path)
            pkg = by_hash.get(digest)
            if pkg is None or normalize_name(path.name.split("-")[0]) != pkg.name:
                raise WheelFetchFailed(f"downloaded {path.name} (sha256 {digest}) is not in the "
                                       "lock: refused")
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


def _pip_env(home: Path) -> dict[str, str]:
    """No user or site config may change what is fetched (--isolated covers pip's own)."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
            "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
            "XDG_CACHE_HOME")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.setdefault("HOME", str(home))
    return env
