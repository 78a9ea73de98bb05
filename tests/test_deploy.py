"""The deploy pipeline against the testbed's real sshd hosts, with real uv installs.

The lock is small and real (numpy + scikit-learn + scipy, tests/fixtures/deploy/sklearn.lock),
the model a real scikit-learn estimator (tests/models.py) checked against its golden file in the
venv the pipeline built on the host. Wheels come from a controller wheel cache that persists
between runs (~/.cache/orchestrator/test-wheelcache: downloaded from PyPI once), so only the first
run on a machine pays for the download. Every test uses its own app name; they share the
content-addressed venv on the host, which is the point of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.inventory import Host, Inventory
from orchestrator.core.spec import load_spec
from orchestrator.deploy.batch import DeployResult, deploy, prepare
from orchestrator.deploy.pipeline import HostStatus
from orchestrator.deploy.wheelcache import WheelCache, platform_tags
from orchestrator.hosts import hostlock
from orchestrator.hosts.hostops import HostOps
from orchestrator.hosts.pool import Pool
from orchestrator.hosts.ssh import SshOptions
from orchestrator.hosts.ssh.stream import FilesFeed
from orchestrator.testbed import Testbed
from orchestrator.testbed.mirror import serve_directory, write_simple_index
from tests.daemons import DEPLOY, Daemon, write_config
from tests.specs import LOCK, WHEEL_CACHE, joblib_spec

HOST = "tb-01"


class Sink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def emit(self, event: str, *, host: str | None = None, step: str | None = None,
             status: str | None = None, duration_ms: float | None = None, level: str = "info",
             **details: Any) -> None:
        with self._lock:
            self.events.append({"event": event, "host": host, "step": step, "status": status,
                                "duration_ms": duration_ms, "level": level, **details})

    def find(self, step: str, status: str) -> dict[str, Any]:
        return next(e for e in self.events if e["step"] == step and e["status"] == status)


def write_spec(root: Path, app: str, model: Path, golden: Path, *, lock: Path = LOCK,
               model_name: str = "model.joblib", extra: str = "",
               wheelhouse: Path | None = None, targets: Sequence[str] = (HOST,)) -> Path:
    """root/app/spec.yaml: `model` checked against `golden`, deployed to tb-01 by default."""
    return joblib_spec(root / app, app, model, golden, targets, lock=lock,
                       model_name=model_name, extra="release: {keep: 3}\n" + extra,
                       wheelhouse=wheelhouse)


def v1_spec(models_dir: Path, root: Path, app: str, **kw: Any) -> Path:
    """v1 of `app`: model.joblib checked against its own golden file."""
    return write_spec(root, app, models_dir / "model.joblib", models_dir / "golden.npz", **kw)


def v2_spec(models_dir: Path, root: Path, app: str, **kw: Any) -> Path:
    """v2 of `app`: the changed model, shipped as model-v2.joblib, with its own golden file."""
    return write_spec(root, app, models_dir / "changed.joblib", models_dir / "golden-v2.npz",
                      model_name="model-v2.joblib", **kw)


def deploy_v1(models_dir: Path, tmp_path: Path, app: str, inventory: Inventory, pool: Pool,
              *, hosts: list[str] | None = None, extra: str = "") -> DeployResult:
    """v1 of `app` deployed (from tmp_path/ok) and serving: what a failing v2 must leave."""
    good, _ = run(v1_spec(models_dir, tmp_path / "ok", app, extra=extra), inventory, pool,
                  hosts=hosts)
    assert good.ok, {name: r.error for name, r in good.hosts.items()}
    return good


def run(spec_path: Path, inventory: Inventory, pool: Pool, *, hosts: list[str] | None = None,
        installer: str = "uv") -> tuple[DeployResult, Sink]:
    spec = load_spec(spec_path)
    sink = Sink()
    inputs = prepare(spec, installer=installer, wheel_cache=WHEEL_CACHE)
    targets = inventory.resolve(hosts or [HOST])
    return deploy(inputs, targets, pool=pool, sink=sink), sink


def cached_wheels() -> dict[str, Any]:
    """{filename: Wheel} of the lock's wheels for the testbed's Python and platform."""
    wheels = WheelCache(WHEEL_CACHE).fill(LOCK, "3.11", platform_tags("x86_64", "glibc 2.36"))
    return {w.filename: w for w in wheels.values()}


def wheel_of(name: str) -> Any:
    return next(w for f, w in cached_wheels().items() if f.startswith(f"{name}-"))


def app_state(pool: Pool, host: Host, app: str) -> Any:
    with pool.session(host) as t:
        return HostOps(t, host.deploy_root).state(app)


def releases(pool: Pool, host: Host, app: str) -> dict[str, str]:
    with pool.session(host) as t:
        return {r.release_id: r.state for r in HostOps(t, host.deploy_root).releases(app)}


def venv_dirs(host: Host) -> set[str]:
    # The testbed's hosts are this machine: their deploy roots are local directories.
    d = Path(host.deploy_root) / ".orchestrator" / "venvs"
    return {p.name for p in d.iterdir() if p.is_dir()} if d.is_dir() else set()


def test_fresh_host_then_new_model_reuses_venv_and_keeps_rollback_target(
        inventory: Inventory, pool: Pool, models_dir: Path, tmp_path: Path) -> None:
    host = inventory.hosts[HOST]
    first, sink1 = run(v1_spec(models_dir, tmp_path / "v1", "fraud"), inventory, pool)
    r1 = first.hosts[HOST]
    assert r1.status is HostStatus.SUCCEEDED, r1.error
    state = app_state(pool, host, "fraud")
    assert state.current == first.release_id and state.current_resolves
    assert (Path(host.deploy_root) / "fraud" / "current" / "manifest.json").is_file()
    steps = [e["step"] for e in sink1.events if e["event"] == "step" and e["status"] == "ok"]
    assert steps == ["probe", "preflight", "stage", "install", "verify", "switch", "check",
                     "prune"]

    second, sink2 = run(v2_spec(models_dir, tmp_path / "v2", "fraud"), inventory, pool)
    assert second.hosts[HOST].status is HostStatus.SUCCEEDED, second.hosts[HOST].error
    assert sink2.find("install", "ok")["reused"] is True
    assert sink2.find("stage", "ok")["wheels_pushed"] == 0
    assert sink2.find("install", "ok")["env_hash"] == sink1.find("install", "ok")["env_hash"]
    state = app_state(pool, host, "fraud")
    assert state.current == second.release_id != first.release_id
    assert state.previous_good == first.release_id
    assert releases(pool, host, "fraud") == {first.release_id: "previous-good",
                                             second.release_id: "current"}
    manifest = (Path(host.deploy_root) / "fraud" / "current" / "manifest.json").read_text()
    for key in ("spec_digest", "model_sha256", "lock_sha256", "env_hash", "pip_freeze",
                "warmup", "facts"):
        assert f'"{key}"' in manifest
    assert "scikit-learn==1.9.1" in manifest


def test_model_failing_golden_leaves_previous_release_serving(
        inventory: Inventory, pool: Pool, models_dir: Path, tmp_path: Path) -> None:
    host = inventory.hosts[HOST]
    good = deploy_v1(models_dir, tmp_path, "golden-app", inventory, pool)
    # The changed model checked against the unchanged model's golden file.
    bad, sink = run(write_spec(tmp_path / "bad", "golden-app", models_dir / "changed.joblib",
                               models_dir / "golden.npz"), inventory, pool)
    result = bad.hosts[HOST]
    assert result.status is HostStatus.FAILED and result.failed_step == "verify"
    assert "golden" in (result.error or "")
    assert sink.find("abort-stage", "ok")
    state = app_state(pool, host, "golden-app")
    assert state.current == good.release_id and state.staging == ()
    assert bad.release_id not in releases(pool, host, "golden-app")


def test_health_check_failing_after_switch_rolls_back_with_reason(
        inventory: Inventory, pool: Pool, models_dir: Path, tmp_path: Path) -> None:
    host = inventory.hosts[HOST]
    # Healthy only while `current` holds model.joblib: v2 ships model-v2.joblib.
    service = ("service: {restart: 'echo restarted >> restarts.log', "
               "health_command: 'test -e current/model/model.joblib', health_timeout_s: 2}\n")
    good = deploy_v1(models_dir, tmp_path, "health-app", inventory, pool, extra=service)
    bad, sink = run(v2_spec(models_dir, tmp_path / "bad", "health-app", extra=service),
                    inventory, pool)
    result = bad.hosts[HOST]
    assert result.status is HostStatus.ROLLED_BACK and result.failed_step == "check"
    assert "unhealthy after 2 s" in (result.error or "")
    rollback = sink.find("rollback", "started")
    assert "test -e current/model/model.joblib" in rollback["reason"]
    assert sink.find("rollback", "ok")["current"] == good.release_id
    assert sink.find("recheck", "ok")
    state = app_state(pool, host, "health-app")
    assert state.current == good.release_id and bad.release_id in state.bad
    # restarted for v1, for v2, and again for v1 after the rollback
    log = Path(host.deploy_root) / "health-app" / "restarts.log"
    assert log.read_text().count("restarted") == 3


def test_a_rollback_restarts_and_checks_the_previous_release_as_it_was_deployed(
        inventory: Inventory, pool: Pool, models_dir: Path, tmp_path: Path) -> None:
    host = inventory.hosts[HOST]
    # v2 brings a health check of its own (an endpoint v1 never had) and another restart: v1,
    # put back, must be restarted and checked as v1 was deployed, not failed by v2's check.
    v1 = "service: {restart: 'echo v1 >> restarts.log'}\n"
    v2 = ("service: {restart: 'echo v2 >> restarts.log', "
          "health_command: 'test -e current/model/v2-endpoint', health_timeout_s: 1}\n")
    good = deploy_v1(models_dir, tmp_path, "svc-app", inventory, pool, extra=v1)
    bad, sink = run(v2_spec(models_dir, tmp_path / "bad", "svc-app", extra=v2), inventory, pool)
    result = bad.hosts[HOST]
    assert result.status is HostStatus.ROLLED_BACK and result.failed_step == "check"
    assert sink.find("recheck", "ok")["health"] == "none configured"
    assert app_state(pool, host, "svc-app").current == good.release_id
    log = Path(host.deploy_root) / "svc-app" / "restarts.log"
    assert log.read_text().split() == ["v1", "v2", "v1"]


def test_tampered_lock_hash_is_refused_before_the_host_is_touched(
        inventory: Inventory, pool: Pool, models_dir: Path, tmp_path: Path) -> None:
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    for name, w in cached_wheels().items():
        shutil.copy(w.path, wheelhouse / name)
    tampered = tmp_path / "tampered.lock"
    tampered.write_text(LOCK.read_text().replace(wheel_of("threadpoolctl").sha256, "0" * 64))
    result, sink = run(v1_spec(models_dir, tmp_path / "t", "tamper-app", lock=tampered,
                               wheelhouse=wheelhouse), inventory, pool)
    r = result.hosts[HOST]
    assert r.status is HostStatus.FAILED and r.failed_step == "stage"
    assert "threadpoolctl" in (r.error or "")
    assert app_state(pool, inventory.hosts[HOST], "tamper-app").current is None
    assert not any(e["step"] == "install" for e in sink.events)


def test_tampered_wheel_on_host_fails_install_naming_package_and_leaves_no_venv(
        inventory: Inventory, pool: Pool, models_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    host = inventory.hosts[HOST]
    sha = wheel_of("threadpoolctl").sha256
    cached = Path(host.deploy_root) / ".orchestrator" / "wheels" / f"{sha}.whl"
    # Altered on the way (issue 15): the host lacks the wheel, the controller streams it, one
    # byte flips in flight; the host's hash check on arrival refuses it and keeps nothing.
    cached.unlink(missing_ok=True)
    read = FilesFeed._read

    def flip_first_byte(feed: FilesFeed, size: int) -> bytes:
        piece = read(feed, size)
        return bytes([piece[0] ^ 1]) + piece[1:] if piece else piece
    with monkeypatch.context() as patched:
        patched.setattr(FilesFeed, "_read", flip_first_byte)
        altered, _ = run(v1_spec(models_dir, tmp_path / "flip", "wheel-app"), inventory, pool)
    r = altered.hosts[HOST]
    assert r.status is HostStatus.FAILED and r.failed_step == "stage", r.error
    assert f"wheels-receive: wheel upload failed verification: {sha} arrived as" in (
        r.error or "")
    assert not cached.exists()
    assert not list(cached.parent.glob(f"{sha}.whl.part*"))  # nothing half-kept
    assert app_state(pool, host, "wheel-app").current is None

    good = deploy_v1(models_dir, tmp_path, "wheel-app", inventory, pool)  # streamed whole
    assert cached.is_file()
    # A lock with the same packages but other bytes: a new environment must be built.
    other_lock = tmp_path / "other.lock"
    other_lock.write_text(LOCK.read_text() + "# rebuilt\n")
    original = cached.read_bytes()
    before = venv_dirs(host)
    # uv trusts its own cache of a local wheel it has unpacked before (keyed by path), so the
    # host's installer only re-reads the swapped file once that cache is gone.
    shutil.rmtree(Path(host.deploy_root) / ".orchestrator" / "uv-cache")
    try:
        with zipfile.ZipFile(cached, "a") as zf:  # still a valid wheel, other bytes
            zf.comment = b"tampered"
        actual = hashlib.sha256(cached.read_bytes()).hexdigest()
        bad, _ = run(v1_spec(models_dir, tmp_path / "bad", "wheel-app", lock=other_lock),
                     inventory, pool)
    finally:
        cached.write_bytes(original)
    r = bad.hosts[HOST]
    assert r.status is HostStatus.FAILED and r.failed_step == "install"
    assert "threadpoolctl" in (r.error or "") and sha in (r.error or "")
    assert actual in (r.error or "")  # both hashes named
    assert venv_dirs(host) == before  # no half-built venv left behind
    state = app_state(pool, host, "wheel-app")
    assert state.current == good.release_id and state.staging == ()


def test_hosts_pull_the_wheels_from_a_mirror_by_hash_and_a_mirror_down_fails_stage(
        inventory: Inventory, pool: Pool, models_dir: Path, tmp_path: Path) -> None:
    """Issue 15: with `environment.wheel_source` the host fetches what its cache lacks from
    the operator's mirror (a PEP 503 tree served by http.server); the controller ships none."""
    host = inventory.hosts[HOST]
    wheels = cached_wheels()
    host_cache = Path(host.deploy_root) / ".orchestrator" / "wheels"
    for w in wheels.values():
        (host_cache / f"{w.sha256}.whl").unlink(missing_ok=True)

    def spec_with(url: str, folder: str) -> Path:
        spec = v1_spec(models_dir, tmp_path / folder, "mirror-app")
        spec.write_text(spec.read_text().replace(
            "requirements: requirements.lock}",
            f"requirements: requirements.lock, wheel_source: {{url: '{url}'}}}}"))
        return spec

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{closed.getsockname()[1]}/simple/"
    failed, _ = run(spec_with(down, "down"), inventory, pool)
    r = failed.hosts[HOST]
    assert r.status is HostStatus.FAILED and r.failed_step == "stage"
    assert f"wheels-fetch: cannot reach the wheel mirror at {down}" in (r.error or "")
    assert app_state(pool, host, "mirror-app").current is None

    tree = write_simple_index({name: w.path for name, w in wheels.items()}, tmp_path / "mirror")
    with serve_directory(tree) as base:
        result, sink = run(spec_with(base + "simple/", "up"), inventory, pool)
    assert result.hosts[HOST].status is HostStatus.SUCCEEDED, result.hosts[HOST].error
    staged = sink.find("stage", "ok")
    assert staged["wheels_fetched"] == len(wheels) and staged["wheels_pushed"] == 0
    assert staged["wheel_bytes"] == 0
    assert all((host_cache / f"{w.sha256}.whl").is_file() for w in wheels.values())


