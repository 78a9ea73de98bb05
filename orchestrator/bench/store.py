"""The store backends side by side (issue 16): SQLite (one daemon) and PostgreSQL (a private
cluster started here, orchestrator/testbed/postgres.py), through the daemon's own `Store`:

- event appends per second, one writer (a daemon's rollout writes a few per host step);
- on PostgreSQL, three stores on one database (three daemons) appending to one deployment at
  once: events per second, and whether `seq` stayed gapless;
- event-to-other-daemon: from an append on one store to its NOTIFY read by another store's
  `notifications()`, polled here as fast as it can (the daemon reads it when its LISTEN socket
  is readable, orchestrator/daemon/listener.py), so the figure is the database's;
- a lease claim and a renewal (the heartbeat's cost per held deployment).

Figures are printed, not asserted; the machine's load is printed by the runner.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from orchestrator.daemon.store import Store, open_store

EVENTS = 400


def _event(n: int, worker: int = 0) -> dict[str, Any]:
    return {"deployment": "d", "ts": time.time(), "level": "info", "event": "step",
            "host": f"h{worker}", "step": "install", "status": "running", "n": n}


def _appends(store: Store) -> float:
    store.create_deployment("d", "app", {})
    t0 = time.perf_counter()
    for i in range(EVENTS):
        store.append_event(_event(i))
    return EVENTS / (time.perf_counter() - t0)


def _three_writers(url: str) -> tuple[float, bool]:
    stores = [open_store(url) for _ in range(3)]
    stores[0].create_deployment("d", "app", {})
    t0 = time.perf_counter()
    threads = [threading.Thread(target=lambda s=s, w=w: [s.append_event(_event(i, w))
                                                         for i in range(EVENTS // 3)])
               for w, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = 3 * (EVENTS // 3) / (time.perf_counter() - t0)
    seqs = [e["seq"] for e in stores[0].events("d")]
    for s in stores:
        s.close()
    return rate, seqs == list(range(1, len(seqs) + 1))


def _notify_latency(url: str) -> list[float]:
    writer, reader = open_store(url), open_store(url)
    writer.create_deployment("d", "app", {})
    reader.notifications()  # LISTEN from here on
    lags = []
    for i in range(50):
        t0 = time.perf_counter()
        writer.append_event(_event(i))
        while not reader.notifications():
            pass
        lags.append(time.perf_counter() - t0)
    writer.close()
    reader.close()
    return lags


def _leases(store: Store) -> tuple[float, float]:
    t0 = time.perf_counter()
    tokens = [store.claim("deployment", f"k{i}", "bench", 30.0) for i in range(100)]
    claim = (time.perf_counter() - t0) / 100
    t0 = time.perf_counter()
    for i, token in enumerate(tokens):
        assert token is not None and store.renew("deployment", f"k{i}", "bench", token, 30.0)
    return claim, (time.perf_counter() - t0) / 100


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    return (f"p50 {statistics.median(ordered) * 1000:.1f} ms, "
            f"p95 {ordered[int(len(ordered) * 0.95)] * 1000:.1f} ms")


def run() -> None:
    from orchestrator.testbed.postgres import Cluster

    with tempfile.TemporaryDirectory() as tmp:
        sqlite = open_store(Path(tmp) / "state.sqlite3")
        rate = _appends(sqlite)
        claim, renew = _leases(sqlite)
        sqlite.close()
        print(f"SQLite     : {rate:7.0f} event appends/s (one writer); lease claim "
              f"{claim * 1000:.2f} ms, renewal {renew * 1000:.2f} ms")
    cluster = Cluster.start()
    try:
        pg = open_store(cluster.database())
        rate = _appends(pg)
        claim, renew = _leases(pg)
        pg.close()
        print(f"PostgreSQL : {rate:7.0f} event appends/s (one writer); lease claim "
              f"{claim * 1000:.2f} ms, renewal {renew * 1000:.2f} ms")
        rate3, gapless = _three_writers(cluster.database())
        print(f"PostgreSQL : {rate3:7.0f} event appends/s from three stores (daemons) into one "
              f"deployment; seq gapless: {gapless}")
        print(f"PostgreSQL : event to another daemon (NOTIFY): "
              f"{_ms(_notify_latency(cluster.database()))}")
    finally:
        cluster.stop()
