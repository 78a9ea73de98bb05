"""Re-verify one host over one transport: probe, audit the files, re-run the warmup, decide.

    facts = probe_host(...)                      # the GPU stack now
    for each app with a current release (or the apps asked for), under the app's deploy lock:
        audit   remote/audit.py: manifest.json, model hash, venv files vs RECORD
        container  the serving container (service.container) runs the release's image
        warmup  orchestrator/hosts/warmup.py run_warmup in the release's environment (its kind's
                interpreter, orchestrator/deploy/environments/), gates vs the baseline
        decide  orchestrator/core/findings.py (pure): findings -> status and reasons
        act     reverify.on_failure on a failed app: rollback (hostops) or redeploy (pipeline),
                then check the app once more so the recorded status is the host's real one

The deploy lock (orchestrator/hosts/hostlock.py) is the one a deployment holds for its whole
pipeline on that host, so a re-verification never overlaps a rollout of the same app there: an
app being deployed is skipped (and reported as such), never waited for.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core import findings as rv
from orchestrator.core.facts import HostFacts, parse_facts
from orchestrator.core.gates import WarmupRequest, gates
from orchestrator.core.hashing import hash_file
from orchestrator.core.inventory import Host
from orchestrator.core.spec import Spec
from orchestrator.deploy.deadline import Deadline
from orchestrator.deploy.environments.registry import environment_for
from orchestrator.deploy.pipeline import RECOVERY_TIMEOUT_S, EventSink
from orchestrator.deploy.steps.recovery import roll_back_and_restart
from orchestrator.deploy.steps.service import service_of
from orchestrator.deploy.steps.verify import remote_model_path
from orchestrator.errors import BadHostOutput, HostError
from orchestrator.hosts import hostlock, layout, ops
from orchestrator.hosts.hostops import HostOpFailed, HostOps, OpKind
from orchestrator.hosts.probe import probe_host
from orchestrator.hosts.shipping import ensure_tools
from orchestrator.hosts.transport import Transport
from orchestrator.hosts.warmup import run_warmup

AUDIT_TIMEOUT_S = 900.0  # hashing a TensorFlow venv (~1.6 GB) on a slow disk
WARMUP_MARGIN_S = 60.0

#: The spec of a deployment id (from the daemon's store/bundles), or None when unknown.
SpecLookup = Callable[[str | None], Any]
#: Whether the daemon has a deployment of this app queued or in flight (then: skip the app).
Deploying = Callable[[str], bool]


@dataclass
class AppCheck:
    app: str
    status: str
    reasons: list[str]
    release_id: str | None = None
    deployment: str | None = None  # the deployment that made the current release
    action: str = "report"
    skipped: str | None = None  # why the app was not checked (deploy lock held)
    findings: list[rv.Finding] = field(default_factory=list)
    # p50_ms/p95_ms/p99_ms of this run's warmup: in the `reverify` event, so latency over time
    # (the web UI's charts) has a point per re-verification beside the deploy baseline.
    latency: dict[str, Any] = field(default_factory=dict)


@dataclass
class HostCheckResult:
    host: str
    status: str
    reasons: list[str]
    facts: dict[str, Any] | None
    apps: dict[str, AppCheck] = field(default_factory=dict)


def run_audit(transport: Transport, deploy_root: str, app: str) -> dict[str, Any] | None:
    """remote/audit.py's reply for the app's current release; None when it has none."""
    try:
        return HostOps(transport, deploy_root).run(ops.audit(app), timeout=AUDIT_TIMEOUT_S,
                                                   max_output=8 << 20)
    except HostOpFailed as exc:
        if exc.kind is OpKind.NO_CURRENT:
            return None
        raise


def local_model_hashes(spec: Spec) -> dict[str, str] | None:
    """{path relative to the model dir: sha256} of the deployment's own model files."""
    model = Path(spec.paths.model)
    if model.is_file():
        return {model.name: hash_file(model)}
    if not model.is_dir():
        return None
    return {p.relative_to(model).as_posix(): hash_file(p)
            for p in sorted(model.rglob("*")) if p.is_file()}


