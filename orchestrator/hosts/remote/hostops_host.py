"""hostops' ops beside the releases: free disk space, whether a file exists, the deploy lock,
the audit of the current release, and killing a runner's process group. Shipped beside
hostops.py (stdlib only, 3.9+).

These were shell one-liners and scripts built on the controller; as ops they are spelled once
(here) with one typed builder each (orchestrator/hosts/ops.py), and run like every other op.
"""

from __future__ import annotations

import contextlib
import json
import os

from hostlayout import deploy_lock, deploy_lock_owner
from hostops_fs import OpError, app_dir_arg, checked_arg, root_arg


def op_free_bytes(args):
    """Bytes free to an unprivileged user on the filesystem of "path" (default: root): what
    tells a failed upload on a full disk from any other."""
    path = checked_arg(args, "path", required=False) or root_arg(args)
    if not isinstance(path, str) or not os.path.isabs(path):
        raise OpError("bad-args", f"path must be an absolute path: {path!r}")
    st = os.statvfs(path)
    return {"free_bytes": st.f_bavail * st.f_frsize}


def op_file_exists(args):
    """Whether a regular file is at "path" (a content-addressed upload need not be repeated)."""
    path = checked_arg(args, "path")
    if not isinstance(path, str) or not os.path.isabs(path):
        raise OpError("bad-args", f"path must be an absolute path: {path!r}")
    return {"exists": os.path.isfile(path)}


def op_deploy_lock(args):
    """Take the app's deploy lock: `mkdir` is atomic on every POSIX filesystem, and the lock
    outlives any one process (a deployment spans many SSH commands). The same deployment again
    is let in (resumed); another one is refused (busy) with the holder's owner.json. "force"
    breaks a lock left by a dead controller first. An owner with a "token" (the daemon's lease
    fencing token, issue 16) is let into its deployment's lock only if no later holder's token
    is recorded there, and records its own: a daemon that lost the deployment to another is
    refused (busy), whatever it still believes."""
    app_dir = app_dir_arg(args)
    owner = checked_arg(args, "owner")
    if not isinstance(owner, dict) or not isinstance(owner.get("deployment"), str):
        raise OpError("bad-args", f"owner must be an object with a deployment: {owner!r}")
    lock = deploy_lock(app_dir)
    if args.get("force"):
        _remove(lock)
    os.makedirs(app_dir, exist_ok=True)
    try:
        os.mkdir(lock)
    except FileExistsError:
        holder = _owner(app_dir)
        if holder.get("deployment") != owner["deployment"]:
            raise OpError("busy", f"the deploy lock {lock} is held", owner=holder) from None
        mine, theirs = owner.get("token"), holder.get("token")
        if isinstance(mine, int) and isinstance(theirs, int) and mine < theirs:
            raise OpError("busy", f"the deploy lock {lock} is held under a later token "
                                  f"({theirs} > {mine}): fenced", owner=holder) from None
        if isinstance(mine, int):
            _write_owner(app_dir, owner)
        return {"lock": lock, "resumed": True}
    _write_owner(app_dir, owner)
    return {"lock": lock, "resumed": False}


#: The ops that change an app's releases. Called with a "fence" ({deployment, token}: the
#: daemon's lease on the deployment), each first checks that the app's deploy lock is still
#: that deployment's under no later token: a daemon that lost its lease while an op was on its
#: way is refused here, at every op, not only when it took the lock.
FENCED_OPS = frozenset({
    "stage-begin", "stage-verify-model", "stage-commit", "write-file", "write-manifest",
    "abort-stage", "venv-ensure", "image-ensure", "switch", "rollback", "mark-bad",
    "unmark-bad", "prune",
})


def check_fence(op, args):
    """Refuse (kind "fenced") a fenced op whose caller no longer holds the app's deploy lock."""
    fence = args.get("fence")
    if fence is None or op not in FENCED_OPS or "app" not in args:
        return  # not under a daemon's lease (a CLI deploy), or not about one app
    if not (isinstance(fence, dict) and isinstance(fence.get("deployment"), str)
            and isinstance(fence.get("token"), int) and not isinstance(fence["token"], bool)):
        raise OpError("bad-args", f"fence must be {{deployment, token}}: {fence!r}")
    holder = _owner(app_dir_arg(args))
    theirs = holder.get("token")
    if holder.get("deployment") != fence["deployment"]:
        raise OpError("fenced", f"{op}: the app's deploy lock is not held by "
                                f"{fence['deployment']}: fenced", owner=holder)
    if isinstance(theirs, int) and theirs > fence["token"]:
        raise OpError("fenced", f"{op}: the deploy lock is held under a later token "
                                f"({theirs} > {fence['token']}): fenced", owner=holder)


def op_deploy_unlock(args):
    """Drop the app's deploy lock if (and only if) this deployment holds it."""
    app_dir = app_dir_arg(args)
    deployment = checked_arg(args, "deployment")
    if _owner(app_dir).get("deployment") != deployment:
        return {"released": False}
    _remove(deploy_lock(app_dir))
    return {"released": True}


def op_audit(args):
    """audit.py's report of the app's current release (shipped beside this file)."""
    import audit

    try:
        return audit.audit(args)
    except audit.AuditError as exc:
        raise OpError(exc.kind, str(exc)) from None


def op_kill_group(args):
    """SIGKILL the process group led by the pid in "pid_file" (a runner cut off at its deadline
    leaves its model's processes behind), then remove it and the "remove" files. Best effort:
    a group already gone is not an error."""
    import signal

    pid_file = checked_arg(args, "pid_file")
    remove = checked_arg(args, "remove", default=[])
    paths = [pid_file, *remove] if isinstance(remove, list) else None
    if paths is None or not all(isinstance(p, str) and os.path.isabs(p) for p in paths):
        raise OpError("bad-args", "pid_file and remove must be absolute paths")
    killed = False
    try:
        with open(pid_file) as fh:
            pgid = int(fh.read().strip())
        if pgid > 1:
            os.killpg(pgid, signal.SIGKILL)
            killed = True
    except (OSError, ValueError):
        pass
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return {"killed": killed}


def _write_owner(app_dir, owner):
    # Whole or not at all: a reader never sees half a token.
    path = deploy_lock_owner(app_dir)
    with open(path + ".tmp", "w") as fh:
        fh.write(json.dumps(owner))
    os.replace(path + ".tmp", path)


def _owner(app_dir):
    try:
        with open(deploy_lock_owner(app_dir)) as fh:
            data = json.loads(fh.read())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remove(lock):
    import shutil

    shutil.rmtree(lock, ignore_errors=True)


#: The ops this module offers, by wire name: hostops.py gathers every hostops_* module's.
OPS = {"free-bytes": op_free_bytes, "file-exists": op_file_exists, "deploy-lock": op_deploy_lock,
       "deploy-unlock": op_deploy_unlock, "audit": op_audit, "kill-group": op_kill_group}
