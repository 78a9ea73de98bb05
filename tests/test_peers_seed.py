"""Hosts of the SAME batch sharing the wheels as they arrive (`environment.wheel_peers`, issue
15): the first host of a platform the controller streams to is its *seed*, whose server holds
a request for a wheel still on its way until it lands (remote/peerserve.py, `expected`); the
other hosts pull from it meanwhile; a seed whose own stream fails is stopped at once and its
pullers fall back to the controller. The server run as a host runs it, the coordination
without hosts, `deliver` over three testbed hosts, and a one-batch rollout."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.inventory import Host, Inventory
from orchestrator.deploy.peers import PEER_TIMEOUT_S, Delivery, WheelPeers, deliver
from orchestrator.hosts.hostops import HostOpFailed, HostOps
from orchestrator.hosts.peers import PeerServer
from orchestrator.hosts.pool import Pool
from orchestrator.testbed.mirror import synthetic_wheel
from tests.specs import joblib_spec
from tests.test_deploy import cached_wheels
from tests.test_peers import (
    HOST_PYTHON,
    PEER_HOSTS,
    REMOTE,
    TOKEN,
    _Alive,
    _Conv,
    bare_hosts,  # noqa: F401  (a fixture: pytest finds it in this module's namespace)
    get,
    peer_servers,
    roll,
    staged,
    wait_gone,
)

KEY = ("3.11", "x86_64", "glibc 2.36")


# -- the server: a wheel of the expected set waits, bounded ---------------------------------

@pytest.fixture
def seed_server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """peerserve.py as a seed expecting two wheels, waiting at most 1.5 s for each;
    (base URL, wheels dir, the expected shas)."""
    wheels = tmp_path / ".orchestrator" / "wheels"
    wheels.mkdir(parents=True)
    expected = [hashlib.sha256(b"late").hexdigest(), hashlib.sha256(b"never").hexdigest()]
    proc = subprocess.Popen([HOST_PYTHON, "-E", "-S", str(REMOTE / "peerserve.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps({"root": str(tmp_path), "bind": "127.0.0.1", "token": TOKEN,
                                 "max_lifetime_s": 60, "expected": expected,
                                 "wait_s": 1.5}).encode() + b"\n")
    proc.stdin.flush()
    reply = json.loads(proc.stdout.readline())
    assert reply["ok"] is True, reply
    with proc:
        try:
            yield f"http://127.0.0.1:{reply['port']}/{TOKEN}", wheels, expected
        finally:
            proc.kill()


def timed_get(url: str) -> tuple[int, bytes, float]:
    started = time.monotonic()
    status, body = get(url)
    return status, body, time.monotonic() - started


def test_a_seed_serves_an_expected_wheel_once_it_lands_and_gives_up_after_its_bound(
        seed_server: tuple[str, Path, list[str]]) -> None:
    base, wheels, (late, never) = seed_server
    part = wheels / f"{late}.whl.part-1"

    def land() -> None:  # as wheels-receive does: the whole file, then a rename
        part.write_bytes(b"late")
        os.replace(part, wheels / f"{late}.whl")
    threading.Timer(0.5, land).start()
    status, body, took = timed_get(f"{base}/{late}.whl")
    assert (status, body) == (200, b"late") and 0.4 < took < 1.5
    status, _, took = timed_get(f"{base}/{never}.whl")  # expected, never lands: the bound
    assert status == 404 and 1.4 < took < 5
    status, _, took = timed_get(f"{base}/{'0' * 64}.whl")  # not expected: at once, as ever
    assert status == 404 and took < 1


@pytest.mark.parametrize("extra, why", [
    ({"expected": ["A" * 64]}, "expected must be a list"),
    ({"expected": "0" * 64}, "expected must be a list"),
    ({"expected": ["0" * 64] * 10001}, "expected must be a list"),
    ({"wait_s": 601}, "wait_s must be in"),
    ({"wait_s": True}, "wait_s must be in"),
])
def test_a_seed_server_refuses_a_bad_expected_set(extra: dict[str, Any], why: str) -> None:
    config = {"root": "/x", "bind": "127.0.0.1", "token": TOKEN, **extra}
    proc = subprocess.run([HOST_PYTHON, "-E", "-S", str(REMOTE / "peerserve.py")],
                          input=json.dumps(config).encode() + b"\n", capture_output=True,
                          timeout=30, check=False)
    reply = json.loads(proc.stdout)
    assert proc.returncode == 1 and reply["ok"] is False and why in reply["error"]


# -- the coordination, without hosts --------------------------------------------------------

def test_the_first_host_seeds_the_next_pull_from_it_in_its_order_a_full_seed_adds_one(
        ) -> None:
    started: dict[str, tuple[_Conv, tuple[str, ...]]] = {}

    def start(transport: Any, host: Host, token: str, expected: tuple[str, ...]) -> PeerServer:
        started[host.name] = (_Conv(), expected)
        return PeerServer(host.name, f"http://{host.address}:1/{token}/",
                          started[host.name][0])  # type: ignore[arg-type]

    peers = WheelPeers(start=start, max_pullers=2)
    h = {n: Host(n, f"10.0.0.{i}", 22, "u", "/srv") for i, n in enumerate("abcdefg")}
    order = ("s2", "s1", "s3")

    def ask(name: str, seed: bool = True) -> Any:
        return peers.source(h[name], KEY, wait_s=0.05,
                            seed=(_Alive(name), order) if seed else None)  # type: ignore[arg-type]
    assert ask("a") is None and peers.holders(KEY) == ["a"]  # the seed: the controller streams
    b, c = ask("b"), ask("c")
    assert b is not None and c is not None and {b.name, c.name} == {"a"}
    assert b.order == order and started["a"][1] == order  # its server waits for these
    assert ask("d") is None and peers.holders(KEY) == ["a", "d"]  # a is full: a second seed
    e = ask("e")
    assert e is not None and e.name == "d"
    peers.seed_failed(h["d"], "connection lost")  # its server stopped now, handed out no more
    assert started["d"][0].killed == 1 and peers.holders(KEY) == ["a"]
    peers.holds(h["a"], _Alive("a"), KEY)  # type: ignore[arg-type]  # its stream completed
    peers.seed_failed(h["a"], "late news")  # a complete holder is no seed: nothing happens
    assert started["a"][0].killed == 0
    peers.release(b)
    f = ask("f")
    assert f is not None and f.name == "a" and f.order == ()  # everything there: any order
    assert ask("g", seed=False) is None  # a is full and complete: wait for it, not seed
    peers.close()
    assert started["a"][0].killed == 1 and started["d"][0].killed == 1


# -- over SSH: a seed whose stream fails ----------------------------------------------------

def test_the_pullers_of_a_seed_whose_stream_fails_fall_back_at_once(
        inventory: Inventory, pool: Pool, tmp_path: Path) -> None:
    """Three hosts deliver four wheels at once; the seed's copy of the second wheel (in its
    stream's order) is corrupt on the controller, so its stream fails by hash: its pullers,
    waiting at its server for that wheel, fall back to the controller within seconds (not a
    socket timeout), keep what they had pulled, and end with every wheel."""
    hosts = [inventory.hosts[n] for n in PEER_HOSTS]
    wheels = {}
    for i in range(4):
        path = synthetic_wheel(tmp_path, f"seed-demo-{i}", 8 << 20)
        wheels[hashlib.sha256(path.read_bytes()).hexdigest()] = path
    first, bad = sorted(wheels)[:2]
    corrupt = dict(wheels, **{bad: tmp_path / "corrupt.whl"})
    corrupt[bad].write_bytes(os.urandom(wheels[bad].stat().st_size))
    placed = [Path(h.deploy_root) / ".orchestrator" / "wheels" / f"{sha}.whl"
              for h in hosts for sha in wheels]
    peers = WheelPeers(token=TOKEN)
    got: dict[str, Delivery | BaseException] = {}
    took: dict[str, float] = {}

    pulled = [Path(h.deploy_root) / ".orchestrator" / "wheels" / f"{first}.whl"
              for h in hosts[1:]]

    def hold_back(total: int) -> Any:
        """The seed's stream pauses once its first wheel is sent, until both pullers have
        pulled it from the seed: on loopback it would otherwise be over before they ask."""
        def sent(_: int) -> Any:
            def at(done: int, _total: int) -> None:
                if done >= wheels[first].stat().st_size and not paused.is_set():
                    paused.set()
                    deadline = time.monotonic() + 30
                    while not all(p.exists() for p in pulled) and time.monotonic() < deadline:
                        time.sleep(0.02)
            return at
        return sent
    paused = threading.Event()

    def one(host: Host, mine: dict[str, Path]) -> None:
        started = time.monotonic()
        try:
            with pool.session(host) as t:
                got[host.name] = deliver(HostOps(t, host.deploy_root), peers, host, KEY, mine,
                                         missing=None, timeout=120,
                                         progress=hold_back if mine is corrupt else None)
        except BaseException as exc:  # the seed's own failure: what the test expects there
            got[host.name] = exc
        took[host.name] = time.monotonic() - started
    before = peer_servers()
    try:
        seed = threading.Thread(target=one, args=(hosts[0], corrupt))
        seed.start()
        deadline = time.monotonic() + 30
        while peers.holders(KEY) != [hosts[0].name] and time.monotonic() < deadline:
            time.sleep(0.01)  # the seed registers before its stream starts
        pullers = [threading.Thread(target=one, args=(h, wheels)) for h in hosts[1:]]
        for thread in pullers:
            thread.start()
        for thread in [seed, *pullers]:
            thread.join(90)
        assert isinstance(got[hosts[0].name], HostOpFailed), got
        assert bad in str(got[hosts[0].name])
        for h in hosts[1:]:
            d = got[h.name]
            assert isinstance(d, Delivery), d
            assert d.peer == hosts[0].name and d.peer_error, d
            assert TOKEN not in d.peer_error
            assert first in d.fetched and bad in d.pushed, d  # pulled what landed, then fell back
            assert sorted(d.fetched + d.pushed) == sorted(wheels)
            assert took[h.name] < PEER_TIMEOUT_S, took
        assert sorted(peers.holders(KEY)) == [h.name for h in hosts[1:]]
        for path in placed[len(wheels):]:  # the pullers hold the true bytes
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem
    finally:
        peers.close()
        for path in placed:
            path.unlink(missing_ok=True)
    assert wait_gone(before) == []


# -- a rollout of one batch -----------------------------------------------------------------

def test_one_batch_streams_to_one_host_and_the_others_pull_from_it_meanwhile(
        models_dir: Path, pool: Pool, tmp_path: Path, bare_hosts: list[Host]) -> None:  # noqa: F811
    n = len(cached_wheels())
    spec = joblib_spec(tmp_path, "peers-app", models_dir / "model.joblib",
                       models_dir / "golden.npz", PEER_HOSTS,
                       extra="rollout: {canary: 0, batch_size: 3, max_parallel: 4}\n")
    spec.write_text(spec.read_text().replace("requirements: requirements.lock}",
                                             "requirements: requirements.lock, "
                                             "wheel_peers: true}"))
    before = peer_servers()
    out, sink = roll(spec, bare_hosts, pool)
    assert out.deploy.ok, {h: r.error for h, r in out.deploy.hosts.items()}
    by_host = staged(sink)
    seeds = [h for h, d in by_host.items() if d["wheels_pushed"]]
    assert len(seeds) == 1, by_host  # the controller streamed one copy
    seed = by_host[seeds[0]]
    assert seed["wheels_pushed"] == n and seed["wheel_peer"] is None
    for name in set(PEER_HOSTS) - set(seeds):
        d = by_host[name]
        assert d["wheels_from_peer"] == n and d["wheel_bytes"] == 0, d
        assert d["wheel_peer"] in PEER_HOSTS and "wheel_peer_error" not in d, d
    assert seeds[0] in {by_host[h]["wheel_peer"] for h in set(PEER_HOSTS) - set(seeds)}
    assert wait_gone(before) == []
