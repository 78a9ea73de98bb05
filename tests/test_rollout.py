"""Fleet rollouts through the real daemon on a dedicated testbed of 6 sshd hosts (issue 7).

Every rollout here is a real one: the daemon's DeployRunner, uv installs from the test wheel
cache, a real scikit-learn model checked against its golden file on each host. One app, `fleet`,
is deployed to all six hosts once (v1); each test then rolls out v2 and checks what every host
serves afterwards by reading its `current` symlink on disk (the testbed's hosts are local
directories). A failure on one host only is made with a health command that fails where a
marker file sits in that host's deploy root.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.inventory import Host
from orchestrator.core.progress import BYTES, ITERATIONS, PROGRESS
from orchestrator.daemon.runners.deploy import outcome_of
from orchestrator.deploy.batch import DeployResult
from orchestrator.deploy.control import RolloutControl
from orchestrator.deploy.pipeline import HostResult, HostStatus
from orchestrator.deploy.rollout import RolloutResult, Stop, Undone, plan_batches
from orchestrator.testbed import Testbed, TestbedHost
from tests.daemons import Daemon, stored_events, wait_for
from tests.specs import joblib_spec

APP = "fleet"
HOSTS = 6
FLEET_PROFILES = ("h100",) * HOSTS  # this module's own testbed (`fleet`, tests/conftest.py)
# Passes unless the host's deploy root holds `fail-health` naming another release than the one
# `current` points at: so the marked host fails its check on v2 and passes again on v1.
HEALTH = ('test ! -f ../fail-health || test "$(readlink current)" = "$(cat ../fail-health)"')


# -- the pure parts and the control, without hosts ------------------------------------------

def test_plan_batches_canary_alone_then_batches() -> None:
    hosts = [Host(f"h{i}", "127.0.0.1", 22, "deploy", "/srv") for i in range(1, 7)]
    plan = [[h.name for h in b] for b in plan_batches(hosts, canary=1, batch_size=2)]
    assert plan == [["h1"], ["h2", "h3"], ["h4", "h5"], ["h6"]]
    assert [len(b) for b in plan_batches(hosts, canary=0, batch_size=4)] == [4, 2]


def _result(statuses: dict[str, HostStatus], stopped: Stop | str | None = None,
            undone: dict[str, str | None] | None = None, accepted: int = 0) -> RolloutResult:
    """`undone`: {host: None when put back, else why its rollback failed}."""
    out = DeployResult("d", "r")
    for name, status in statuses.items():
        out.hosts[name] = HostResult(name, status, reason=None if status is HostStatus.SUCCEEDED
                                     else "verify failed", error="golden: differs")
    return RolloutResult(out, stopped, {n: Undone(e) for n, e in (undone or {}).items()},
                         accepted)


def test_outcome_names_rolled_back_hosts_and_left_ones() -> None:
    ok, bad = HostStatus.SUCCEEDED, HostStatus.FAILED
    back = outcome_of(_result({"a": ok, "b": ok, "c": bad}, "1 failed hosts (c), more than 0",
                              {"a": None, "b": None}))
    assert back.state == "rolled_back" and back.hosts == {
        "a": "rolled_back", "b": "rolled_back", "c": "failed"}
    assert back.reason is not None and back.reason.endswith("the rollout stopped: a, b")
    assert "c: verify failed" in back.reason
    left = outcome_of(_result({"a": ok, "c": HostStatus.ROLLED_BACK}, "aborted after: budget"))
    assert left.state == "failed" and str(left.reason).endswith("left on the new release: a")
    aborted = outcome_of(_result({"a": ok}, Stop.ABORTED, {"a": None}))
    assert aborted.state == "rolled_back" and aborted.reason is not None
    assert aborted.reason.startswith("aborted by request")
    assert outcome_of(_result({"a": ok}, Stop.ABORTED)).state == "cancelled"
    # An abort of an app's first release: nothing before it to go back to; the host is named.
    first = outcome_of(_result({"a": ok}, Stop.ABORTED, {"a": "no previous good release"}))
    assert first.state == "cancelled" and first.hosts == {
        "a": "rollback failed: no previous good release"}
    assert first.reason == ("aborted by request; not put back, still on the new release: "
                            "a (no previous good release)")
    assert outcome_of(_result({"a": ok}, Stop.CANCELLED)).state == "cancelled"
    # A reason that reads like a request is a reason: only the enum is a request.
    assert outcome_of(_result({"a": ok, "c": bad}, "cancelled")).state == "failed"
    accepted = outcome_of(_result({"a": ok, "c": bad}, accepted=1))
    assert accepted.state == "succeeded" and "accepted by resuming" in str(accepted.reason)


def test_control_holds_until_resume_and_wakes_on_abort() -> None:
    control = RolloutControl()
    seen: list[tuple[bool, str]] = []
    control.on_hold = lambda holding, why: seen.append((holding, why))
    assert control.hold("not paused") is True and seen == []  # no pause: no wait
    control.pause()
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(control.hold("paused")))
    waiter.start()
    wait_for(lambda: control.held, 5, "the hold")
    assert waiter.is_alive() and seen == [(True, "paused")]
    control.resume()
    waiter.join(5)
    assert results == [True] and seen[-1] == (False, "resumed")
    waiter = threading.Thread(target=lambda: results.append(control.hold("budget", force=True)))
    waiter.start()
    wait_for(lambda: control.held, 5, "the forced hold")
    control.abort()
    waiter.join(5)
    assert results == [True, False] and control.aborted and control.is_set()
    assert seen[-1] == (False, "aborted")


@pytest.fixture(scope="module")
def daemon(fleet_daemon: Daemon) -> Daemon:
    """The deploy daemon over this module's `fleet` (tests/conftest.py, FLEET_PROFILES)."""
    return fleet_daemon


