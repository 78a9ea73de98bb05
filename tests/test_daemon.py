"""The real daemon process over its real socket: end to end against the testbed's sshd hosts
(probe + preflight runner), the CLI's exit codes, events identical in store, jsonl and stream,
the state-dir lock, SIGTERM, kill -9 and reconciliation, sd_notify."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.deploy.steps.registry import STEP_ORDER
from orchestrator.testbed import Testbed
from tests.daemons import (
    DEPLOY,
    ECHO,
    ORCHESTRATOR,
    PROBE,
    Daemon,
    jsonl_events,
    run_to_exit,
    stored_events,
    tcp_config,
    wait_for,
    write_config,
)
from tests.specs import WHEEL_CACHE, joblib_spec, stub_spec

ROOT = Path(__file__).resolve().parent.parent


def test_submit_follow_status_end_to_end_on_the_testbed(
        testbed: Testbed, tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    h100 = testbed.hosts_with("h100")[0].name
    old = testbed.hosts_with("old-driver")[0].name
    config = write_config(tmp_path, PROBE + f'inventory = "{testbed.inventory_path}"\n'
                                            f'known_hosts = "{testbed.known_hosts_path}"\n'
                                            f'identity = "{testbed.identity_path}"\n')
    daemon = daemons(config)

    # A fleet where one host's driver is too old: submit --follow exits 3.
    spec = stub_spec(tmp_path / "spec", [h100, old])
    result = daemon.cli("submit", str(spec), "--follow", "--json")
    assert result.returncode == 3, result.stderr
    streamed = [json.loads(line) for line in result.stdout.splitlines()]
    deployment = streamed[0]["deployment"]
    assert [e["seq"] for e in streamed] == list(range(1, len(streamed) + 1))
    assert streamed == stored_events(daemon, deployment) == jsonl_events(daemon, deployment)

    steps = [(e["host"], e["step"], e["status"]) for e in streamed if e["event"] == "step"]
    for host in (h100, old):
        mine = [(s, st) for h, s, st in steps if h == host]
        assert mine[:2] == [("probe", "running"), ("probe", "ok")]
        assert mine[2] == ("preflight", "running")
    assert (old, "preflight", "failed") in steps and (h100, "preflight", "ok") in steps
    failed = next(e for e in streamed if e["host"] == old and e["status"] == "failed")
    assert "supports CUDA up to 11.4" in failed["reason"]
    assert streamed[-1]["event"] == "deployment" and streamed[-1]["status"] == "failed"

    status = json.loads(daemon.cli("status", deployment, "--json").stdout)
    assert status["state"] == "failed" and old in status["result"]["reason"]
    assert status["hosts"][h100]["state"] == "ok" and status["hosts"][old]["state"] == "failed"
    hosts = {h["host"]: h for h in json.loads(daemon.cli("hosts", "--json").stdout)}
    assert hosts[h100]["status"] == "healthy" and hosts[h100]["facts"]["gpus"]

    # The good host alone: --wait exits 0; plain text when piped.
    ok = daemon.cli("submit", str(stub_spec(tmp_path / "ok", [h100])), "--wait")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("submitted ") and "\x1b[" not in ok.stdout
    listing = daemon.cli("status")
    assert listing.returncode == 0 and "succeeded" in listing.stdout and "failed" in listing.stdout
    logs = daemon.cli("logs", deployment, "--host", old)
    assert logs.returncode == 0 and f" {old} preflight failed" in logs.stdout
    assert h100 not in logs.stdout


def test_verify_probes_named_hosts_and_reports_status(
        testbed: Testbed, tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    no_driver = testbed.hosts_with("no-driver")[0].name
    h100 = testbed.hosts_with("h100")[0].name
    daemon = daemons(write_config(tmp_path, PROBE + f'inventory = "{testbed.inventory_path}"\n'))
    result = daemon.cli("verify", h100, no_driver, "--json")
    assert result.returncode == 4, result.stderr  # a degraded host (errors.py's exit table)
    status = {h["host"]: h["status"] for h in json.loads(result.stdout)}
    assert status == {h100: "healthy", no_driver: "degraded"}
    unknown = daemon.cli("verify", "no-such-host")
    assert unknown.returncode == 2 and "unknown host or group 'no-such-host'" in unknown.stderr


def test_invalid_spec_and_unknown_id_exit_2(tmp_path: Path,
                                            daemons: Callable[..., Daemon]) -> None:
    daemon = daemons(write_config(tmp_path))
    spec = stub_spec(tmp_path / "spec", ["x"])
    spec.write_text(spec.read_text().replace("kind: Deployment", "kind: Deploymnet"))
    bad = daemon.cli("submit", str(spec), "--wait")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: spec.yaml:2: kind:") and len(bad.stderr.splitlines()) == 1
    missing = daemon.cli("logs", "deadbeef")
    assert missing.returncode == 2 and "no deployment 'deadbeef'" in missing.stderr


def second_daemon(tmp: Path, config_text: str) -> tuple[int, str]:
    """A daemon configured in tmp/other, expected to exit: (its exit code, its stderr)."""
    other = tmp / "other"
    other.mkdir()
    config = other / "orchestrator.toml"
    config.write_text(config_text)
    result = run_to_exit(config)
    return result.returncode, result.stderr


def test_second_daemon_on_the_state_dir_refuses(tmp_path: Path,
                                               daemons: Callable[..., Daemon]) -> None:
    first = daemons(write_config(tmp_path))
    code, stderr = second_daemon(tmp_path, f'state_dir = "{first.state_dir}"\nsocket = "o.sock"\n')
    assert code == 1 and "already uses the state dir" in stderr
    assert len([x for x in stderr.splitlines() if x.startswith("error:")]) == 1
    with first.http() as http:  # the first is untouched
        assert http.get("/healthz").json()["ok"] is True


def test_client_without_daemon_is_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run([ORCHESTRATOR, "status", "--socket", str(tmp_path / "none.sock")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 4  # unreachable (orchestrator/errors.py)
    assert result.stderr.startswith("error: no orchestrator daemon answers on")
    assert len(result.stderr.splitlines()) == 1


def test_bad_config_exits_2_naming_file_and_field(tmp_path: Path) -> None:
    config = write_config(tmp_path, "max_parallel_deployment = 3\n")
    result = run_to_exit(config)
    assert result.returncode == 2
    assert f"{config}: max_parallel_deployment: unknown key" in result.stderr
    config.write_text('state_dir = "s"\nsocket = = 1\n')
    result = run_to_exit(config)
    assert result.returncode == 2 and f"{config}:2: not valid TOML" in result.stderr


def test_kill_9_then_restart_reconciles_and_loses_no_event(
        tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    config = write_config(tmp_path, ECHO)
    daemon = daemons(config, env={"ORCHESTRATOR_ECHO_DELAY_S": "0.2"})
    spec = stub_spec(tmp_path / "spec", ["h1", "h2"])
    submitted = json.loads(daemon.cli("submit", str(spec), "--json").stdout)
    deployment = submitted["id"]
    deadline = time.monotonic() + 30
    while len(stored_events(daemon, deployment)) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    before = stored_events(daemon, deployment)
    daemon.proc.kill()
    daemon.proc.wait(timeout=30)

    restarted = daemons(config)
    with restarted.http() as http:
        record = http.get(f"/v1/deployments/{deployment}").json()
    assert record["state"] == "failed"
    assert "daemon restarted" in record["result"]["reason"]
    after = stored_events(restarted, deployment)
    assert after[:len(before)] == before  # nothing written before the kill is lost
    assert [e["seq"] for e in after] == list(range(1, len(after) + 1))
    tail = after[len(before):]
    assert ("reconcile", "started") in [(e["event"], e["status"]) for e in tail]
    assert tail[-1]["event"] == "deployment" and tail[-1]["status"] == "failed"
    assert jsonl_events(restarted, deployment)[:len(before)] == before
    running = [s for h in record["hosts"].values() for s in h["steps"] if s["state"] == "running"]
    assert running == []  # the interrupted step is recorded as failed, not left running


def test_sigterm_finishes_cleanly_and_removes_the_socket(
        tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    daemon = daemons(write_config(tmp_path, ECHO), env={"ORCHESTRATOR_ECHO_DELAY_S": "0.1"})
    assert oct(daemon.socket.stat().st_mode & 0o777) == "0o660"
    spec = stub_spec(tmp_path / "spec", ["h1"])
    deployment = json.loads(daemon.cli("submit", str(spec), "--json").stdout)["id"]
    time.sleep(0.3)
    assert daemon.stop(signal.SIGTERM) == 0
    assert not daemon.socket.exists()
    log = (daemon.state_dir / "logs" / "daemon.log").read_text().splitlines()
    assert json.loads(log[-1])["event"] == "stopped"
    events = jsonl_events(daemon, deployment)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_sd_notify_ready_and_watchdog(tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(30)
        daemons(write_config(tmp_path, ECHO),
                env={"NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "200000"})
        messages: set[str] = set()
        while not {"READY=1", "WATCHDOG=1"} <= messages:
            messages |= set(sock.recv(4096).decode().splitlines())
    assert "READY=1" in messages and "WATCHDOG=1" in messages


def test_a_slow_follower_gets_every_event_and_does_not_slow_the_rollout(
        tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    daemon = daemons(write_config(tmp_path, ECHO), env={"ORCHESTRATOR_ECHO_DELAY_S": "0"})
    hosts = [f"h{i}" for i in range(40)]  # 40 hosts x 8 steps x 2 = 640 step events
    deployment = json.loads(daemon.cli("submit", str(stub_spec(tmp_path / "s", hosts)),
                                       "--json").stdout)["id"]
    with daemon.http() as http, http.stream(
            "GET", f"/v1/deployments/{deployment}/events", params={"follow": True},
            timeout=60) as stream:
        lines = stream.iter_lines()
        first = json.loads(next(lines))
        # Stop reading: the daemon must finish the rollout regardless.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if http.get(f"/v1/deployments/{deployment}").json()["state"] == "succeeded":
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the rollout stalled behind a slow follower")
        rest = [json.loads(line) for line in lines if line]
    got = [first, *rest]
    assert got == stored_events(daemon, deployment)
    step_events = len(hosts) * len(STEP_ORDER) * 2  # the echo runner walks the registry's steps
    assert [e["seq"] for e in got] == list(range(1, step_events + 4))  # queued, running, succeeded


def test_example_config_and_defaults(tmp_path: Path) -> None:
    from orchestrator.daemon.config import load_config

    example = load_config(ROOT / "configs/orchestrator.toml", env={})
    assert example.socket == Path("/run/orchestrator/orchestrator.sock")
    assert example.tcp.enabled is False and example.max_parallel_deployments == 2
    from orchestrator.daemon.runners.base import make_runner

    runner = make_runner(example)  # the default: the deploy pipeline, with every hook
    assert example.runner == "orchestrator.daemon.runners.deploy:DeployRunner"
    assert all(callable(getattr(runner, m)) for m in ("run", "rollback", "verify_hosts",
                                                       "check", "reconcile"))
    plain = load_config(None, env={"HOME": "/home/u", "XDG_RUNTIME_DIR": "/run/user/7"})
    assert plain.state_dir == Path("/home/u/.local/state/orchestrator")
    assert plain.socket == Path("/run/user/7/orchestrator.sock")
    override = load_config(None, env={"HOME": "/h", "ORCHESTRATOR_STATE_DIR": "/s",
                                      "ORCHESTRATOR_SOCKET": "/x.sock"})
    assert (override.state_dir, override.socket) == (Path("/s"), Path("/x.sock"))
    assert load_config(None, env={"HOME": "/h"}).socket == Path(
        "/h/.local/state/orchestrator/orchestrator.sock")


@pytest.mark.parametrize("older", ["orchestrator.deploy:DeployRunner",
                                   "orchestrator.deploy.rollout:DeployRunner"])
def test_older_names_of_the_deploy_runner_still_load_it(tmp_path: Path, older: str) -> None:
    """An operator's config from before the runners package keeps working: the runner's older
    names are read as its new one, and the daemon builds the same runner from them."""
    from orchestrator.daemon.config import DEFAULT_RUNNER, load_config
    from orchestrator.daemon.runners.base import make_runner
    from orchestrator.daemon.runners.deploy import DeployRunner

    config = tmp_path / "o.toml"
    config.write_text(f'runner = "{older}"\n')
    loaded = load_config(config, env={"HOME": str(tmp_path)})
    assert loaded.runner == DEFAULT_RUNNER == "orchestrator.daemon.runners.deploy:DeployRunner"
    assert isinstance(make_runner(loaded), DeployRunner)


@pytest.mark.parametrize("text,field", [
    ('[tcp]\nenabled = true\nhost = "0.0.0.0"\ntoken_file = "t"\n', "tcp.host"),
    ("[tcp]\nenabled = true\n", "tcp.token_file"),
    ('max_ssh_sessions = "many"\n', "max_ssh_sessions"),
    ("max_parallel_deployments = 0\n", "max_parallel_deployments"),
    ('runner = "no-colon"\n', "runner"),
])
def test_bad_config_values_name_their_field(tmp_path: Path, text: str, field: str) -> None:
    from orchestrator.daemon.config import load_config
    from orchestrator.errors import SpecError

    config = tmp_path / "o.toml"
    config.write_text(text)
    with pytest.raises(SpecError) as info:
        load_config(config, env={})
    assert info.value.field == field and info.value.file == str(config)


def test_tcp_listener_needs_token_and_allowed_host(tmp_path: Path,
                                                  daemons: Callable[..., Daemon]) -> None:
    token = "tcp-token-abcdefghijklmnop"
    tcp, port = tcp_config(tmp_path, token)
    daemon = daemons(write_config(tmp_path, ECHO + tcp))
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=30) as http:
        assert http.get(f"{base}/healthz").status_code == 401
        assert http.get(f"{base}/healthz", headers={"authorization": "Bearer wrong"}
                        ).status_code == 401
        auth = {"authorization": f"Bearer {token}"}
        assert http.get(f"{base}/healthz", headers=auth).json()["ok"] is True
        rebinding = http.get(f"{base}/healthz", headers={**auth, "host": "attacker.example"})
        assert rebinding.status_code == 403
    with daemon.http() as unix:  # the Unix socket needs no token
        assert unix.get("/healthz").status_code == 200


def test_specs_dir_rolls_out_new_and_changed_specs_once(
        tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    specs = tmp_path / "specs"
    config = write_config(tmp_path, ECHO + 'specs_dir = "specs"\n')
    daemon = daemons(config)

    def listing() -> list[dict[str, Any]]:
        with daemon.http() as http:
            return list(http.get("/v1/deployments").json())

    stub_spec(specs, ["h1"], name="watched")
    (specs / "broken.yaml").write_text("apiVersion: orchestrator/v1\nkind: Nope\n")
    first = wait_for(lambda: [d for d in listing() if d["state"] == "succeeded"])
    assert [d["app"] for d in first] == ["watched"]
    (specs / "model.joblib").write_bytes(b"a retrained model\n")  # a named file changed
    spec = specs / "spec.yaml"
    spec.write_text(spec.read_text().replace(
        spec.read_text().split("sha256: ")[1].split("}")[0],
        __import__("hashlib").sha256(b"a retrained model\n").hexdigest()))
    wait_for(lambda: len([d for d in listing() if d["state"] == "succeeded"]) == 2)
    assert {d["app"] for d in listing()} == {"watched"}  # the broken spec never ran
    daemon.stop()

    again = daemons(config)
    time.sleep(5)  # two scans: nothing new
    with again.http() as http:
        assert len(http.get("/v1/deployments").json()) == 2


def test_unknown_target_is_refused_at_submission(
        testbed: Testbed, tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    daemon = daemons(write_config(tmp_path, PROBE + f'inventory = "{testbed.inventory_path}"\n'))
    result = daemon.cli("submit", str(stub_spec(tmp_path / "spec", ["gpu-99"])), "--wait")
    assert result.returncode == 2
    assert "unknown host or group 'gpu-99'" in result.stderr
    assert json.loads(daemon.cli("status", "--json").stdout) == []


def test_corrupt_store_stops_the_daemon_with_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.sqlite3").write_bytes(b"definitely not sqlite" * 500)
    result = run_to_exit(config)
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1
    assert "state.sqlite3: not a usable orchestrator store" in errors[0]
    assert not (tmp_path / "o.sock").exists()


def test_a_live_socket_of_another_daemon_is_not_stolen(
        tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    first = daemons(write_config(tmp_path))
    code, stderr = second_daemon(tmp_path, f'state_dir = "state"\nsocket = "{first.socket}"\n')
    assert code == 1
    assert "another daemon is already listening" in stderr
    with first.http() as http:
        assert http.get("/healthz").status_code == 200


def test_cancel_and_rollback_from_the_cli(tmp_path: Path,
                                          daemons: Callable[..., Daemon]) -> None:
    daemon = daemons(write_config(tmp_path, ECHO), env={"ORCHESTRATOR_ECHO_DELAY_S": "0.3"})
    spec = stub_spec(tmp_path / "spec", ["h1", "h2"])
    waiting = subprocess.Popen([ORCHESTRATOR, "submit", str(spec), "--wait", "--socket",
                                str(daemon.socket)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deployment = wait_for(lambda: [d["id"] for d in json.loads(
        daemon.cli("status", "--json").stdout) if d["state"] == "running"])[0]
    cancelled = daemon.cli("cancel", deployment)
    assert cancelled.returncode == 0 and "cancel requested" in cancelled.stdout
    _, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 3, err  # DESIGN.md: a deployment that did not succeed
    assert json.loads(daemon.cli("status", deployment, "--json").stdout)["state"] == "cancelled"
    again = daemon.cli("cancel", deployment)
    assert again.returncode == 2 and "nothing to cancel" in again.stderr

    (tmp_path / "b").mkdir()
    fast = daemons(write_config(tmp_path / "b", ECHO), env={"ORCHESTRATOR_ECHO_DELAY_S": "0"})
    done = fast.cli("submit", str(stub_spec(tmp_path / "s2", ["h1"], name="app2")), "--wait")
    assert done.returncode == 0, done.stderr
    rolled = fast.cli("rollback", "--app", "app2")
    assert rolled.returncode == 0 and "rolling_back" in rolled.stdout
    deployment = rolled.stdout.split()[0]
    logs = fast.cli("logs", deployment, "--follow", "--json")
    assert json.loads(logs.stdout.splitlines()[-1])["status"] == "rolled_back"


# -- kill -9 in the middle of real deployments (the deploy pipeline as the runner) ---------------

def _serving(host_root: Path, app: str) -> tuple[str | None, bool]:
    """(the release `current` points at, whether that release was verified): read on disk,
    as the testbed's hosts are local directories."""
    current = host_root / app / "current"
    if not current.is_symlink():
        return None, False
    manifest = current / "manifest.json"
    verified = manifest.is_file() and bool(json.loads(manifest.read_text()).get("warmup"))
    return os.readlink(current).rsplit("/", 1)[-1], verified


