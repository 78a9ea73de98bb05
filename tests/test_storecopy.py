"""`orchestrator store migrate | copy` against a real SQLite state dir and a real PostgreSQL
database: everything copied, bundles into the store, a second copy refused (exit 2)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

from orchestrator.core.states import DeploymentState, HostStepState
from orchestrator.daemon.schema import SCHEMA_VERSION
from orchestrator.daemon.store import open_store
from orchestrator.testbed.postgres import Cluster
from tests.daemons import ORCHESTRATOR


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ORCHESTRATOR, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_a_sqlite_state_is_copied_into_postgresql_with_its_bundles(
        postgres: Cluster, tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = open_store(state / "state.sqlite3")
    old.create_deployment("d1", "app", {"targets": ["h1"]})
    old.transition_deployment("d1", DeploymentState.RUNNING)
    old.transition_step("d1", "h1", "stage", HostStepState.RUNNING)
    for i in range(3):
        old.append_event({"deployment": "d1", "ts": 1.0 + i, "level": "info", "event": "e",
                          "n": i})
    old.record_host("h1", "healthy", [], {"schema": 1})
    old.record_app_result("h1", "app", "healthy", [])
    old.close()
    (state / "bundles" / "d1" / "model").mkdir(parents=True)
    (state / "bundles" / "d1" / "spec.yaml").write_text("name: app\n")
    (state / "bundles" / "d1" / "model" / "w.bin").write_bytes(b"\x00weights" * 1000)
    url = postgres.database()
    config = tmp_path / "orchestrator.toml"
    config.write_text(f'state_dir = "other"\nstore = "{url}"\n')

    migrated = _cli("store", "migrate", "--config", str(config))
    assert migrated.returncode == 0, migrated.stderr
    assert f"schema version {SCHEMA_VERSION}" in migrated.stdout
    assert "?" not in migrated.stdout.split(":")[0]  # named without its query string

    copied = _cli("store", "copy", "--config", str(config), "--from", str(state))
    assert copied.returncode == 0, copied.stderr
    assert "1 deployments" in copied.stdout and "3 events" in copied.stdout
    assert "1 bundles" in copied.stdout
    store = open_store(url)
    assert store.get_deployment("d1").state is DeploymentState.RUNNING
    assert [e["n"] for e in store.events("d1")] == [0, 1, 2]
    assert [(s.step, s.state) for s in store.steps("d1")] == [("stage", HostStepState.RUNNING)]
    assert store.app_results("h1") == {"app": ("healthy", [])}
    archive = io.BytesIO()
    assert store.get_bundle("d1", archive)
    store.close()

    again = _cli("store", "copy", "--config", str(config), "--from", str(state))
    assert again.returncode == 2 and "already holds deployments" in again.stderr
    empty = _cli("store", "copy", "--config", str(config), "--from", str(tmp_path / "nope"))
    assert empty.returncode == 2 and "no state.sqlite3" in empty.stderr
