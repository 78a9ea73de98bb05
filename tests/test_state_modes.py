"""The state dir is the daemon's alone: its files are created 0600 and its dirs 0700 whatever the
umask (a login's usual 022 left the SQLite file, its WAL and the event logs world-readable), and
files an older daemon left wider are tightened when they are opened again."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.daemon.events import EventHub
from orchestrator.daemon.statedir import lock_state_dir
from orchestrator.daemon.store import open_store
from tests.daemons import ECHO, Daemon, wait_for, write_config
from tests.specs import stub_spec


@pytest.fixture(params=[0o022, 0o000], ids=["umask-022", "umask-000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process umask for the test (restored after): 022 as a login shell sets it, 000 as
    the most permissive one."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """A login's usual umask, inherited by the daemon the test starts."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def modes(root: Path) -> dict[str, str]:
    """Every path under `root` (and `root` itself, as "."), with its permission bits."""
    found = {".": oct(stat.S_IMODE(root.stat().st_mode))}
    for path in root.rglob("*"):
        if not path.is_socket():
            found[str(path.relative_to(root))] = oct(stat.S_IMODE(path.stat().st_mode))
    return found


def private(found: dict[str, str], root: Path) -> bool:
    return all(mode == ("0o700" if (root / name).is_dir() else "0o600")
               for name, mode in found.items())


def test_store_lock_and_event_logs_are_private(tmp_path: Path, umask: int) -> None:
    state = tmp_path / "state"
    lock = lock_state_dir(state)
    store = open_store(state / "state.sqlite3")
    store.create_deployment("d1", "app", {})
    hub = EventHub(store, state / "logs")
    hub.sink("d1").emit("deployment", status="running")
    try:
        found = modes(state)
        assert {"state.sqlite3", "state.sqlite3-wal", "state.sqlite3-shm", "daemon.lock",
                "logs", "logs/d1.jsonl"} <= set(found)
        assert private(found, state), found
    finally:
        hub.close()
        store.close()
        lock.close()


def test_files_an_older_daemon_left_wide_are_tightened(tmp_path: Path, umask: int) -> None:
    state = tmp_path / "state"
    store = open_store(state / "state.sqlite3")
    store.create_deployment("d1", "app", {})
    hub = EventHub(store, state / "logs")
    hub.sink("d1").emit("deployment", status="running")
    hub.close()
    # As a daemon before this change left them (the WAL survives only an unclean stop: the
    # store is not closed here, so it is still there).
    for name in ("state.sqlite3", "state.sqlite3-wal", "logs/d1.jsonl"):
        (state / name).chmod(0o644)
    store2 = open_store(state / "state.sqlite3")
    hub2 = EventHub(store2, state / "logs")
    hub2.sink("d1").emit("deployment", status="succeeded")
    try:
        for name in ("state.sqlite3", "state.sqlite3-wal", "logs/d1.jsonl"):
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    finally:
        hub2.close()
        store2.close()
        store.close()


def test_a_real_daemon_started_under_umask_022_keeps_its_state_private(
    tmp_path: Path, daemons: Callable[..., Daemon], umask_022: None
) -> None:
    daemon = daemons(write_config(tmp_path, ECHO), env={"ORCHESTRATOR_ECHO_DELAY_S": "0"})
    spec = stub_spec(tmp_path / "spec", ["h1"])
    deployment = json.loads(daemon.cli("submit", str(spec), "--json").stdout)["id"]
    wait_for(lambda: (daemon.state_dir / "logs" / f"{deployment}.jsonl").exists(), 30,
             "the deployment's event log")
    found = modes(daemon.state_dir)
    assert {"state.sqlite3", "state.sqlite3-wal", "state.sqlite3-shm", "daemon.lock", "logs",
            "logs/daemon.log", f"logs/{deployment}.jsonl"} <= set(found)
    # Bundles (the uploaded spec and its files) sit behind the 0700 state dir; only the
    # files the daemon itself writes are checked one by one.
    own = {k: v for k, v in found.items() if not k.startswith("bundles")}
    assert private(own, daemon.state_dir), own
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o660  # the API's group access stays
