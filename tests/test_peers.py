"""Hosts of a rollout serving their wheels to the later hosts (`environment.wheel_peers`,
issue 15): the host-side server (remote/peerserve.py) run as a host runs it, its start and stop
over a testbed host's SSH connection, and rollouts over three testbed hosts where the canary
streams from the controller and the others pull from it, or fall back when their peer fails."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.core.inventory import Host, Inventory, load_inventory
from orchestrator.core.spec import load_spec
from orchestrator.core.spec_env import Environment
from orchestrator.deploy.batch import prepare
from orchestrator.deploy.peers import WheelPeers, pull_budget
from orchestrator.deploy.rollout import RolloutResult, rollout
from orchestrator.errors import HostError, SpecError
from orchestrator.hosts import ops as build
from orchestrator.hosts.hostops import HostOps
from orchestrator.hosts.peers import PeerServer, start_peer_server
from orchestrator.hosts.pool import Pool
from orchestrator.testbed.mirror import serve_directory, synthetic_wheel
from tests.specs import WHEEL_CACHE, joblib_spec
from tests.test_deploy import Sink, cached_wheels

REMOTE = Path(__file__).resolve().parents[1] / "orchestrator" / "hosts" / "remote"
HOST_PYTHON = "/usr/bin/python3"
TOKEN = "t0ken-of-this-rollout-0123456789"
PEER_HOSTS = ["tb-01", "tb-07", "tb-08"]  # h100 profiles of the session testbed


# -- the server, as a host runs it ----------------------------------------------------------

@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """peerserve.py over tmp_path as the deploy root; (process, base URL, wheels dir)."""
    wheels = tmp_path / ".orchestrator" / "wheels"
    wheels.mkdir(parents=True)
    proc = subprocess.Popen([HOST_PYTHON, "-E", "-S", str(REMOTE / "peerserve.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps({"root": str(tmp_path), "bind": "127.0.0.1", "token": TOKEN,
                                 "max_lifetime_s": 60, "max_clients": 2}).encode() + b"\n")
    proc.stdin.flush()
    reply = json.loads(proc.stdout.readline())
    assert reply["ok"] is True
    with proc:  # closes the pipes
        try:
            yield proc, f"http://127.0.0.1:{reply['port']}", wheels
        finally:
            proc.kill()


def get(url: str, method: str = "GET") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method),
                                    timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_the_server_serves_a_cached_wheel_by_token_and_hash_only(
        server: tuple[subprocess.Popen[bytes], str, Path], tmp_path: Path) -> None:
    proc, base, wheels = server
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    (wheels / f"{sha}.whl").write_bytes(data)
    assert get(f"{base}/{TOKEN}/{sha}.whl") == (200, data)
    outside = tmp_path / "secret.whl"
    outside.write_bytes(b"not for the network")
    link = hashlib.sha256(b"link").hexdigest()
    (wheels / f"{link}.whl").symlink_to(outside)
    fifo = hashlib.sha256(b"fifo").hexdigest()
    os.mkfifo(wheels / f"{fifo}.whl")
    refused = [
        f"{base}/wrong-token-0123456789abcdef/{sha}.whl",  # another rollout's token
        f"{base}/{TOKEN}/",                                # no listing
        f"{base}/{TOKEN}",
        f"{base}/",
        f"{base}/{TOKEN}/{sha}",                           # not the one name pattern
        f"{base}/{TOKEN}/{sha.upper()}.whl",
        f"{base}/{TOKEN}/../secret.whl",
        f"{base}/{TOKEN}/%2e%2e/secret.whl",
        f"{base}/{TOKEN}/{'0' * 64}.whl",                  # not in the cache
        f"{base}/{TOKEN}/{link}.whl",                      # a symlink out of the cache
        f"{base}/{TOKEN}/{fifo}.whl",                      # not a regular file: never read
    ]
    assert {url: get(url)[0] for url in refused} == {url: 404 for url in refused}
    assert get(f"{base}/{TOKEN}/{sha}.whl", "POST")[0] == 501
    assert get(f"{base}/{TOKEN}/{sha}.whl", "HEAD")[0] == 501
    assert proc.poll() is None


def test_the_server_exits_when_its_stdin_ends(
        server: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    proc, base, _ = server
    assert proc.stdin is not None
    proc.stdin.close()  # what closing the SSH channel does (or sshd, when the link drops)
    assert proc.wait(10) == 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{base}/{TOKEN}/{'0' * 64}.whl", timeout=5)


@pytest.mark.parametrize("config, why", [
    ({"root": "/x", "bind": "127.0.0.1", "token": "short"}, "token must be"),
    ({"root": "rel", "bind": "127.0.0.1", "token": TOKEN}, "root must be an absolute path"),
    ({"root": "/x", "bind": "192.0.2.1", "token": TOKEN}, "Cannot assign"),
    ({"root": "/x", "bind": "127.0.0.1", "token": TOKEN, "max_lifetime_s": 1e9},
     "max_lifetime_s must be"),
])
def test_the_server_refuses_a_bad_config_with_one_line(config: dict[str, Any],
                                                       why: str) -> None:
    proc = subprocess.run([HOST_PYTHON, "-E", "-S", str(REMOTE / "peerserve.py")],
                          input=json.dumps(config).encode() + b"\n", capture_output=True,
                          timeout=30, check=False)
    reply = json.loads(proc.stdout)
    assert proc.returncode == 1 and reply["ok"] is False and why in reply["error"]


def test_the_server_ends_after_its_lifetime(tmp_path: Path) -> None:
    proc = subprocess.Popen([HOST_PYTHON, "-E", "-S", str(REMOTE / "peerserve.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps({"root": str(tmp_path), "bind": "127.0.0.1", "token": TOKEN,
                                 "max_lifetime_s": 1}).encode() + b"\n")
    proc.stdin.flush()  # stdin stays open: only the lifetime can end it
    assert json.loads(proc.stdout.readline())["ok"] is True
    with proc:
        try:
            assert proc.wait(10) == 0
        finally:
            proc.kill()


# -- over SSH: start, pull, stop ------------------------------------------------------------

def peer_servers() -> list[int]:
    """Pids of running peerserve.py processes (the testbed's hosts are this machine)."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        argv = cmd.split(b"\0")
        # the interpreter itself, not the shell wrapping it (session.py's process group line)
        if pid.isdigit() and argv[0].endswith(b"python3") and b"peerserve.py" in cmd \
                and b"tools" in cmd:
            found.append(int(pid))
    return found


def wait_gone(before: list[int], timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in peer_servers() if p not in before]) and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_a_host_serves_its_cache_over_ssh_and_another_pulls_by_hash(
        inventory: Inventory, pool: Pool, tmp_path: Path) -> None:
    seed, puller = inventory.hosts["tb-07"], inventory.hosts["tb-08"]
    wheel = synthetic_wheel(tmp_path, "peer-demo", 200_000)
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    placed = [Path(h.deploy_root) / ".orchestrator" / "wheels" / f"{sha}.whl"
              for h in (seed, puller)]
    before = peer_servers()
    try:
        with pool.session(seed) as t:
            assert HostOps(t, seed.deploy_root).push_wheels({sha: wheel}) == (sha,)
            server = start_peer_server(t, seed.deploy_root, bind=seed.address, token=TOKEN)
        try:
            assert server.url.startswith(f"http://{seed.address}:")
            with pool.session(puller) as t:
                got = HostOps(t, puller.deploy_root).run(build.wheels_fetch(
                    server.url, "peer", {sha: (wheel.name, wheel.stat().st_size)}))
            assert got == (sha,) and placed[1].read_bytes() == wheel.read_bytes()
            assert len([p for p in peer_servers() if p not in before]) == 1
        finally:
            server.stop()
        assert wait_gone(before) == []
    finally:
        for path in placed:
            path.unlink(missing_ok=True)


