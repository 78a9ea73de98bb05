"""`orchestrator testbed up --rtt`: hosts in network namespaces of their own, a round trip away
(netem, or the delay relay where the kernel has none), reached with the testbed's own key and
known_hosts; `down` removes the namespaces, links and relays it made."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from orchestrator.core.inventory import load_inventory
from orchestrator.errors import InvalidInput
from orchestrator.hosts import ssh
from orchestrator.hosts.counting import Counting, Exchanges
from orchestrator.hosts.transport import FileStreamer
from orchestrator.testbed import Testbed, netns, sshd
from orchestrator.testbed.far import parse_rtt

RTT_MS = 50.0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", "testbed", *args],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(("text", "ms"), [("50ms", 50.0), ("0.05s", 50.0), ("50", 50.0),
                                          (" 2.5ms ", 2.5)])
def test_rtt_values(text: str, ms: float) -> None:
    assert parse_rtt(text) == ms


@pytest.mark.parametrize("text", ["5x", "-5ms", "0ms", "", "50 m", "1e3ms", "20000ms"])
def test_a_bad_rtt_is_refused_naming_it(text: str) -> None:
    with pytest.raises(InvalidInput, match="--rtt"):
        parse_rtt(text)


def test_the_cli_refuses_a_bad_rtt_with_exit_2(tmp_path: Path) -> None:
    done = cli("up", "--hosts", "1", "--rtt", "fast", "--dir", str(tmp_path / "tb"))
    assert done.returncode == 2
    assert "--rtt 'fast': a round trip such as 50ms" in done.stderr
    assert not (tmp_path / "tb" / "state.json").exists()


def keepalive_rtt(tb: Testbed, name: str) -> float:
    """The best of 5 SSH round trips (a global request sshd answers at once) to host `name`."""
    host = tb.host(name)
    client = paramiko.SSHClient()
    client.load_host_keys(str(tb.known_hosts_path))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(host.address, host.port, username=host.user,
                   key_filename=str(tb.identity_path), allow_agent=False, look_for_keys=False,
                   timeout=30)
    try:
        transport = client.get_transport()
        assert transport is not None
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            transport.global_request("keepalive@openssh.com", wait=True)
            best = min(best, time.perf_counter() - started)
        return best * 1000
    finally:
        client.close()


def counts_every_exchange_under_its_label(tb: Testbed) -> None:
    """hosts/counting.py over a far host: each exchange tallied under the label current when it
    ran, and none shorter than the round trip it needs at least."""
    inv = load_inventory(tb.inventory_path)
    exchanges, label = Exchanges(), ["first"]
    host = inv.hosts["tb-01"]
    with Counting(ssh.connect(host, ssh.SshOptions.for_inventory(inv)), exchanges,
                  label=lambda: label[0]) as t:
        t.run(["true"])
        t.run(["sh", "-c", "exit 3"], check=False)
        label[0] = "second"
        t.put(b"far", f"{host.deploy_root}/counted.txt")
        assert t.get(f"{host.deploy_root}/counted.txt") == b"far"
        label[0] = "third"  # a stream of files (stage's wheels) is one command
        assert isinstance(t, FileStreamer)
        sent = tb.dir / "streamed.bin"
        sent.write_bytes(b"x" * 100_000)
        streamed = t.run_with_files(["wc", "-c"], b"", [(sent, 100_000)])
        assert streamed.stdout.strip() == "100000"
    assert dict(exchanges.count) == {("tb-01", "first", "run"): 2, ("tb-01", "second", "put"): 1,
                                     ("tb-01", "second", "get"): 1, ("tb-01", "third", "run"): 1}
    assert (exchanges.total("tb-01"), exchanges.total("tb-01", "first")) == (5, 2)
    for key, n in exchanges.count.items():
        assert exchanges.seconds[key] >= n * RTT_MS / 1000 * 0.95, key


def test_far_hosts_are_a_round_trip_away_and_down_removes_them(tmp_path: Path) -> None:
    reason = netns.why_not()
    if reason is not None:
        pytest.skip(f"no --rtt testbed here: {reason}")
    d = tmp_path / "tb"
    up = cli("up", "--hosts", "2", "--rtt", f"{RTT_MS:g}ms", "--dir", str(d), "--json")
    assert up.returncode == 0, up.stderr
    tb = Testbed.load(d)
    try:
        assert [h["address"] for h in json.loads(up.stdout)["hosts"]] == \
            [h.address for h in tb.hosts]
        for h in tb.hosts:
            assert h.netns and netns.exists(h.netns) and h.rtt_ms == RTT_MS
            assert h.address.startswith("10.214.")  # not this machine's loopback
        for name in ("tb-01", "tb-02"):
            measured = keepalive_rtt(tb, name)
            # Never faster than the delay put on the link; not much slower on a busy machine.
            assert RTT_MS * 0.95 <= measured <= RTT_MS + 150, (name, measured)
        counts_every_exchange_under_its_label(tb)
    finally:
        down = cli("down", "--dir", str(d))
    assert down.returncode == 0, down.stderr
    assert "stopped 2 sshd server(s)" in down.stdout
    for h in tb.hosts:
        assert not netns.exists(h.netns)
        assert subprocess.run(["ip", "link", "show", h.veth], capture_output=True,
                              check=False).returncode != 0
        assert not sshd.alive(h.pid)
        assert not h.relay_pid or not sshd.alive(h.relay_pid)
