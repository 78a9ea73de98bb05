"""One deployment per app per host: a lock directory on the host, held for a whole pipeline.

hostops' own flocks are held for one operation; a deployment spans many SSH commands, so its lock
must outlive any one remote process. `mkdir` is atomic on every POSIX filesystem: the lock is
`<deploy_root>/<app>/.deploy-lock/` with an `owner.json` naming the deployment. A second
deployment is refused with the owner's name and start time, never interleaved. The same
deployment re-acquiring (a resumed pipeline) is let in. A lock left by a dead controller is broken
only on purpose (`force=True`, e.g. `orchestrator deploy --break-lock`).
"""

from __future__ import annotations

import json
import time
from typing import Any

from orchestrator.errors import HostError
from orchestrator.hosts import layout
from orchestrator.hosts.transport import Transport

LOCK_DIR = layout.DEPLOY_LOCK

# Constant scripts: every value arrives as a positional argument, quoted by the transport.
_ACQUIRE = (
    'mkdir -p -- "$1" || exit 4; '
    'if mkdir -- "$2" 2>/dev/null; then printf "%s" "$3" > "$2/owner.json"; exit 0; fi; '
    'cat -- "$2/owner.json" 2>/dev/null; exit 3'
)
_RELEASE = 'grep -F -q -- "$2" "$1/owner.json" 2>/dev/null && rm -rf -- "$1"; exit 0'
_BREAK = 'rm -rf -- "$1"'


class DeployLocked(HostError):
    """Another deployment of the same app is in progress on this host."""

    def __init__(self, host: str, app: str, owner: dict[str, Any]) -> None:
        self.app, self.owner = app, owner
        who = owner.get("deployment") or "an unknown deployment"
        since = owner.get("started")
        when = (time.strftime(" since %Y-%m-%dT%H:%M:%SZ", time.gmtime(float(since)))
                if isinstance(since, int | float) else "")
        super().__init__(host, f"app {app} is being deployed by {who}{when} "
                               f"(lock {LOCK_DIR} on the host); refused")


def lock_path(deploy_root: str, app: str) -> str:
    return layout.deploy_lock(deploy_root, app)


def acquire(transport: Transport, deploy_root: str, app: str, deployment: str, *,
            force: bool = False, timeout: float = 30.0) -> dict[str, Any]:
    """Take the app's deploy lock on the host, or raise DeployLocked naming the holder."""
    app_dir, lock = layout.app_dir(deploy_root, app), lock_path(deploy_root, app)
    if force:
        transport.run(["sh", "-c", _BREAK, "sh", lock], timeout=timeout)
    owner = {"deployment": deployment, "started": time.time()}
    result = transport.run(["sh", "-c", _ACQUIRE, "sh", app_dir, lock, json.dumps(owner)],
                           timeout=timeout, check=False)
    if result.exit_code == 0:
        return {"lock": lock, "resumed": False}
    if result.exit_code != 3:
        raise HostError(transport.host, f"cannot create {app_dir}: {result.stderr.strip()}")
    holder = _owner(result.stdout)
    if holder.get("deployment") == deployment:
        return {"lock": lock, "resumed": True}  # our own lock: a resumed pipeline
    raise DeployLocked(transport.host, app, holder)


def release(transport: Transport, deploy_root: str, app: str, deployment: str, *,
            timeout: float = 30.0) -> None:
    """Drop the lock if (and only if) this deployment holds it."""
    transport.run(["sh", "-c", _RELEASE, "sh", lock_path(deploy_root, app),
                   json.dumps(deployment)], timeout=timeout, check=False)


def _owner(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