def test_a_server_that_cannot_bind_its_peer_address_says_so_and_is_not_left(
        inventory: Inventory, pool: Pool) -> None:
    seed = inventory.hosts["tb-07"]
    before = peer_servers()
    with pool.session(seed) as t, pytest.raises(HostError) as caught:
        start_peer_server(t, seed.deploy_root, bind="192.0.2.1", token=TOKEN)  # TEST-NET-1
    assert caught.value.host == "tb-07"
    assert "wheel server did not start: [Errno 99] Cannot assign" in str(caught.value)
    assert wait_gone(before) == []


# -- the coordination, without hosts --------------------------------------------------------

class _Alive:
    def __init__(self, host: str) -> None:
        self.host, self.alive = host, True


class _Conv:
    def __init__(self) -> None:
        self.killed = 0

    def kill(self) -> None:
        self.killed += 1


def test_pullers_are_spread_over_the_holders_of_their_platform_and_servers_stop_at_close(
        ) -> None:
    started: dict[str, _Conv] = {}

    def start(transport: Any, host: Host, token: str, expected: tuple[str, ...]) -> PeerServer:
        if host.name == "c":
            raise HostError(host.name, "cannot bind")
        started[host.name] = _Conv()
        return PeerServer(host.name, f"http://{host.address}:1/{token}/",
                          started[host.name])  # type: ignore[arg-type]

    peers = WheelPeers(start=start)
    h = {n: Host(n, f"10.0.0.{i}", 22, "u", "/srv") for i, n in enumerate("abcdxy")}
    linux, arm = ("3.11", "x86_64", "glibc 2.36"), ("3.11", "aarch64", "glibc 2.36")
    assert peers.source(h["x"], linux) is None  # nobody holds them yet: the controller streams
    for name in "abc":
        peers.holds(h[name], _Alive(name), linux)  # type: ignore[arg-type]
    peers.holds(h["d"], _Alive("d"), arm)  # type: ignore[arg-type]
    got = [peers.source(h["x"], linux) for _ in range(4)]
    assert [p.name for p in got if p] == ["a", "b", "a", "b"]  # c's server did not start
    assert got[0] is not None and got[0].url == f"http://10.0.0.0:1/{peers.token}/"
    assert peers.holders(linux) == ["a", "b"]
    assert peers.source(h["a"], linux) == got[1]  # never itself
    peers.failed(got[1], "wrong hash")  # type: ignore[arg-type]
    assert {p.name for p in (peers.source(h["y"], linux) for _ in range(3)) if p} == {"a"}
    assert peers.source(h["y"], arm) is not None and set(started) == {"a", "b", "d"}
    peers.close()
    assert all(c.killed == 1 for c in started.values())  # b too: failed ones stop at close
    assert peers.source(h["y"], linux) is None


