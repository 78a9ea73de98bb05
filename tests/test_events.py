"""Events: one contract dict in the store, the jsonl file and the followers alike; followers
never block the emitter, and a lagged one catches up from the store without gaps."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.daemon.events import EventHub, Follower, merge_in_order

CONTRACT = ["seq", "ts", "level", "event", "deployment", "host", "step", "status", "duration_ms"]


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[EventHub]:
    from orchestrator.daemon.store import open_store

    store = open_store(tmp_path / "s.db")
    store.create_deployment("d1", "app", {})
    hub = EventHub(store, tmp_path / "logs", follower_buffer=8)
    yield hub
    hub.close()
    store.close()


def _catch_up(hub: EventHub, follower: Follower, last: int) -> tuple[list[dict[str, Any]], int]:
    """What the API's follow loop does: buffered events in order, the store after a gap."""
    buffered, lagged = follower.take()
    fresh, gap = merge_in_order(last, buffered)
    if lagged or gap:
        fresh = hub.store.events("d1", after=last)
    return fresh, (fresh[-1]["seq"] if fresh else last)


def test_store_jsonl_and_follower_hold_identical_events(hub: EventHub, tmp_path: Path) -> None:
    wakes: list[int] = []
    follower = hub.follow("d1", lambda: wakes.append(1))
    sink = hub.sink("d1")
    sink.emit("deployment", status="running")
    sink.emit("step", host="h1", step="probe", status="ok", duration_ms=12.3456,
              driver="550.54.15", gpus=[{"name": "H100"}])
    sink.emit("note", level="warning", message="über ✓")
    live, _ = follower.take()
    stored = hub.store.events("d1")
    lines = [json.loads(x) for x in (tmp_path / "logs/d1.jsonl").read_text().splitlines()]
    assert live == stored == lines
    assert [list(e)[:9] for e in stored] == [CONTRACT] * 3
    assert stored[1]["duration_ms"] == 12.346 and stored[1]["gpus"] == [{"name": "H100"}]
    assert len(wakes) == 1  # one wake-up for the batch the reader had not taken yet
    sink.emit("note", message="after the take")
    assert len(wakes) == 2 and follower.take()[0][0]["message"] == "after the take"


def test_unknown_level_is_refused(hub: EventHub) -> None:
    with pytest.raises(ValueError):
        hub.sink("d1").emit("x", level="chatty")
    assert hub.store.events("d1") == []


def test_a_slow_follower_lags_then_catches_up_without_gaps(hub: EventHub) -> None:
    slow = hub.follow("d1", lambda: None)
    sink = hub.sink("d1")
    for i in range(50):  # far beyond the buffer of 8: never blocks
        sink.emit("tick", n=i)
    buffered, lagged = slow.take()
    assert lagged and buffered == [] and slow.dropped > 0
    seen, last = [], 0
    fresh, last = _catch_up_after(hub, lagged, last)
    seen += fresh
    for i in range(50, 55):
        sink.emit("tick", n=i)
    fresh, last = _catch_up(hub, slow, last)
    seen += fresh
    assert [e["n"] for e in seen] == list(range(55))
    assert [e["seq"] for e in seen] == list(range(1, 56))


def _catch_up_after(hub: EventHub, lagged: bool, last: int) -> tuple[list[dict[str, Any]], int]:
    assert lagged
    fresh = hub.store.events("d1", after=last)
    return fresh, fresh[-1]["seq"]


def test_a_vanished_follower_never_blocks_the_emitter(hub: EventHub) -> None:
    def gone() -> None:
        raise RuntimeError("Event loop is closed")

    hub.follow("d1", gone)
    blocked = hub.follow("d1", lambda: time.sleep(0))
    sink = hub.sink("d1")
    started = time.monotonic()
    for i in range(100):
        sink.emit("tick", n=i)
    assert time.monotonic() - started < 30  # a liveness bound, not a speed figure
    assert len(hub.store.events("d1")) == 100
    hub.unfollow(blocked)
    assert hub.follower_count() == 1


def test_concurrent_emitters_keep_store_file_and_follower_in_one_order(
        hub: EventHub, tmp_path: Path) -> None:
    big = hub.follow("d1", lambda: None)
    big._capacity = 10_000
    sink = hub.sink("d1")

    def emit(host: str) -> None:
        for i in range(40):
            sink.emit("step", host=host, step="s", status="ok", n=i)

    threads = [threading.Thread(target=emit, args=(f"h{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    live, lagged = big.take()
    lines = [json.loads(x) for x in (tmp_path / "logs/d1.jsonl").read_text().splitlines()]
    assert not lagged
    assert live == hub.store.events("d1") == lines
    assert [e["seq"] for e in live] == list(range(1, 161))


def test_merge_in_order() -> None:
    events = [{"seq": s} for s in (3, 4, 5)]
    assert merge_in_order(3, events) == ([{"seq": 4}, {"seq": 5}], False)
    assert merge_in_order(1, events) == ([], True)  # seq 2 missing: go back to the store
    assert merge_in_order(5, events) == ([], False)


def test_deployment_events_and_errors_are_mirrored_to_the_daemon_log(hub: EventHub) -> None:
    from structlog.testing import capture_logs

    sink = hub.sink("d1")
    with capture_logs() as logs:
        sink.emit("step", host="h1", step="probe", status="ok")
        sink.emit("deployment", status="failed", level="error", reason="preflight failed")
        sink.emit("step", host="h1", step="install", status="failed", level="error")
    assert [(x["event"], x["log_level"], x["status"]) for x in logs] == [
        ("deployment", "error", "failed"), ("step", "error", "failed")]
    assert logs[0]["reason"] == "preflight failed" and logs[0]["seq"] == 2
