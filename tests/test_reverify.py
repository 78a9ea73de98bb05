"""Re-verification of hosts: the pure findings and decisions from data, then the real thing on
the testbed (a joblib model deployed with tests/test_deploy.py's helpers, a simulated driver
upgrade, a changed byte in the model and in the venv), and through the daemon (verify, hosts,
events, a degraded host kept out of a new rollout)."""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core import findings as rv
from orchestrator.core.facts import HostFacts, parse_facts
from orchestrator.core.gates import Gate
from orchestrator.core.hashing import hash_path
from orchestrator.core.inventory import Host, Inventory
from orchestrator.core.spec import load_spec
from orchestrator.daemon.reverifier import next_run
from orchestrator.hosts.pool import Pool
from orchestrator.reverify.audit import AppCheck, HostCheckResult, reverify_host
from orchestrator.testbed import Testbed
from orchestrator.testbed import profiles as gpu_profiles
from tests.daemons import DEPLOY, Daemon, write_config
from tests.specs import WHEEL_CACHE
from tests.test_deploy import Sink, run, v1_spec, v2_spec, write_spec

FACTS = Path(__file__).parent / "fixtures" / "facts"
RV_HOST = "tb-07"  # an h100 host no other test module deploys to
APP = "rv-app"


def facts(name: str, host: str = "gpu-01") -> HostFacts:
    return parse_facts(host, (FACTS / f"{name}.json").read_text())


def edited(name: str, change: Callable[[dict[str, Any]], None]) -> HostFacts:
    data = json.loads((FACTS / f"{name}.json").read_text())
    change(data)
    return parse_facts("gpu-01", json.dumps(data))


# -- pure: facts diff ---------------------------------------------------------------------------

def test_same_facts_give_no_finding() -> None:
    assert rv.diff_facts(facts("h100"), facts("h100")) == []


def test_driver_upgrade_to_a_version_mismatch_is_degraded_naming_the_change() -> None:
    found = rv.diff_facts(facts("h100"), facts("mismatch"))
    assert [f.status for f in found] == [rv.DEGRADED]
    assert found[0].message.startswith(
        "driver 550.54.15 -> NVML error LibRmVersionMismatch: Driver/library version mismatch")


def test_driver_cuda_and_gpu_changes_are_each_named() -> None:
    def upgrade(d: dict[str, Any]) -> None:
        d["nvml"].update(driver_version="560.35.03", cuda_driver_version="12.6")
        d["gpus"][0]["memory_total_bytes"] //= 2

    found = rv.diff_facts(facts("h100"), edited("h100", upgrade))
    text = [f.message for f in found]
    assert "driver 550.54.15 -> driver 560.35.03" in text
    assert "CUDA driver 12.4 -> 12.6" in text
    assert any("memory 80.0 GiB -> 40.0 GiB" in t for t in text)
    assert rv.decide(found)[0] == rv.DEGRADED


def test_a_gpu_gone_is_degraded_and_a_new_one_is_only_noted() -> None:
    gone = rv.diff_facts(facts("h100"), edited("h100", lambda d: d.update(gpus=[])))
    assert [f.status for f in gone] == [rv.DEGRADED] and "is gone" in gone[0].message
    added = rv.diff_facts(edited("h100", lambda d: d.update(gpus=[])), facts("h100"))
    assert rv.decide(added) == (rv.HEALTHY, [])


def test_a_host_without_releases_is_degraded_by_a_broken_gpu_stack_not_by_no_driver() -> None:
    assert rv.facts_status(facts("h100")) == (rv.HEALTHY, [])
    assert rv.facts_status(facts("no-driver")) == (rv.HEALTHY, [])
    status, reasons = rv.facts_status(facts("mismatch"))
    assert status == rv.DEGRADED and reasons[0].startswith("NVML error LibRmVersionMismatch")


# -- pure: audit, warmup, decision --------------------------------------------------------------

def _audit(model: dict[str, Any] | None = None, **venv: Any) -> dict[str, Any]:
    base = {"ok": True, "path": "/v", "changed": [], "missing": [], "changed_count": 0,
            "missing_count": 0, "error": None}
    return {"model": model or {"ok": True}, "venv": {**base, **venv}}


def test_a_changed_model_file_fails_naming_it() -> None:
    model = {"ok": False, "kind": "file", "expected": "a" * 64, "actual": "b" * 64,
             "files": {"model.joblib": "b" * 64}}
    status, reasons = rv.decide(rv.audit_findings(_audit(model)))
    assert status == rv.FAILED
    assert reasons == [f"model file model/model.joblib changed: sha256 {'a' * 12}... in the "
                       f"manifest, {'b' * 12}... on the host"]


