"""Other daemons' events reach this daemon's followers when their NOTIFY arrives
(orchestrator/daemon/listener.py): the LISTEN socket wakes the event loop, no tick is needed;
the announcements of events a feed already holds cost no store read."""

from __future__ import annotations

import asyncio
import select
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.daemon.events import EventHub
from orchestrator.daemon.listener import Listener
from orchestrator.daemon.store import open_store
from orchestrator.testbed.postgres import Cluster

EVENTS = 30


def _event(n: int) -> dict[str, object]:
    return {"deployment": "d", "ts": time.time(), "level": "info", "event": "e", "n": n}


def test_another_stores_events_wake_a_follower_without_any_tick(
        postgres: Cluster, tmp_path: Path) -> None:
    """Two stores on one database stand for two daemons: events written through one reach a
    follower of the other's hub, each seq once and in order, woken by the socket alone (the
    tick is called once, to connect: before the listener, nothing would have woken it after)."""
    url = postgres.database()
    other, mine = open_store(url), open_store(url)
    other.create_deployment("d", "app", {})
    hub = EventHub(mine, tmp_path / "logs")

    async def follow() -> tuple[list[int], list[float]]:
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def wake() -> None:  # from the catch-up's thread
            loop.call_soon_threadsafe(woken.set)

        follower = hub.follow("d", wake)
        assert follower.take() == ([], False)  # nothing yet: the next event wakes it
        listener = Listener(hub)
        listener.tick(time.monotonic())  # the one tick: it opens the LISTEN connection
        async with asyncio.timeout(30):
            while not listener.watching:
                await asyncio.sleep(0.01)
        seqs: list[int] = []
        lags: list[float] = []
        try:
            for n in range(EVENTS):
                written = time.monotonic()
                await asyncio.to_thread(other.append_event, _event(n))
                async with asyncio.timeout(10):  # FOLLOW_POLL_S-scale: a missed wake fails
                    while True:
                        await woken.wait()
                        woken.clear()
                        events, lagged = follower.take()
                        assert not lagged
                        if events:
                            break
                lags.append(time.monotonic() - written)
                seqs += [int(e["seq"]) for e in events]
                assert follower.take() == ([], False)  # found empty: the next event wakes it
        finally:
            listener.stop()
        assert not listener.watching
        return seqs, lags

    try:
        seqs, lags = asyncio.run(follow())
    finally:
        hub.close()
        mine.close()
        other.close()
    assert seqs == list(range(1, EVENTS + 1))
    print(f"append to follower woken: p50 {statistics.median(lags) * 1000:.1f} ms, "
          f"max {max(lags) * 1000:.1f} ms")


def test_a_catch_up_skips_this_daemons_own_events(
        postgres: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its own events are announced to it too, and are in its feeds already: reading their
    announcements (done at every one now) reads no event rows."""
    store = open_store(postgres.database())
    store.create_deployment("d", "app", {})
    hub = EventHub(store, tmp_path / "logs")
    try:
        follower = hub.follow("d", lambda: None)
        assert hub.catch_up() == 0  # LISTEN from here on
        fd = store.listen_fd()
        assert fd is not None
        for n in range(3):
            hub.publish(_event(n))
        assert select.select([fd], [], [], 10)[0] == [fd]  # the announcements arrived
        reads: list[str] = []
        events = store.events

        def counted(deployment: str, **kwargs: Any) -> list[dict[str, Any]]:
            reads.append(deployment)
            return events(deployment, **kwargs)

        monkeypatch.setattr(store, "events", counted)
        assert hub.catch_up() == 0 and reads == []
        assert [e["seq"] for e in follower.take()[0]] == [1, 2, 3]
    finally:
        hub.close()
        store.close()


def test_a_dropped_listen_connection_is_reopened_by_the_tick_and_nothing_is_missed(
        postgres: Cluster, tmp_path: Path) -> None:
    """The database drops the LISTEN connection (a restart, an admin): the loop sees its socket
    close and stops watching it, the next tick opens a new one, and the event whose
    announcement nobody heard reaches the follower with the next one, in seq order."""
    import psycopg

    url = postgres.database()
    other, mine = open_store(url), open_store(url)
    other.create_deployment("d", "app", {})
    hub = EventHub(mine, tmp_path / "logs")

    async def until(what: Callable[[], bool]) -> None:
        async with asyncio.timeout(30):
            while not what():
                await asyncio.sleep(0.01)

    async def follow() -> list[int]:
        follower = hub.follow("d", lambda: None)
        listener = Listener(hub)
        listener.tick(time.monotonic())
        await until(lambda: listener.watching)
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()")
        await until(lambda: not listener.watching)  # the closed socket, seen by the loop
        await asyncio.to_thread(other.append_event, _event(0))  # announced to no one here
        listener.tick(time.monotonic())
        await until(lambda: listener.watching)
        await asyncio.to_thread(other.append_event, _event(1))
        seqs: list[int] = []
        async with asyncio.timeout(10):
            while len(seqs) < 2:
                await asyncio.sleep(0.01)
                seqs += [int(e["seq"]) for e in follower.take()[0]]
        listener.stop()
        return seqs

    try:
        assert asyncio.run(follow()) == [1, 2]
    finally:
        hub.close()
        mine.close()
        other.close()
