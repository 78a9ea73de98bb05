"""hostops' shipped bytecode: the .pyc files the controller compiled once per (lock's wheels,
Python major.minor), unpacked into a venv being built, after the install and before its
completion marker, so the venv's first import reads bytecode instead of compiling. Shipped beside
hostops.py (stdlib only, 3.9+).

The archive arrives as .orchestrator/bytecode/<sha256>.tar.gz.part and is renamed into place
only when it hashes right (`bytecode_missing`). What `unpack_bytecode` writes is bounded and
confined: regular files only, `<dir>/__pycache__/<module>.<tag>.pyc` relative to site-packages,
never absolute, never `..`, never through a link, and only beside a `<dir>/<module>.py` the
install put there. The files are checked-hash .pyc (PEP 552): the interpreter checks each
against its source's hash, so they are valid whatever the host's mtimes, and a source that
differs is simply recompiled.

Offers hostops_venvs.py `bytecode_missing`, `unpack_bytecode` and `MAX_FILES`, `MAX_BYTES`."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import time

import hostlayout
from contenthash import sha256_file
from hostops_fs import HASH_RE, OpError

#: Bounds on what one archive may write (TensorFlow's lock: ~9,000 files, 88 MB of .pyc).
MAX_FILES = 200000
MAX_BYTES = 2 * 1024 ** 3
PYC_RE = re.compile(r"^(?P<module>[^/\\]+?)\.[a-z]+-[0-9]+(?:\.opt-[12])?\.pyc$")


def _ref(args):
    """The archive the controller offers ({"sha256", "size"}), or None."""
    ref = args.get("bytecode")
    if ref is None:
        return None
    if (not isinstance(ref, dict) or not isinstance(ref.get("sha256"), str)
            or not HASH_RE.match(ref["sha256"])):
        raise OpError("bad-args", "bytecode must be {\"sha256\": <hex digest>, \"size\": n}")
    return ref


def bytecode_missing(root, args):
    """Whether a build must wait for the controller's archive: it wants to ship one
    ("want_bytecode") and it is not here yet. An uploaded .part that hashes right is renamed
    into place; one that does not is deleted (hash-mismatch naming both hashes)."""
    ref = _ref(args)
    if not args.get("want_bytecode"):
        return False
    if ref is None:
        return True
    final = hostlayout.bytecode_archive(root, ref["sha256"])
    if os.path.isfile(final):
        return False
    part = final + ".part"
    if not os.path.isfile(part):
        return True
    actual = sha256_file(part)
    if actual != ref["sha256"]:
        os.unlink(part)
        raise OpError("hash-mismatch", "bytecode archive arrived as sha256 {} , expected {}"
                      .format(actual, ref["sha256"]), expected=ref["sha256"], actual=actual)
    os.replace(part, final)
    return False


def _site_packages(venv):
    found = glob.glob(os.path.join(venv, "lib", "python*", "site-packages"))
    if len(found) != 1:
        raise OpError("install-failed", f"no single site-packages in {venv}: {found}")
    return os.path.realpath(found[0])


def _target(site, member, dirs):
    """Where a member goes, or why it may not: the one place the archive's names are judged.
    `dirs` remembers each checked directory's verdict (an archive has ~10 files a directory,
    and resolving links is most of the cost)."""
    name = member.name
    parts = name.split("/")
    if not member.isfile():
        return None, "not a regular file (a link, device or directory)"
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None, "absolute, empty or '..' path"
    match = PYC_RE.match(parts[-1])
    if len(parts) < 2 or parts[-2] != "__pycache__" or not match:
        return None, "not <dir>/__pycache__/<module>.<tag>.pyc"
    source_dir = os.path.join(site, *parts[:-2])
    cache_dir = os.path.join(source_dir, "__pycache__")
    if cache_dir not in dirs:
        dirs[cache_dir] = _check_dir(source_dir, cache_dir)
    if dirs[cache_dir] is not None:
        return None, dirs[cache_dir]
    source = os.path.join(source_dir, match.group("module") + ".py")
    if not os.path.isfile(source) or os.path.islink(source):
        return None, "no such .py in the venv"
    return os.path.join(cache_dir, parts[-1]), None


def _check_dir(source_dir, cache_dir):
    """None when .pyc may be written into cache_dir (made here), else why not."""
    if os.path.realpath(source_dir) != os.path.normpath(source_dir):
        return "its directory is a link in the venv, or not there"
    if os.path.islink(cache_dir):
        return "its __pycache__ is a link in the venv"
    if not os.path.isdir(source_dir):
        return "no such .py in the venv"
    with contextlib.suppress(FileExistsError):
        os.mkdir(cache_dir)
    return None


def unpack_bytecode(root, venv, args):
    """Write the archive's .pyc files into the venv's site-packages; what was written. Any bad
    member fails the whole install (the caller removes the half-built venv: never marked)."""
    ref = _ref(args)
    if ref is None or not args.get("want_bytecode"):
        return None
    archive = hostlayout.bytecode_archive(root, ref["sha256"])
    if not os.path.isfile(archive):  # a concurrent builder of the same lock used and removed it
        return {"shipped": False, "reason": "the archive was gone when the install finished"}
    import tarfile  # here: ~3 ms of every host agent's start otherwise, for a cold build's use

    start = time.monotonic()
    site = _site_packages(venv)
    files = total = 0
    dirs: dict[str, str | None] = {}  # a cache dir -> why it is refused (None: it is not)
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                dest, why = _target(site, member, dirs)
                if why is not None:
                    raise OpError("bad-bytecode",
                                  f"bytecode archive {ref['sha256']}: {member.name!r}: {why}")
                files, total = files + 1, total + member.size
                if files > MAX_FILES or total > MAX_BYTES:
                    raise OpError("bad-bytecode", f"bytecode archive {ref['sha256']} holds "
                                  f"more than {MAX_FILES} files or {MAX_BYTES} bytes")
                data = tar.extractfile(member)
                assert data is not None  # _target let only a regular file through
                _write(data.read(), dest)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise OpError("bad-bytecode",
                      f"bytecode archive {ref['sha256']} is unreadable: {exc}") from None
    finally:
        # Used once, by this build: the venv now holds its files (a second venv of the same
        # lock on this host is a reuse, or the controller ships it again).
        with contextlib.suppress(OSError):
            os.unlink(archive)
    return {"shipped": True, "files": files, "bytes": total, "sha256": ref["sha256"],
            "unpack_s": round(time.monotonic() - start, 3)}


def _write(data, dest):
    # Straight to its place: the venv is not marked complete yet, and a failed unpack removes
    # it whole. O_NOFOLLOW: never through a link; O_EXCL: no file of the install is replaced.
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
