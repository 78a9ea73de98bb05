"""One path for state (issue 12, item 3): step states change only through `change_step_state`
(a sink's `step`), host outcomes only through `change_host_state` (`HostResult.settle`), and no
code decides on an outcome by matching its words.

Fast: the daemon's sink over a real store, fake pools and hosts; the source scans read the package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from orchestrator.core.inventory import Host
from orchestrator.core.states import HostStepState
from orchestrator.daemon.events import EventHub
from orchestrator.daemon.sinks import ServiceSink
from orchestrator.daemon.store import open_store
from orchestrator.deploy.pipeline import HostStatus, Pipeline
from orchestrator.deploy.playbook import load_playbook
from orchestrator.errors import HostUnreachable
from tests.test_pipeline import FakeHost, Sink

PACKAGE = Path(__file__).resolve().parent.parent / "orchestrator"


@pytest.fixture
def hub(tmp_path: Path, store_target: Path | str) -> Iterator[EventHub]:
    store = open_store(store_target)
    hub = EventHub(store, tmp_path / "logs")
    store.create_deployment("d1", "app", {"targets": ["h1", "h2"]})
    yield hub
    hub.close()
    store.close()


def _core(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    drop = {"ts", "seq", "deployment"}
    return [{k: v for k, v in e.items() if k not in drop} for e in events]


# -- item 1: no step state guessed from an event's name -----------------------------------------

def test_an_event_named_like_a_step_changes_no_stored_state(hub: EventHub) -> None:
    sink = ServiceSink(hub, "d1")
    sink.emit("step", host="h1", step="stage", status="started", timeout_s=60)
    sink.emit("step", host="h1", step="install", status="failed", error="uv exited 2")
    sink.emit("step", host="h1", step="install", status="ok")  # was refused and noted
    assert hub.store.steps("d1") == []
    events = hub.store.events("d1")
    # Recorded as sent: the words are the emitter's, nothing is translated or noted.
    assert [e["status"] for e in events] == ["started", "failed", "ok"]
    assert not any("state_error" in e for e in events)
    assert [e["level"] for e in events] == ["info", "info", "info"]


class _Pool:
    """What `preflight_fleet` needs of a pool: `map_hosts`, answering from a table."""

    def __init__(self, found: dict[str, Any]) -> None:
        self.found = found

    def map_hosts(self, fn: Any, hosts: list[Host], parallel: int) -> dict[str, Any]:
        return {h.name: self.found[h.name] for h in hosts}


def _preflight(sink: Any) -> tuple[list[Host], dict[str, Any]]:
    from orchestrator.deploy.rollout import preflight_fleet

    hosts = [Host(n, "127.0.0.1", 22, "deploy", "/srv") for n in ("h1", "h2", "h3")]
    pool = _Pool({"h1": [], "h2": ["driver too old"], "h3": HostUnreachable("h3", "refused")})
    return preflight_fleet(None, hosts, pool=pool, sink=sink,  # type: ignore[arg-type]
                           max_parallel=2)


def test_fleet_preflight_refusals_are_step_rows_through_the_step_path(hub: EventHub) -> None:
    ready, refused = _preflight(ServiceSink(hub, "d1"))
    assert [h.name for h in ready] == ["h1"]
    assert {n: r.status for n, r in refused.items()} == {"h2": HostStatus.FAILED,
                                                          "h3": HostStatus.FAILED}
    why2 = "preflight failed: driver too old"
    why3 = refused["h3"].reason
    assert why3 is not None and why3.startswith("unreachable or probe failed: ")
    # The rows the daemon stored before (then guessed from the events): the same.
    assert {(s.host, s.step, str(s.state), tuple(sorted((s.detail or {}).items())))
            for s in hub.store.steps("d1")} == {
        ("h2", "preflight", "failed", (("reason", why2),)),
        ("h3", "probe", "failed", (("reason", why3),))}
    steps = [e for e in _core(hub.store.events("d1")) if e["event"] == "step"]
    assert steps == [
        {"event": "step", "host": "h2", "step": "preflight", "status": "failed",
         "duration_ms": None, "level": "error", "error": why2, "phase": "rollout.preflight",
         "reason": why2},  # `reason`: as every failed step's event from the daemon's sink
        {"event": "step", "host": "h3", "step": "probe", "status": "failed",
         "duration_ms": None, "level": "error", "error": why3, "phase": "rollout.preflight",
         "reason": why3}]
    finished = [e for e in _core(hub.store.events("d1")) if e["event"] == "host.finished"]
    assert finished == [
        {"event": "host.finished", "host": "h2", "step": None, "status": "failed",
         "duration_ms": None, "level": "error", "reason": why2, "failed_step": "preflight"},
        {"event": "host.finished", "host": "h3", "step": None, "status": "failed",
         "duration_ms": None, "level": "error", "reason": why3, "failed_step": "probe"}]


def test_fleet_preflight_events_to_a_plain_sink_are_unchanged() -> None:
    sink = Sink()
    _preflight(sink)
    why2 = "preflight failed: driver too old"
    step = next(e for e in sink.events if e["event"] == "step" and e["host"] == "h2")
    assert step == {"event": "step", "host": "h2", "step": "preflight", "status": "failed",
                    "duration_ms": None, "level": "error", "error": why2,
                    "phase": "rollout.preflight"}
    assert [(e["event"], e["host"]) for e in sink.events] == [
        ("rollout.preflight", None), ("step", "h2"), ("host.finished", "h2"), ("step", "h3"),
        ("host.finished", "h3"), ("rollout.preflight", None)]


def test_a_redeploys_pipeline_through_the_app_sink_writes_no_rows(hub: EventHub) -> None:
    """`reverify.on_failure: redeploy` runs a pipeline through the reverifier's app sink: its
    events carry no app, so they go to the daemon's log and no deployment's rows change (as
    before: the guessing never saw them)."""
    from orchestrator.daemon.reverifier import Reverifier, _AppSink

    reverifier = Reverifier.__new__(Reverifier)
    reverifier.store = hub.store
    reverifier.sink_of = lambda deployment: ServiceSink(hub, deployment)
    with capture_logs() as logs:
        result = Pipeline(load_playbook(), FakeHost(fail={"check": 1}), _AppSink(reverifier)
                          ).run()
    assert result.status is HostStatus.ROLLED_BACK
    assert hub.store.steps("d1") == [] and hub.store.events("d1") == []
    trail = [(e["event"], e.get("step"), e["status"]) for e in logs]
    assert trail[:3] == [("host.started", None, "started"), ("step", "probe", "started"),
                         ("step", "probe", "ok")]
    assert ("recovery", "rollback", "ok") in trail and trail[-1][0] == "host.finished"


# -- item 2: a host's outcome is set in one place -----------------------------------------------

def test_an_untouched_host_is_settled_through_the_host_state_machine() -> None:
    from orchestrator.deploy.batch import untouched
    from orchestrator.deploy.rollout import exclude

    sink = Sink()
    result = untouched("h1", sink, reason="locked", failed_step="lock", error="held by d0",
                       kind="DeployLocked")
    assert (result.status, result.reason, result.failed_step, result.error) == (
        HostStatus.FAILED, "locked", "lock", "held by d0")
    excluded = exclude({"h2": "degraded"}, sink)["h2"]
    assert excluded.status is HostStatus.FAILED and excluded.error == excluded.reason
    assert sink.events == [
        {"event": "host.finished", "host": "h1", "step": None, "status": "failed",
         "duration_ms": None, "level": "error", "reason": "locked", "failed_step": "lock",
         "kind": "DeployLocked"},
        {"event": "host.finished", "host": "h2", "step": None, "status": "failed",
         "duration_ms": None, "level": "error",
         "reason": "excluded from the rollout: degraded", "failed_step": "reverify",
         "detail_status": "skipped"}]


def _string_constants(path: Path) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_host_events_are_emitted_only_by_the_host_state_machine() -> None:
    """`host.started` / `host.finished` are spelled (so emitted) only in core/states.py."""
    found = [f"{p.relative_to(PACKAGE)}:{line}" for p in sorted(PACKAGE.rglob("*.py"))
             if p.relative_to(PACKAGE).as_posix() != "core/states.py"
             for line, value in _string_constants(p)
             if value in ("host.started", "host.finished")]
    assert found == []


def test_step_events_are_emitted_only_through_the_step_path() -> None:
    """No `emit("step", ...)` outside the step path (`change_step_state`, `StepReporter`)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "emit" and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and node.args[0].value == "step"):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == []


# -- outcome words are values of enums, never matched -------------------------------------------

#: Outcome words that code once matched as strings (`== "serving"`, `startswith("rollback
#: failed")`, `stopped == "aborted"`): they are compared as enums now (`Settled`,
#: `HostOutcome`, `Undone`, the rollout's `Stop`).
OUTCOME_WORDS = frozenset({"serving", "rolled_back", "aborted", "cancelled", "HostUnreachable"})


def test_no_outcome_is_matched_as_a_string() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "remote" in path.relative_to(PACKAGE).parts:
            continue  # the shipped host scripts speak JSON to the controller
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Compare):
                words = [c.value for c in [node.left, *node.comparators]
                         if isinstance(c, ast.Constant) and isinstance(c.value, str)]
                if OUTCOME_WORDS & set(words):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in ("startswith", "endswith") and node.args
                  and isinstance(node.args[0], ast.Constant)
                  and str(node.args[0].value).startswith(("rollback", "rolled_back"))):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == []


def test_an_undo_keeps_its_why_in_a_field_and_its_words_for_users() -> None:
    from orchestrator.deploy.rollout import Undone

    back, failed = Undone(), Undone("connection lost")
    assert (back.rolled_back, back.value) == (True, "rolled_back")
    assert (failed.rolled_back, failed.error) == (False, "connection lost")
    assert failed.value == "rollback failed: connection lost"  # as the result JSON said