def warmup_check(transport: Transport, spec: Spec, audit: dict[str, Any],
                 latency: dict[str, Any] | None = None) -> list[rv.Finding]:
    """The warmup again in the release's environment, gated like at deploy against its
    baseline; its percentiles go into `latency` when given."""
    release = str(audit["release_path"])
    request = WarmupRequest.from_spec(
        spec, model_path=remote_model_path(release, Path(spec.paths.model)),
        golden_path=layout.release_golden(release))
    tools = ensure_tools(transport, layout.release_of(release)[0])
    python = environment_for(spec).interpreter(release)
    result = run_warmup(transport, python, tools, request,
                        timeout=float(spec.verify.timeout_s) + WARMUP_MARGIN_S)
    if latency is not None and result.latency is not None:
        latency.update({k: v for k, v in (("p50_ms", result.latency.p50_ms),
                                          ("p95_ms", result.latency.p95_ms),
                                          ("p99_ms", result.latency.p99_ms)) if v is not None})
    baseline = audit["manifest"].get("warmup")
    return rv.warmup_findings(gates(result, spec.verify,
                                    baseline if isinstance(baseline, dict) else None))


def container_check(transport: Transport, host: Host, app: str,
                    manifest: dict[str, Any]) -> list[rv.Finding]:
    """The serving container (the release's recorded service.container) against the image
    and release it must run; [] for a release without one."""
    svc = service_of(host.name, manifest.get("service"), None)
    if svc is None or svc.container is None:
        return []
    s = HostOps(transport, host.deploy_root).run(
        ops.container_status(app, svc.container.stable_name(app)))
    return rv.container_findings(s.container, s.running, s.image_id, s.release_id,
                                 s.expected_image_id, s.current)


def check_app(transport: Transport, host: Host, app: str, facts: HostFacts,
              spec_for: SpecLookup) -> AppCheck:
    """Findings and status of the app's current release (no lock, no action)."""
    audit = run_audit(transport, host.deploy_root, app)
    if audit is None:  # e.g. a target the app's rollout left out: nothing to verify
        return AppCheck(app, rv.HEALTHY, [], skipped="no current release of the app here")
    manifest = audit["manifest"]
    deployment = manifest.get("deployment")
    findings: list[rv.Finding] = []
    spec = spec_for(deployment)
    placed = manifest.get("gpus")  # the UUIDs placement gave the release (None: all, or CPU)
    latency: dict[str, Any] = {}
    try:
        findings += rv.diff_facts(
            parse_facts(host.name, json.dumps(manifest.get("facts"))), facts,
            spec.gpu.health if spec is not None else None,
            [str(u) for u in placed] if isinstance(placed, list) else None)
    except BadHostOutput as exc:
        findings.append(rv.Finding("facts", rv.DEGRADED, f"deploy-time facts unreadable: {exc}"))
    # The deployment's own model files are hashed only to name what changed.
    changed = not (audit.get("model") or {}).get("ok")
    findings += rv.audit_findings(audit, local_model_hashes(spec) if spec and changed else None)
    if spec is None:
        findings.append(rv.Finding("warmup", rv.HEALTHY, f"warmup not re-run: deployment "
                                   f"{deployment} is unknown to this daemon"))
    elif environment_for(spec).audited(audit):
        findings += warmup_check(transport, spec, audit, latency)
    findings += container_check(transport, host, app, manifest)
    status, reasons = rv.decide(findings)
    return AppCheck(app, status, reasons, str(audit["release_id"]), deployment,
                    findings=findings, latency=latency)