def test_wheelhouse_missing_a_wheel_fails_before_current_moves(
        inventory: Inventory, pool: Pool, models_dir: Path, tmp_path: Path) -> None:
    host = inventory.hosts[HOST]
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    for name, w in cached_wheels().items():
        if not name.startswith("joblib-"):
            shutil.copy(w.path, wheelhouse / name)
    result, sink = run(v1_spec(models_dir, tmp_path / "h", "house-app", wheelhouse=wheelhouse),
                       inventory, pool)
    r = result.hosts[HOST]
    assert r.status is HostStatus.FAILED and r.failed_step == "stage"
    assert "joblib" in (r.error or "")
    assert app_state(pool, host, "house-app").current is None
    assert not (Path(host.deploy_root) / "house-app" / "releases").exists() or not any(
        (Path(host.deploy_root) / "house-app" / "releases").iterdir())
    assert sink.find("stage", "failed")["kind"] == "InvalidInput"


PYLOCK = LOCK.parent.parent / "locks" / "pylock.sklearn.toml"  # LOCK as PEP 751 (uv-made)


def cached_wheelhouse(directory: Path) -> Path:
    """The lock's wheels (from the test wheel cache) under their real names: no download."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, w in cached_wheels().items():
        shutil.copy(w.path, directory / name)
    return directory


def pylock_spec(spec_path: Path, pylock: bytes) -> Path:
    """The spec at `spec_path`, its requirements lock replaced by `pylock` as pylock.toml."""
    folder = spec_path.parent
    (folder / "requirements.lock").unlink()
    (folder / "pylock.toml").write_bytes(pylock)
    spec_path.write_text(spec_path.read_text().replace("requirements: requirements.lock",
                                                       "requirements: pylock.toml"))
    return spec_path


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_pylock_spec_deploys_end_to_end(inventory: Inventory, pool: Pool, models_dir: Path,
                                        tmp_path: Path, installer: str) -> None:
    host = inventory.hosts[HOST]
    app = f"pylock-{installer}"
    wheelhouse = cached_wheelhouse(tmp_path / "wheelhouse")
    # other bytes per installer: each one builds its own environment
    pylock = PYLOCK.read_bytes() + f"# built by {installer}\n".encode()
    spec = pylock_spec(v1_spec(models_dir, tmp_path / "v1", app, wheelhouse=wheelhouse), pylock)
    result, sink = run(spec, inventory, pool, installer=installer)
    r = result.hosts[HOST]
    assert r.status is HostStatus.SUCCEEDED, r.error
    assert sink.find("install", "ok")["installer"] == installer
    current = Path(host.deploy_root) / app / "current"
    assert (current / "requirements.lock").read_bytes() == pylock  # kept as staged
    manifest = json.loads((current / "manifest.json").read_text())
    assert manifest["lock_sha256"] == hashlib.sha256(pylock).hexdigest()
    assert "scikit-learn==1.9.1" in manifest["pip_freeze"]
    assert {line.split("==")[0] for line in manifest["pip_freeze"]} == {
        "cloudpickle", "joblib", "narwhals", "numpy", "scikit-learn", "scipy", "threadpoolctl"}
    assert app_state(pool, host, app).current == result.release_id


def test_tampered_pylock_fails_naming_the_package_and_keeps_the_previous_release(
        inventory: Inventory, pool: Pool, models_dir: Path, tmp_path: Path) -> None:
    host = inventory.hosts[HOST]
    good = deploy_v1(models_dir, tmp_path, "pylock-tamper", inventory, pool)
    sha = wheel_of("threadpoolctl").sha256
    tampered = PYLOCK.read_bytes().replace(sha.encode(), b"0" * 64)
    spec = pylock_spec(v2_spec(models_dir, tmp_path / "bad", "pylock-tamper",
                               wheelhouse=cached_wheelhouse(tmp_path / "wheelhouse")), tampered)
    bad, sink = run(spec, inventory, pool)
    r = bad.hosts[HOST]
    assert r.status is HostStatus.FAILED and r.failed_step == "stage"
    assert "threadpoolctl" in (r.error or "")
    assert not any(e["step"] == "install" for e in sink.events)
    state = app_state(pool, host, "pylock-tamper")
    assert state.current == good.release_id and state.staging == ()


def test_two_deployments_of_one_app_at_once_the_second_is_refused(
        inventory: Inventory, pool: Pool, testbed: Testbed, models_dir: Path,
        tmp_path: Path) -> None:
    host = inventory.hosts[HOST]
    spec_path = v1_spec(models_dir, tmp_path / "c", "race-app")
    results: dict[str, tuple[DeployResult, Sink]] = {}
    with Pool(SshOptions.for_inventory(inventory), max_connections=2) as other_pool:
        go = threading.Barrier(2)

        def one(name: str, p: Pool) -> None:
            go.wait()
            results[name] = run(spec_path, inventory, p)

        threads = [threading.Thread(target=one, args=("a", pool)),
                   threading.Thread(target=one, args=("b", other_pool))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    outcomes = sorted(r.hosts[HOST].status.value for r, _ in results.values())
    assert outcomes == ["failed", "succeeded"]
    loser = next(r for r, _ in results.values() if not r.ok)
    winner = next(r for r, _ in results.values() if r.ok)
    assert loser.hosts[HOST].failed_step == "lock"
    assert f"being deployed by {winner.deployment}" in (loser.hosts[HOST].error or "")
    assert app_state(pool, host, "race-app").current == winner.release_id
    assert not (Path(host.deploy_root) / "race-app" / hostlock.LOCK_DIR).exists()


def test_cli_deploy_prints_events_and_releases_lists_them(
        inventory: Inventory, testbed: Testbed, models_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.cli.app import main

    monkeypatch.setenv("ORCHESTRATOR_WHEEL_CACHE", str(WHEEL_CACHE))
    monkeypatch.setenv("ORCHESTRATOR_STATE_DIR", str(tmp_path / "no-daemon"))
    inv = str(testbed.inventory_path)
    spec = v1_spec(models_dir, tmp_path / "cli", "cli-app")
    assert main(["deploy", str(spec), "--inventory", inv]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(" tb-01 stage ok " in ln and "release_id=" in ln for ln in lines)
    assert any(" tb-01 install ok " in ln and "env_hash=" in ln for ln in lines)
    assert " - deployment succeeded " in lines[-2]  # the verdict, as the daemon records it
    assert lines[-1].startswith("tb-01: succeeded ")
    release_id = lines[-1].split()[2]

    assert main(["releases", "cli-app", "--inventory", inv, "--host", HOST]) == 0
    table = capsys.readouterr().out
    assert release_id in table and "current" in table

    bad = write_spec(tmp_path / "cli-bad", "cli-app", models_dir / "changed.joblib",
                     models_dir / "golden.npz")
    assert main(["deploy", str(bad), "--inventory", inv, "--json"]) == 3
    events = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    failed = next(e for e in events if e["step"] == "verify" and e["status"] == "failed")
    assert "golden" in failed["error"] and failed["host"] == HOST

    broken = bad
    broken.write_text(broken.read_text().replace("kind: Deployment", "kind: Deploymint"))
    assert main(["deploy", str(broken), "--inventory", inv]) == 2
    assert "spec.yaml:2: kind" in capsys.readouterr().err


def test_cli_deploy_stops_on_a_failing_canary_like_the_daemon(
        testbed: Testbed, models_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`orchestrator deploy` runs the daemon's rollout (tests/test_rollout.py has the daemon's
    side): every target preflighted first, the canary alone, and a canary that fails its golden
    check stops the rollout before any other host is touched; exit 3, as `submit --wait`."""
    from orchestrator.cli.app import main

    monkeypatch.setenv("ORCHESTRATOR_WHEEL_CACHE", str(WHEEL_CACHE))
    monkeypatch.setenv("ORCHESTRATOR_STATE_DIR", str(tmp_path / "no-daemon"))
    targets = ["tb-01", "tb-07", "tb-08"]  # h100 hosts: all pass the preflight
    spec = write_spec(tmp_path / "canary", "canary-app", models_dir / "changed.joblib",
                      models_dir / "golden.npz", targets=targets,
                      extra="rollout: {canary: 1, batch_size: 2}\n")
    assert main(["deploy", str(spec), "--inventory", str(testbed.inventory_path),
                 "--json"]) == 3
    events = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    pre = next(e for e in events if e["event"] == "rollout.preflight"
               and e["status"] == "finished")
    assert sorted(pre["passed"]) == sorted(targets)
    assert [e["hosts"] for e in events if e["event"] == "batch"] == [["tb-01"]]
    assert {e["host"] for e in events if e["step"] == "stage"} == {"tb-01"}
    assert {e["host"] for e in events if e["event"] == "host.started"} == {"tb-01"}
    failed = next(e for e in events if e["step"] == "verify" and e["status"] == "failed")
    assert failed["host"] == "tb-01" and "golden" in failed["error"]
    end = events[-1]
    assert (end["event"], end["status"]) == ("deployment", "failed"), end
    assert "more than rollout.max_failed_hosts=0" in end["reason"] and "golden" in end["reason"]
    roots = {h.name: Path(h.deploy_root) for h in testbed.hosts}
    assert not (roots["tb-01"] / "canary-app" / "current").exists()  # failed before switch
    assert not (roots["tb-07"] / "canary-app").exists()
    assert not (roots["tb-08"] / "canary-app").exists()