def test_kill_9_while_one_host_switches_and_another_installs_then_restart_settles_both(
        testbed: Testbed, tmp_path: Path, daemons: Callable[..., Daemon],
        models_dir: Path) -> None:
    a, b = (h for h in testbed.hosts_with("h100")[1:3])
    mdir = models_dir
    config = write_config(tmp_path, f'inventory = "{testbed.inventory_path}"\n' + DEPLOY)
    env = {"ORCHESTRATOR_WHEEL_CACHE": str(WHEEL_CACHE)}
    daemon = daemons(config, env=env)
    v1 = {h.name: joblib_spec(tmp_path / f"v1-{h.name}", f"k9-{h.name}", mdir / "model.joblib",
                              mdir / "golden.npz", [h.name]) for h in (a, b)}
    for spec in v1.values():
        done = daemon.cli("submit", str(spec), "--wait", timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    before = {h.name: _serving(h.deploy_root, f"k9-{h.name}")[0] for h in (a, b)}

    # v2 on b first; v2 on a once b is installing, so a is mid-pipeline (install or verify)
    # when b announces its switch: kill -9 right then.
    v2 = {h.name: joblib_spec(tmp_path / f"v2-{h.name}", f"k9-{h.name}",
                              mdir / "changed.joblib", mdir / "golden-v2.npz", [h.name])
          for h in (a, b)}
    dep_b = json.loads(daemon.cli("submit", str(v2[b.name]), "--json").stdout)["id"]
    wait_for(lambda: any(e["step"] == "install" for e in stored_events(daemon, dep_b)), 300)
    dep_a = json.loads(daemon.cli("submit", str(v2[a.name]), "--json").stdout)["id"]
    with daemon.http() as http, http.stream(
            "GET", f"/v1/deployments/{dep_b}/events", params={"follow": True},
            timeout=300) as stream:
        for line in stream.iter_lines():
            event = json.loads(line)
            if event["step"] == "switch" and event["status"] == "running":
                daemon.proc.kill()  # as soon as the switch is announced
                break
    daemon.proc.kill()
    daemon.proc.wait(timeout=30)
    from orchestrator.daemon.store import open_store

    store = open_store(daemon.state_dir / "state.sqlite3")  # what was durable at the kill
    kept = {d: store.events(d) for d in (dep_a, dep_b)}
    # On a loaded machine the follower may see the switch after b has already finished: only
    # what was still in flight at the kill has anything to settle.
    flying = [d for d in (dep_a, dep_b) if store.get_deployment(d).state not in
              {"succeeded", "failed", "rolled_back", "cancelled"}]
    assert flying, "both deployments finished before the kill"
    store.close()
    in_flight = {d: [(e["host"], e["step"], e["status"]) for e in kept[d] if e["event"] == "step"]
                 for d in (dep_a, dep_b)}

    restarted = time.monotonic()
    again = daemons(config, env=env)
    # Reconciled at once (each host settled from its real state); a deployment left running
    # is then resumed (issue 16), which may deploy hosts again: it finishes later.
    wait_for(lambda: all(any(e["event"] == "reconcile" for e in stored_events(again, d)[
        len(kept[d]):]) for d in flying), 30, "the deployments in flight to be reconciled")
    settled_s = time.monotonic() - restarted  # from the new process's spawn
    with again.http() as http:
        records = wait_for(lambda: [http.get(f"/v1/deployments/{d}").json()
                                     for d in (dep_a, dep_b)]
                            if all(http.get(f"/v1/deployments/{d}").json()["state"] in
                                   {"succeeded", "failed", "rolled_back", "cancelled"}
                                   for d in (dep_a, dep_b)) else None, 600)
    for record in records:
        events = stored_events(again, record["id"])
        assert events[:len(kept[record["id"]])] == kept[record["id"]], "an event was lost"
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert record["id"] not in flying or any(
            e["event"] == "reconcile" for e in events[len(kept[record["id"]]):]), \
            in_flight[record["id"]]
        steps = [s for h in record["hosts"].values() for s in h["steps"]]
        assert all(s["state"] != "running" for s in steps), steps  # none left half-done
    print(f"settled in {settled_s:.1f} s:", {  # shown with -s: where each was killed, how settled
        # [-1:]: a deployment still queued at the kill has no step event yet
        r["id"]: (in_flight[r["id"]][-1:], r["state"], r["result"]["reason"]) for r in records})
    for h in (a, b):
        release, verified = _serving(h.deploy_root, f"k9-{h.name}")
        assert release is not None, f"{h.name} serves nothing"
        assert release == before[h.name] or verified, f"{h.name} serves an unverified release"