def test_the_clients_finished_states_are_the_terminal_deployment_states() -> None:
    from orchestrator.cli.client import FINISHED, exit_code

    assert sorted(FINISHED) == ["cancelled", "failed", "rolled_back", "succeeded"]
    assert [exit_code(s) for s in ("succeeded", "failed", "rolled_back")] == [0, 3, 3]


# -- item 4: the undo and the reconciliation of a host are step rows -----------------------------

def test_undo_and_reconcile_rows_may_start_again_but_no_pipeline_row_may() -> None:
    from orchestrator.core.states import RERUNNABLE_STEPS, check_step_transition
    from orchestrator.deploy.steps.registry import STEPS
    from orchestrator.errors import InvalidTransition

    S = HostStepState

    for step in sorted(RERUNNABLE_STEPS):
        for old in (None, S.RUNNING, S.OK, S.FAILED):
            check_step_transition(old, S.RUNNING, step)
        with pytest.raises(InvalidTransition):
            check_step_transition(S.OK, S.FAILED, step)  # the rest of the table holds
    for step in [*STEPS, "abort-stage", "mark-bad", "rollback", "recheck"]:
        with pytest.raises(InvalidTransition):
            check_step_transition(S.OK, S.RUNNING, step)
    # Their own names: never a row of the pipeline's (a playbook step or a recovery action).
    assert RERUNNABLE_STEPS.isdisjoint([*STEPS, "abort-stage", "mark-bad", "rollback",
                                        "recheck"])


#: The host actions are replaced below, so nothing reaches a host: no transport is needed.
NO_TRANSPORT: Any = None


def _host() -> Host:
    return Host("h1", "127.0.0.1", 22, "deploy", "/srv")


def _inputs() -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(spec=SimpleNamespace(name="app", service=None), release_id="r2",
                           deployment="d1")