def test_a_puller_waits_for_a_place_at_a_busy_holder_or_a_new_holder() -> None:
    def start(transport: Any, host: Host, token: str, expected: tuple[str, ...]) -> PeerServer:
        return PeerServer(host.name, f"http://{host.address}:1/{token}/",
                          _Conv())  # type: ignore[arg-type]

    peers = WheelPeers(start=start, max_pullers=1)
    h = {n: Host(n, f"10.0.0.{i}", 22, "u", "/srv") for i, n in enumerate("abxyz")}
    key = ("3.11", "x86_64", "glibc 2.36")
    peers.holds(h["a"], _Alive("a"), key)  # type: ignore[arg-type]
    first = peers.source(h["x"], key)
    assert first is not None and first.name == "a"
    assert peers.source(h["y"], key, wait_s=0.05) is None  # a is full: the controller streams
    threading.Timer(0.2, peers.release, (first,)).start()
    again = peers.source(h["y"], key, wait_s=10)  # a's place came free
    assert again is not None and again.name == "a"
    threading.Timer(0.2, peers.holds, (h["b"], _Alive("b"), key)).start()
    third = peers.source(h["z"], key, wait_s=10)  # a new holder came
    assert third is not None and third.name == "b"
    peers.close()


def test_a_pull_gives_up_on_a_slow_peer_while_half_the_step_is_left() -> None:
    assert pull_budget(3 << 30, 1800) == pytest.approx(60 + (3 << 30) / 10e6)
    assert pull_budget(3 << 30, 400) == 200


# -- rollouts -------------------------------------------------------------------------------

def peers_spec(models_dir: Path, folder: Path, app: str) -> Path:
    spec = joblib_spec(folder, app, models_dir / "model.joblib", models_dir / "golden.npz",
                       PEER_HOSTS,
                       extra="rollout: {canary: 1, batch_size: 2, max_parallel: 4}\n")
    spec.write_text(spec.read_text().replace("requirements: requirements.lock}",
                                             "requirements: requirements.lock, "
                                             "wheel_peers: true}"))
    return spec


