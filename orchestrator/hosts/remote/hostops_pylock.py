"""hostops' reading of a PEP 751 pylock.toml: its packages' versions and wheel hashes, and the
hash-pinned requirements file the installers get for the wheels the controller chose. Shipped
beside hostops.py (stdlib only, Python 3.9+).

Offers hostops_venvs is_pylock, pylock_packages and pinned_requirements; hostops_prune
is_pylock and PYLOCK_HASH_RE (the wheel hashes a pylock names)."""

from __future__ import annotations

import re
from typing import Any

from hostops_fs import OpError

# PEP 751 pylock.toml: read with tomllib where the host has it (3.11+), else (hosts may run
# 3.9) by a scan of its lines: the controller has linted the real TOML already, so the scan only
# has to find each package's name, version and wheel hashes, which writers put one key per line
# or in inline tables (tests hold both readers to the same answer).
PYLOCK_RE = re.compile(r"^\s*lock-version\s*=", re.MULTILINE)
PYLOCK_PACKAGE_RE = re.compile(r"^\s*\[\[\s*packages\s*\]\]\s*$", re.MULTILINE)
PYLOCK_NAME_RE = re.compile(r'^\s*name\s*=\s*"([^"]+)"', re.MULTILINE)
PYLOCK_VERSION_RE = re.compile(r'^\s*version\s*=\s*"([^"]+)"', re.MULTILINE)
PYLOCK_HASH_RE = re.compile(r'sha256\s*=\s*"([0-9a-fA-F]{64})"')
# where a package's own tables end: any header but [packages.x] / [[packages.x]]
PYLOCK_OTHER_TABLE_RE = re.compile(r"^\s*\[(?!\[?\s*packages\.)", re.MULTILINE)
# an sdist's hash is never a wheel's: `sdist = {...}` lines and [packages.sdist...] tables
PYLOCK_SDIST_RE = re.compile(r"^\s*sdist\s*=.*$|^\s*\[\s*packages\.sdist[^\n]*\n"
                             r"(?:(?!\s*\[)[^\n]*\n?)*", re.MULTILINE)


def is_pylock(text):
    """A PEP 751 lock has a top-level lock-version key; the linter refuses that line in a
    requirements lock, so the content tells the two apart (both are kept as
    requirements.lock on the host)."""
    return PYLOCK_RE.search(text) is not None


def _normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def pylock_packages(text):
    """{normalized name: (version, [wheel sha256, ...])} of a pylock's [[packages]]."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        return pylock_packages_scanned(text)
    try:
        doc = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError
        raise OpError("bad-lock", f"the pylock is not valid TOML: {exc}") from None
    found: dict[str, Any] = {}
    for entry in doc.get("packages") or []:
        if not isinstance(entry, dict):
            raise OpError("bad-lock", "a [[packages]] entry of the pylock is not a table")
        wheels = entry.get("wheels") or []
        hashes = [w["hashes"]["sha256"] for w in wheels if isinstance(w, dict)
                  and isinstance(w.get("hashes"), dict)
                  and isinstance(w["hashes"].get("sha256"), str)]
        _add_locked(found, entry.get("name"), entry.get("version"), hashes)
    return _some_locked(found)


def pylock_packages_scanned(text):
    """pylock_packages without a TOML parser (see PYLOCK_RE)."""
    found: dict[str, Any] = {}
    for block in PYLOCK_PACKAGE_RE.split(text)[1:]:
        other = PYLOCK_OTHER_TABLE_RE.search(block)
        block = block[: other.start()] if other else block
        name, version = PYLOCK_NAME_RE.search(block), PYLOCK_VERSION_RE.search(block)
        _add_locked(found, name and name.group(1), version and version.group(1),
                    PYLOCK_HASH_RE.findall(PYLOCK_SDIST_RE.sub("", block)))
    return _some_locked(found)


def _add_locked(found, name, version, hashes):
    if not isinstance(name, str) or not isinstance(version, str):
        raise OpError("bad-lock", "a [[packages]] entry of the pylock has no name or version")
    entry = found.setdefault(_normalize(name), (version, []))
    entry[1].extend(h.lower() for h in hashes if h.lower() not in entry[1])


def _some_locked(found):
    if not found:
        raise OpError("bad-lock", "the pylock has no [[packages]]")
    return found


def _wheel_name_version(filename):
    parts = filename[: -len(".whl")].split("-")
    if len(parts) not in (5, 6):
        raise OpError("bad-args", f"not a wheel filename: {filename!r}")
    return _normalize(parts[0]), parts[1]


def pinned_requirements(wheel_map, locked):
    """The requirements file an installer gets for a pylock: one `name==version --hash` line
    per package, hashed with exactly the wheels the controller chose for this host, each of
    which must be one the lock names (same name, version and sha256)."""
    lines: dict[str, list[str]] = {}
    for sha, filename in sorted(wheel_map.items(), key=lambda item: item[1]):
        name, version = _wheel_name_version(filename)
        if name not in locked:
            raise OpError("install-failed", f"{filename} (sha256 {sha}): {name} is not in the "
                          "lock", package=name, actual=sha)
        # the sha256 is what matters: a locked wheel's bytes are the version the lock names
        want_version, hashes = locked[name]
        if sha not in hashes:
            raise OpError("install-failed", f"hash mismatch for {name}=={want_version}: the lock "
                          f"has sha256 {', '.join(hashes) or 'none'}, the wheel {filename} has "
                          f"{sha}", package=name, expected=hashes, actual=sha)
        lines.setdefault(f"{name}=={version}", []).append(sha)
    return "".join(f"{pin} " + " ".join(f"--hash=sha256:{h}" for h in shas) + "\n"
                   for pin, shas in lines.items())
