"""A daemon killed with `kill -9` during `install` and started again resumes the deployment
from the hosts' real state and finishes it (issue 16, "the same takeover for one daemon
alone"), on SQLite and on PostgreSQL: every target ends on this deployment's verified release,
the events stay gapless and keep what was durable at the kill, no step row is left running."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.testbed import Testbed
from tests.daemons import DEPLOY, Daemon, stored_events, wait_for, write_config
from tests.specs import WHEEL_CACHE, joblib_spec

FINISHED = {"succeeded", "failed", "rolled_back", "cancelled"}


def _serving(deploy_root: Path, app: str) -> tuple[str | None, dict[str, object]]:
    current = deploy_root / app / "current"
    if not current.is_symlink():
        return None, {}
    manifest = json.loads((current / "manifest.json").read_text())
    return os.readlink(current).rsplit("/", 1)[-1], manifest


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_9_during_install_then_restart_resumes_and_finishes_the_rollout(
        backend: str, testbed: Testbed, tmp_path: Path, daemons: Callable[..., Daemon],
        models_dir: Path, request: pytest.FixtureRequest) -> None:
    hosts = testbed.hosts_with("h100")[:3]
    store = ""
    if backend == "postgresql":
        store = f'store = "{request.getfixturevalue("postgres").database()}"\n'
    config = write_config(tmp_path, f'inventory = "{testbed.inventory_path}"\n' + DEPLOY + store)
    env = {"ORCHESTRATOR_WHEEL_CACHE": str(WHEEL_CACHE)}
    app = f"resume-{backend}"
    spec = joblib_spec(tmp_path / "v1", app, models_dir / "model.joblib",
                       models_dir / "golden.npz", [h.name for h in hosts],
                       extra="rollout: {canary: 1, batch_size: 2}\n")
    daemon = daemons(config, env=env)
    deployment = json.loads(daemon.cli("submit", str(spec), "--json").stdout)["id"]
    with daemon.http() as http, http.stream(
            "GET", f"/v1/deployments/{deployment}/events", params={"follow": True},
            timeout=600) as stream:
        for line in stream.iter_lines():
            event = json.loads(line)
            if event["step"] == "install" and event["status"] == "running":
                daemon.proc.kill()  # the canary is installing
                break
    daemon.proc.kill()
    daemon.proc.wait(timeout=30)
    again = daemons(config, env=env)
    with again.http() as http:
        record = wait_for(lambda: (r := http.get(f"/v1/deployments/{deployment}").json())
                          ["state"] in FINISHED and r, 600, "the resumed deployment to finish")
    assert record["state"] == "succeeded", record["result"]
    events = stored_events(again, deployment)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert any(e["event"] == "reconcile" and e.get("action") == "resume" for e in events)
    steps = [s for h in record["hosts"].values() for s in h["steps"]]
    assert all(s["state"] != "running" for s in steps), steps
    releases = set()
    for h in hosts:
        release, manifest = _serving(h.deploy_root, app)
        assert release is not None, f"{h.name} serves nothing"
        assert manifest.get("deployment") == deployment and manifest.get("warmup"), h.name
        releases.add(release)
    assert len(releases) == 1, releases  # one release, whichever process deployed each host
