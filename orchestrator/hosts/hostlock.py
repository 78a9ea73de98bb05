"""One deployment per app per host: a lock directory on the host, held for a whole pipeline.

hostops' own flocks are held for one operation; a deployment spans many SSH commands, so its lock
must outlive any one remote process. `mkdir` is atomic on every POSIX filesystem: the lock is
`<deploy_root>/<app>/.deploy-lock/` with an `owner.json` naming the deployment. A second
deployment is refused with the owner's name and start time, never interleaved. The same
deployment re-acquiring (a resumed pipeline) is let in. A lock left by a dead controller is broken
only on purpose (`force=True`, e.g. `orchestrator deploy --break-lock`).

The lock is taken and dropped by the host ops `deploy-lock` and `deploy-unlock`
(remote/hostops_host.py, built by `orchestrator.hosts.ops`); this module maps a refusal to
`DeployLocked` naming the holder.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

from orchestrator.errors import HostError
from orchestrator.hosts import layout, ops
from orchestrator.hosts.hostops import HostOps
from orchestrator.hosts.opresults import HostOpFailed, OpKind
from orchestrator.hosts.ops import OpCall
from orchestrator.hosts.transport import Transport

LOCK_DIR = layout.DEPLOY_LOCK


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
            force: bool = False, timeout: float = 30.0, token: int | None = None) -> dict[str, Any]:
    """Take the app's deploy lock on the host, or raise DeployLocked naming the holder.
    `token`: the daemon's lease fencing token; the host refuses it if a later one holds the
    deployment's lock (a daemon that lost the deployment to another)."""
    held, _ = acquire_then(transport, deploy_root, app, deployment, force=force,
                           timeout=timeout, token=token)
    return held


def acquire_then(transport: Transport, deploy_root: str, app: str, deployment: str, *,
                 then: Sequence[OpCall[Any]] = (), force: bool = False, timeout: float = 30.0,
                 token: int | None = None, max_output: int | None = None,
                 ) -> tuple[dict[str, Any], list[dict[str, Any]] | HostError]:
    """`acquire`, and in the same host call (one round trip over a far link) the ops `then`
    (the pipeline's probe), run only once the lock is held. Returns the lock's reply and
    `then`'s replies, or the error of the one that failed: the lock is held either way, and
    that error belongs to the step the ops were for."""
    owner: dict[str, Any] = {"deployment": deployment, "started": time.time()}
    if token is not None:
        owner["token"] = token
    host_ops = HostOps(transport, deploy_root)
    try:
        replies = host_ops.batch([ops.deploy_lock(app, owner, force=force), *then],
                                 timeout=timeout, max_output=max_output)
    except HostOpFailed as exc:
        if exc.op != str(ops.Op.DEPLOY_LOCK):
            return _held(transport, deploy_root, app, deployment, force, timeout, token), exc
        if exc.kind is not OpKind.BUSY:
            raise
        holder = exc.details.get("owner")
        raise DeployLocked(transport.host, app,
                           holder if isinstance(holder, dict) else {}) from None
    except HostError as exc:
        if not then:
            raise
        # Was the lock taken before the probe broke (a garbage or oversize reply)? Ask again:
        # the same deployment re-acquiring is let in.
        return _held(transport, deploy_root, app, deployment, force, timeout, token), exc
    held = ops.deploy_lock(app, owner).parse(replies[0])
    return {"lock": held.lock, "resumed": held.resumed}, replies[1:]


def _held(transport: Transport, deploy_root: str, app: str, deployment: str, force: bool,
          timeout: float, token: int | None) -> dict[str, Any]:
    return acquire(transport, deploy_root, app, deployment, force=force, timeout=timeout,
                   token=token)


def release(transport: Transport, deploy_root: str, app: str, deployment: str, *,
            timeout: float = 30.0) -> None:
    """Drop the lock if (and only if) this deployment holds it. A refused op is not an error
    (a lock that stays behind names its owner and is broken on purpose, `force`); an
    unreachable host still is."""
    with contextlib.suppress(HostOpFailed):
        HostOps(transport, deploy_root).run(ops.deploy_unlock(app, deployment), timeout=timeout)
