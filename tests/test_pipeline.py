"""The playbook loader, the pure recovery decision (from a table), and the engine's ordering.

The engine is driven here by an in-memory HostSteps fake: fast tests of what runs in which order
and which events come out. The same behaviours are tested for real against the testbed's sshd
hosts in tests/test_deploy.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.deploy.pipeline import (
    Action,
    Deadline,
    Decision,
    Failure,
    HostStatus,
    Pipeline,
    Situation,
    decide,
)
from orchestrator.deploy.playbook import (
    DEFAULT_PLAYBOOK,
    STEP_ORDER,
    OnFailure,
    load_playbook,
    parse_playbook,
)
from orchestrator.deploy.rollout import Stop
from orchestrator.errors import CommandFailed, SpecError

# -- playbook ---------------------------------------------------------------------------------


def test_shipped_playbook_lists_every_step_in_order_with_policies() -> None:
    pb = load_playbook(DEFAULT_PLAYBOOK)
    assert pb.names == STEP_ORDER
    assert all(s.on_failure is OnFailure.ABORT_STAGE for s in pb.steps if s.before_switch)
    assert pb.step("switch").on_failure is OnFailure.ROLLBACK
    assert pb.step("check").on_failure is OnFailure.ROLLBACK
    assert all(s.timeout_s > 0 for s in pb.steps)


def _yaml(steps: str) -> str:
    return f"apiVersion: orchestrator/v1\nkind: Playbook\nsteps:\n{steps}"


GOOD = """\
  - {name: probe, timeout_s: 5, on_failure: abort-stage}
  - {name: preflight, timeout_s: 5, on_failure: abort-stage}
  - {name: stage, timeout_s: 5, on_failure: abort-stage}
  - {name: install, timeout_s: 5, on_failure: abort-stage}
  - {name: verify, timeout_s: 5, on_failure: abort-stage}
  - {name: switch, timeout_s: 5, on_failure: rollback}