@pytest.fixture
def bare_hosts(inventory: Inventory) -> Iterator[list[Host]]:
    """The three hosts without the lock's wheels in their cache (the canary must stream);
    the rollout puts them back. The app dirs the test makes are removed afterwards."""
    hosts = [inventory.hosts[n] for n in PEER_HOSTS]
    shas = [w.sha256 for w in cached_wheels().values()]
    for h in hosts:
        for sha in shas:
            (Path(h.deploy_root) / ".orchestrator" / "wheels" / f"{sha}.whl").unlink(
                missing_ok=True)
    yield hosts
    for h in hosts:
        for app in ("peers-app", "peers-bad"):
            shutil.rmtree(Path(h.deploy_root) / app, ignore_errors=True)


def staged(sink: Sink) -> dict[str, dict[str, Any]]:
    return {e["host"]: e for e in sink.events if e["step"] == "stage" and e["status"] == "ok"}


def roll(spec: Path, hosts: list[Host], pool: Pool,
         peers: WheelPeers | None = None) -> tuple[RolloutResult, Sink]:
    inputs = prepare(load_spec(spec), wheel_cache=WHEEL_CACHE)
    assert inputs.peers is not None
    if peers is not None:
        inputs = dataclasses.replace(inputs, peers=peers)
    sink = Sink()
    return rollout(inputs, hosts, pool=pool, sink=sink), sink


def test_the_canary_streams_and_the_later_hosts_pull_from_it(
        models_dir: Path, pool: Pool, tmp_path: Path, bare_hosts: list[Host]) -> None:
    n = len(cached_wheels())
    before = peer_servers()
    out, sink = roll(peers_spec(models_dir, tmp_path, "peers-app"), bare_hosts, pool)
    assert out.deploy.ok, {h: r.error for h, r in out.deploy.hosts.items()}
    by_host = staged(sink)
    canary = by_host["tb-01"]
    assert canary["wheels_pushed"] == n and canary["wheels_from_peer"] == 0
    assert canary["wheel_peer"] is None
    for name in ("tb-07", "tb-08"):
        d = by_host[name]
        # From the canary, or from the other puller if that one had finished its stage first
        # (then it was the holder with fewer pullers): a host of the rollout either way.
        assert d["wheel_peer"] in set(PEER_HOSTS) - {name} and d["wheels_from_peer"] == n, d
        assert d["wheels_pushed"] == 0 and d["wheel_bytes"] == 0
        assert d["wheel_bytes_from_peer"] == canary["wheel_bytes"] > 0
    assert "tb-01" in {by_host[h]["wheel_peer"] for h in ("tb-07", "tb-08")}
    assert wait_gone(before) == []  # the rollout's end stopped the servers


class _Crash(Sink):
    """A sink that breaks when the second batch ends: the rollout dies with servers up."""

    running: list[int]

    def emit(self, event: str, **kw: Any) -> None:
        super().emit(event, **kw)
        if event == "deployment.finished" and len(
                [e for e in self.events if e["event"] == "deployment.finished"]) == 2:
            self.running = peer_servers()  # the canary's server at least, still up here
            raise RuntimeError("the daemon's store went away")


def test_a_rollout_that_dies_stops_its_servers(
        models_dir: Path, pool: Pool, tmp_path: Path, bare_hosts: list[Host]) -> None:
    inputs = prepare(load_spec(peers_spec(models_dir, tmp_path, "peers-app")),
                     wheel_cache=WHEEL_CACHE)
    assert inputs.peers is not None
    before = peer_servers()
    sink = _Crash()
    with pytest.raises(RuntimeError, match="store went away"):
        rollout(inputs, bare_hosts, pool=pool, sink=sink)
    assert [p for p in sink.running if p not in before]
    assert sorted(inputs.peers.holders(("3.11", "x86_64", "glibc 2.36"))) == PEER_HOSTS
    assert wait_gone(before) == []


class _Gone:
    """The Conversation of a server that is not there (the URL below points elsewhere)."""

    def kill(self) -> None:
        pass


