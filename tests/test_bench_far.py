"""The anchors at a round trip (`anchors --rtt`, `farhosts --anchors`): the options, the plan of
relays in front of the harness's sshds, pointing the harness's clients at them (its real bash),
a relay really started and stopped, and the figures read from a run's output. The bench itself
is not run here (minutes, root)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.bench import _anchorsetup, _farharness, anchors, farhosts
from orchestrator.core.hashing import hash_path
from orchestrator.core.spec import load_spec
from orchestrator.testbed import sshd


def _options(argv: list[str]) -> anchors.Options:
    p = anchors.parser()
    return anchors.options(p.parse_args(argv), p)


def test_rtt_selects_the_far_fleet_and_loopback_stays_the_default() -> None:
    assert _options([]) == anchors.Options(list(anchors.TOOLS), 1, 4, None)
    far = _options(["--rtt", "50ms"])
    assert (far.hosts, far.rtt_ms) == (8, 50.0)
    assert _options(["--rtt", "0.02s", "--hosts", "3", "--quick"]) == anchors.Options(
        ["ssh-uv", "project"], 1, 3, 20.0)


@pytest.mark.parametrize(("argv", "says"), [
    (["--rtt", "fast"], "--rtt 'fast'"),
    (["--rtt", "50ms", "--hosts", "63"], "--hosts 63"),
    (["--hosts", "0"], "--hosts 0"),
    (["--tools", "ssh-uv,chef"], "unknown tool(s) chef"),
    (["--tools", "ssh-uv,project-mirror", "--rtt", "50ms"], "--tools project-mirror with --rtt"),
    (["--tools", "project-peers", "--rtt", "50ms"], "--tools project-peers with --rtt"),
])
def test_bad_options_exit_2_naming_the_option(argv: list[str], says: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _options(argv)
    assert exc.value.code == 2
    assert says in capsys.readouterr().err


def test_project_mirror_and_peers_are_loopback_tools_beside_the_shipping_project() -> None:
    assert {"project", "project-mirror", "project-peers"} <= set(_options([]).tools)
    assert _options(["--tools", "ssh-uv,project-mirror"]).tools == ["ssh-uv", "project-mirror"]
    far = _options(["--rtt", "50ms"]).tools
    assert "project" in far and "project-mirror" not in far and "project-peers" not in far


def test_the_mirror_spec_names_the_mirror_and_the_shipping_spec_does_not(tmp_path: Path) -> None:
    """The three specs as `orchestrator deploy` reads them: the same model, lock and
    wheelhouse; only the mirror's has `environment.wheel_source` (a directory of wheel files),
    only the peers' `environment.wheel_peers`."""
    for v in ("v1", "v2"):
        d = tmp_path / v
        (d / "model").mkdir(parents=True)
        (d / "model" / "saved_model.pb").write_bytes(v.encode())
        (d / "wheelhouse").mkdir()
        (d / "requirements.lock").write_text("")
        (d / "golden.npz").write_bytes(b"")
        (d / "spec.yaml").write_text(_anchorsetup.spec_yaml(hash_path(d / "model"), None))
    _anchorsetup.mirror_specs(tmp_path, "http://127.0.0.1:8123/")
    _anchorsetup.peers_specs(tmp_path)
    for v in ("v1", "v2"):
        shipping = load_spec(tmp_path / v / "spec.yaml")
        mirrored = load_spec(tmp_path / v / "spec-mirror.yaml")
        peers = load_spec(tmp_path / v / "spec-peers.yaml")
        assert shipping.environment.wheel_source is None
        assert not shipping.environment.wheel_peers and not mirrored.environment.wheel_peers
        assert peers.environment.wheel_peers and peers.environment.wheel_source is None
        assert peers.model.sha256 == shipping.model.sha256
        assert peers.paths.wheelhouse == shipping.paths.wheelhouse
        source = mirrored.environment.wheel_source
        assert source is not None
        assert (source.url, source.layout) == ("http://127.0.0.1:8123/", "directory")
        assert mirrored.model.sha256 == shipping.model.sha256 == hash_path(tmp_path / v / "model")
        assert mirrored.paths.wheelhouse == shipping.paths.wheelhouse