def reverify_app(transport: Transport, host: Host, app: str, facts: HostFacts,
                 spec_for: SpecLookup, sink: EventSink,
                 deploying: Deploying | None = None) -> AppCheck:
    """`check_app` under the app's deploy lock, then `reverify.on_failure` on a failed app.
    An app being deployed (the lock is held, or `deploying(app)`) is skipped: a rollout is
    never made to wait for, or fail on, a re-verification's lock."""
    owner = f"reverify-{uuid.uuid4().hex[:8]}"
    busy = None
    if deploying is not None and deploying(app):
        busy = f"app {app} has a deployment queued or in flight"
    else:
        try:
            hostlock.acquire(transport, host.deploy_root, app, owner)
        except hostlock.DeployLocked as exc:
            busy = exc.reason
    if busy is not None:
        sink.emit("reverify", host=host.name, status="skipped", app=app, reason=busy)
        return AppCheck(app, rv.HEALTHY, [], skipped=busy)
    started = time.monotonic()
    try:
        check = check_app(transport, host, app, facts, spec_for)
        if check.skipped is not None:
            sink.emit("reverify", host=host.name, status="skipped", app=app,
                      reason=check.skipped)
            return check
        spec = spec_for(check.deployment)
        reverify_cfg = getattr(spec, "reverify", None) if spec is not None else None
        check.action = rv.action_for(check.status, getattr(reverify_cfg, "on_failure", None))
        if check.action == "rollback":
            _rollback(transport, host, check, spec, sink)
            check = _again(check, check_app(transport, host, app, facts, spec_for))
    finally:
        hostlock.release(transport, host.deploy_root, app, owner)
    if check.action == "redeploy" and spec is not None:
        _redeploy(transport, host, spec, check, sink)
        check = _again(check, check_app(transport, host, app, facts, spec_for))
    sink.emit("reverify", host=host.name, status=check.status, app=app,
              release_id=check.release_id, reasons=check.reasons, action=check.action,
              **check.latency, level="info" if check.status == rv.HEALTHY else "warning",
              duration_ms=(time.monotonic() - started) * 1000)
    return check


def _again(first: AppCheck, second: AppCheck) -> AppCheck:
    """The check after an action: its status, with why the action was taken."""
    second.action = first.action
    second.reasons = [f"{first.action} after: {'; '.join(first.reasons)}", *second.reasons]
    return second


def _rollback(transport: Transport, host: Host, check: AppCheck, spec: Spec,
              sink: EventSink) -> None:
    """Back to the previous good release, and its service restarted as it was deployed (the
    one "roll back and restart" every recovery uses)."""
    try:
        out = roll_back_and_restart(
            transport, host, check.app, check.release_id, getattr(spec, "service", None),
            Deadline(host.name, "rollback", RECOVERY_TIMEOUT_S))
        sink.emit("reverify.rollback", host=host.name, status="ok", app=check.app,
                  release_id=check.release_id, current=out.current, **out.restarted)
    except HostError as exc:
        sink.emit("reverify.rollback", host=host.name, status="failed", level="error",
                  app=check.app, error=str(exc))


def _redeploy(transport: Transport, host: Host, spec: Spec, check: AppCheck,
              sink: EventSink) -> None:
    from orchestrator.deploy.batch import deploy_host, prepare

    # The same deployment (its bundle, its spec: later runs still find them), a new release.
    inputs = prepare(spec, deployment=check.deployment)  # else a new id (core/ids.py)
    result = deploy_host(transport, host, inputs, sink)
    sink.emit("reverify.redeploy", host=host.name, status=result.status.value, app=check.app,
              release_id=inputs.release_id, reason=result.reason)


def reverify_host(transport: Transport, host: Host, spec_for: SpecLookup, sink: EventSink,
                  apps: Sequence[str] | None = None,
                  deploying: Deploying | None = None) -> HostCheckResult:
    """Every app with a current release on the host (or `apps`), and the host's status."""
    facts = probe_host(transport, host)
    names = list(apps) if apps is not None else sorted(a for a, c in facts.releases.items() if c)
    checks = {a: reverify_app(transport, host, a, facts, spec_for, sink, deploying)
              for a in names}
    checked = {a: (c.status, c.reasons) for a, c in checks.items() if c.skipped is None}
    if not checked:  # nothing deployed here: the probe alone says how the host is
        status, reasons = rv.facts_status(facts)
    else:
        status, reasons = rv.combine(checked)
    return HostCheckResult(host.name, status, reasons, facts.raw, checks)