def test_a_directory_model_names_changed_missing_and_added_files_against_the_local_copy() -> None:
    model = {"ok": False, "kind": "tree", "expected": "a" * 64, "actual": "b" * 64,
             "files": {"saved_model.pb": "1", "variables/v.data": "x", "extra.txt": "3"}}
    local = {"saved_model.pb": "1", "variables/v.data": "2", "variables/v.index": "4"}
    reasons = rv.decide(rv.audit_findings(_audit(model), local))[1]
    assert reasons == ["model file model/variables/v.data changed",
                       "model file model/variables/v.index missing",
                       "model file model/extra.txt added"]


def test_venv_files_changed_or_missing_fail_naming_path_and_package() -> None:
    audit = _audit(changed=[{"path": "sklearn/base.py", "package": "scikit_learn-1.9.1"}],
                   missing=[{"path": "numpy/__init__.py", "package": "numpy-2.3.0"}],
                   changed_count=3, missing_count=1)
    status, reasons = rv.decide(rv.audit_findings(audit))
    assert status == rv.FAILED
    assert reasons[0] == ("venv file sklearn/base.py (scikit_learn-1.9.1) changed: differs "
                          "from its RECORD")
    assert "venv file numpy/__init__.py (numpy-2.3.0) missing" in reasons
    assert "and 2 more venv files changed" in reasons


def test_slower_warmup_is_degraded_a_failing_golden_is_failed() -> None:
    slow = [Gate("golden", True, "ok"), Gate("latency:p95", False, "p95 12 ms > limit 10 ms"),
            Gate("regression:p50", False, "p50 2.10x the baseline")]
    assert rv.decide(rv.warmup_findings(slow))[0] == rv.DEGRADED
    broken = [*slow, Gate("golden", False, "3 of 64 outputs differ")]
    status, reasons = rv.decide(rv.warmup_findings(broken))
    assert status == rv.FAILED and "warmup golden: 3 of 64 outputs differ" in reasons


def test_host_status_is_the_worst_app_and_actions_apply_to_failed_only() -> None:
    status, reasons = rv.combine({"a": (rv.HEALTHY, []), "b": (rv.DEGRADED, ["slow"]),
                                  "c": (rv.FAILED, ["model changed"])})
    assert status == rv.FAILED and reasons == ["b: slow", "c: model changed"]
    assert rv.action_for(rv.FAILED, "rollback") == "rollback"
    assert rv.action_for(rv.DEGRADED, "rollback") == "report"
    assert rv.action_for(rv.FAILED, None) == "report"


def test_degraded_and_failed_hosts_are_excluded_with_their_reasons() -> None:
    records = [{"host": "a", "status": "degraded", "reasons": ["driver x -> y"]},
               {"host": "b", "status": "healthy", "reasons": []},
               {"host": "c", "status": "failed", "reasons": []},
               {"host": "d", "status": "unreachable", "reasons": ["down"]}]
    assert rv.excluded_hosts(records, ["a", "b", "c", "d", "e"]) == {
        "a": "host degraded at its last verification: driver x -> y",
        "c": "host failed at its last verification: no reason recorded"}


def test_jitter_spreads_runs_within_ten_percent() -> None:
    rnd = random.Random(7)
    runs = [next_run(1000.0, 3600.0, rnd) for _ in range(200)]
    assert all(1000 + 3240 <= t <= 1000 + 3960 for t in runs)
    assert max(runs) - min(runs) > 360  # spread, not one instant


# -- the testbed: a deployed joblib model -------------------------------------------------------

@dataclass
class Deployed:
    spec: Any
    deployment: str
    host: Host
    release: Path  # the release dir on the (local) testbed host

    def spec_for(self, deployment: str | None) -> Any:
        return self.spec if deployment == self.deployment else None


