"""Rollbacks that always work (issue 14), through the real daemon and its CLI on a dedicated
testbed of two sshd hosts, with a real scikit-learn model installed and verified on each.

One story, in order, since each step starts from what the one before left on the hosts:
the app's first deployment cannot be rolled back (refused, exit 2, nothing marked, the
deployment still succeeded); v2 rolled back puts v1 back and marks v2 bad; an abort of v3
mid-rollout puts the canary back without marking v3 bad; `releases unmark-bad` clears v2's mark
with an audit event, and `rollback --to` puts v2 back on every host.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator.testbed import Testbed
from tests.daemons import Daemon, stored_events, wait_for
from tests.specs import joblib_spec

APP = "rb"
DONE = {"succeeded", "failed", "rolled_back", "cancelled"}
FLEET_PROFILES = ("h100", "t4")  # this module's own testbed (`fleet`, tests/conftest.py)


@pytest.fixture(scope="module")
def daemon(fleet_daemon: Daemon) -> Daemon:
    """The deploy daemon over this module's `fleet` (tests/conftest.py, FLEET_PROFILES)."""
    return fleet_daemon


def serving(fleet: Testbed) -> dict[str, str]:
    """{host: the release its `current` points at ("-": none)}, read on disk."""
    out: dict[str, str] = {}
    for h in fleet.hosts:
        current = Path(h.deploy_root) / APP / "current"
        out[h.name] = os.readlink(current).rsplit("/", 1)[-1] if current.is_symlink() else "-"
    return out


def host_state(fleet: Testbed) -> dict[str, dict[str, Any]]:
    """Each host's state.json of the app (what the host ops keep: history, bad, generation)."""
    return {h.name: json.loads((Path(h.deploy_root) / APP / "state.json").read_text())
            for h in fleet.hosts}


def record(daemon: Daemon, deployment: str) -> dict[str, Any]:
    with daemon.http() as http:
        body: dict[str, Any] = http.get(f"/v1/deployments/{deployment}").json()
    return body