"""


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (GOOD.replace("name: stage", "name: stagee"), 6, "unknown step 'stagee'"),
        (GOOD + "  - {name: check, timeout_s: 5, on_failure: rollback, retries: 3}\n", 10,
         "steps[6].retries: unknown field"),
        (GOOD.replace("name: stage", "name: TMP").replace("name: install", "name: stage")
         .replace("name: TMP", "name: install"), 7, "step 'stage' out of order"),
        (GOOD.replace("{name: verify, timeout_s: 5, on_failure: abort-stage}",
                      "{name: verify, timeout_s: 5, on_failure: warn}"), 8,
         "a step before switch must use on_failure: abort-stage"),
        (GOOD.replace("switch, timeout_s: 5, on_failure: rollback",
                      "switch, timeout_s: 5, on_failure: warn"), 9,
         "switch must use on_failure: rollback"),
        (GOOD.replace("probe, timeout_s: 5", "probe, timeout_s: -1"), 4, "must be > 0"),
        (GOOD.replace("probe, timeout_s: 5", "probe, timeout_s: .nan"), 4, "must be > 0"),
        (GOOD.replace("probe, timeout_s: 5", "probe, timeout_s: '5'"), 4, "not the string"),
        (GOOD.replace("on_failure: rollback", "on_failure: retry"), 9, "unknown policy 'retry'"),
        (GOOD.replace("  - {name: install, timeout_s: 5, on_failure: abort-stage}\n", ""), 3,
         "required steps missing: install"),
        (GOOD + "  - {name: probe, timeout_s: 5, on_failure: abort-stage}\n", 10, "listed twice"),
        (GOOD.replace("{name: probe, timeout_s: 5, on_failure: abort-stage}",
                      "&p {name: probe, timeout_s: 5, on_failure: abort-stage}"), 4,
         "YAML anchor &p is not allowed"),
    ],
    ids=["unknown-step", "unknown-field", "order", "warn-before-switch", "switch-warn",
         "negative-timeout", "nan-timeout", "string-timeout", "unknown-policy", "missing-step",
         "duplicate", "anchor"],
)
def test_bad_playbooks_are_refused_with_line_and_reason(text: str, line: int, words: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_playbook(_yaml(text), source="pb.yaml")
    assert words in str(info.value)
    assert info.value.line == line
    assert str(info.value).startswith(f"pb.yaml:{line}:")


def test_duplicate_top_level_key_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="duplicate key"):
        parse_playbook("apiVersion: orchestrator/v1\nkind: Playbook\nkind: Playbook\nsteps: []\n")
    with pytest.raises(SpecError, match=r"nope\.yaml: file not found"):
        load_playbook(tmp_path / "nope.yaml")


def test_optional_steps_may_be_left_out() -> None:
    pb = parse_playbook(_yaml(GOOD))
    assert pb.names == STEP_ORDER[:6]
    assert pb.with_timeout("verify", 700).step("verify").timeout_s == 700


# -- the decision, from a table ---------------------------------------------------------------

ABORT, ROLL, WARN = OnFailure.ABORT_STAGE, OnFailure.ROLLBACK, OnFailure.WARN

DECISIONS = [
    # failure, policy, has_previous, rollbacks_done -> action, status
    (Failure.STEP, ABORT, True, 0, Action.ABORT_STAGE, HostStatus.FAILED),
    (Failure.STEP, ABORT, False, 0, Action.ABORT_STAGE, HostStatus.FAILED),
    (Failure.STEP, ROLL, True, 0, Action.ROLLBACK, HostStatus.ROLLED_BACK),
    (Failure.STEP, ROLL, True, 1, Action.STOP, HostStatus.BROKEN),
    (Failure.STEP, ROLL, False, 0, Action.STOP, HostStatus.BROKEN),
    (Failure.STEP, WARN, True, 0, Action.CONTINUE, HostStatus.SUCCEEDED),
    (Failure.ABORT, None, True, 0, Action.STOP, HostStatus.FAILED),
    (Failure.ROLLBACK, None, True, 1, Action.STOP, HostStatus.BROKEN),
    (Failure.RECHECK, None, True, 1, Action.STOP, HostStatus.BROKEN),
]


@pytest.mark.parametrize(("failure", "policy", "prev", "done", "action", "status"), DECISIONS)
def test_decide(failure: Failure, policy: OnFailure | None, prev: bool, done: int,
                action: Action, status: HostStatus) -> None:
    d = decide(Situation(failure, policy, prev, done))
    assert (d.action, d.status) == (action, status)
    assert d.reason


def test_decide_says_why_it_stops() -> None:
    assert "previous release failed its check" in decide(Situation(Failure.RECHECK)).reason
    assert "at most one automatic rollback" in decide(Situation(Failure.STEP, ROLL, True, 1)).reason
    assert isinstance(decide(Situation(Failure.STEP, ABORT)), Decision)


# -- the engine, with an in-memory host --------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: str, *, host: str | None = None, step: str | None = None,
             status: str | None = None, duration_ms: float | None = None, level: str = "info",
             **details: Any) -> None:
        self.events.append({"event": event, "host": host, "step": step, "status": status,
                            "duration_ms": duration_ms, "level": level, **details})

    def trail(self) -> list[tuple[str | None, str | None]]:
        return [(e["step"], e["status"]) for e in self.events if e["event"] in {"step", "recovery"}]


class FakeHost:
    """A host as a few variables: the serving release, the staged one, the bad list."""

    host = "fake-01"

    def __init__(self, fail: Mapping[str, int] | None = None, previous: str | None = "r1",
                 recheck_fails: bool = False, clock: list[float] | None = None,
                 slow: Mapping[str, float] | None = None) -> None:
        self.fail = dict(fail or {})  # step -> how many more times it fails
        self.current, self.previous = previous, previous
        self.staged: str | None = None
        self.bad: list[str] = []
        self.calls: list[str] = []
        self.recheck_fails = recheck_fails
        self.clock, self.slow = clock, dict(slow or {})

    def run(self, name: str, deadline: Deadline) -> Mapping[str, Any]:
        self.calls.append(name)
        if self.clock is not None:
            self.clock[0] += self.slow.get(name, 0.0)
        if name == "stage":
            self.staged = "r2"
        if name == "switch":
            self.current = "r2"  # moves first: a failure here is after the move
        if self.fail.get(name, 0) > 0:
            self.fail[name] -= 1
            raise CommandFailed(self.host, f"fake {name}", 1, "", f"{name} broke")
        return {"release_id": "r2", "host": "not-overwritten"} if name == "stage" else {}

    def has_previous(self) -> bool:
        return self.previous is not None

    def abort_stage(self, deadline: Deadline) -> Mapping[str, Any]:
        self.calls.append("abort-stage")
        self.staged = None
        return {"removed": "r2"}

    def rollback(self, deadline: Deadline) -> Mapping[str, Any]:
        self.calls.append("rollback")
        self.current = self.previous
        return {"current": self.current}

    def mark_bad(self, deadline: Deadline) -> Mapping[str, Any]:
        self.calls.append("mark-bad")
        self.bad.append("r2")
        return {}

    def recheck(self, deadline: Deadline) -> Mapping[str, Any]:
        self.calls.append("recheck")
        if self.recheck_fails:
            raise CommandFailed(self.host, "health", 7, "", "connection refused")
        return {}


def _run(host: FakeHost, clock: list[float] | None = None) -> tuple[Any, Sink]:
    sink = Sink()
    pb = load_playbook()
    if clock is None:
        return Pipeline(pb, host, sink).run(), sink
    return Pipeline(pb, host, sink, clock=lambda: clock[0]).run(), sink


def test_every_step_has_intent_then_outcome_in_order() -> None:
    host = FakeHost()
    result, sink = _run(host)
    assert result.status is HostStatus.SUCCEEDED
    assert host.calls == list(STEP_ORDER)
    expected = [(s, st) for s in STEP_ORDER for st in ("started", "ok")]
    assert sink.trail() == expected
    outcome = next(e for e in sink.events if e["step"] == "stage" and e["status"] == "ok")
    assert outcome["release_id"] == "r2" and outcome["host"] == "fake-01"
    assert outcome["detail_host"] == "not-overwritten" and outcome["duration_ms"] >= 0
    assert sink.events[-1]["event"] == "host.finished"


@pytest.mark.parametrize("step", ["probe", "preflight", "stage", "install", "verify"])
def test_failure_before_switch_aborts_stage_and_never_switches(step: str) -> None:
    host = FakeHost(fail={step: 1})
    result, sink = _run(host)
    assert result.status is HostStatus.FAILED and result.failed_step == step
    assert host.calls[-1] == "abort-stage" and "switch" not in host.calls
    assert host.current == "r1" and host.staged is None and host.bad == []
    assert (step, "failed") in sink.trail() and ("abort-stage", "ok") in sink.trail()
    failed = next(e for e in sink.events if e["step"] == step and e["status"] == "failed")
    assert f"{step} broke" in failed["error"] and failed["kind"] == "CommandFailed"


@pytest.mark.parametrize("step", ["switch", "check"])
def test_failure_at_or_after_switch_rolls_back_once_and_marks_bad(step: str) -> None:
    host = FakeHost(fail={step: 1})
    result, sink = _run(host)
    assert result.status is HostStatus.ROLLED_BACK and result.failed_step == step
    assert host.current == "r1" and host.bad == ["r2"]
    assert host.calls[-3:] == ["mark-bad", "rollback", "recheck"]
    assert "prune" not in host.calls
    rb = next(e for e in sink.events if e["step"] == "rollback" and e["status"] == "started")
    assert f"{step} broke" in rb["reason"]


def test_previous_release_failing_its_check_too_stops_and_reports() -> None:
    host = FakeHost(fail={"check": 1}, recheck_fails=True)
    result, _ = _run(host)
    assert result.status is HostStatus.BROKEN
    assert "previous release failed its check too" in (result.reason or "")
    assert host.calls.count("rollback") == 1


def test_first_release_failing_after_switch_is_marked_bad_without_rollback() -> None:
    host = FakeHost(fail={"check": 1}, previous=None)
    result, _ = _run(host)
    assert result.status is HostStatus.BROKEN
    assert "no previous good release" in (result.reason or "")
    assert "rollback" not in host.calls and host.bad == ["r2"]


def test_prune_failure_is_a_warning_not_a_rollback() -> None:
    host = FakeHost(fail={"prune": 1})
    result, _ = _run(host)
    assert result.status is HostStatus.SUCCEEDED and len(result.warnings) == 1
    assert result.warnings[0].startswith("prune: ") and "prune broke" in result.warnings[0]
    assert host.current == "r2" and "rollback" not in host.calls


def test_a_step_overrunning_its_budget_fails_even_if_it_returned() -> None:
    clock = [0.0]
    host = FakeHost(clock=clock, slow={"install": 5000.0})
    result, _ = _run(host, clock)
    assert result.status is HostStatus.FAILED and result.failed_step == "install"
    assert "exceeded its budget of 1800 s" in (result.error or "")
    assert host.calls[-1] == "abort-stage"


def test_deadline_gives_remaining_time_and_raises_when_spent() -> None:
    now = [0.0]
    d = Deadline("h", "stage", 10, clock=lambda: now[0])
    assert d.timeout() == 10 and d.timeout(cap=3) == 3
    now[0] = 10.5
    with pytest.raises(Exception, match="stage exceeded its budget of 10 s"):
        d.timeout()


def test_a_bug_in_a_step_still_recovers_the_host_then_propagates() -> None:
    class Buggy(FakeHost):
        def run(self, name: str, deadline: Deadline) -> Mapping[str, Any]:
            if name == "verify":
                self.calls.append(name)
                raise ZeroDivisionError("bug")
            return super().run(name, deadline)

    host = Buggy()
    with pytest.raises(ZeroDivisionError):
        _run(host)
    assert host.calls[-1] == "abort-stage" and host.staged is None


# -- the fleet rollout's pure parts -----------------------------------------------------------


@dataclass(frozen=True)
class H:
    name: str


@pytest.mark.parametrize(("n", "canary", "batch", "sizes"), [
    (5, 1, 2, [1, 2, 2]),
    (5, 0, 2, [2, 2, 1]),
    (1, 1, 3, [1]),
    (4, 2, 10, [2, 2]),
    (0, 1, 2, []),
])
def test_plan_batches_canary_first_then_batches_in_order(n: int, canary: int, batch: int,
                                                         sizes: list[int]) -> None:
    from orchestrator.deploy.rollout import plan_batches

    hosts = [H(f"h{i}") for i in range(n)]
    batches = plan_batches(hosts, canary, batch)  # type: ignore[arg-type]
    assert [len(b) for b in batches] == sizes
    assert [h for b in batches for h in b] == hosts  # type: ignore[comparison-overlap]


def _rollout(statuses: dict[str, HostStatus], stopped: Stop | str | None = None,
             undone: dict[str, str | None] | None = None) -> Any:
    """`undone`: {host: None when put back, else why its rollback failed}."""
    from orchestrator.deploy.batch import DeployResult
    from orchestrator.deploy.pipeline import HostResult
    from orchestrator.deploy.rollout import RolloutResult, Undone

    result = DeployResult("dep", "r")
    result.hosts = {n: HostResult(n, s, reason="why", error="err") for n, s in statuses.items()}
    return RolloutResult(result, stopped, {n: Undone(e) for n, e in (undone or {}).items()})


@pytest.mark.parametrize(("statuses", "stopped", "undone", "state"), [
    ({"a": HostStatus.SUCCEEDED, "b": HostStatus.SUCCEEDED}, None, None, "succeeded"),
    ({"a": HostStatus.SUCCEEDED, "b": HostStatus.FAILED}, None, None, "succeeded"),
    ({"a": HostStatus.FAILED}, "1 failed hosts", None, "failed"),
    ({"a": HostStatus.ROLLED_BACK}, "1 failed hosts", None, "rolled_back"),
    ({"a": HostStatus.SUCCEEDED, "b": HostStatus.FAILED}, "1 failed hosts",
     {"a": None}, "rolled_back"),
    ({"a": HostStatus.SUCCEEDED}, Stop.CANCELLED, None, "cancelled"),
    ({"a": HostStatus.SUCCEEDED, "b": HostStatus.FAILED}, "1 failed hosts", None, "failed"),
], ids=["all-ok", "within-budget", "failed", "host-rolled-back", "fleet-undone", "cancelled",
        "over-budget-switched-left"])
def test_rollout_verdict_for_the_daemon_and_the_cli(
        statuses: dict[str, HostStatus], stopped: Stop | str | None,
        undone: dict[str, str | None] | None,
        state: str) -> None:
    from orchestrator.daemon.runners.deploy import outcome_of
    from orchestrator.deploy.rollout import verdict

    out = verdict(_rollout(statuses, stopped, undone))
    assert str(out.state) == state
    assert out.exit_code == (0 if state == "succeeded" else 3)  # `orchestrator deploy`'s
    assert outcome_of(_rollout(statuses, stopped, undone)).as_json() == {
        "state": state, "reason": out.reason, "hosts": out.hosts}  # the daemon's, the same
    if state not in ("succeeded", "cancelled") or "b" in statuses:
        assert out.reason is None or "why (err)" in out.reason
    if undone:
        assert out.hosts["a"] == "rolled_back"
    elif stopped and stopped != "cancelled" and statuses.get("a") is HostStatus.SUCCEEDED:
        # `on_failure: pause` with nobody to resume (`orchestrator deploy`): a stays, named
        assert out.reason is not None and out.reason.endswith("left on the new release: a")


def test_cli_deploy_host_lines_say_how_each_host_ended() -> None:
    from orchestrator.cli.commands.deploy import host_line

    ok, bad = HostStatus.SUCCEEDED, HostStatus.FAILED
    out = _rollout({"a": ok, "b": bad, "c": ok, "d": ok}, "1 failed hosts (b)",
                   {"a": None, "d": "connection lost"})
    assert [host_line(n, out, "r1") for n in "abcd"] == [
        "a: rolled_back r1: the rollout stopped (1 failed hosts (b))",
        "b: failed r1: why (None: err)",
        "c: succeeded r1",
        "d: succeeded r1: the rollout stopped, and rollback failed: connection lost",
    ]


# -- one path for state: the pipeline through the daemon's sink ---------------------------------

def test_through_the_daemons_sink_every_step_and_recovery_action_is_a_step_row(
        tmp_path: Path) -> None:
    from orchestrator.daemon.events import EventHub
    from orchestrator.daemon.sinks import ServiceSink
    from orchestrator.daemon.store import open_store

    store = open_store(tmp_path / "s.db")
    hub = EventHub(store, tmp_path / "logs")
    try:
        store.create_deployment("d1", "app", {"targets": ["fake-01"]})
        result = Pipeline(load_playbook(), FakeHost(fail={"check": 1}), ServiceSink(hub, "d1")
                          ).run()
        assert result.status is HostStatus.ROLLED_BACK
        rows = {r.step: str(r.state) for r in store.steps("d1")}
        assert rows == {"probe": "ok", "preflight": "ok", "stage": "ok", "install": "ok",
                        "verify": "ok", "switch": "ok", "check": "failed", "mark-bad": "ok",
                        "rollback": "ok", "recheck": "ok"}
        events = store.events("d1")
        assert not any("state_error" in e for e in events)  # nothing inferred, nothing refused
        trail = [(e["event"], e["step"], e["status"]) for e in events
                 if e["event"] in {"step", "recovery"}]
        assert trail[:2] == [("step", "probe", "running"), ("step", "probe", "ok")]
        assert ("recovery", "rollback", "started") in trail
        assert [(e["event"], e["status"]) for e in events if e["event"].startswith("host.")] == [
            ("host.started", "started"), ("host.finished", "rolled_back")]
    finally:
        hub.close()
        store.close()


def test_host_outcome_changes_once_through_the_state_machine() -> None:
    result, sink = _run(FakeHost(fail={"verify": 1}))
    assert result.status is HostStatus.FAILED
    finished = [e for e in sink.events if e["event"] == "host.finished"]
    assert len(finished) == 1 and finished[0]["status"] == "failed"
    assert finished[0]["reason"] == result.reason and finished[0]["failed_step"] == "verify"


def test_connection_lost_is_read_from_the_error_type_not_its_name() -> None:
    from orchestrator.errors import HostUnreachable

    class Gone(FakeHost):
        def run(self, name: str, deadline: Deadline) -> Mapping[str, Any]:
            if name == "install":
                raise HostUnreachable(self.host, "connection reset")
            return super().run(name, deadline)

    result, _sink = _run(Gone())
    assert result.connection_lost
    assert [r.name for r in result.steps if r.unreachable] == ["install"]
