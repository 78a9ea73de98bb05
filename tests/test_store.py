"""The store against both backends (`store_target`: a real SQLite file, a real PostgreSQL
database): transitions, event numbering under concurrent writers (and, on PostgreSQL, from
several daemons' connections), bundles, leases; and SQLite's own pragmas, migrations of old
files, integrity check and the state-dir lock (across processes)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from orchestrator.core.states import DeploymentState, HostStepState
from orchestrator.daemon.sql_store import SqlStore
from orchestrator.daemon.sqlite_store import SqliteStore
from orchestrator.daemon.statedir import lock_state_dir
from orchestrator.daemon.store import SCHEMA_VERSION, open_store
from orchestrator.errors import InvalidTransition, NotFound, StateDirLocked, StoreCorrupt

D, S = DeploymentState, HostStepState


def test_pragmas_and_schema_version(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "s.db")
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.schema_version() == SCHEMA_VERSION
    store.close()
    # Reopening does not re-run migrations (they would fail on existing tables).
    assert SqliteStore.open(tmp_path / "s.db").schema_version() == SCHEMA_VERSION


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    SqliteStore.open(tmp_path / "s.db").close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreCorrupt, match="schema version 99 is newer"):
        SqliteStore.open(tmp_path / "s.db")


def test_a_corrupt_file_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore.open(path)
    for i in range(200):
        store.create_deployment(f"d{i}", "app", {"pad": "x" * 500})
    store.close()
    data = bytearray(path.read_bytes())
    data[4096 * 2: 4096 * 2 + 2000] = b"\xff" * 2000  # trash a b-tree page
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt, match=r"restore the state dir from a backup|not a usable"):
        SqliteStore.open(path)


def test_garbage_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "s.db").write_bytes(b"hello, this is not sqlite" * 100)
    with pytest.raises(StoreCorrupt, match="not a usable orchestrator store"):
        SqliteStore.open(tmp_path / "s.db")


def test_state_dir_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    handle = lock_state_dir(tmp_path)
    code = ("import sys; from pathlib import Path\n"
            "from orchestrator.daemon.statedir import lock_state_dir\n"
            "from orchestrator.errors import StateDirLocked\n"
            "try:\n lock_state_dir(Path(sys.argv[1]))\nexcept StateDirLocked as e:\n"
            " print(e); sys.exit(7)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 7, proc.stderr
    assert "already uses the state dir" in proc.stdout
    handle.close()  # released: the next one gets it
    lock_state_dir(tmp_path).close()


def test_lock_in_same_process_is_refused(tmp_path: Path) -> None:
    handle = lock_state_dir(tmp_path)
    with pytest.raises(StateDirLocked):
        lock_state_dir(tmp_path)
    handle.close()


def test_deployments_and_transitions(store_target: Path | str) -> None:
    store = open_store(store_target)
    store.create_deployment("a", "app1", {"targets": ["h1"]})
    store.create_deployment("b", "app2", {"targets": ["h2"]})
    assert store.transition_deployment("a", D.RUNNING) is D.QUEUED
    with pytest.raises(InvalidTransition):
        store.transition_deployment("a", D.QUEUED)
    with pytest.raises(NotFound):
        store.transition_deployment("zzz", D.RUNNING)
    store.transition_deployment("a", D.FAILED, result={"reason": "x"})
    record = store.get_deployment("a")
    assert record.state is D.FAILED and record.result == {"reason": "x"}
    assert [r.id for r in store.list_deployments(app="app2")] == ["b"]
    assert [r.id for r in store.list_deployments(states=frozenset({D.QUEUED}))] == ["b"]
    store.close()


def test_step_intent_and_outcome(store_target: Path | str) -> None:
    store = open_store(store_target)
    store.create_deployment("a", "app", {})
    store.transition_step("a", "h1", "switch", S.RUNNING)
    [running] = store.steps("a")
    assert running.state is S.RUNNING and running.started is not None and running.finished is None
    store.transition_step("a", "h1", "switch", S.OK, detail={"release": "r1"})
    [done] = store.steps("a")
    assert done.started == running.started and done.finished is not None
    assert done.detail == {"release": "r1"}
    with pytest.raises(InvalidTransition):
        store.transition_step("a", "h1", "switch", S.RUNNING)
    store.close()


def test_foreign_keys_refuse_orphan_events(store_target: Path | str) -> None:
    store = open_store(store_target)
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        store.append_event({"deployment": "nope", "ts": 1.0, "level": "info", "event": "x"})
    store.close()


def test_event_seq_has_no_gaps_under_concurrent_writers(store_target: Path | str) -> None:
    store = open_store(store_target)
    store.create_deployment("a", "app", {})

    def write(worker: int) -> None:
        for i in range(50):
            store.append_event({"deployment": "a", "ts": 1.0, "level": "info", "event": "e",
                                "host": f"h{worker}", "n": i})

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = store.events("a")
    assert [e["seq"] for e in events] == list(range(1, 201))
    for worker in range(4):  # each writer's own events stay in its order
        assert [e["n"] for e in events if e["host"] == f"h{worker}"] == list(range(50))
    store.close()


def test_hosts_keep_the_latest_record(store_target: Path | str) -> None:
    store = open_store(store_target)
    store.record_host("h1", "unreachable", ["no route"], None)
    store.record_host("h1", "healthy", [], {"schema": 1})
    store.record_host("h2", "degraded", ["NVML: driver not loaded"], {"schema": 1})
    hosts = store.hosts()
    assert [(h["host"], h["status"]) for h in hosts] == [("h1", "healthy"), ("h2", "degraded")]
    assert store.host_names() == ["h1", "h2"]  # the fleet page's names, facts not read
    assert [(h["host"], h["status"]) for h in store.hosts(["h1", "h9"])] == [("h1", "healthy")]
    assert store.hosts([]) == []
    with pytest.raises(ValueError):
        store.record_host("h3", "fine", [], None)
    store.record_release("h1", "app", "r1", "current", "a")
    assert store.releases("app")[0]["release_id"] == "r1"
    store.close()


def test_reads_do_not_wait_for_the_writer(store_target: Path | str) -> None:
    store = open_store(store_target)
    store.create_deployment("a", "app", {})
    store.append_event({"deployment": "a", "ts": 1.0, "level": "info", "event": "e"})
    seen: list[int] = []
    assert isinstance(store, SqlStore)
    with store._lock:  # the writer is busy (in a commit's fsync, say)
        reader = threading.Thread(target=lambda: seen.append(len(store.events("a"))))
        reader.start()
        reader.join(timeout=30)
    assert seen == [1]
    store.close()


def test_a_version_1_file_is_migrated_in_place_keeping_its_data(tmp_path: Path) -> None:
    from orchestrator.daemon.store import MIGRATIONS

    path = tmp_path / "s.db"
    with sqlite3.connect(path) as conn:  # what the first release of the daemon wrote
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.executescript(MIGRATIONS[0])
        conn.execute("INSERT INTO deployments VALUES ('old', 'app', '{}', 'succeeded', 1, 1, NULL)")
    conn.close()
    store = SqliteStore.open(path)
    assert store.schema_version() == SCHEMA_VERSION == 5
    assert store.get_deployment("old").state is D.SUCCEEDED
    store.record_watched("/specs/a.yaml", "abc", "old", None)
    assert store.watched() == {"/specs/a.yaml": "abc"}
    store.close()


def test_a_version_2_file_is_migrated_in_place_keeping_its_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.daemon.sql_store as store_module

    path = tmp_path / "s.db"
    with monkeypatch.context() as m:  # the previous release's code path: migrations 0 -> 2
        m.setattr(store_module, "SCHEMA_VERSION", 2)
        old = SqliteStore.open(path)
        assert old.schema_version() == 2
        old.create_deployment("old", "app", {"targets": ["h1"]})
        old.record_host("h1", "degraded", ["app: driver 550 -> 560"], {"schema": 1})
        old.record_watched("/specs/a.yaml", "abc", "old", None)
        old.close()
    with sqlite3.connect(path) as conn:
        assert not conn.execute("SELECT name FROM sqlite_master WHERE name = 'app_results'"
                                ).fetchall()
    conn.close()
    store = SqliteStore.open(path)
    assert store.schema_version() == SCHEMA_VERSION == 5
    assert store.get_deployment("old").spec == {"targets": ["h1"]}
    assert [(h["host"], h["status"], h["reasons"]) for h in store.hosts()] == [
        ("h1", "degraded", ["app: driver 550 -> 560"])]
    assert store.watched() == {"/specs/a.yaml": "abc"}
    assert store.app_results("h1") == {}
    store.record_app_result("h1", "app", "degraded", ["driver 550 -> 560"])
    assert store.app_results("h1") == {"app": ("degraded", ["driver 550 -> 560"])}
    store.close()


def test_app_results_are_kept_per_host_and_app_across_a_reopen(store_target: Path | str) -> None:
    store = open_store(store_target)
    store.record_app_result("h1", "a", "degraded", ["driver 550 -> 560"])
    store.record_app_result("h1", "b", "healthy", [])
    store.record_app_result("h2", "a", "failed", ["model file model/m.joblib changed"])
    store.record_app_result("h1", "b", "failed", ["warmup golden: 3 of 8 outputs differ"])
    with pytest.raises(ValueError, match="unknown app status"):
        store.record_app_result("h1", "c", "fine", [])
    store.close()

    store = open_store(store_target)  # a restarted daemon sees what the last one stored
    assert store.app_results("h1") == {
        "a": ("degraded", ["driver 550 -> 560"]),
        "b": ("failed", ["warmup golden: 3 of 8 outputs differ"]),  # the latest, replaced
    }
    every = store.fleet_app_results()  # the fleet page's one query
    assert {h: {a: r["status"] for a, r in apps.items()} for h, apps in every.items()} == {
        "h1": {"a": "degraded", "b": "failed"}, "h2": {"a": "failed"}}
    assert every["h1"]["a"]["reasons"] == ["driver 550 -> 560"]
    assert list(store.fleet_app_results(["h2"])) == ["h2"]
    assert store.forget_app_results("h1", keep={"b", "z"}) == ["a"]
    assert list(store.app_results("h1")) == ["b"]
    assert store.app_results("h2") == {"a": ("failed", ["model file model/m.joblib changed"])}
    assert store.forget_app_results("h1", keep=set()) == ["b"]
    assert store.app_results("h1") == {}
    store.close()


def test_a_bundle_round_trips_in_chunks_and_a_damaged_one_is_refused(
        store_target: Path | str, tmp_path: Path) -> None:
    import io

    from orchestrator.daemon import sql_store

    store = open_store(store_target)
    data = bytes(range(256)) * ((3 * sql_store.CHUNK_BYTES) // 256 + 7)  # 4 chunks, last short
    digest = store.put_bundle("d1", io.BytesIO(data))
    out = io.BytesIO()
    assert store.get_bundle("d1", out) and out.getvalue() == data
    assert digest == __import__("hashlib").sha256(data).hexdigest()
    assert store.get_bundle("nope", io.BytesIO()) is False
    assert isinstance(store, SqlStore)
    with store._tx() as q:  # one byte of one chunk changed behind the store's back
        q("UPDATE bundle_chunks SET data = ? WHERE deployment = ? AND n = 2",
          (b"x" + data[2 * sql_store.CHUNK_BYTES + 1: 3 * sql_store.CHUNK_BYTES], "d1"))
    with pytest.raises(StoreCorrupt, match="does not match its sha256"):
        store.get_bundle("d1", io.BytesIO())
    store.drop_bundle("d1")
    assert store.get_bundle("d1", io.BytesIO()) is False
    store.close()


def test_a_lease_is_held_by_one_owner_until_it_expires_and_its_token_grows(
        store_target: Path | str) -> None:
    import time

    store = open_store(store_target)
    assert store.claim("deployment", "d1", "a", 0.5) == 1
    assert store.claim("deployment", "d1", "b", 0.5) is None  # held
    assert store.renew("deployment", "d1", "a", 1, 0.5)
    assert store.claim("deployment", "d1", "a", 0.5) == 2  # the owner re-claims: a new token
    assert not store.renew("deployment", "d1", "a", 1, 0.5)  # the old token is fenced off
    time.sleep(0.7)
    assert not store.renew("deployment", "d1", "a", 2, 0.5)  # expired: not renewed
    assert store.claim("deployment", "d1", "b", 5) == 3  # taken over
    assert store.lease("deployment", "d1") is not None
    store.release("deployment", "d1", "a", 2)  # a stale holder cannot release it
    assert store.claim("deployment", "d1", "a", 5) is None
    store.release("deployment", "d1", "b", 3)
    assert store.claim("deployment", "d1", "a", 5) == 4
    store.close()


def test_several_daemons_connections_number_events_without_gaps_and_claim_once(
        postgres: object) -> None:
    """On PostgreSQL: three stores (three daemons) on one database write one deployment's
    events and claim one lease at once."""
    from orchestrator.testbed.postgres import Cluster

    assert isinstance(postgres, Cluster)
    url = postgres.database()
    stores = [open_store(url) for _ in range(3)]  # migrations once, whoever comes first
    stores[0].create_deployment("a", "app", {})
    claims: list[int | None] = []

    def write(store: object, worker: int) -> None:
        assert hasattr(store, "append_event") and hasattr(store, "claim")
        claims.append(store.claim("deployment", "a", f"d{worker}", 30))
        for i in range(40):
            store.append_event({"deployment": "a", "ts": 1.0, "level": "info", "event": "e",
                                "host": f"h{worker}", "n": i})

    threads = [threading.Thread(target=write, args=(s, w)) for w, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = stores[1].events("a")
    assert [e["seq"] for e in events] == list(range(1, 121))
    assert sorted(claims, key=lambda c: c or 0) == [None, None, 1]
    for store in stores:
        store.close()