def deploy(daemon: Daemon, fleet: Testbed, folder: Path, model: str, golden: str,
           models_dir: Path, *, wait: bool = True) -> str:
    spec = joblib_spec(folder, APP, models_dir / model, models_dir / golden,
                       [h.name for h in fleet.hosts],
                       extra="gpu: {required: false}\nrollout: {canary: 1, batch_size: 1}\n")
    done = daemon.cli("submit", str(spec), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    deployment: str = json.loads(done.stdout)["id"]
    if wait:
        assert end(daemon, deployment)["state"] == "succeeded", record(daemon, deployment)
    return deployment


def end(daemon: Daemon, deployment: str) -> dict[str, Any]:
    result: dict[str, Any] = wait_for(
        lambda: (r := record(daemon, deployment))["state"] in DONE and r, 600,
        f"{deployment} to finish")
    return result


def releases(daemon: Daemon) -> dict[str, dict[str, str]]:
    """`orchestrator releases APP --json` through the daemon (no --inventory):
    {host: {release: state}}."""
    out = daemon.cli("releases", APP, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = json.loads(out.stdout)
    return {h: {r["release_id"]: r["state"] for r in v["releases"]} for h, v in rows.items()}


def test_refused_rollback_changes_nothing_then_rollback_abort_unmark_and_rollback_to(
        daemon: Daemon, fleet: Testbed, models_dir: Path, tmp_path: Path) -> None:
    # 1. The first deployment: a rollback has nowhere to go. Refused before anything changes.
    assert json.loads(daemon.cli("hosts", "--json").stdout) == []  # nothing probed yet
    d1 = deploy(daemon, fleet, tmp_path / "v1", "model.joblib", "golden.npz", models_dir)
    v1 = serving(fleet)
    # The deployment's own probe filled `hosts` (no `verify` was run).
    probed = {h["host"]: h for h in json.loads(daemon.cli("hosts", "--json").stdout)}
    assert sorted(probed) == sorted(v1), probed
    assert all(h["status"] == "healthy" and h["facts"] for h in probed.values()), probed
    # The same spec again: already serving, verified, everywhere: nothing queued, exit 0.
    same = daemon.cli("submit", str(tmp_path / "v1" / "spec.yaml"), "--wait")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "already serving" in same.stdout and "--force" in same.stdout, same.stdout
    with daemon.http() as http:
        assert [d["id"] for d in http.get("/v1/deployments").json()] == [d1]
    state_before = host_state(fleet)
    refused = daemon.cli("rollback", "--app", APP)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "no previous good release" in refused.stderr and "nothing changed" in refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr  # one line, no traceback
    assert record(daemon, d1)["state"] == "succeeded"
    assert serving(fleet) == v1 and host_state(fleet) == state_before  # nothing marked
    assert all(s == {v1[h]: "current"} for h, s in releases(daemon).items())

    # 2. v2, then a rollback: v1 serves again, v2 is bad (never a rollback target).
    d2 = deploy(daemon, fleet, tmp_path / "v2", "changed.joblib", "golden-v2.npz", models_dir)
    v2 = serving(fleet)
    assert all(v2[h] != v1[h] for h in v1)
    back = daemon.cli("rollback", "--app", APP, "--json")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["id"] == d2
    assert end(daemon, d2)["state"] == "rolled_back"
    assert serving(fleet) == v1
    assert all(host_state(fleet)[h]["bad"] == [v2[h]] for h in v1)

    # 3. v3 (v2's model again, a new release) aborted mid-rollout: the canary was switched and
    # goes back; v3 is not marked bad, and is no rollback target either.
    d3 = deploy(daemon, fleet, tmp_path / "v3", "changed.joblib", "golden-v2.npz", models_dir,
                wait=False)
    wait_for(lambda: any(e["event"] == "batch" for e in stored_events(daemon, d3)), 300,
             "the canary batch")
    assert daemon.cli("pause", d3).returncode == 0
    wait_for(lambda: record(daemon, d3)["state"] == "paused", 300, "paused")
    aborted = daemon.cli("abort", d3)
    assert aborted.returncode == 0, aborted.stderr
    finished = end(daemon, d3)
    assert finished["state"] == "rolled_back", finished["result"]
    assert serving(fleet) == v1
    canary = fleet.hosts[0].name
    v3 = next(r for r in releases(daemon)[canary] if r not in (v1[canary], v2[canary]))
    states = host_state(fleet)
    assert all(v3 not in s["bad"] and v3 not in s["history"] for s in states.values()), states
    assert all(s["bad"] == [v2[h]] for h, s in states.items())

    # 4. A release only the canary has cannot be the target: refused on the other, nothing moves.
    partial = daemon.cli("rollback", "--app", APP, "--to", v3)
    assert partial.returncode == 2 and "is not a release of" in partial.stderr, partial.stderr
    bad = daemon.cli("rollback", "--app", APP, "--to", v2[canary])
    assert bad.returncode == 2 and "marked bad" in bad.stderr, bad.stderr
    assert serving(fleet) == v1 and record(daemon, d1)["state"] == "succeeded"

    # 5. unmark-bad (audited), then a rollback to the chosen release: v2 on every host.
    release2 = v2[canary]
    assert set(v2.values()) == {release2}  # one release id per deployment
    cleared = daemon.cli("releases", "unmark-bad", APP, release2, "--json")
    assert cleared.returncode == 0, cleared.stderr
    assert sorted(json.loads(cleared.stdout)["unmarked"]) == sorted(v1)
    audit = [e for e in stored_events(daemon, d3) if e["event"] == "release.unmark-bad"]
    assert len(audit) == 1 and audit[0]["release_id"] == release2, audit
    assert sorted(audit[0]["unmarked"]) == sorted(v1) and audit[0]["level"] == "warning"
    assert all(s["bad"] == [] for s in host_state(fleet).values())
    assert "release unmarked bad" in (daemon.state_dir / "logs" / "daemon.log").read_text()
    chosen = daemon.cli("rollback", "--app", APP, "--to", release2, "--json")
    assert chosen.returncode == 0, chosen.stderr
    assert json.loads(chosen.stdout)["id"] == d1  # the deployment that served
    finished = end(daemon, d1)
    assert finished["state"] == "rolled_back", finished
    assert finished["result"]["reason"] == f"rolled back by request to {release2}"
    assert serving(fleet) == v2

    # 6. --force deploys the same spec again: a new release, although v2 already serves.
    forced = daemon.cli("submit", str(tmp_path / "v2" / "spec.yaml"), "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    d4 = json.loads(forced.stdout)["id"]
    assert d4 not in (d1, d2, d3) and end(daemon, d4)["state"] == "succeeded"
    assert all(serving(fleet)[h] not in (v1[h], v2[h]) for h in v1)
