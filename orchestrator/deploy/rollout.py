"""Fleet rollout (DESIGN.md "Fleet rollout"): what every deployment of a spec does, whoever
starts it (the daemon's runner, `orchestrator deploy`).

    out = rollout(inputs, hosts, pool=pool, sink=sink)   # canary, batches, failure budget
    verdict(out)                                         # state, reason, per-host outcome

`rollout.canary` hosts first, alone, then batches of `rollout.batch_size`, each batch through
`orchestrator.deploy.batch.deploy` (at most `max_parallel` SSH sessions). More than
`rollout.max_failed_hosts` failed hosts stop the rollout; with `rollout.on_failure: rollback`
(the default) the hosts this deployment already switched are switched back.

`verdict` is the one judgement of a finished rollout: the daemon stores it as the deployment's
outcome (orchestrator/daemon/runners/deploy.py, the daemon's `DeployRunner`) and the CLI turns
it into its exit code, so the same spec ends the same way under both. This module knows no
daemon: the layers go daemon -> deploy -> hosts -> core.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator.core.facts import HostFacts
from orchestrator.core.inventory import Host
from orchestrator.core.preflight import Status, preflight
from orchestrator.core.states import DeploymentState, HostStepState
from orchestrator.deploy.batch import DeployResult, deploy, parallel_of, untouched
from orchestrator.deploy.control import control_of
from orchestrator.deploy.environments.registry import environment_for
from orchestrator.deploy.inputs import DeployInputs
from orchestrator.deploy.pipeline import EventSink, HostResult, HostStatus, StepReporter
from orchestrator.deploy.playbook import Playbook
from orchestrator.deploy.steps.recovery import Settled, undo_host
from orchestrator.errors import EXIT_DEPLOY_FAILED, EXIT_OK, HostError
from orchestrator.hosts import agent
from orchestrator.hosts.pool import Pool
from orchestrator.hosts.probe import probe_host
from orchestrator.hosts.transport import Transport

#: Told each target's preflight probe: its facts, or why it could not be probed.
OnProbe = Callable[[Host, HostFacts | HostError], None]


def plan_batches(hosts: Sequence[Host], canary: int, batch_size: int) -> list[list[Host]]:
    """The canary hosts alone first, then batches of `batch_size`. Pure."""
    hosts = list(hosts)
    batches = [hosts[:canary]] if canary > 0 and hosts else []
    rest = hosts[canary:] if canary > 0 else hosts
    batches += [rest[i:i + batch_size] for i in range(0, len(rest), max(1, batch_size))]
    return batches


class Stop(enum.StrEnum):
    """A request that stopped a rollout early (`RolloutResult.stopped`); any other early stop is
    a reason, the text of an exceeded failure budget. Its value is the word users see."""

    CANCELLED = "cancelled"  # a user's cancel, the daemon stopping, Ctrl-C: nothing is undone
    ABORTED = "aborted"      # a user's abort: switched hosts go back as `on_failure` says


@dataclass(frozen=True)
class Undone:
    """What the rollout's undo did on one host: put it back on its previous good release
    (`error` is None), or why it could not. Callers ask `rolled_back`; `value` is the word users
    see (a deployment's result `hosts`, `orchestrator deploy`'s host line), as it always was:
    "rolled_back", or "rollback failed: <why>"."""

    error: str | None = None

    @property
    def rolled_back(self) -> bool:
        return self.error is None

    @property
    def value(self) -> str:
        if self.error is None:
            return Settled.ROLLED_BACK.value
        return f"rollback failed: {self.error}"


@dataclass
class RolloutResult:
    deploy: DeployResult
    stopped: Stop | str | None = None  # stopped early: by a request, or for a reason (text)
    undone: dict[str, Undone] = field(default_factory=dict)  # the hosts the rollout put back
    accepted: int = 0  # failures an operator accepted by resuming a rollout they held

    @property
    def failed(self) -> list[str]:
        return sorted(n for n, r in self.deploy.hosts.items() if not r.ok)


def rollout(inputs: DeployInputs, hosts: Sequence[Host], *, pool: Pool, sink: EventSink,
            max_parallel: int | None = None, cancel: threading.Event | None = None,
            playbook: Playbook | None = None, excluded: Mapping[str, str] | None = None,
            break_lock: bool = False, on_probe: OnProbe | None = None,
            done: Mapping[str, HostResult] | None = None) -> RolloutResult:
    """Preflight of every target first (nothing changes on a host that fails it), then the
    batches in order. More than `max_failed_hosts` failures stop the rollout: with
    `on_failure: rollback` the hosts this deployment already switched are switched back; with
    `pause` they are left and the rollout waits for `resume` (go on) or `abort` (stop there).
    Given a `RolloutControl` as `cancel`, a pause request holds the rollout before its next
    batch, and `abort` stops it and undoes as `on_failure` says. `excluded` ({host: reason}:
    degraded or failed at their last re-verification, orchestrator/core/findings.py) are
    reported as failed, counted against the budget like a preflight failure, and never
    touched. `break_lock` takes each host's deploy lock even if a dead deployment holds it.
    `on_probe(host, facts or the error)` sees each target's preflight probe (the daemon records
    it as the host's latest facts). `done` ({host: result}): hosts a resumed deployment
    already finished before a restart (serving this release, reconciled); not deployed
    again, but undone with the others. With `environment.wheel_peers` the hosts' wheel
    servers (orchestrator/deploy/peers.py) are stopped when it ends, however it ends."""
    agents = agent.Kept()  # the gate's probe starts each host's agent; its pipeline goes on
    try:
        return _rollout(inputs, hosts, pool=pool, sink=sink, max_parallel=max_parallel,
                        cancel=cancel, playbook=playbook, excluded=excluded,
                        break_lock=break_lock, on_probe=on_probe, done=done, agents=agents)
    finally:
        agents.close()
        if inputs.peers is not None:
            inputs.peers.close()


def _rollout(inputs: DeployInputs, hosts: Sequence[Host], *, pool: Pool, sink: EventSink,
             max_parallel: int | None, cancel: threading.Event | None,
             playbook: Playbook | None, excluded: Mapping[str, str] | None,
             break_lock: bool, on_probe: OnProbe | None,
             done: Mapping[str, HostResult] | None, agents: agent.Kept) -> RolloutResult:
    ro = inputs.spec.rollout
    total = DeployResult(inputs.deployment, inputs.release_id)
    out = RolloutResult(total)
    control = control_of(cancel)
    parallel = parallel_of(inputs, max_parallel)
    total.hosts.update(done or {})
    total.hosts.update(exclude(excluded or {}, sink))
    ready, refused = preflight_fleet(inputs, [h for h in hosts if h.name not in total.hosts],
                                     pool=pool, sink=sink, max_parallel=parallel,
                                     on_probe=on_probe, agents=agents)
    total.hosts.update(refused)
    budget = int(ro.max_failed_hosts)
    batches = plan_batches(ready, int(ro.canary), int(ro.batch_size))
    if len(out.failed) > budget:
        out.stopped = _over_budget(out, budget, "before any host changed")
        sink.emit("rollout", status="stopped", level="error", reason=out.stopped)
        batches = []
    for i, batch in enumerate(batches):
        if i > 0 and float(ro.pause_s) > 0:  # rollout.pause_s; a cancel or abort cuts it short
            sink.emit("batch", status="waiting", batch=i, pause_s=float(ro.pause_s))
            (cancel or threading.Event()).wait(float(ro.pause_s))
        if control is not None:
            control.hold(f"paused by request before batch {i}")
        if cancel is not None and cancel.is_set():
            out.stopped = Stop.ABORTED if control is not None and control.aborted \
                else Stop.CANCELLED
            break
        sink.emit("batch", status="started", batch=i, hosts=[h.name for h in batch])
        part = deploy(inputs, batch, pool=pool, sink=sink, max_parallel=max_parallel,
                      playbook=playbook, cancel=cancel, break_lock=break_lock)
        total.hosts.update(part.hosts)
        if cancel is not None and cancel.is_set():
            # Hosts that stopped for it are not failures to weigh against the budget: the
            # request decides what happens to the switched ones (abort: on_failure; cancel: none).
            out.stopped = Stop.ABORTED if control is not None and control.aborted \
                else Stop.CANCELLED
            break
        if len(out.failed) <= budget:
            continue
        reason = _over_budget(out, budget)
        if ro.on_failure == "pause" and control is not None:
            sink.emit("rollout", status="paused", level="error", reason=reason,
                      hint="switched hosts are left as they are: `orchestrator resume ID` "
                           "goes on, `orchestrator abort ID` stops here")
            if control.hold(reason, force=True):
                budget = out.accepted = len(out.failed)  # the operator accepted these
                continue
            out.stopped = f"aborted after: {reason}"
            break
        out.stopped = reason
        sink.emit("rollout", status="stopped", level="error", reason=out.stopped)
        break
    if _must_undo(out, ro.on_failure):
        switched = [h for h in hosts if h.name in total.hosts and total.hosts[h.name].ok]
        # An abort is a person's decision, not a verdict on the release: it is put back but
        # not marked bad (a later deployment of it is not refused), only dropped from the
        # rollback targets, since it never finished its rollout.
        aborted = out.stopped is Stop.ABORTED
        out.undone = undo(inputs, switched, pool=pool, sink=sink, max_parallel=max_parallel,
                          mark_bad=not aborted, forget=aborted)
    return out


def _over_budget(out: RolloutResult, budget: int, when: str = "") -> str:
    return (f"{len(out.failed)} failed hosts ({', '.join(out.failed)}), more than "
            f"rollout.max_failed_hosts={budget}" + (f", {when}" if when else ""))


def _must_undo(out: RolloutResult, on_failure: str) -> bool:
    """Switched hosts go back when the rollout stopped over budget or was aborted, and the
    spec says `on_failure: rollback`. A plain cancel leaves them (it stops, it does not undo)."""
    return (out.stopped is not None and out.stopped is not Stop.CANCELLED
            and on_failure == "rollback")


def preflight_fleet(inputs: DeployInputs, hosts: Sequence[Host], *, pool: Pool,
                    sink: EventSink, max_parallel: int, on_probe: OnProbe | None = None,
                    agents: agent.Kept | None = None
                    ) -> tuple[list[Host], dict[str, HostResult]]:
    """Probe and preflight every target before any host changes. Returns the hosts that pass,
    and a failed `HostResult` for each that does not (unreachable within the probe's deadline,
    or refused by the preflight): those are reported, counted against the failure budget by
    the caller, and never touched. Each host's pipeline probes again before it stages (facts
    can change while earlier batches run), so this is a gate, not a cache. With `agents`, each
    host is probed through the agent it opens there, which that host's pipeline goes on with.
    The container engines are asked only for a kind that runs with one."""
    sink.emit("rollout.preflight", status="started", hosts=[h.name for h in hosts])

    def check(transport: Transport, host: Host) -> list[str]:
        if agents is not None:
            agents.open(transport, host.deploy_root)
        try:
            facts = probe_host(transport, host,
                               engines=environment_for(inputs.spec).needs_engines)
        except HostError as exc:
            if on_probe is not None:
                on_probe(host, exc)
            raise
        if on_probe is not None:
            on_probe(host, facts)
        verdict = preflight(inputs.spec, inputs.lock, facts, inputs.compat)
        return [c.message for c in verdict.checks if c.status is Status.FAIL]

    t0 = time.monotonic()
    found = pool.map_hosts(check, list(hosts), max_parallel)
    refused: dict[str, HostResult] = {}
    for host in hosts:
        problems = found[host.name]
        if isinstance(problems, list) and not problems:
            continue
        step, kind = ("preflight", "preflight failed: ") if isinstance(problems, list) else (
            "probe", "unreachable or probe failed: ")
        error = kind + ("; ".join(problems) if isinstance(problems, list) else str(problems))
        # A step row of the host's (in the daemon), checked like the pipeline's own steps.
        StepReporter(sink, host.name).change(step, HostStepState.FAILED, level="error",
                                             reason=error,
                                             extra={"error": error, "phase": "rollout.preflight"})
        refused[host.name] = untouched(host.name, sink, reason=error, failed_step=step)
    ready = [h for h in hosts if h.name not in refused]
    sink.emit("rollout.preflight", status="finished", level="error" if refused else "info",
              duration_ms=(time.monotonic() - t0) * 1000, passed=[h.name for h in ready],
              failed={n: r.reason for n, r in refused.items()})
    return ready, refused


def exclude(excluded: Mapping[str, str], sink: EventSink) -> dict[str, HostResult]:
    """A failed, untouched `HostResult` for each host kept out of the rollout."""
    return {name: untouched(name, sink, reason=f"excluded from the rollout: {reason}",
                            failed_step="reverify", detail_status="skipped")
            for name, reason in excluded.items()}


def undo(inputs: DeployInputs, hosts: Sequence[Host], *, pool: Pool, sink: EventSink,
         max_parallel: int | None = None, mark_bad: bool = True, forget: bool = False,
         to: str = "previous") -> dict[str, Undone]:
    """`undo_host` on each host through the pool; {host: rolled back, or why not}."""
    results = pool.map_hosts(
        lambda t, h: undo_host(t, h, inputs, sink, mark_bad=mark_bad, forget=forget, to=to),
        list(hosts), parallel_of(inputs, max_parallel))
    return {n: Undone() if isinstance(r, Settled) else Undone(str(r))
            for n, r in results.items()}


@dataclass(frozen=True)
class Verdict:
    """How a rollout ended, as the daemon records it and the CLI reports it."""

    state: DeploymentState  # succeeded, failed, rolled_back or cancelled
    reason: str | None
    hosts: dict[str, str]  # host -> its HostStatus value, or its `Undone.value` if put back

    @property
    def exit_code(self) -> int:
        """DESIGN.md "CLI": 0 when the deployment succeeded, else 3 (as `submit --wait`)."""
        return EXIT_OK if self.state is DeploymentState.SUCCEEDED else EXIT_DEPLOY_FAILED


def verdict(out: RolloutResult) -> Verdict:
    """The state of a finished rollout, and a reason naming the failed hosts (why each failed)
    and the hosts put back on their previous release (and why). Pure."""
    D = DeploymentState
    hosts = {n: r.status.value for n, r in out.deploy.hosts.items()}
    hosts.update({n: u.value for n, u in out.undone.items()})
    failed = out.failed
    reasons = "; ".join(f"{n}: {out.deploy.hosts[n].reason} ({out.deploy.hosts[n].error})"
                        for n in failed)
    undone = sorted(n for n, u in out.undone.items() if u.rolled_back)
    back = (f"; rolled back to their previous release because the rollout "
            f"{'was aborted' if out.stopped is Stop.ABORTED else 'stopped'}: {', '.join(undone)}"
            if undone else "")
    left = sorted(n for n, r in out.deploy.hosts.items() if r.ok and n not in out.undone)
    # A switched host the undo could not put back still serves the new release: named, with
    # why (e.g. the app's first release there has nothing before it to go back to).
    stuck = "; ".join(f"{n} ({u.error})" for n, u in sorted(out.undone.items())
                      if not u.rolled_back)
    stuck = f"; not put back, still on the new release: {stuck}" if stuck else ""
    if out.stopped is Stop.CANCELLED:
        return Verdict(D.CANCELLED, "cancelled by request", hosts)
    if out.stopped is Stop.ABORTED:
        note = (f"; left on the new release (rollout.on_failure: pause): {', '.join(left)}"
                if left else "")
        return Verdict(D.ROLLED_BACK if undone else D.CANCELLED,
                       f"aborted by request{back}{stuck}{note}", hosts)
    if not failed:
        return Verdict(D.SUCCEEDED, None, hosts)
    if out.stopped is None:  # within the failure budget (or accepted by resume): it went on
        how = "accepted by resuming the rollout" if out.accepted else "within the failure budget"
        return Verdict(D.SUCCEEDED, f"{len(failed)} host(s) failed {how}: {reasons}", hosts)
    # Rolled back only when no host is left serving the new release (`on_failure: pause`
    # leaves them: then the deployment failed, and the reason names them).
    note = f"; left on the new release: {', '.join(left)}" if left else ""
    rolled = undone or any(out.deploy.hosts[n].status is HostStatus.ROLLED_BACK for n in failed)
    return Verdict(D.ROLLED_BACK if rolled and not left else D.FAILED,
                   f"{out.stopped}: {reasons}{back}{stuck}{note}", hosts)


__all__ = ["RolloutResult", "Stop", "Undone", "Verdict", "exclude", "plan_batches",
           "preflight_fleet", "rollout", "undo", "verdict"]
