"""hostops' ground floor: its error, argument checks, atomic writes, flocks, the model tree hash
and the rename-aside delete. Shipped beside hostops.py (stdlib only, Python 3.9+); every other
hostops_* module builds on these.

Offers the others: OpError; the argument checks checked_arg, root_arg, app_dir_arg and the
patterns RELEASE_RE, HASH_RE, ENV_RE; orch_path (under .orchestrator/); write_atomic,
write_json, read_json, replace_symlink, fsync_dir; tree_hash (contenthash's, failing as an
OpError); Flock, app_lock (APP_LOCK_WAIT_S); rmtree_atomic, clean_trash. NAME_RE and sha256_file
come from contenthash (shared with the controller)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import time

import hostlayout
from contenthash import NAME_RE, HashError
from contenthash import tree_hash as _tree_hash

# hashlib, shutil and tempfile are imported where they are used (see hostops.py: start-up time).

RELEASE_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
ENV_RE = re.compile(r"^[0-9a-f]{16,64}$")
APP_LOCK_WAIT_S = 60.0


class OpError(Exception):
    """An expected failure: becomes {"ok": false, "error", "kind", **extra}."""

    def __init__(self, kind, message, **extra):
        super().__init__(message)
        self.kind, self.extra = kind, extra


# ---------------------------------------------------------------- small helpers


def checked_arg(args, key, pattern=None, default=None, required=True):
    """args[key] (or default): present unless not required, matching pattern when given;
    else OpError("bad-args")."""
    value = args.get(key, default)
    if value is None and required:
        raise OpError("bad-args", f"missing argument: {key}")
    if value is not None and pattern is not None and not (
        isinstance(value, str) and pattern.match(value)
    ):
        raise OpError("bad-args", f"invalid {key}: {value!r}")
    return value


def root_arg(args):
    root = checked_arg(args, "root")
    if not isinstance(root, str) or not os.path.isabs(root):
        raise OpError("bad-args", f"root must be an absolute path: {root!r}")
    return os.path.normpath(root)


def app_dir_arg(args):
    return os.path.join(root_arg(args), checked_arg(args, "app", NAME_RE))


def orch_path(root, *parts):
    return hostlayout.orch_path(root, *parts)


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path, data):
    """tmp + fsync + rename + fsync(dir): a reader sees the old file or the new one, whole."""
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".tmp-{os.urandom(8).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o644)  # mkstemp's 0600 would hide state from the service
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def replace_symlink(directory, name, target):
    """A new symlink renamed over the old: `name` always resolves, to the old or the new."""
    tmp = os.path.join(directory, f"{name}.tmp-{os.urandom(6).hex()}")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(directory)


def write_json(path, obj):
    write_atomic(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_json(path, default):
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read().decode())
    except FileNotFoundError:
        return default


def tree_hash(directory):
    """The model tree hash (contenthash: the one definition, shared with the controller); what
    has no defined hash is refused as bad-model, not skipped."""
    try:
        return _tree_hash(directory)
    except HashError as exc:
        raise OpError("bad-model", f"{exc.message}: {exc.rel or directory}") from None


class Flock:
    """An fcntl lock on a file (exclusive unless shared), waited for up to wait_s (None:
    forever, 0: try once)."""

    def __init__(self, path, wait_s, shared=False):
        self.path, self.wait_s, self.fd, self.waited_s = path, wait_s, None, 0.0
        self.mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(self.fd, self.mode | fcntl.LOCK_NB)
                self.waited_s = time.monotonic() - start
                return self
            except BlockingIOError:
                if self.wait_s is not None and time.monotonic() - start >= self.wait_s:
                    os.close(self.fd)
                    raise OpError("busy", f"{self.path} is held by another operation") from None
                time.sleep(0.05)

    def __exit__(self, *exc):
        assert self.fd is not None  # set by __enter__
        os.close(self.fd)  # closing releases the lock
        return False


def app_lock(app_dir):
    os.makedirs(app_dir, exist_ok=True)
    return Flock(hostlayout.app_lock_file(app_dir), APP_LOCK_WAIT_S)


def rmtree_atomic(path):
    """Rename aside first, so a crash mid-delete leaves a .trash- dir, never a half release."""
    if not os.path.lexists(path):
        return
    import shutil
    import tempfile

    parent = os.path.dirname(path)
    trash = tempfile.mkdtemp(prefix=".trash-", dir=parent)
    os.rename(path, os.path.join(trash, "x"))
    fsync_dir(parent)
    shutil.rmtree(trash, ignore_errors=True)


def clean_trash(directory):
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        if name.startswith(".trash-"):
            import shutil

            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