@pytest.fixture(scope="module")
def deployed(inventory: Inventory, pool: Pool, models_dir: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    spec_path = v1_spec(models_dir, tmp_path_factory.mktemp("rv"), APP,
                        extra="reverify: {every: 1m}\n", targets=[RV_HOST])
    result, _ = run(spec_path, inventory, pool, hosts=[RV_HOST])
    assert result.ok, result.hosts[RV_HOST].error
    host = inventory.hosts[RV_HOST]
    release = (Path(host.deploy_root) / APP / "current").resolve()
    return Deployed(load_spec(spec_path), result.deployment, host, release)


def check(pool: Pool, d: Deployed) -> tuple[HostCheckResult, Sink]:
    sink = Sink()
    with pool.session(d.host) as t:
        return reverify_host(t, d.host, d.spec_for, sink, apps=[APP]), sink


@contextlib.contextmanager
def flipped(path: Path, offset: int = -1) -> Iterator[None]:
    """One byte of `path` changed in place (same inode: the venv's files are hardlinked into
    uv's cache), put back on exit."""
    original = path.read_bytes()
    data = bytearray(original)
    data[offset] ^= 0x01
    with path.open("r+b") as fh:
        fh.write(bytes(data))
    try:
        yield
    finally:
        with path.open("r+b") as fh:
            fh.write(original)


def test_a_clean_release_verifies_healthy(pool: Pool, deployed: Deployed) -> None:
    result, sink = check(pool, deployed)
    assert (result.status, result.reasons) == (rv.HEALTHY, [])
    app = result.apps[APP]
    assert app.release_id == deployed.release.name and app.deployment == deployed.deployment
    event = next(e for e in sink.events if e["event"] == "reverify")
    assert event["status"] == "healthy" and event["app"] == APP


def test_a_driver_upgrade_degrades_the_host_naming_it_and_restored_it_is_healthy(
        testbed: Testbed, pool: Pool, deployed: Deployed) -> None:
    with testbed.profile(RV_HOST, "mismatch"):
        result, sink = check(pool, deployed)
    assert result.status == rv.DEGRADED, result.reasons
    assert any(r.startswith(f"{APP}: driver 550.54.15 -> NVML error LibRmVersionMismatch: "
                            "Driver/library version mismatch") for r in result.reasons)
    assert next(e for e in sink.events if e["event"] == "reverify")["level"] == "warning"
    assert check(pool, deployed)[0].status == rv.HEALTHY


def test_an_xid_79_after_the_deploy_fails_the_host_naming_it_and_restored_it_is_healthy(
        testbed: Testbed, pool: Pool, deployed: Deployed) -> None:
    """The kernel logs Xid 79 for the GPU after the deploy: failed (the release may use every
    GPU: it recorded no placement), named, kept out of rollouts; clean again once it is gone."""
    with testbed.profile(RV_HOST, "xid-79"):
        result, _ = check(pool, deployed)
    assert result.status == rv.FAILED, result.reasons
    uuid = gpu_profiles.gpu_uuid(RV_HOST, 0, "NVIDIA H100 80GB HBM3")
    assert any(r.startswith(f"{APP}: GPU 0 ({uuid}): new Xid 79: NVRM: Xid (PCI:0000:3b:00): 79")
               for r in result.reasons), result.reasons
    record = {"host": RV_HOST, "status": result.status, "reasons": result.reasons}
    assert rv.excluded_hosts([record], [RV_HOST])[RV_HOST].startswith(
        f"host failed at its last verification: {APP}: GPU 0 ({uuid}): new Xid 79")
    clean, _ = check(pool, deployed)
    assert (clean.status, clean.reasons) == (rv.HEALTHY, [])
    assert rv.excluded_hosts([{"host": RV_HOST, "status": clean.status, "reasons": []}],
                             [RV_HOST]) == {}


def test_a_changed_byte_in_the_model_fails_naming_the_file(
        pool: Pool, deployed: Deployed) -> None:
    with flipped(deployed.release / "model" / "model.joblib", offset=100):
        result, _ = check(pool, deployed)
    assert result.status == rv.FAILED
    assert any(r.startswith(f"{APP}: model file model/model.joblib changed: sha256")
               for r in result.reasons), result.reasons
    assert check(pool, deployed)[0].status == rv.HEALTHY


def test_a_changed_byte_in_a_venv_file_fails_naming_the_file(
        pool: Pool, deployed: Deployed) -> None:
    site = next((deployed.release / "venv").resolve().glob("lib/python*/site-packages"))
    target = site / "sklearn" / "datasets" / "_base.py"  # not imported by the model
    with flipped(target):
        result, _ = check(pool, deployed)
    assert result.status == rv.FAILED
    assert any("venv file sklearn/datasets/_base.py (scikit_learn-" in r
               and "changed: differs from its RECORD" in r for r in result.reasons), \
        result.reasons
    assert check(pool, deployed)[0].status == rv.HEALTHY


def test_an_app_being_deployed_is_skipped_never_locked_against_its_rollout(
        pool: Pool, deployed: Deployed) -> None:
    from orchestrator.hosts import hostlock

    root = deployed.host.deploy_root
    with pool.session(deployed.host) as t:
        hostlock.acquire(t, root, APP, "dep-elsewhere")
        try:
            held = reverify_host(t, deployed.host, deployed.spec_for, Sink(), apps=[APP])
        finally:
            hostlock.release(t, root, APP, "dep-elsewhere")
        queued = reverify_host(t, deployed.host, deployed.spec_for, Sink(), apps=[APP],
                               deploying=lambda app: app == APP)
        # The run released its own lock: a deployment can take it.
        assert hostlock.acquire(t, root, APP, "dep-next")["resumed"] is False
        hostlock.release(t, root, APP, "dep-next")
    assert "being deployed by dep-elsewhere" in (held.apps[APP].skipped or "")
    assert queued.apps[APP].skipped == f"app {APP} has a deployment queued or in flight"


def test_on_failure_rollback_puts_the_previous_release_back_and_verifies_it(
        inventory: Inventory, pool: Pool, models_dir: Path,
        tmp_path: Path) -> None:
    app, extra = "rv-undo", "reverify: {every: 1m, on_failure: rollback}\n"
    restart = "service: {{restart: 'echo {} >> restarts.log'}}\n"
    first, _ = run(v1_spec(models_dir, tmp_path / "v1", app, extra=extra + restart.format("v1")),
                   inventory, pool, hosts=[RV_HOST])
    v2 = v2_spec(models_dir, tmp_path / "v2", app, extra=extra + restart.format("v2"))
    second, _ = run(v2, inventory, pool, hosts=[RV_HOST])
    assert first.ok and second.ok
    specs = {first.deployment: load_spec(tmp_path / "v1" / app / "spec.yaml"),
             second.deployment: load_spec(v2)}
    host = inventory.hosts[RV_HOST]
    current = Path(host.deploy_root) / app / "current"
    sink = Sink()
    with (flipped(current.resolve() / "model" / "model-v2.joblib", offset=100),
          pool.session(host) as t):
        result = reverify_host(t, host, lambda d: specs.get(d or ""), sink, apps=[app])
    check_ = result.apps[app]
    assert check_.action == "rollback"
    assert current.resolve().name == first.release_id  # v1 serves again
    assert (result.status, check_.release_id) == (rv.HEALTHY, first.release_id), result.reasons
    assert "rollback after: model file model/model-v2.joblib changed" in result.reasons[0]
    assert next(e for e in sink.events if e["event"] == "reverify.rollback")["status"] == "ok"
    # v1 is back and its service restarted as v1 was deployed (v1's command, not v2's)
    log = Path(host.deploy_root) / app / "restarts.log"
    assert log.read_text().split() == ["v1", "v2", "v1"]


# -- through the daemon -------------------------------------------------------------------------

def test_daemon_verify_degrades_a_host_which_a_new_rollout_then_leaves_out(
        testbed: Testbed, inventory: Inventory, pool: Pool, models_dir: Path,
        tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    app, hosts = "rv-fleet", ["tb-07", "tb-08"]
    extra = "reverify: {every: 1h}\nrollout: {max_failed_hosts: 1}\n"

    def spec(name: str, model: str, golden: str, model_name: str = "model.joblib") -> Path:
        return write_spec(tmp_path / name, app, models_dir / model, models_dir / golden,
                          model_name=model_name, extra=extra, targets=hosts)

    config = write_config(tmp_path, f'inventory = "{testbed.inventory_path}"\n' + DEPLOY)
    daemon = daemons(config, env={"ORCHESTRATOR_WHEEL_CACHE": str(WHEEL_CACHE)})

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return daemon.cli(*args, timeout=300)

    first = cli("submit", str(spec("v1", "model.joblib", "golden.npz")), "--wait")
    assert first.returncode == 0, first.stdout + first.stderr
    with testbed.profile("tb-08", "mismatch"):
        verified = cli("verify", "tb-08", "--json")
    assert verified.returncode == 4, verified.stdout + verified.stderr  # degraded: exit 4
    [record] = json.loads(verified.stdout)
    assert record["status"] == "degraded"
    assert any(r.startswith(f"{app}: driver 550.54.15 -> NVML error LibRmVersionMismatch")
               for r in record["reasons"]), record["reasons"]
    listed = {h["host"]: h for h in json.loads(cli("hosts", "--json").stdout)}
    assert listed["tb-08"]["status"] == "degraded"

    # The profile is back, but the host stays out until it verifies clean again.
    before = (Path(inventory.hosts["tb-08"].deploy_root) / app / "current").resolve().name
    second = cli("submit", str(spec("v2", "changed.joblib", "golden-v2.npz",
                                    "model-v2.joblib")), "--wait")
    assert second.returncode == 0, second.stdout + second.stderr
    assert (Path(inventory.hosts["tb-08"].deploy_root) / app / "current"
            ).resolve().name == before
    assert (Path(inventory.hosts["tb-07"].deploy_root) / app / "current"
            ).resolve().name != before
    events = [json.loads(line) for f in (daemon.state_dir / "logs").glob("*.jsonl")
              for line in f.read_text().splitlines()]
    skipped = [e for e in events if e["event"] == "host.finished" and e["host"] == "tb-08"
               and e.get("detail_status") == "skipped"]
    assert skipped and "excluded from the rollout: host degraded" in skipped[0]["reason"]
    assert any(e["event"] == "reverify" and e["host"] == "tb-08"
               and e["status"] == "degraded" for e in events)

    again = cli("verify", "tb-08", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)[0]["status"] == "healthy"


def test_daemon_verify_fails_a_host_with_a_new_xid_79_keeps_it_out_and_restores_it_clean(
        testbed: Testbed, inventory: Inventory, models_dir: Path, tmp_path: Path,
        daemons: Callable[..., Daemon]) -> None:
    app, hosts = "rv-xid", ["tb-07", "tb-08"]
    extra = "reverify: {every: 1h}\nrollout: {max_failed_hosts: 1}\n"

    def spec(name: str, model: str, golden: str, model_name: str = "model.joblib") -> Path:
        return write_spec(tmp_path / name, app, models_dir / model, models_dir / golden,
                          model_name=model_name, extra=extra, targets=hosts)

    config = write_config(tmp_path, f'inventory = "{testbed.inventory_path}"\n' + DEPLOY)
    daemon = daemons(config, env={"ORCHESTRATOR_WHEEL_CACHE": str(WHEEL_CACHE)})

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return daemon.cli(*args, timeout=300)

    first = cli("submit", str(spec("v1", "model.joblib", "golden.npz")), "--wait")
    assert first.returncode == 0, first.stdout + first.stderr
    uuid = gpu_profiles.gpu_uuid("tb-08", 0, "NVIDIA H100 80GB HBM3")
    with testbed.profile("tb-08", "xid-79"):
        verified = cli("verify", "tb-08", "--json")
        [record] = json.loads(verified.stdout)
        assert record["status"] == "failed", record
        assert any(r.startswith(f"{app}: GPU 0 ({uuid}): new Xid 79: NVRM: Xid "
                                "(PCI:0000:3b:00): 79") for r in record["reasons"]), record
        before = (Path(inventory.hosts["tb-08"].deploy_root) / app / "current").resolve().name
        second = cli("submit", str(spec("v2", "changed.joblib", "golden-v2.npz",
                                        "model-v2.joblib")), "--wait")
        assert second.returncode == 0, second.stdout + second.stderr
        assert (Path(inventory.hosts["tb-08"].deploy_root) / app / "current"
                ).resolve().name == before  # left out: never touched
    events = [json.loads(line) for f in (daemon.state_dir / "logs").glob("*.jsonl")
              for line in f.read_text().splitlines()]
    # The reasons of every app on the host are listed (other tests' apps may come first).
    assert any(e["event"] == "host.finished" and e["host"] == "tb-08"
               and "excluded from the rollout: host failed at its last verification: "
               in str(e.get("reason"))
               and f"{app}: GPU 0 ({uuid}): new Xid 79" in str(e.get("reason")) for e in events)
    again = cli("verify", "tb-08", "--json")  # the Xid is gone with the profile
    assert again.returncode == 0 and json.loads(again.stdout)[0]["status"] == "healthy", \
        again.stdout


# -- the schedule, against a real store ---------------------------------------------------------

def test_schedule_runs_an_app_when_due_never_while_it_is_being_deployed(
        models_dir: Path, tmp_path: Path) -> None:
    from orchestrator.core.states import DeploymentState as D
    from orchestrator.daemon.reverifier import Reverifier
    from orchestrator.daemon.store import open_store

    spec_path = v1_spec(models_dir, tmp_path, "rv-sched", extra="reverify: {every: 1h}\n")
    store = open_store(tmp_path / "state.db")
    try:
        store.create_deployment("d1", "rv-sched", {"reverify": {"every": "1h"}})
        store.transition_deployment("d1", D.RUNNING)
        store.transition_deployment("d1", D.SUCCEEDED)
        t0 = store.get_deployment("d1").updated
        jobs: list[Callable[[], None]] = []
        r = Reverifier(store, None, lambda d: Sink(), lambda d: spec_path.parent, jobs.append,
                       4, rnd=random.Random(3))
        assert r.tick(t0 + 600) == []  # not due yet (1h ± 10%)
        assert r.tick(t0 + 3960) == ["rv-sched"] and len(jobs) == 1
        assert r.tick(t0 + 3961) == []  # in flight, and the next run is an hour away
        assert not r.wait_idle("rv-sched", timeout=0.05)  # a deployment would wait
        r._done("rv-sched")
        assert r.wait_idle("rv-sched", timeout=0.05)

        store.create_deployment("d2", "rv-sched", {"reverify": {"every": "1h"}})  # queued
        assert r.tick(t0 + 3 * 3600) == []  # due, but the app is being deployed
        store.transition_deployment("d2", D.RUNNING)
        store.transition_deployment("d2", D.SUCCEEDED)
        assert r.tick(t0 + 3 * 3600) == ["rv-sched"]
        r._done("rv-sched")

        store.create_deployment("d3", "rv-sched", {})  # the latest spec drops `reverify:`
        store.transition_deployment("d3", D.RUNNING)
        store.transition_deployment("d3", D.SUCCEEDED)
        assert r.scheduled_apps() == {} and r.tick(t0 + 10 * 3600) == []
    finally:
        store.close()


def _checked(host: str, apps: dict[str, tuple[str, list[str]]],
             skipped: tuple[str, ...] = ()) -> HostCheckResult:
    """A host's result as reverify_host returns it: its status from the apps checked now."""
    checks = {a: AppCheck(a, st, rs) for a, (st, rs) in apps.items()}
    checks.update({a: AppCheck(a, rv.HEALTHY, [], skipped=f"app {a} has a deployment queued "
                                                          "or in flight") for a in skipped})
    status, reasons = rv.combine(apps)
    return HostCheckResult(host, status, reasons, None, checks)


def _reverifier(store: Any, runner: Any = None) -> Any:
    from orchestrator.daemon.reverifier import Reverifier

    return Reverifier(store, runner, lambda d: Sink(), lambda d: Path("/nonexistent"),
                      lambda job: job(), 4)


def test_a_host_degraded_by_one_app_stays_excluded_across_a_restart_until_it_verifies_clean(
        tmp_path: Path) -> None:
    from orchestrator.daemon.store import open_store

    path, driver = tmp_path / "state.db", ["driver 550.54.15 -> 560.35.03"]
    store = open_store(path)
    _reverifier(store)._record(_checked("h1", {"a": (rv.DEGRADED, driver),
                                              "b": (rv.HEALTHY, [])}), all_apps=True)
    store.close()

    store = open_store(path)  # the daemon restarted: a scheduled run of app b comes first
    try:
        r = _reverifier(store)
        res = r._record(_checked("h1", {"b": (rv.HEALTHY, [])}), all_apps=False)
        assert (res.status, res.reasons) == (rv.DEGRADED, ["a: driver 550.54.15 -> 560.35.03"])
        assert rv.excluded_hosts(store.hosts(), ["h1"]) == {
            "h1": "host degraded at its last verification: a: driver 550.54.15 -> 560.35.03"}
        unreachable = HostCheckResult("h1", rv.UNREACHABLE, ["connection refused"], None)
        assert r._record(unreachable, all_apps=False, error=True).status == rv.UNREACHABLE
        assert set(store.app_results("h1")) == {"a", "b"}  # not checked: nothing forgotten

        res = r._record(_checked("h1", {"a": (rv.HEALTHY, [])}), all_apps=False)
        assert (res.status, res.reasons) == (rv.HEALTHY, [])
        assert rv.excluded_hosts(store.hosts(), ["h1"]) == {}
    finally:
        store.close()


def test_verifying_every_app_forgets_apps_gone_from_the_host_keeps_one_being_deployed(
        tmp_path: Path) -> None:
    from orchestrator.daemon.store import open_store

    store = open_store(tmp_path / "state.db")
    try:
        r = _reverifier(store)
        r._record(_checked("h1", {"a": (rv.HEALTHY, []), "b": (rv.DEGRADED, ["slow"]),
                                  "c": (rv.FAILED, ["model file model/m.joblib changed"])}),
                  all_apps=True)
        # `verify h1` later: b is no longer on the host, c is being deployed (skipped).
        res = r._record(_checked("h1", {"a": (rv.HEALTHY, [])}, skipped=("c",)), all_apps=True)
        assert set(store.app_results("h1")) == {"a", "c"}
        assert (res.status, res.reasons) == (rv.FAILED, ["c: model file model/m.joblib changed"])
        # A check that itself failed (not unreachable) counts beside the apps' last results.
        broken = HostCheckResult("h1", rv.FAILED, ["probe: unreadable reply"], None)
        res = r._record(broken, all_apps=False, error=True)
        assert (res.status, res.reasons) == (
            rv.FAILED, ["probe: unreadable reply", "c: model file model/m.joblib changed"])
        assert set(store.app_results("h1")) == {"a", "c"}
    finally:
        store.close()


def test_after_a_restart_another_app_verifying_healthy_leaves_the_host_failed(
        testbed: Testbed, inventory: Inventory, pool: Pool, models_dir: Path,
        deployed: Deployed, tmp_path: Path) -> None:
    from orchestrator.daemon.config import DaemonConfig
    from orchestrator.daemon.runners.probe import ProbeRunner
    from orchestrator.daemon.store import Store, open_store

    other = "rv-other"
    first, _ = run(v1_spec(models_dir, tmp_path, other, targets=[RV_HOST]), inventory, pool,
                   hosts=[RV_HOST])
    assert first.ok, first.hosts[RV_HOST].error
    runner = ProbeRunner(DaemonConfig(tmp_path, tmp_path / "s", inventory=testbed.inventory_path))
    hosts, path = [inventory.hosts[RV_HOST]], tmp_path / "state.db"

    def verify(store: Store, app: str) -> HostCheckResult:
        [res] = _reverifier(store, runner).run(hosts, runner._inventory(), apps=[app])
        assert isinstance(res, HostCheckResult)
        return res

    changed = f"{APP}: model file model/model.joblib changed: sha256"
    with flipped(deployed.release / "model" / "model.joblib", offset=100):
        store = open_store(path)
        try:
            assert verify(store, APP).status == rv.FAILED
        finally:
            store.close()
        store = open_store(path)  # the daemon restarted
        try:
            res = verify(store, other)
            assert res.apps[other].status == rv.HEALTHY and res.apps[other].skipped is None
            assert res.status == rv.FAILED and res.reasons[0].startswith(changed), res.reasons
            assert RV_HOST in rv.excluded_hosts(store.hosts(), [RV_HOST])
        finally:
            store.close()
    store = open_store(path)
    try:  # repaired, but only a run of the failed app itself clears the host
        assert verify(store, other).status == rv.FAILED
        assert verify(store, APP).status == rv.HEALTHY
        assert rv.excluded_hosts(store.hosts(), [RV_HOST]) == {}
    finally:
        store.close()


def test_on_failure_redeploy_serves_a_fresh_release_of_the_same_deployment(
        inventory: Inventory, pool: Pool, models_dir: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_WHEEL_CACHE", str(WHEEL_CACHE))
    app = "rv-redo"
    spec_path = v1_spec(models_dir, tmp_path, app,
                        extra="reverify: {every: 1m, on_failure: redeploy}\n")
    first, _ = run(spec_path, inventory, pool, hosts=[RV_HOST])
    assert first.ok
    spec = load_spec(spec_path)
    host = inventory.hosts[RV_HOST]
    current = Path(host.deploy_root) / app / "current"
    with (flipped(current.resolve() / "model" / "model.joblib", offset=100),
          pool.session(host) as t):
        result = reverify_host(t, host, lambda d: {first.deployment: spec}.get(d or ""), Sink(),
                               apps=[app])
    assert result.apps[app].action == "redeploy"
    assert current.resolve().name != first.release_id  # a new release serves
    assert (result.status, result.apps[app].release_id) == (rv.HEALTHY, current.resolve().name)
    assert result.apps[app].deployment == first.deployment


def test_a_scheduled_run_records_the_host_status_and_sends_events_to_the_deployment(
        testbed: Testbed, deployed: Deployed, tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    from orchestrator.core.states import DeploymentState as D
    from orchestrator.daemon.config import DaemonConfig
    from orchestrator.daemon.reverifier import Reverifier
    from orchestrator.daemon.runners.probe import ProbeRunner
    from orchestrator.daemon.store import open_store

    store = open_store(tmp_path / "state.db")
    try:
        store.create_deployment(deployed.deployment, APP, {"reverify": {"every": "1m"}})
        store.transition_deployment(deployed.deployment, D.RUNNING)
        store.transition_deployment(deployed.deployment, D.SUCCEEDED)
        sinks: dict[str, Sink] = {}
        runner = ProbeRunner(DaemonConfig(tmp_path, tmp_path / "s",
                                          inventory=testbed.inventory_path))
        r = Reverifier(store, runner, lambda d: sinks.setdefault(d, Sink()),
                       lambda d: deployed.spec.paths.dir, lambda job: job(), 4)
        now = time.time() + 3600
        with testbed.profile(RV_HOST, "mismatch"), capture_logs() as logs:
            assert r.tick(now) == [APP]  # run inline here; the daemon's pool runs it there
        assert not [e for e in logs if e["log_level"] == "error"], logs
        [rec] = [h for h in store.hosts() if h["host"] == RV_HOST]
        assert rec["status"] == "degraded" and rec["reasons"][0].startswith(
            f"{APP}: driver 550.54.15 -> NVML error LibRmVersionMismatch")
        events = sinks[deployed.deployment].events
        assert [e["status"] for e in events if e["event"] == "reverify"] == ["degraded"]
        assert r.tick(now + 7200) == [APP]
        assert next(h for h in store.hosts() if h["host"] == RV_HOST)["status"] == "healthy"
    finally:
        store.close()


# -- remote/audit.py itself, under the oldest Python hosts may have ----------------------------

def _python39() -> str | None:
    found = sorted(Path("/root/.pyenv/versions").glob("3.9.*/bin/python3"))
    return str(found[-1]) if found else None


def _record_line(site: Path, rel: str) -> str:
    import base64
    import hashlib

    digest = hashlib.sha256((site / rel).read_bytes()).digest()
    return f"{rel},sha256={base64.urlsafe_b64encode(digest).rstrip(b'=').decode()},1\n"


def _audit_script(python: str, root: Path, app: str) -> dict[str, Any]:
    script = Path(__file__).parent.parent / "orchestrator" / "hosts" / "remote" / "audit.py"
    out = subprocess.run([python, "-E", str(script), "--json-args", "-"], check=False,
                         input=json.dumps({"root": str(root), "app": app}),
                         capture_output=True, text=True, timeout=60)
    assert len(out.stdout.splitlines()) == 1, out.stdout + out.stderr  # one JSON object
    reply: dict[str, Any] = json.loads(out.stdout)
    return reply


@pytest.mark.skipif(_python39() is None, reason="no Python 3.9 on this machine")
def test_audit_script_matches_the_controller_tree_hash_and_names_venv_files(
        tmp_path: Path) -> None:
    py39 = _python39()
    assert py39 is not None
    release = tmp_path / "app" / "releases" / "20261122T000000Z-0123abcd"
    (release / "model" / "variables").mkdir(parents=True)
    (release / "model" / "saved_model.pb").write_bytes(b"graph")
    (release / "model" / "variables" / "v.data").write_bytes(b"weights")
    site = release / "venv-dir" / "lib" / "python3.9" / "site-packages"
    (site / "pkg").mkdir(parents=True)
    (site / "pkg-1.0.dist-info").mkdir()
    for name in ("a.py", "b.py"):
        (site / "pkg" / name).write_text(f"# {name}\n")
    (site / "pkg-1.0.dist-info" / "RECORD").write_text(
        _record_line(site, "pkg/a.py") + _record_line(site, "pkg/b.py")
        + "pkg-1.0.dist-info/RECORD,,\n")
    (release / "venv").symlink_to(release / "venv-dir")
    (release / "manifest.json").write_text(json.dumps(
        {"model_sha256": hash_path(release / "model")}))
    (tmp_path / "app" / "current").symlink_to(f"releases/{release.name}")

    clean = _audit_script(py39, tmp_path, "app")
    assert clean["ok"] and clean["model"]["ok"] and clean["model"]["kind"] == "tree"
    assert clean["venv"]["ok"] and clean["venv"]["files_checked"] == 2

    (release / "model" / "variables" / "v.data").write_bytes(b"weightz")
    (site / "pkg" / "a.py").write_text("# changed\n")
    (site / "pkg" / "b.py").unlink()
    found = _audit_script(py39, tmp_path, "app")
    reasons = rv.decide(rv.audit_findings(found, {"saved_model.pb": hash_path(
        release / "model" / "saved_model.pb"), "variables/v.data": "0" * 64}))[1]
    assert reasons == ["model file model/variables/v.data changed",
                       "venv file pkg/a.py (pkg-1.0) changed: differs from its RECORD",
                       "venv file pkg/b.py (pkg-1.0) missing"]
    assert _audit_script(py39, tmp_path, "other") == {
        "ok": False, "kind": "no-current", "error": "app other has no current release on "
                                                   "this host"}


@pytest.mark.parametrize(("running", "image", "release", "expect"), [
    (True, "sha256:" + "a" * 64, "r1", []),
    (True, "sha256:" + "b" * 64, "r1", ["runs image sha256:" + "b" * 64 + ", release r1 was "
                                        "verified in sha256:" + "a" * 64]),
    (True, "sha256:" + "a" * 64, None, ["serves release (no orchestrator label), current is r1"]),
    (False, "sha256:" + "a" * 64, "r1", ["is not running"]),
    (False, None, None, ["none on the host"]),
])
def test_the_serving_container_must_run_the_release_it_was_verified_in(
        running: bool, image: str | None, release: str | None, expect: list[str]) -> None:
    found = rv.container_findings("app", running, image, release, "sha256:" + "a" * 64, "r1")
    assert len(found) == len(expect) and all(f.status == rv.FAILED for f in found)
    assert all(e in f.message for f, e in zip(found, expect, strict=True)), found