@pytest.mark.parametrize("peer", ["garbage", "unreachable"])
def test_a_failing_peer_makes_the_puller_stream_and_still_deploy(
        models_dir: Path, pool: Pool, tmp_path: Path, bare_hosts: list[Host],
        peer: str) -> None:
    """The canary's "server" is a plain http.server holding other bytes under the wheels'
    names, or a port nobody listens on: each puller sent there refuses the bytes by hash (or
    cannot connect), says so, and gets the wheels from the controller; that peer is then
    handed out no more."""
    garbage = tmp_path / "garbage" / TOKEN
    garbage.mkdir(parents=True)
    for w in cached_wheels().values():
        (garbage / f"{w.sha256}.whl").write_bytes(b"not the wheel")
    n = len(cached_wheels())
    with serve_directory(tmp_path / "garbage") as base, socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"{base}{TOKEN}/" if peer == "garbage" else \
            f"http://127.0.0.1:{closed.getsockname()[1]}/{TOKEN}/"

        def start(transport: Any, host: Host, token: str, expected: tuple[str, ...]) -> PeerServer:
            assert token == TOKEN
            return PeerServer(host.name, url, _Gone())  # type: ignore[arg-type]
        out, sink = roll(peers_spec(models_dir, tmp_path / "s", "peers-bad"), bare_hosts, pool,
                         WheelPeers(token=TOKEN, start=start))
    assert out.deploy.ok, {h: r.error for h, r in out.deploy.hosts.items()}
    by_host = staged(sink)
    pulled = [by_host[h] for h in ("tb-07", "tb-08") if by_host[h]["wheel_peer"] == "tb-01"]
    assert pulled, by_host  # at least the first puller went to the canary
    why = "gave" if peer == "garbage" else "cannot reach"
    for d in pulled:
        assert why in d["wheel_peer_error"], d["wheel_peer_error"]
        assert TOKEN not in d["wheel_peer_error"] and "/<token>/" in d["wheel_peer_error"]
        assert d["wheels_from_peer"] == 0 and d["wheels_pushed"] == n


# -- the spec and the inventory -----------------------------------------------------------

IMAGE = {"archive": "image.tar", "sha256": "a" * 64}


@pytest.mark.parametrize("env, why", [
    ({"wheel_source": {"url": "http://mirror.example/simple/"}}, "give one"),
    ({"image_base": IMAGE}, "wheel_peers does not go with image_base"),
    ({"requirements": None, "python": None, "image": IMAGE},
     "wheel_peers goes with requirements, not with image"),
    ({"wheel_peers": "yes"}, "valid boolean"),
])
def test_wheel_peers_goes_with_requirements_alone(env: dict[str, Any], why: str) -> None:
    base = {"python": "3.11", "requirements": "requirements.lock", "wheel_peers": True}
    with pytest.raises(ValidationError, match=why):
        Environment.model_validate({k: v for k, v in {**base, **env}.items() if v is not None})


def test_a_spec_file_with_a_bad_wheel_peers_names_the_line(models_dir: Path,
                                                           tmp_path: Path) -> None:
    spec = peers_spec(models_dir, tmp_path, "peers-spec")
    assert load_spec(spec).environment.wheel_peers is True
    spec.write_text(spec.read_text().replace("wheel_peers: true}", "wheel_peers: true, "
                                             "wheel_source: {url: 'http://m.example/'}}"))
    with pytest.raises(SpecError, match="give one") as caught:
        load_spec(spec)
    assert "spec.yaml:5: environment: wheel_peers and wheel_source" in str(caught.value)


def test_the_inventory_takes_a_peer_address(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text("hosts:\n  a: {address: gpu-a, deploy_root: /srv, peer_address: 10.1.0.5}\n"
                    "  b: {address: 10.0.0.6, deploy_root: /srv}\n")
    inv = load_inventory(path)
    assert inv.hosts["a"].peer_address == "10.1.0.5" and inv.hosts["b"].peer_address is None
    path.write_text("hosts:\n  a: {address: gpu-a, deploy_root: /srv, peer_address: '-x'}\n")
    with pytest.raises(SpecError, match="peer_address"):
        load_inventory(path)