def names(fleet: Testbed) -> list[str]:
    return [h.name for h in fleet.hosts]


def write_spec(root: Path, model: Path, golden_file: Path, targets: list[str], *,
               rollout: str, health: bool = False) -> Path:
    service = f"service: {{health_command: '{HEALTH}'}}\n" if health else ""
    return joblib_spec(root, APP, model, golden_file, targets,
                       extra=f"gpu: {{required: false}}\nrollout: {rollout}\n{service}")


def serving(fleet: Testbed) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for h in fleet.hosts:
        current = Path(h.deploy_root) / APP / "current"
        out[h.name] = os.readlink(current).rsplit("/", 1)[-1] if current.is_symlink() else None
    return out


def submit(daemon: Daemon, spec: Path) -> str:
    done = daemon.cli("submit", str(spec), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    deployment: str = json.loads(done.stdout)["id"]
    return deployment


def record(daemon: Daemon, deployment: str) -> dict[str, Any]:
    with daemon.http() as http:
        body: dict[str, Any] = http.get(f"/v1/deployments/{deployment}").json()
    return body


def wait_end(daemon: Daemon, deployment: str, timeout: float = 600) -> dict[str, Any]:
    done = {"succeeded", "failed", "rolled_back", "cancelled"}
    result: dict[str, Any] = wait_for(
        lambda: (r := record(daemon, deployment))["state"] in done and r, timeout,
        f"{deployment} to finish")
    return result


@contextlib.contextmanager
def failing_health(host: TestbedHost) -> Iterator[None]:
    """Within: `host` fails the health check (HEALTH) of any release but the one it serves."""
    marker = Path(host.deploy_root) / "fail-health"
    marker.write_text(os.readlink(Path(host.deploy_root) / APP / "current"))
    try:
        yield
    finally:
        marker.unlink()


def touched(events: list[dict[str, Any]]) -> set[str]:
    """Hosts on which this deployment staged anything (the first step that writes)."""
    return {e["host"] for e in events if e["event"] == "step" and e["step"] == "stage"}


@dataclass(frozen=True)
class V1:
    deployment: str
    serving: dict[str, str | None]


@pytest.fixture(scope="module")
def v1(daemon: Daemon, fleet: Testbed, models_dir: Path,
       tmp_path_factory: pytest.TempPathFactory) -> V1:
    """v1 on all six hosts (canary 1, batches of 2), and what each host then serves."""
    spec = write_spec(tmp_path_factory.mktemp("v1"), models_dir / "model.joblib",
                      models_dir / "golden.npz", names(fleet),
                      rollout="{canary: 1, batch_size: 2, max_parallel: 16}", health=True)
    deployment = submit(daemon, spec)
    end = wait_end(daemon, deployment)
    assert end["state"] == "succeeded", end["result"]
    before = serving(fleet)
    assert all(before.values()), before
    return V1(deployment, before)


def v2_spec(tmp: Path, models_dir: Path, fleet: Testbed, rollout: str, *,
            good_golden: bool = True) -> Path:
    return write_spec(tmp, models_dir / "changed.joblib",
                      models_dir / ("golden-v2.npz" if good_golden else "golden.npz"),
                      names(fleet), rollout=rollout, health=True)


def test_canary_finishes_before_any_batch_host_starts_and_at_most_2_in_flight(
        daemon: Daemon, fleet: Testbed, v1: V1) -> None:
    events = stored_events(daemon, v1.deployment)
    order = [(e["seq"], e["event"], e["host"]) for e in events
             if e["event"] in ("host.started", "host.finished")]
    canary = order[0][2]
    canary_done = next(s for s, ev, h in order if ev == "host.finished" and h == canary)
    others = [s for s, ev, h in order if ev == "host.started" and h != canary]
    assert len(others) == HOSTS - 1 and min(others) > canary_done, order
    in_flight: set[str] = set()
    peak = 0
    for _, ev, host in order:
        (in_flight.add if ev == "host.started" else in_flight.discard)(host)
        peak = max(peak, len(in_flight))
    assert peak == 2, order  # batches of 2 really ran two at once, and never more
    # Preflight of every target came first, before any host staged anything.
    first_stage = min(e["seq"] for e in events if e["step"] == "stage")
    pre = next(e for e in events if e["event"] == "rollout.preflight"
               and e["status"] == "finished")
    assert pre["seq"] < first_stage and sorted(pre["passed"]) == sorted(names(fleet))


def test_v1_reports_byte_and_iteration_progress_per_host(daemon: Daemon, fleet: Testbed,
                                                          v1: V1) -> None:
    """Issue 14: each fresh host's stage reports the wheels it is sent as byte progress,
    monotonic and ending at the total stage itself reports, install the uv binary's bytes,
    and verify the warmup iterations ending at the spec's N; all stored like any event
    (gapless seq), throttled."""
    events = stored_events(daemon, v1.deployment)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    for host in names(fleet):
        mine = [e for e in events if e["host"] == host and e["event"] == PROGRESS]
        staged = next(e for e in events if e["host"] == host and e["event"] == "step"
                      and e["step"] == "stage" and e["status"] == "ok")
        wheels = [e for e in mine if e["step"] == "stage" and e["item"] == "wheels"]
        assert staged["wheels_pushed"] > 0 and wheels, (host, staged)  # a fresh host
        done = [e["done"] for e in wheels]
        assert done == sorted(done) and done[-1] == wheels[-1]["total"] == staged["wheel_bytes"]
        assert all(e["unit"] == BYTES and e["status"] == "running" for e in wheels)
        # throttled: at most one a second (and the final), never one per SFTP write
        assert len(wheels) <= 2 + max(e["elapsed_ms"] for e in wheels) / 1000.0, done
        uv = [e for e in mine if e["step"] == "install" and e["item"] == "uv"]
        assert uv and uv[-1]["done"] == uv[-1]["total"] > 1 << 20, mine  # shipped once here
        warm = [e for e in mine if e["step"] == "verify" and e["item"] == "warmup"]
        assert warm and [e["done"] for e in warm][-1] == warm[-1]["total"] == 2, mine
        timed = [e for e in mine if e["step"] == "verify" and e["item"] == "latency"]
        assert timed and timed[-1]["done"] == 20 and timed[-1]["unit"] == ITERATIONS
        # each inside its step: after the step's intent, before its outcome
        started = {e["step"]: e["seq"] for e in events if e["host"] == host
                   and e["event"] == "step" and e["status"] == "running"}
        ended = {e["step"]: e["seq"] for e in events if e["host"] == host
                 and e["event"] == "step" and e["status"] == "ok"}
        assert all(started[e["step"]] < e["seq"] < ended[e["step"]] for e in mine)


def test_golden_failure_on_the_canary_touches_no_other_host(
        daemon: Daemon, fleet: Testbed, models_dir: Path, v1: V1,
        tmp_path: Path) -> None:
    before = serving(fleet)
    spec = v2_spec(tmp_path, models_dir, fleet, "{canary: 1, batch_size: 2}", good_golden=False)
    deployment = submit(daemon, spec)
    end = wait_end(daemon, deployment)
    events = stored_events(daemon, deployment)
    canary = names(fleet)[0]
    assert end["state"] == "failed", end["result"]
    assert "golden" in end["result"]["reason"] and canary in end["result"]["reason"]
    assert touched(events) == {canary}
    assert not [e for e in events if e["event"] == "host.started" and e["host"] != canary]
    assert serving(fleet) == before  # the canary failed before its switch: nothing moved


def test_failure_on_the_third_batch_host_puts_every_switched_host_back(
        daemon: Daemon, fleet: Testbed, models_dir: Path, v1: V1,
        tmp_path: Path) -> None:
    before = serving(fleet)
    last = fleet.hosts[-1]  # canary, [2, 3], [4, 5], [6]: the sixth host is in the third batch
    with failing_health(last):
        spec = v2_spec(tmp_path, models_dir, fleet,
                       "{canary: 1, batch_size: 2, max_failed_hosts: 0}")
        end = wait_end(daemon, submit(daemon, spec))
    assert end["state"] == "rolled_back", end["result"]
    reason = end["result"]["reason"]
    switched = names(fleet)[:-1]
    assert f"1 failed hosts ({last.name})" in reason and "health" in reason, reason
    assert re.search(r"rolled back to their previous release because the rollout stopped: "
                     + re.escape(", ".join(sorted(switched))), reason), reason
    assert {h: end["result"]["hosts"][h] for h in switched} == dict.fromkeys(
        switched, "rolled_back")
    assert end["result"]["hosts"][last.name] == "rolled_back"  # by its own pipeline
    assert serving(fleet) == before


def _drop_from_reply(op: str, field: str) -> str:
    """Appended to the shipped module that offers `op`: it still does its work, and replies
    without `field` (a broken or hostile host)."""
    return (f"\n_real = OPS[{op!r}]\n\n\ndef _broken(args):\n    reply = _real(args)\n"
            f"    reply.pop({field!r}, None)\n    return reply\n\n\nOPS[{op!r}] = _broken\n")


#: step -> (the shipped module patched, what is appended to it, what the failure must say)
BAD_REPLIES: dict[str, tuple[str, str | tuple[str, str], str]] = {
    # The rollout's gate probes through the host agent (the op loads probe.py as a module, so
    # it sees this): the host is refused there, before any host changed.
    "probe": ("probe.py", "\n_collect = collect\n\n\ndef collect(deploy_root, engines=True):\n"
              "    facts = _collect(deploy_root, engines)\n"
              "    facts['disk']['free_bytes'] = float('inf')\n"
              "    return facts\n", "non-finite number Infinity"),
    "stage": ("hostops_stage.py", _drop_from_reply("stage-begin", "path"),
              "host sent an invalid reply to stage-begin: missing field 'path'"),
    "install": ("hostops_venvs.py", _drop_from_reply("venv-ensure", "env_hash"),
                "host sent an invalid reply to venv-ensure: missing field 'env_hash'"),
    "verify": ("hostops_stage.py", _drop_from_reply("stage-commit", "path"),
               "host sent an invalid reply to stage-commit: missing field 'path'"),
    "switch": ("hostops_releases.py", _drop_from_reply("switch", "generation"),
               "host sent an invalid reply to switch: missing field 'generation'"),
    # In a deployment the health check is the host agent's `health` op: its reply is edited
    # for the release just switched to only (the newest), so the rollback's recheck of the
    # previous one passes.
    "check": ("hostops_health.py", (
        "    return {\"healthy\": code == 0,",
        "    import os\n"
        "    _ids = sorted(n for n in os.listdir(app_dir + '/releases') if '.' not in n)\n"
        "    if os.readlink(app_dir + '/current').rsplit('/', 1)[-1] == _ids[-1]:\n"
        "        return {\"attempts\": 1}\n"
        "    return {\"healthy\": code == 0,"),
        "host sent an invalid reply to health: missing field 'healthy'"),
}
#: The daemon's resident memory after any of them (issue 13: a hostile host once took it to GBs).
MAX_DAEMON_RSS_MB = 300


@contextlib.contextmanager
def shipped_module_patched(host: TestbedHost, module: str,
                           code: str | tuple[str, str]) -> Iterator[None]:
    """Within: `code` appended to `module` in `host`'s shipped tools (or, given (old, new),
    `old` replaced by `new` in it); put back afterwards."""
    tools = sorted((Path(host.deploy_root) / ".orchestrator" / "tools").glob(f"*/{module}"))
    assert tools, "the tools were shipped by v1"
    saved = {path: path.read_bytes() for path in tools}
    try:
        for path, text in saved.items():
            if isinstance(code, tuple):
                assert code[0].encode() in text, f"{module} no longer has {code[0]!r}"
                path.write_bytes(text.replace(code[0].encode(), code[1].encode()))
            else:
                path.write_bytes(text + code.encode())
        yield
    finally:
        for path, text in saved.items():
            path.write_bytes(text)


@pytest.mark.parametrize("step", list(BAD_REPLIES))
def test_a_malformed_reply_fails_that_host_and_every_host_goes_back(
        daemon: Daemon, fleet: Testbed, models_dir: Path, v1: V1, tmp_path: Path,
        step: str) -> None:
    module, code, says = BAD_REPLIES[step]
    before = serving(fleet)
    bad = fleet.hosts[2]  # in the first batch after the canary
    with shipped_module_patched(bad, module, code):
        spec = v2_spec(tmp_path, models_dir, fleet,
                       "{canary: 1, batch_size: 2, max_failed_hosts: 0}")
        deployment = submit(daemon, spec)
        end = wait_end(daemon, deployment)
    gate = step == "probe"  # refused by the gate: nothing changed anywhere, nothing to undo
    assert end["state"] == ("failed" if gate else "rolled_back"), end["result"]
    reason = end["result"]["reason"]
    assert "internal error" not in reason and f"1 failed hosts ({bad.name})" in reason, reason
    assert gate == ("before any host changed" in reason), reason
    failed = [e for e in stored_events(daemon, deployment) if e["host"] == bad.name
              and e["event"] == "step" and e["status"] == "failed"]
    assert [e["step"] for e in failed] == [step] and says in failed[0]["error"], failed
    assert serving(fleet) == before  # the canary, the bad host and its batch mate: all back
    rss = daemon_rss_mb(daemon)
    assert rss < MAX_DAEMON_RSS_MB, f"the daemon holds {rss:.0f} MB after a bad {step} reply"


def daemon_rss_mb(daemon: Daemon) -> float:
    for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_pause_holds_between_batches_resume_goes_on_abort_puts_hosts_back(
        daemon: Daemon, fleet: Testbed, models_dir: Path, v1: V1,
        tmp_path: Path) -> None:
    before = serving(fleet)
    spec = v2_spec(tmp_path, models_dir, fleet, "{canary: 1, batch_size: 1}")
    deployment = submit(daemon, spec)
    wait_for(lambda: any(e["event"] == "batch" for e in stored_events(daemon, deployment)),
             120, "the canary batch")
    paused = daemon.cli("pause", deployment)
    assert paused.returncode == 0, paused.stderr
    wait_for(lambda: record(daemon, deployment)["state"] == "paused", 300, "paused")
    batches = [e for e in stored_events(daemon, deployment) if e["event"] == "batch"]
    assert [b["batch"] for b in batches] == [0]  # the canary finished; nothing else started
    time.sleep(1.5)
    assert record(daemon, deployment)["state"] == "paused"
    assert len([e for e in stored_events(daemon, deployment) if e["event"] == "batch"]) == 1
    assert daemon.cli("resume", deployment).returncode == 0
    wait_for(lambda: any(e["event"] == "batch" and e["batch"] == 1
                         for e in stored_events(daemon, deployment)), 120, "batch 1")
    aborted = daemon.cli("abort", deployment, "--json")
    assert aborted.returncode == 0, aborted.stderr
    end = wait_end(daemon, deployment)
    assert end["state"] == "rolled_back", end["result"]
    assert end["result"]["reason"].startswith("aborted by request"), end["result"]
    events = stored_events(daemon, deployment)
    assert max(e["batch"] for e in events if e["event"] == "batch") <= 2
    states = [e["status"] for e in events if e["event"] == "deployment"]
    assert states[:4] == ["queued", "running", "paused", "running"], states
    assert serving(fleet) == before  # switched hosts back on v1, the rest never touched
    # A finished deployment cannot be paused: one line, exit 2.
    again = daemon.cli("pause", deployment)
    assert again.returncode == 2 and "only a running deployment" in again.stderr


def test_on_failure_pause_leaves_switched_hosts_and_waits_for_abort(
        daemon: Daemon, fleet: Testbed, models_dir: Path, v1: V1,
        tmp_path: Path) -> None:
    before = serving(fleet)
    marked = fleet.hosts[1]  # the first batch: [2, 3]
    with failing_health(marked):
        spec = v2_spec(tmp_path, models_dir, fleet,
                       "{canary: 1, batch_size: 2, max_failed_hosts: 0, on_failure: pause}")
        deployment = submit(daemon, spec)
        wait_for(lambda: record(daemon, deployment)["state"] == "paused", 300, "held")
    held = serving(fleet)
    first, third = fleet.hosts[0].name, fleet.hosts[2].name
    assert held[first] != before[first] and held[third] != before[third]  # left on v2
    assert held[marked.name] == before[marked.name]  # its own pipeline put it back
    assert touched(stored_events(daemon, deployment)) == {first, marked.name, third}
    assert daemon.cli("abort", deployment).returncode == 0
    end = wait_end(daemon, deployment)
    reason = end["result"]["reason"]
    assert end["state"] == "failed" and reason.startswith("aborted after"), end
    assert reason.endswith(f"left on the new release: {first}, {third}"), reason
    assert serving(fleet) == held  # abort under on_failure: pause leaves them


def test_an_unreachable_target_fails_the_preflight_and_no_host_changes(
        daemon: Daemon, fleet: Testbed, models_dir: Path, v1: V1, tmp_path: Path) -> None:
    """Targets by label selector plus a host whose sshd is not there: the preflight of every
    target runs first; the unreachable one counts against max_failed_hosts: 0, so the rollout
    stops before any host changes."""
    inventory = fleet.inventory_path
    original = inventory.read_text()
    gone = (f"  tb-gone:\n    address: 127.0.0.250\n    port: {fleet.hosts[0].port}\n"
            f"    user: {fleet.hosts[0].user}\n    deploy_root: {tmp_path}/gone\n"
            "    labels: {profile: gone}\n")
    inventory.write_text(original.replace("hosts:\n", "hosts:\n" + gone, 1))
    before = serving(fleet)
    try:
        spec = write_spec(tmp_path / "spec", models_dir / "changed.joblib",
                          models_dir / "golden-v2.npz", ["profile=h100", "tb-gone"],
                          rollout="{canary: 1, batch_size: 2, max_failed_hosts: 0}")
        deployment = submit(daemon, spec)
        end = wait_end(daemon, deployment, 120)
    finally:
        inventory.write_text(original)
    events = stored_events(daemon, deployment)
    assert end["state"] == "failed", end["result"]
    assert "tb-gone" in end["result"]["reason"] and "before any host changed" in \
        end["result"]["reason"]
    assert end["hosts"]["tb-gone"]["state"] == "failed"
    started = next(e for e in events if e["event"] == "rollout.preflight")
    assert sorted(started["hosts"]) == sorted([*names(fleet), "tb-gone"])
    assert not touched(events) and serving(fleet) == before


def test_metrics_agree_with_the_deployments_and_their_events(
        daemon: Daemon, fleet: Testbed, v1: V1) -> None:
    """/metrics (on the daemon's socket) against what the API says happened: deployments by
    state, rollbacks, verify results, warmup percentiles and step durations."""
    with daemon.http() as http:
        response = http.get("/metrics")
        listing = http.get("/v1/deployments").json()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text

    def value(pattern: str) -> float:
        found = re.search("^" + pattern + r" ([0-9.e+-]+)$", text, re.M)
        assert found, f"{pattern} not in /metrics:\n{text[:3000]}"
        return float(found.group(1))

    for state in ("succeeded", "failed", "rolled_back", "cancelled", "running", "paused"):
        expected = sum(1 for d in listing if d["state"] == state)
        assert value(rf'orchestrator_deployments\{{state="{state}"\}}') == expected, state
    events = [e for d in listing for e in stored_events(daemon, d["id"])]
    rollbacks = sum(1 for e in events if e["event"] == "recovery"
                    and e["step"] in ("rollback", "undo") and e["status"] == "ok")
    if rollbacks:  # a series appears with the app's first rollback
        assert value(r'orchestrator_rollbacks_total\{app="fleet"\}') == rollbacks
    verify = [e for e in events if e["event"] == "step" and e["step"] == "verify"]
    for result, status in (("passed", "ok"), ("failed", "failed")):
        n = sum(1 for e in verify if e["status"] == status)
        if n:
            assert value(r'orchestrator_verifications_total\{app="fleet",kind="deploy",'
                         rf'result="{result}"\}}') == n
    ok = sum(1 for e in verify if e["status"] == "ok")
    assert ok >= HOSTS
    assert value(r'orchestrator_step_duration_seconds_count\{status="ok",step="verify"\}') == ok
    for h in fleet.hosts:
        p99 = value(rf'orchestrator_warmup_latency_seconds\{{app="fleet",host="{h.name}",'
                    r'percentile="p99"\}')
        assert 0 < p99 < 5
