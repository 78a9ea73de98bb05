"""Events: one contract dict in the store, the jsonl file and the followers alike; followers
never block the emitter, a lagged one catches up from the store without gaps, and the hub
refuses followers past its cap."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.daemon.events import EventHub, Follower
from orchestrator.errors import DaemonError

CONTRACT = ["seq", "ts", "level", "event", "deployment", "host", "step", "status", "duration_ms"]


@pytest.fixture
def hub(tmp_path: Path, store_target: Path | str) -> Iterator[EventHub]:
    from orchestrator.daemon.store import open_store

    store = open_store(store_target)
    store.create_deployment("d1", "app", {})
    hub = EventHub(store, tmp_path / "logs", follower_buffer=8)
    yield hub
    hub.close()
    store.close()


def _catch_up(hub: EventHub, follower: Follower) -> list[dict[str, Any]]:
    """What the API's follow loop does: the feed after the cursor, else the store after it."""
    fresh, lagged = follower.take()
    if lagged:
        fresh = hub.store.events("d1", after=follower.cursor)
        follower.cursor = fresh[-1]["seq"] if fresh else follower.cursor
    return fresh


def test_store_jsonl_and_follower_hold_identical_events(hub: EventHub, tmp_path: Path) -> None:
    wakes: list[int] = []
    follower = hub.follow("d1", lambda: wakes.append(1))
    assert follower.take() == ([], False)  # caught up: waits for the next event
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
    assert follower.take() == ([], False)
    sink.emit("note", message="after the take")
    assert len(wakes) == 2 and follower.take()[0][0]["message"] == "after the take"


def test_unknown_level_is_refused(hub: EventHub) -> None:
    with pytest.raises(ValueError):
        hub.sink("d1").emit("x", level="chatty")
    assert hub.store.events("d1") == []


def test_a_slow_follower_lags_then_catches_up_without_gaps(hub: EventHub) -> None:
    slow = hub.follow("d1", lambda: None)
    sink = hub.sink("d1")
    for i in range(50):  # far beyond the feed of 8: never blocks
        sink.emit("tick", n=i)
    buffered, lagged = slow.take()
    assert lagged and buffered == [] and slow.dropped == 42  # seqs 1..42 left the feed
    seen = _catch_up(hub, slow)  # from the store
    for i in range(50, 55):
        sink.emit("tick", n=i)
    seen += _catch_up(hub, slow)  # from the feed
    assert [e["n"] for e in seen] == list(range(55))
    assert [e["seq"] for e in seen] == list(range(1, 56))
    assert slow.take() == ([], False)


def test_the_emitter_wakes_only_waiting_followers_once(hub: EventHub) -> None:
    wakes: list[str] = []
    waiting = hub.follow("d1", lambda: wakes.append("waiting"))
    hub.follow("d1", lambda: wakes.append("busy"))  # never takes: never woken
    assert waiting.take() == ([], False)  # nothing yet: now waiting
    sink = hub.sink("d1")
    for i in range(5):
        sink.emit("tick", n=i)
    assert wakes == ["waiting"]
    assert [e["n"] for e in waiting.take()[0]] == list(range(5))


def test_followers_past_the_cap_are_refused(hub: EventHub) -> None:
    first = hub.follow("d1", lambda: None, limit=2)
    hub.follow("d2", lambda: None, limit=2)
    with pytest.raises(DaemonError) as refused:
        hub.follow("d1", lambda: None, limit=2)
    assert refused.value.http_status == 503 and "max_followers" in str(refused.value)
    hub.unfollow(first)
    hub.unfollow(first)  # idempotent
    hub.follow("d1", lambda: None, limit=2)
    assert hub.follower_count() == 2


def test_a_vanished_follower_never_blocks_the_emitter(hub: EventHub) -> None:
    def gone() -> None:
        raise RuntimeError("Event loop is closed")

    vanished = hub.follow("d1", gone)
    blocked = hub.follow("d1", lambda: time.sleep(0))
    sink = hub.sink("d1")
    started = time.monotonic()
    for i in range(100):
        vanished.take()  # waiting again each time: woken, and its wake fails, every event
        sink.emit("tick", n=i)
    assert time.monotonic() - started < 30  # a liveness bound, not a speed figure
    assert len(hub.store.events("d1")) == 100
    hub.unfollow(blocked)
    assert hub.follower_count() == 1


def test_concurrent_emitters_keep_store_file_and_follower_in_one_order(
        tmp_path: Path) -> None:
    from orchestrator.daemon.store import open_store

    store = open_store(tmp_path / "s.db")
    store.create_deployment("d1", "app", {})
    hub = EventHub(store, tmp_path / "logs", follower_buffer=10_000)
    big = hub.follow("d1", lambda: None)
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
    assert live == store.events("d1") == lines
    assert [e["seq"] for e in live] == list(range(1, 161))
    hub.close()
    store.close()


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