def test_cli_deploy_keeps_out_a_host_the_daemon_found_degraded(
        testbed: Testbed, models_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A host the daemon's re-verification last recorded as degraded (its store in
    --state-dir) is kept out like the daemon keeps it out: reported failed, counted against
    max_failed_hosts (0 here), so the rollout stops before any host changes."""
    from orchestrator.cli.app import main
    from orchestrator.daemon.store import open_store

    state = tmp_path / "state"
    store = open_store(state / "state.sqlite3")
    store.record_host("tb-08", "degraded", ["NVML: Driver/library version mismatch"], None)
    store.close()
    spec = v1_spec(models_dir, tmp_path / "ex", "excluded-app", targets=["tb-07", "tb-08"])
    assert main(["deploy", str(spec), "--inventory", str(testbed.inventory_path), "--json",
                 "--state-dir", str(state)]) == 3
    events = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    out = next(e for e in events if e["event"] == "host.finished" and e["host"] == "tb-08")
    assert out["failed_step"] == "reverify" and "degraded" in out["reason"]
    assert "version mismatch" in out["reason"]
    assert not [e for e in events if e["step"] == "stage" or e["event"] == "batch"]
    assert "before any host changed" in events[-1]["reason"]
    root = next(Path(h.deploy_root) for h in testbed.hosts if h.name == "tb-07")
    assert not (root / "excluded-app").exists()


def test_cli_deploy_ctrl_c_cancels_like_the_daemon(
        testbed: Testbed, models_dir: Path, tmp_path: Path) -> None:
    """Ctrl-C is the daemon's `cancel`: no host starts after it, the switched canary is left
    serving (cancel never undoes), the verdict is `cancelled` and the exit code 3. The rollout
    is caught in `rollout.pause_s` between the canary and the next batch."""
    import signal
    import subprocess
    import sys

    spec = v1_spec(models_dir, tmp_path / "c", "cancel-app", targets=["tb-01", "tb-07"],
                   extra="rollout: {canary: 1, batch_size: 1, pause_s: 600}\n")
    env = {**os.environ, "ORCHESTRATOR_WHEEL_CACHE": str(WHEEL_CACHE),
           "ORCHESTRATOR_STATE_DIR": str(tmp_path / "no-daemon")}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "deploy", str(spec),
                             "--inventory", str(testbed.inventory_path), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    events: list[dict[str, Any]] = []
    try:
        for line in proc.stdout:
            events.append(json.loads(line))
            if events[-1]["event"] == "batch" and events[-1]["status"] == "waiting":
                proc.send_signal(signal.SIGINT)
                break
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    events += [json.loads(ln) for ln in rest.splitlines()]
    assert proc.returncode == 3, err
    assert "interrupted: stopping after the steps in flight" in err
    assert (events[-1]["event"], events[-1]["status"]) == ("deployment", "cancelled"), events[-1]
    assert {e["host"] for e in events if e["step"] == "stage"} == {"tb-01"}
    roots = {h.name: Path(h.deploy_root) for h in testbed.hosts}
    assert (roots["tb-01"] / "cancel-app" / "current").is_symlink()  # the canary: left as is
    assert not (roots["tb-07"] / "cancel-app").exists()


# -- crash recovery: a pipeline that dies mid-way, then the reconciliation of its host ---------

class Crash(BaseException):
    """Stands for the controller dying: no `except Exception` catches it, nothing is undone."""


def crash_at(step: str, spec_path: Path, pool: Pool, host: Host) -> Any:
    from orchestrator.deploy.pipeline import Pipeline
    from orchestrator.deploy.playbook import load_playbook
    from orchestrator.deploy.steps.host import HostDeploy

    class Dying(HostDeploy):
        def run(self, name: str, deadline: Any) -> Any:
            if name == step:
                raise Crash(name)
            return super().run(name, deadline)

    inputs = prepare(load_spec(spec_path), wheel_cache=WHEEL_CACHE)
    with pool.session(host) as t:
        hostlock.acquire(t, host.deploy_root, str(inputs.spec.name), inputs.deployment)
        with pytest.raises(Crash):
            Pipeline(load_playbook(), Dying(t, host, inputs), Sink()).run()
    return inputs


def test_reconcile_after_a_crash_before_switch_removes_the_staged_release(
        inventory: Inventory, pool: Pool, models_dir: Path, tmp_path: Path) -> None:
    from orchestrator.deploy.steps.recovery import recover_host

    host = inventory.hosts[HOST]
    good = deploy_v1(models_dir, tmp_path, "crash-app", inventory, pool)
    inputs = crash_at("verify", v2_spec(models_dir, tmp_path / "v2", "crash-app"), pool, host)
    state = app_state(pool, host, "crash-app")
    assert state.staging == (inputs.release_id,) and state.current == good.release_id
    assert (Path(host.deploy_root) / "crash-app" / hostlock.LOCK_DIR).exists()

    sink = Sink()
    with pool.session(host) as t:
        assert recover_host(t, host, inputs, sink) == "aborted"
    state = app_state(pool, host, "crash-app")
    assert state.staging == () and state.current == good.release_id
    assert not (Path(host.deploy_root) / "crash-app" / hostlock.LOCK_DIR).exists()
    assert sink.find("reconcile", "ok")["outcome"] == "aborted"


def test_reconcile_after_a_crash_after_switch_keeps_a_healthy_release_or_rolls_back(
        inventory: Inventory, pool: Pool, models_dir: Path, tmp_path: Path) -> None:
    from orchestrator.deploy.steps.recovery import recover_host

    host = inventory.hosts[HOST]
    health = "service: {health_command: 'test ! -e current/model/sick', health_timeout_s: 1}\n"
    good = deploy_v1(models_dir, tmp_path, "crash2-app", inventory, pool, extra=health)
    inputs = crash_at("prune", v2_spec(models_dir, tmp_path / "v2", "crash2-app", extra=health),
                      pool, host)
    assert app_state(pool, host, "crash2-app").current != good.release_id
    with pool.session(host) as t:
        assert recover_host(t, host, inputs, Sink()) == "serving"
    serving = app_state(pool, host, "crash2-app").current
    assert serving != good.release_id

    # The same crash, but the new release is found unhealthy when the daemon comes back.
    inputs = crash_at("prune", v1_spec(models_dir, tmp_path / "v3", "crash2-app",
                                       model_name="model-v3.joblib", extra=health), pool, host)
    current = Path(host.deploy_root) / "crash2-app" / "current"
    (current / "model" / "sick").write_text("")
    sink = Sink()
    with pool.session(host) as t:
        assert recover_host(t, host, inputs, sink) == "rolled_back"
    state = app_state(pool, host, "crash2-app")
    assert state.current == serving and inputs.release_id in state.bad
    assert sink.find("recheck", "failed")


# -- through the real daemon: submit, wait, roll back by hand -----------------------------------

def test_daemon_deploys_with_the_deploy_runner_and_rolls_back_on_request(
        testbed: Testbed, inventory: Inventory, pool: Pool, models_dir: Path,
        tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    import time

    work = tmp_path / "daemon"
    work.mkdir()
    daemon = daemons(write_config(work, f'inventory = "{testbed.inventory_path}"\n' + DEPLOY),
                     env={"ORCHESTRATOR_WHEEL_CACHE": str(WHEEL_CACHE)})
    v1 = v1_spec(models_dir, tmp_path / "d1", "daemon-app")
    first = daemon.cli("submit", str(v1), "--wait", timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    v2 = v2_spec(models_dir, tmp_path / "d2", "daemon-app")
    second = daemon.cli("submit", str(v2), "--wait", timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    host = inventory.hosts[HOST]
    before = app_state(pool, host, "daemon-app")
    assert before.previous_good is not None

    assert daemon.cli("rollback", "--app", "daemon-app", timeout=300).returncode == 0
    deadline = time.monotonic() + 120
    while app_state(pool, host, "daemon-app").current != before.previous_good:
        assert time.monotonic() < deadline, "the rollback never switched the host back"
        time.sleep(0.5)
    assert before.current in app_state(pool, host, "daemon-app").bad


# -- the SSH connection killed during install ---------------------------------------------------

def _kill_sessions(sshd_pid: int) -> int:
    """SIGKILL the per-connection children of one testbed sshd: every open SSH session drops."""
    import signal

    killed = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == sshd_pid:
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def test_connection_killed_during_install_leaves_previous_release_serving(
        inventory: Inventory, pool: Pool, testbed: Testbed, models_dir: Path,
        tmp_path: Path) -> None:
    name = "tb-03"
    host, tb_host = inventory.hosts[name], Testbed.load(testbed.dir).host(name)
    good = deploy_v1(models_dir, tmp_path, "cut-app", inventory, pool, hosts=[name])

    class Cutter(Sink):
        killed = 0

        def emit(self, event: str, **kw: Any) -> None:
            super().emit(event, **kw)
            if kw.get("step") == "install" and kw.get("status") == "started":
                threading.Timer(1.0, self.cut).start()

        def cut(self) -> None:
            Cutter.killed = _kill_sessions(tb_host.pid)

    other_lock = tmp_path / "cut.lock"
    other_lock.write_text(LOCK.read_text() + "# cut\n")  # a new venv: install takes a while
    spec = load_spec(v1_spec(models_dir, tmp_path / "cut", "cut-app", lock=other_lock))
    sink = Cutter()
    # A new venv, compiled, from an empty uv cache: seconds of install to cut into.
    shutil.rmtree(Path(host.deploy_root) / ".orchestrator" / "uv-cache", ignore_errors=True)
    inputs = prepare(spec, wheel_cache=WHEEL_CACHE, compile_bytecode=True)
    result = deploy(inputs, [host], pool=pool, sink=sink)
    r = result.hosts[name]
    assert Cutter.killed >= 1
    assert r.status is HostStatus.FAILED and r.failed_step == "install"
    assert "connection lost in install" in (r.reason or "")
    assert sink.find("install", "failed")["kind"] == "HostUnreachable"
    assert sink.find("abort-stage", "failed")["kind"] == "HostUnreachable"
    reconnect = [e for e in sink.events if e["event"] == "host.reconnect"]
    assert [e["status"] for e in reconnect] == ["started", "ok"]
    assert reconnect[-1]["outcome"] == "aborted"
    state = app_state(pool, host, "cut-app")
    assert state.current == good.release_id and state.staging == ()
    assert not (Path(host.deploy_root) / "cut-app" / hostlock.LOCK_DIR).exists()


# -- a full disk ----------------------------------------------------------------------------------

def _fill(root: Path, leave: int) -> None:
    st = os.statvfs(root)
    with (root / "filler").open("ab") as fh:
        left = st.f_bavail * st.f_frsize - leave
        while left > 0:
            left -= fh.write(b"\0" * min(left, 8 << 20))


def test_full_disk_is_refused_by_preflight_or_fails_stage_leaving_previous_release(
        inventory: Inventory, pool: Pool, models_dir: Path, tmp_path: Path) -> None:
    import subprocess

    name = "tb-07"
    host = inventory.hosts[name]
    root = Path(host.deploy_root)
    # The host's deploy root on a small tmpfs of its own (root only; CI runs as root).
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=500m", "tmpfs", str(root)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        good = deploy_v1(models_dir, tmp_path, "disk-app", inventory, pool, hosts=[name])
        big = tmp_path / "big.joblib"
        big.write_bytes((models_dir / "model.joblib").read_bytes() + os.urandom(8 << 20))
        spec = write_spec(tmp_path / "big", "disk-app", big, models_dir / "golden.npz")

        # Already full: the preflight sees it in the probe's facts and touches nothing.
        _fill(root, 1 << 20)
        refused, _ = run(spec, inventory, pool, hosts=[name])
        assert refused.hosts[name].failed_step == "preflight"
        assert "disk" in (refused.hosts[name].error or "")
        (root / "filler").unlink()

        # Filling up while the release is staged: the upload fails, the stage is removed.
        class Filler(Sink):
            def emit(self, event: str, **kw: Any) -> None:
                super().emit(event, **kw)
                if kw.get("step") == "stage" and kw.get("status") == "started":
                    _fill(root, 1 << 20)

        sink = Filler()
        bad = deploy(prepare(load_spec(spec), wheel_cache=WHEEL_CACHE), [host], pool=pool,
                     sink=sink)
        r = bad.hosts[name]
        assert r.status is HostStatus.FAILED and r.failed_step == "stage"
        assert "the disk is full" in (r.error or "")
        assert sink.find("abort-stage", "ok")
        (root / "filler").unlink()
        state = app_state(pool, host, "disk-app")
        assert state.current == good.release_id and state.staging == ()
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
