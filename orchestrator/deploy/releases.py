"""An app's releases across its hosts, for `orchestrator releases` (in-process or through the
daemon) and the daemon's rollback: what each host holds, clearing a release's `bad` mark, and
where a manual rollback would take each host, asked before anything changes.

Everything here reads or writes through the host contract (orchestrator/hosts/hostops.py), one
SSH session per host from the caller's pool; an unreachable host is a `HostError` in the result,
never an exception that hides the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.core.inventory import Host
from orchestrator.deploy.steps.recovery import release_of
from orchestrator.errors import HostError
from orchestrator.hosts.hostops import HostOps, ReleaseInfo
from orchestrator.hosts.pool import Pool
from orchestrator.hosts.transport import Transport

#: Hosts read or changed at once by these commands: small ops, cheap to run side by side.
PARALLEL = 16


def app_releases(pool: Pool, hosts: Sequence[Host], app: str,
                 parallel: int = PARALLEL) -> dict[str, list[ReleaseInfo] | HostError]:
    """{host: its releases of `app` (state, manifest summary), or why it could not be read}."""

    def one(transport: Transport, host: Host) -> list[ReleaseInfo]:
        return HostOps(transport, host.deploy_root).releases(app)

    return pool.map_hosts(one, list(hosts), parallel)


def unmark_bad(pool: Pool, hosts: Sequence[Host], app: str, release_id: str,
               parallel: int = PARALLEL) -> dict[str, bool | HostError]:
    """Clear `release_id`'s bad mark on every host: {host: whether it was marked, or why the
    host could not be reached}. A host without the app is left without it."""

    def one(transport: Transport, host: Host) -> bool:
        return HostOps(transport, host.deploy_root).unmark_bad(app, release_id)

    return pool.map_hosts(one, list(hosts), parallel)


@dataclass(frozen=True)
class RollbackPlan:
    """Where a manual rollback of a deployment would take its hosts, read from each host:
    `moves` {host: (from, to)} for the hosts that serve the deployment's release, and
    `problems`, one line per host that cannot go back (no previous good release, a chosen
    release missing, bad or already current, unreachable). Only a plan without problems and
    with moves may run."""

    moves: dict[str, tuple[str, str]]
    problems: list[str]


def plan_rollback(pool: Pool, hosts: Sequence[Host], app: str, deployment: str,
                  to: str | None, parallel: int = PARALLEL) -> RollbackPlan:
    """Read every host (nothing changes): its release of `deployment`, `current`, and where a
    rollback (to the previous good release, or to `to`) would take it."""

    def one(transport: Transport, host: Host) -> tuple[str, str] | str | None:
        ops = HostOps(transport, host.deploy_root)
        rid = release_of(ops, app, deployment)
        state = ops.state(app)
        if rid is None or state.current != rid:
            return None  # nothing of this deployment serves there: the rollback leaves it
        if to is None:
            if state.previous_good is None:
                return (f"{rid} is the first release of {app} that served there: no previous "
                        "good release to roll back to")
            return rid, state.previous_good
        if to == rid:
            return f"{to} is already current"
        if to in state.bad:
            return (f"{to} is marked bad (clear it with `orchestrator releases unmark-bad "
                    f"{app} {to}`)")
        if to not in state.committed:
            return f"{to} is not a release of {app} there"
        return rid, to

    found = pool.map_hosts(one, list(hosts), parallel)
    moves = {n: r for n, r in found.items() if isinstance(r, tuple)}
    problems = [f"{n}: {r.reason if isinstance(r, HostError) else r}"
                for n, r in found.items() if isinstance(r, str | HostError)]
    if not moves and not problems:
        problems = [f"no host serves the release of {deployment} any more: nothing to roll back"]
    return RollbackPlan(moves, problems)


def release_row(info: ReleaseInfo) -> dict[str, Any]:
    """One release as `releases --json` and the daemon's API show it."""
    manifest: Mapping[str, Any] = info.manifest
    facts, gpus = manifest.get("facts"), manifest.get("gpus")
    return {"release_id": info.release_id, "state": info.state, "created": info.created,
            "env_hash": info.env_hash, "model_sha256": manifest.get("model_sha256"),
            "lock_sha256": manifest.get("lock_sha256"), "deployment": manifest.get("deployment"),
            "golden_sha256": manifest.get("golden_sha256"),
            "spec_digest": manifest.get("spec_digest"),
            # The host's facts at deploy, in brief, and the GPUs placement gave the release
            # (hostops_releases `_manifest_summary`): passed on as the host wrote them.
            "facts": dict(facts) if isinstance(facts, Mapping) else None,
            "gpus": [str(g) for g in gpus] if isinstance(gpus, list) else None}


def releases_json(found: Mapping[str, list[ReleaseInfo] | HostError]) -> dict[str, Any]:
    """{host: {"releases": [row, ...]} or {"error": why, "exit_code": n}}: the one shape of
    both modes (the code tells an unreachable host from a refused answer, errors.py)."""
    return {name: ({"error": r.reason, "exit_code": r.exit_code} if isinstance(r, HostError)
                   else {"releases": [release_row(i) for i in r]}) for name, r in found.items()}


def serving_identical(pool: Pool, hosts: Sequence[Host], app: str, digests: Mapping[str, str],
                      parallel: int = PARALLEL) -> dict[str, str | None]:
    """{host: the current release if it was made from exactly these inputs (its manifest's
    `spec_digest`, `model_sha256`, `lock_sha256`, written once `verify` passed), else None}.
    An unreachable host is None: it cannot be said to serve it."""

    def one(transport: Transport, host: Host) -> str | None:
        for info in HostOps(transport, host.deploy_root).releases(app):
            if info.state == "current" and all(
                    info.manifest.get(k) == v for k, v in digests.items()):
                return info.release_id
        return None

    found = pool.map_hosts(one, list(hosts), parallel)
    return {n: None if isinstance(r, HostError) else r for n, r in found.items()}