def test_an_undo_is_an_undo_row_that_may_run_twice(
        hub: EventHub, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.deploy.steps import recovery

    calls: list[str | None] = []

    def rolled(transport: Any, host: Host, app: str, from_release: str | None,
               fallback: Any, deadline: Any, *, mark_bad: bool = True, forget: bool = False,
               to: str = "previous") -> recovery.RolledBack:
        calls.append(from_release)
        return recovery.RolledBack("r1", True, None, {"restarted": False})

    monkeypatch.setattr(recovery, "roll_back_and_restart", rolled)
    sink = ServiceSink(hub, "d1")
    hub.store.transition_step("d1", "h1", "rollback", HostStepState.RUNNING)  # the pipeline's
    hub.store.transition_step("d1", "h1", "rollback", HostStepState.OK)
    for _ in range(2):  # the rollout's undo, then a manual rollback: idempotent on the host
        settled = recovery.undo_host(NO_TRANSPORT, _host(), _inputs(), sink)
        assert settled is recovery.Settled.ROLLED_BACK
    assert calls == ["r2", "r2"]
    assert {s.step: str(s.state) for s in hub.store.steps("d1")} == {"rollback": "ok",
                                                                     "undo": "ok"}
    trail = [(e["event"], e["step"], e["status"], e["level"]) for e in hub.store.events("d1")]
    assert trail == [("recovery", "undo", "started", "warning"),
                     ("recovery", "undo", "ok", "warning")] * 2
    ok = hub.store.events("d1")[1]
    assert (ok["current"], ok["changed"], ok["restarted"]) == ("r1", True, False)


def test_a_failed_undo_is_a_failed_row_and_still_raises(
        hub: EventHub, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.deploy.steps import recovery

    def gone(*args: Any, **kwargs: Any) -> recovery.RolledBack:
        raise HostUnreachable("h1", "connection lost")

    monkeypatch.setattr(recovery, "roll_back_and_restart", gone)
    with pytest.raises(HostUnreachable):
        recovery.undo_host(NO_TRANSPORT, _host(), _inputs(), ServiceSink(hub, "d1"))
    (row,) = hub.store.steps("d1")
    assert (row.step, str(row.state)) == ("undo", "failed")
    last = hub.store.events("d1")[-1]
    assert (last["status"], last["kind"], last["level"]) == ("failed", "HostUnreachable", "error")


def test_a_reconciliation_is_a_reconcile_row_and_keeps_its_ok_event(
        hub: EventHub, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.deploy.steps import recovery

    monkeypatch.setattr(recovery, "_recover",
                        lambda t, h, i, s: (recovery.Settled.ABORTED, "r1"))
    sink = ServiceSink(hub, "d1")
    for _ in range(2):  # a reconciliation again, after another restart
        settled = recovery.recover_host(NO_TRANSPORT, _host(), _inputs(), sink)
        assert settled is recovery.Settled.ABORTED
    assert [(s.step, str(s.state)) for s in hub.store.steps("d1")] == [("reconcile", "ok")]
    events = hub.store.events("d1")
    assert [(e["step"], e["status"]) for e in events] == [("reconcile", "started"),
                                                          ("reconcile", "ok")] * 2
    assert (events[1]["outcome"], events[1]["current"]) == ("aborted", "r1")  # as before
    plain = Sink()
    recovery.recover_host(NO_TRANSPORT, _host(), _inputs(), plain)
    assert plain.events[-1] == {"event": "recovery", "host": "h1", "step": "reconcile",
                                "status": "ok", "duration_ms": None, "level": "warning",
                                "outcome": "aborted", "current": "r1"}


def test_the_rollback_metric_counts_an_undo_too(tmp_path: Path) -> None:
    from orchestrator.daemon.metrics import Metrics

    store = open_store(tmp_path / "m.db")
    try:
        metrics = Metrics(store)
        for step in ("rollback", "undo", "recheck"):
            metrics.observe({"event": "recovery", "deployment": "x", "step": step,
                             "status": "ok", "app": "fraud"})
        assert b'orchestrator_rollbacks_total{app="fraud"} 2.0' in metrics.render()
    finally:
        store.close()
