"""`orchestrator plan`: what a rollout would find and do on each target, changing nothing.

The core here is pure: `build_plan(spec, lock, hosts, probed, data)` takes the facts the probe
gathered (or the `HostError` that kept it from a host) and returns a `Plan`: per host every
preflight check with its verdict and the steps a rollout would take there. Rendering as text
or JSON is pure too; `orchestrator/cli/commands/plan.py` does the I/O (load, probe, print).

Exit codes (orchestrator/errors.py): 0 when every target passes (warnings allowed), 3 when any
fails, else 4 when any was unreachable, 2 for invalid input (raised before any host is touched).

`--json` prints `Plan.to_dict()`:
    {"app", "spec", "lock", "ok": bool, "exit_code": 0 | 3 | 4,
     "hosts": [{"host", "address", "status": "pass" | "warn" | "fail",
                "error": null | "unreachable: ..." | "host key rejected: ..." | "probe failed: ...",
                "checks": [{"name", "status", "message"}], "steps": [str]}]}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.core.compat import CompatData
from orchestrator.core.facts import HostFacts
from orchestrator.core.inventory import Host
from orchestrator.core.preflight import (
    HostVerdict,
    LockLike,
    Status,
    find_framework,
    locked_versions,
    preflight,
)
from orchestrator.core.spec import Spec
from orchestrator.deploy.playbook import Playbook
from orchestrator.deploy.steps import preflight as preflight_step
from orchestrator.deploy.steps import registry
from orchestrator.deploy.steps.context import Target
from orchestrator.deploy.steps.registry import STEP_ORDER
from orchestrator.errors import (
    EXIT_DEPLOY_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    HostError,
    HostKeyRejected,
    HostUnreachable,
    worst,
)

UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class HostPlan:
    host: str
    address: str
    verdict: HostVerdict | None  # None: the host could not be probed
    error: str | None  # why it could not be probed
    steps: tuple[str, ...]
    unreachable: bool = False  # the probe could not connect (exit 4 rather than 3)

    @property
    def status(self) -> Status:
        return Status.FAIL if self.verdict is None else self.verdict.status

    @property
    def exit_code(self) -> int:
        if self.status is not Status.FAIL:
            return EXIT_OK
        return EXIT_UNREACHABLE if self.unreachable else EXIT_DEPLOY_FAILED

    def to_dict(self) -> dict[str, Any]:
        checks = [] if self.verdict is None else self.verdict.to_dict()["checks"]
        return {"host": self.host, "address": self.address, "status": str(self.status),
                "error": self.error, "checks": checks, "steps": list(self.steps)}


@dataclass(frozen=True)
class Plan:
    app: str
    spec_file: str
    lock_summary: str
    hosts: tuple[HostPlan, ...]

    @property
    def ok(self) -> bool:
        return all(h.status is not Status.FAIL for h in self.hosts)

    @property
    def exit_code(self) -> int:
        """0 every host passes, 3 one fails its preflight, else 4 one was unreachable."""
        return worst(h.exit_code for h in self.hosts)

    def to_dict(self) -> dict[str, Any]:
        return {"app": self.app, "spec": self.spec_file, "lock": self.lock_summary,
                "ok": self.ok, "exit_code": self.exit_code,
                "hosts": [h.to_dict() for h in self.hosts]}


def build_plan(
    spec: Spec, lock: LockLike, hosts: Sequence[Host],
    probed: Mapping[str, HostFacts | HostError], data: CompatData,
    playbook: Playbook | None = None,
) -> Plan:
    """One `HostPlan` per target host, in the order of `hosts`; its steps are the playbook's
    (every registered step when none is given), each described by its own module."""
    plans = []
    for host in hosts:
        result = probed.get(host.name)
        if not isinstance(result, HostFacts):
            error = probe_error(result)
            plans.append(HostPlan(host.name, host.address, None, error,
                                  (f"probe: failed: {error}", STOP),
                                  unreachable=isinstance(result, HostUnreachable)))
            continue
        verdict = preflight(spec, lock, result, data)
        plans.append(HostPlan(host.name, host.address, verdict, None,
                              rollout_steps(spec, lock, host, result, verdict, playbook)))
    return Plan(spec.name, spec.file, lock_summary(lock, data), tuple(plans))


STOP = "stop: nothing would change on this host"


def probe_error(error: HostError | None) -> str:
    """One line for a host that could not be probed, led by what kind of failure it was."""
    if error is None:
        return "not probed"
    if isinstance(error, HostKeyRejected):
        return f"host key rejected: {error.reason}"
    if isinstance(error, HostUnreachable):
        return f"{UNREACHABLE}: {error.reason}"
    return f"probe failed: {error.reason}"


def rollout_steps(
    spec: Spec, lock: LockLike, host: Host, facts: HostFacts, verdict: HostVerdict,
    playbook: Playbook | None = None,
) -> tuple[str, ...]:
    """Each step of the playbook (the registry's full list when none is given) as it would run on
    this host, in its own words (`describe`); nothing after a failing preflight."""
    names = STEP_ORDER if playbook is None else playbook.names
    target = Target(host, lock, verdict)
    steps: list[str] = []
    for name in names:
        steps.append(f"{name}: {registry.step(name).describe(spec, facts, target)}")
        if name == preflight_step.NAME and verdict.status is Status.FAIL:
            return (*steps, STOP)
    return tuple(steps)


def lock_summary(lock: LockLike, data: CompatData) -> str:
    versions = locked_versions(lock)
    fw = find_framework(versions, data)
    framework = "" if fw.package is None else f", {fw.label}"
    return f"{len(versions)} packages{framework}"


def render_text(plan: Plan) -> str:
    """Readable lines for a terminal: per host its checks, then its steps, then a summary."""
    out = [f"plan for {plan.app} ({plan.spec_file}; lock: {plan.lock_summary}); "
           "nothing is changed on any host", ""]
    for h in plan.hosts:
        out.append(f"{h.host} ({h.address}): {str(h.status).upper()}")
        if h.error is not None:
            out.append(f"  {h.error}")
        if h.verdict is not None:
            width = max(len(c.name) for c in h.verdict.checks)
            out += [f"  {c.status!s:4}  {c.name:<{width}}  {c.message}"
                    for c in h.verdict.checks]
        out.append("  steps:")
        out += [f"    {i}. {step}" for i, step in enumerate(h.steps, 1)]
        out.append("")
    failed = [h.host for h in plan.hosts if h.status is Status.FAIL]
    summary = f"{len(plan.hosts) - len(failed)} of {len(plan.hosts)} host(s) pass"
    out.append(summary + (f"; failing: {', '.join(failed)}" if failed else ""))
    return "\n".join(out)
