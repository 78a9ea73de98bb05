"""The state machine: allowed transitions, terminal states, and `change_state` (check, persist,
emit) against the real store and event hub."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.core.states import (
    DEPLOYMENT_TERMINAL,
    DEPLOYMENT_TRANSITIONS,
    HOST_TERMINAL,
    HOST_TRANSITIONS,
    STEP_TRANSITIONS,
    DeploymentState,
    HostOutcome,
    HostStepState,
    change_deployment_state,
    change_host_state,
    change_step_state,
    check_deployment_transition,
    check_host_transition,
    check_step_transition,
)
from orchestrator.daemon.events import EventHub
from orchestrator.daemon.store import open_store
from orchestrator.errors import InvalidTransition

D, S = DeploymentState, HostStepState


def test_every_state_has_a_transition_row() -> None:
    assert set(DEPLOYMENT_TRANSITIONS) == set(D)
    assert set(STEP_TRANSITIONS) == set(S)


@pytest.mark.parametrize("state", [D.FAILED, D.ROLLED_BACK, D.CANCELLED])
def test_final_states_go_nowhere(state: DeploymentState) -> None:
    assert state in DEPLOYMENT_TERMINAL
    for new in D:
        with pytest.raises(InvalidTransition):
            check_deployment_transition(state, new)


def test_deployment_paths() -> None:
    check_deployment_transition(D.QUEUED, D.RUNNING)
    check_deployment_transition(D.QUEUED, D.CANCELLED)
    check_deployment_transition(D.RUNNING, D.ROLLED_BACK)
    check_deployment_transition(D.SUCCEEDED, D.ROLLING_BACK)
    with pytest.raises(InvalidTransition, match="from queued to succeeded"):
        check_deployment_transition(D.QUEUED, D.SUCCEEDED)
    with pytest.raises(InvalidTransition):
        check_deployment_transition(D.SUCCEEDED, D.RUNNING)


def test_step_paths() -> None:
    check_step_transition(None, S.RUNNING)
    check_step_transition(S.RUNNING, S.OK)
    check_step_transition(S.OK, S.ROLLED_BACK)
    with pytest.raises(InvalidTransition):
        check_step_transition(None, S.ROLLED_BACK)
    with pytest.raises(InvalidTransition):
        check_step_transition(S.OK, S.RUNNING)
    with pytest.raises(InvalidTransition):
        check_step_transition(S.SKIPPED, S.OK)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[EventHub]:
    store = open_store(tmp_path / "s.db")
    hub = EventHub(store, tmp_path / "logs")
    yield hub
    hub.close()
    store.close()


def test_change_state_persists_and_emits_once(hub: EventHub) -> None:
    store = hub.store
    store.create_deployment("d1", "app", {"targets": ["h"]})
    sink = hub.sink("d1")
    assert change_deployment_state(store, sink, "d1", D.RUNNING) is D.QUEUED
    assert change_step_state(store, sink, "d1", "h", "probe", S.RUNNING) is None
    change_step_state(store, sink, "d1", "h", "probe", S.FAILED, reason="no route", duration_ms=3)
    assert store.get_deployment("d1").state is D.RUNNING
    [step] = store.steps("d1")
    assert (step.state, step.detail) == (S.FAILED, {"reason": "no route"})
    events = store.events("d1")
    assert [(e["event"], e["host"], e["step"], e["status"]) for e in events] == [
        ("deployment", None, None, "running"),
        ("step", "h", "probe", "running"),
        ("step", "h", "probe", "failed"),
    ]
    assert events[0]["from"] == "queued" and events[2]["reason"] == "no route"
    assert events[2]["level"] == "error" and events[2]["duration_ms"] == 3


def test_a_refused_change_is_neither_persisted_nor_emitted(hub: EventHub) -> None:
    store = hub.store
    store.create_deployment("d1", "app", {})
    with pytest.raises(InvalidTransition):
        change_deployment_state(store, hub.sink("d1"), "d1", D.SUCCEEDED)
    assert store.get_deployment("d1").state is D.QUEUED
    assert store.events("d1") == []


# -- the host outcome ---------------------------------------------------------------------------

H = HostOutcome


def test_every_host_outcome_has_a_transition_row() -> None:
    assert set(HOST_TRANSITIONS) == set(H)
    assert {H.SUCCEEDED, H.FAILED, H.ROLLED_BACK, H.BROKEN} == HOST_TERMINAL


@pytest.mark.parametrize(("old", "new", "allowed"), [
    (H.PENDING, H.RUNNING, True),
    (H.PENDING, H.FAILED, True),       # refused before its pipeline (unreachable, locked)
    (H.PENDING, H.SUCCEEDED, False),   # nothing succeeds without running
    (H.RUNNING, H.SUCCEEDED, True),
    (H.RUNNING, H.BROKEN, True),
    (H.RUNNING, H.PENDING, False),
    (H.FAILED, H.SUCCEEDED, True),     # settled again after a lost connection
    (H.BROKEN, H.ROLLED_BACK, True),
    (H.SUCCEEDED, H.ROLLED_BACK, True),
    (H.SUCCEEDED, H.RUNNING, False),   # a host's pipeline runs once per deployment
    (H.ROLLED_BACK, H.BROKEN, False),  # broken is only the pipeline's own verdict
])
def test_host_outcome_table(old: HostOutcome, new: HostOutcome, allowed: bool) -> None:
    if allowed:
        check_host_transition(old, new)
    else:
        with pytest.raises(InvalidTransition):
            check_host_transition(old, new)


def test_change_host_state_emits_started_then_finished(hub: EventHub) -> None:
    hub.store.create_deployment("d1", "app", {})
    sink = hub.sink("d1")
    assert change_host_state(sink, "h", H.PENDING, H.RUNNING, steps=["probe"]) is H.RUNNING
    change_host_state(sink, "h", H.RUNNING, H.ROLLED_BACK, reason="check failed")
    with pytest.raises(InvalidTransition):
        change_host_state(sink, "h", H.ROLLED_BACK, H.RUNNING)
    events = hub.store.events("d1")
    assert [(e["event"], e["status"], e["level"]) for e in events] == [
        ("host.started", "started", "info"), ("host.finished", "rolled_back", "error")]
    assert events[0]["steps"] == ["probe"] and events[1]["reason"] == "check failed"


def test_a_recovery_step_keeps_its_started_word(hub: EventHub) -> None:
    store = hub.store
    store.create_deployment("d1", "app", {})
    sink = hub.sink("d1")
    change_step_state(store, sink, "d1", "h", "rollback", S.RUNNING, event="recovery",
                      level="warning", reason="check failed", extra={"reason": "check failed"})
    change_step_state(store, sink, "d1", "h", "rollback", S.OK, event="recovery",
                      level="warning", extra={"current": "r1"})
    [row] = store.steps("d1")
    assert (row.step, row.state, row.detail) == ("rollback", S.OK, {"reason": "check failed"})
    assert [(e["event"], e["status"], e["level"]) for e in store.events("d1")] == [
        ("recovery", "started", "warning"), ("recovery", "ok", "warning")]
    assert store.events("d1")[1]["current"] == "r1"