def test_farhosts_anchors_runs_the_anchors_on_the_same_fleet() -> None:
    args = farhosts.parser().parse_args(["--rtt", "20ms", "--hosts", "3", "--anchors"])
    side = farhosts.anchors_argv(args)
    assert side == ["--rtt", "20ms", "--hosts", "3"]
    assert _options(side) == anchors.Options(
        [t for t in anchors.TOOLS if t not in anchors.LOOPBACK_ONLY], 1, 3, 20.0)
    assert farhosts.anchors_argv(farhosts.parser().parse_args([])) is None


def test_one_relay_per_harness_host_at_port_plus_offset_half_the_rtt_each_way() -> None:
    relays = _farharness.plan([("127.0.0.11", 2211), ("127.0.0.12", 2212)], 50.0)
    assert [(r.host, r.address, r.sshd_port, r.port, r.one_way_ms) for r in relays] == [
        ("h1", "127.0.0.11", 2211, 2311, 25.0), ("h2", "127.0.0.12", 2212, 2312, 25.0)]


def test_known_hosts_gets_each_key_again_under_the_relay_port_once() -> None:
    relays = _farharness.plan([("127.0.0.11", 2211), ("127.0.0.12", 2212)], 50.0)
    text = "[127.0.0.11]:2211 ssh-ed25519 AAAA1\n[127.0.0.12]:2212 ssh-ed25519 AAAA2\n"
    once = _farharness.with_relays(text, relays)
    assert once.splitlines() == [*text.splitlines(), "[127.0.0.11]:2311 ssh-ed25519 AAAA1",
                                 "[127.0.0.12]:2312 ssh-ed25519 AAAA2"]
    assert _farharness.with_relays(once, relays) == once  # a second setup adds nothing
    with pytest.raises(ValueError, match=re.escape("h2: no key for [127.0.0.12]:2212")):
        _farharness.with_relays(text.splitlines()[0] + "\n", relays)


# The harness's scripts/common.sh, as far as the override depends on it.
COMMON = """\
NHOSTS=${NHOSTS:-4}
host_ip()   { echo "127.0.0.$((10 + $1))"; }   # h1 -> 127.0.0.11
host_port() { echo "$((2210 + $1))"; }         # h1 -> 2211
"""


def _port(harness: Path, env: dict[str, str], host: int = 3) -> str:
    return subprocess.run(["bash", "-c", f". scripts/common.sh; host_port {host}"],
                          cwd=harness, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_harness_clients_use_the_relay_port_only_with_the_offset(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    common = tmp_path / "scripts" / "common.sh"
    common.write_text(COMMON)
    _farharness.point_clients(tmp_path)
    _farharness.point_clients(tmp_path)  # idempotent: appended once
    assert common.read_text().count(_farharness.MARK) == 1
    assert _port(tmp_path, _farharness.client_env(4, relayed=False)) == "2213"  # hosts.sh up
    assert _port(tmp_path, _farharness.client_env(4, relayed=True)) == "2313"   # the clients
    assert _farharness.endpoints(tmp_path, 2) == [("127.0.0.11", 2211), ("127.0.0.12", 2212)]


def test_a_harness_without_host_port_is_refused(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "common.sh").write_text("PORT=22\n")
    with pytest.raises(SystemExit, match="defines no host_port"):
        _farharness.point_clients(tmp_path)


@pytest.fixture
def banner_server() -> Iterator[int]:
    """A stand-in sshd on loopback: sends an SSH banner to each connection, then answers each
    line it reads with one line, until the client closes."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"SSH-2.0-stand-in\r\n")
                with contextlib.suppress(OSError), conn.makefile("rb") as lines:
                    for _ in lines:
                        conn.sendall(b"ok\n")
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_a_relay_is_started_delays_the_banner_and_is_stopped(tmp_path: Path,
                                                             banner_server: int) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "known_hosts").write_text(
        f"[127.0.0.1]:{banner_server} ssh-ed25519 AAAA1\n")
    relays = _farharness.plan([("127.0.0.1", banner_server)], 200.0)
    since = time.time()
    _farharness.start(tmp_path, relays)
    try:
        pids = [r["pid"] for r in json.loads((tmp_path / "relays.json").read_text())]
        assert len(pids) == 1 and sshd.alive(pids[0])
        assert f"[127.0.0.1]:{relays[0].port} ssh-ed25519 AAAA1" in (
            tmp_path / "keys" / "known_hosts").read_text()
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", relays[0].port), timeout=5) as conn, \
                conn.makefile("rb") as answers:
            assert answers.readline().startswith(b"SSH-2.0-stand-in")
            assert time.perf_counter() - t0 >= 0.1  # held the 100 ms one way
            for _ in range(3):  # three requests, each waiting for its answer: three turns
                conn.sendall(b"request\n")
                assert answers.readline() == b"ok\n"
        # start's own readiness check was the first connection (no turn: it only read the
        # banner); the relay writes a connection's line once both directions have ended.
        deadline = time.monotonic() + 5
        while _farharness.tallies(tmp_path, 1, since, time.time())["h1"].connections < 2 \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _farharness.tallies(tmp_path, 1, since, time.time()) == {
            "h1": _farharness.Tally(connections=2, turns=3)}
    finally:
        _farharness.stop(tmp_path)
    assert not (tmp_path / "relays.json").exists()
    assert not sshd.alive(pids[0])
    assert os.environ.get("BENCH_RELAY_OFFSET") is None


def test_a_run_counts_the_connections_its_window_saw_and_skips_torn_lines() -> None:
    lines = ['{"closed": 10.0, "turns": 5, "up": 1, "down": 2}',
             '{"closed": 20.0, "turns": 7, "up": 1, "down": 2}',
             '{"closed": 20.5, "tu',  # torn by a crash
             '{"closed": 31.0, "turns": 9, "up": 1, "down": 2}']
    assert _farharness.tally(lines, 10.0, 30.0) == _farharness.Tally(connections=2, turns=12)
    assert _farharness.tally(lines, 30.0, 40.0) == _farharness.Tally(connections=1, turns=9)
    assert _farharness.tally([], 0.0, 1e12) == _farharness.Tally(connections=0, turns=0)


def test_the_figures_of_a_run_come_from_its_events_and_step_lines() -> None:
    def step(host: str, name: str, ms: float, **extra: float) -> str:
        return json.dumps({"event": "step", "host": host, "step": name, "status": "ok",
                           "duration_ms": ms, **extra})
    out = "\n".join([
        step("tb-01", "stage", 500), step("tb-01", "verify", 4000, warmup_s=3.2),
        step("tb-02", "stage", 700), step("tb-02", "verify", 5000, warmup_s=4.5),
        json.dumps({"event": "step", "host": "tb-02", "step": "switch", "status": "started",
                    "duration_ms": None}),
        "deployment d-1 succeeded",
    ])
    worst, warmups, outside = anchors.project_events(out)
    assert worst == {"stage": 0.7, "verify": 5.0}
    assert warmups == {"tb-01": 3.2, "tb-02": 4.5}
    assert outside == {"tb-01": 1.3, "tb-02": 1.2}
    # The shell loop's hosts report their own warmup (the slowest is taken); pyinfra's and
    # Ansible's step lasts until their last host is done.
    assert anchors.anchor_warmup({"steps": {"warmup": 5.0},
                                  "steps_raw": {"warmup_max": 6.5}}) == 6.5
    assert anchors.anchor_warmup({"steps": {"warmup": 7.25}, "steps_raw": {}}) == 7.25
    assert anchors.anchor_warmup({"steps": {}}) is None


def test_the_report_keeps_fleets_apart_and_pairs_a_run_with_its_own_floor(
        capsys: pytest.CaptureFixture[str]) -> None:
    def row(tool: str, wall: float, run: str, hosts: int, rtt: float | None) -> dict[str, object]:
        return {"tool": tool, "phase": "warm", "rep": 1, "ok": True, "wall_s": wall,
                "cpu_s": 1.0, "warmup_s": wall - 1.0, "hosts": hosts, "rtt_ms": rtt, "run": run,
                "load1": 1.0}
    anchors.report([row("ssh-uv", 10.0, "a", 8, 50.0), row("pyinfra", 20.0, "a", 8, 50.0),
                    row("ssh-uv", 40.0, "b", 8, 50.0), row("pyinfra", 60.0, "b", 8, 50.0),
                    row("ssh-uv", 5.0, "c", 4, None)])
    out = capsys.readouterr().out
    assert out.index("4 hosts on loopback:") < out.index("8 hosts 50 ms away:")
    pyinfra = next(ln for ln in out.splitlines() if ln.strip().startswith("pyinfra "))
    assert pyinfra.endswith("- / 2.00, 1.50")  # a: 20/10, b: 60/40; never 20/40 or 60/10
