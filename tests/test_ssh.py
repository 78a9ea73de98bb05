"""The SSH transport and the pool, against the testbed's real sshd hosts."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.core.inventory import Host, Inventory
from orchestrator.errors import (
    CommandFailed,
    CommandTimeout,
    FileTransferFailed,
    HostKeyRejected,
    HostUnreachable,
    InvalidInput,
    OutputTooLarge,
)
from orchestrator.hosts import ssh
from orchestrator.hosts.pool import Pool, map_hosts
from orchestrator.hosts.transport import Transport, command_line
from orchestrator.testbed import Testbed

INJECTION = "x; touch pwned $(id)"
# Kills the sshd process serving this session (its nearest sshd ancestor), then lingers: the
# connection drops in the middle of a command.
KILL_MY_SSHD = """
import os, time
pid = os.getppid()
while not open(f"/proc/{pid}/comm").read().startswith("sshd"):
    pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
os.kill(pid, 9)
time.sleep(30)
"""


@pytest.fixture(scope="module")
def options(inventory: Inventory) -> ssh.SshOptions:
    return ssh.SshOptions.for_inventory(inventory)


@pytest.fixture(scope="module")
def host(inventory: Inventory) -> Host:
    return inventory.hosts["tb-01"]


@pytest.fixture(scope="module")
def transport(host: Host, options: ssh.SshOptions) -> Iterator[ssh.SshTransport]:
    with ssh.connect(host, options) as t:
        yield t


def openssh_fingerprint(pub: Path) -> str:
    """The fingerprint as OpenSSH itself prints it: `256 SHA256:... comment (ED25519)`."""
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                         check=True).stdout
    return out.split()[1]


def processes_with_argv(argv: list[str]) -> list[int]:
    """Local pids whose command line is exactly `argv` (the testbed hosts are this machine)."""
    wanted = "\0".join(argv).encode() + b"\0"
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes() == wanted:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def test_transport_satisfies_the_protocol(transport: ssh.SshTransport) -> None:
    assert isinstance(transport, Transport)
    assert transport.host == "tb-01" and transport.alive


def test_the_connection_does_not_wait_on_delayed_acks(transport: ssh.SshTransport) -> None:
    # With Nagle's algorithm on, every command's small packets wait ~40 ms for the peer's
    # delayed ACK: ten commands per host made a warm redeploy twice as slow.
    import socket

    sock = transport._client.get_transport().sock  # type: ignore[union-attr]
    assert isinstance(sock, socket.socket)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_a_hostile_value_reaches_the_host_as_one_argument(transport: ssh.SshTransport) -> None:
    script = "import json, sys; print(json.dumps(sys.argv[1:]))"
    result = transport.run(["python3", "-c", script, INJECTION, "", "'\"\\"])
    assert result.stdout.strip() == '["x; touch pwned $(id)", "", "\'\\"\\\\"]'
    assert transport.run(["echo", INJECTION]).stdout == INJECTION + "\n"
    # Commands run in the remote home: an injection would have created `pwned` there.
    assert transport.run(["test", "-e", "pwned"], check=False).exit_code == 1
    assert command_line(["echo", INJECTION]) == "echo 'x; touch pwned $(id)'"


def test_exit_codes_and_stderr(transport: ssh.SshTransport) -> None:
    with pytest.raises(CommandFailed) as info:
        transport.run(["sh", "-c", "echo out; echo bad thing >&2; exit 3"])
    assert info.value.exit_status == 3 and info.value.host == "tb-01"
    assert "bad thing" in str(info.value)
    result = transport.run(["sh", "-c", "echo out; echo err >&2; exit 4"], check=False)
    assert (result.exit_code, result.stdout, result.stderr) == (4, "out\n", "err\n")


def test_stdin_and_both_streams_flow_without_deadlock(transport: ssh.SshTransport) -> None:
    # 3 MiB echoed line by line to both streams is more than the SSH window: this only
    # finishes if stdin is written while stdout and stderr are read.
    data = os.urandom(3 << 19).hex().encode()
    payload = b"\n".join(data[i : i + 1000] for i in range(0, len(data), 1000)) + b"\n"
    script = "\n".join([
        "import sys",
        "for line in sys.stdin:",
        "    sys.stdout.write(line)",
        "    sys.stderr.write(line)",
    ])
    result = transport.run(["python3", "-c", script], stdin=payload, timeout=60)
    assert result.stdout.encode() == payload and result.stderr.encode() == payload
    # A command that stops reading its stdin early is not a lost connection.
    assert transport.run(["head", "-c", "10"], stdin=b"y" * (8 << 20)).stdout == "y" * 10


def test_timeout_raises_fast_and_kills_the_remote_process(transport: ssh.SshTransport) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"sleep 30\.5"):
        transport.run(["sleep", "30.5"], timeout=1)
    assert time.monotonic() - started < 4
    deadline = time.monotonic() + 3
    while processes_with_argv(["sleep", "30.5"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with_argv(["sleep", "30.5"]) == []
    assert transport.run(["echo", "still usable"]).stdout == "still usable\n"


def test_output_cap_stops_the_command(transport: ssh.SshTransport) -> None:
    assert len(transport.run(["head", "-c", "5000", "/dev/zero"], max_output=5000).stdout) == 5000
    started = time.monotonic()
    with pytest.raises(OutputTooLarge, match="100000 bytes"):
        transport.run(["yes", "orchestrator-cap-test"], max_output=100_000, timeout=30)
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 3
    while processes_with_argv(["yes", "orchestrator-cap-test"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with_argv(["yes", "orchestrator-cap-test"]) == []


def test_progress_hooks_see_bytes_sent_and_stderr_as_it_comes(
        transport: ssh.SshTransport, host: Host) -> None:
    """The put callback counts up to the file's size; `on_stderr` gets stderr before the
    command ends; a hook that raises stops the command and leaves nothing running."""
    sent: list[tuple[int, int]] = []
    transport.put(os.urandom(200_000), f"{host.deploy_root}/hook.bin", 0o600,
                  progress=lambda done, size: sent.append((done, size)))
    assert len(sent) > 2 and sent[-1] == (200_000, 200_000)
    assert [d for d, _ in sent] == sorted(d for d, _ in sent)
    transport.run(["rm", "-f", f"{host.deploy_root}/hook.bin"])

    pieces: list[tuple[float, bytes]] = []
    started = time.monotonic()
    result = transport.run(["sh", "-c", "echo early >&2; sleep 1.5; echo late >&2"],
                           on_stderr=lambda data: pieces.append((time.monotonic(), data)))
    assert result.stderr == "early\nlate\n"  # still captured whole
    assert pieces[0][1] == b"early\n" and pieces[0][0] - started < 1.2

    def refuse(data: bytes) -> None:
        raise RuntimeError("hook refused")

    with pytest.raises(RuntimeError, match="hook refused"):
        transport.run(["sh", "-c", "echo x >&2; exec sleep 30.25"], on_stderr=refuse)
    deadline = time.monotonic() + 3
    while processes_with_argv(["sleep", "30.25"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with_argv(["sleep", "30.25"]) == []


def test_sftp_put_and_get(transport: ssh.SshTransport, host: Host, tmp_path: Path) -> None:
    target = f"{host.deploy_root}/sftp-test.bin"
    payload = os.urandom(300_000)
    transport.put(payload, target, 0o600)
    assert transport.get(target) == payload
    assert transport.run(["stat", "-c", "%a", target]).stdout.strip() == "600"
    local = tmp_path / "local.txt"
    local.write_text("from a file\n")
    transport.put(local, target, 0o755)
    assert transport.get(target) == b"from a file\n"
    assert transport.run(["stat", "-c", "%a", target]).stdout.strip() == "755"
    listing = transport.run(["ls", "-a", host.deploy_root]).stdout.split()
    assert not [n for n in listing if ".part-" in n]  # no temporary left behind
    with pytest.raises(FileTransferFailed, match="no-such-file"):
        transport.get(f"{host.deploy_root}/no-such-file")
    # Missing parents are created; a parent that is a file is refused.
    transport.put(b"deep", f"{host.deploy_root}/sftp-dir/a/b/f")
    assert transport.get(f"{host.deploy_root}/sftp-dir/a/b/f") == b"deep"
    with pytest.raises(FileTransferFailed, match=r"sftp-test\.bin/f"):
        transport.put(b"x", f"{target}/f")
    transport.run(["rm", "-rf", target, f"{host.deploy_root}/sftp-dir"])


def test_unknown_host_key_is_refused_with_its_fingerprint(
    testbed: Testbed, host: Host, options: ssh.SshOptions, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    expected = openssh_fingerprint(Path(f"{testbed.host('tb-01').host_key}.pub"))
    with pytest.raises(HostKeyRejected) as info:
        ssh.connect(host, replace(options, known_hosts=empty))
    message = str(info.value)
    assert expected in message and "orchestrator trust tb-01 --inventory" in message
    assert message.startswith("tb-01: unknown host key")


def test_changed_host_key_is_refused_with_both_fingerprints(
    testbed: Testbed, host: Host, options: ssh.SshOptions, tmp_path: Path
) -> None:
    # Record tb-02's key under tb-01's address: to the client, tb-01's key has changed.
    other = Path(f"{testbed.host('tb-02').host_key}.pub").read_text().split()
    forged = tmp_path / "known_hosts"
    forged.write_text(f"[{host.address}]:{host.port} {other[0]} {other[1]}\n")
    with pytest.raises(HostKeyRejected, match="HOST KEY CHANGED") as info:
        ssh.connect(host, replace(options, known_hosts=forged))
    offered = openssh_fingerprint(Path(f"{testbed.host('tb-01').host_key}.pub"))
    recorded = openssh_fingerprint(Path(f"{testbed.host('tb-02').host_key}.pub"))
    assert f"expected {recorded}" in str(info.value) and offered in str(info.value)


def test_unreachable_and_unauthorised(host: Host, options: ssh.SshOptions, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(HostUnreachable, match="cannot connect"):
        ssh.connect(replace(host, address="127.0.0.254", port=1), options)
    assert time.monotonic() - started < 5
    stranger = tmp_path / "id_stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True)
    with pytest.raises(HostUnreachable, match="authentication"):
        ssh.connect(host, replace(options, identity_file=stranger))
    with pytest.raises(InvalidInput, match="does not exist"):
        ssh.connect(host, replace(options, identity_file=tmp_path / "missing"))
    # No identity configured and no agent or key search: nothing to authenticate with.
    with pytest.raises(HostUnreachable):
        ssh.connect(host, replace(options, identity_file=None))


def test_fetch_and_record_host_keys(testbed: Testbed, host: Host, tmp_path: Path) -> None:
    key = ssh.fetch_host_key(host)
    assert key.fingerprint == openssh_fingerprint(Path(f"{testbed.host('tb-01').host_key}.pub"))
    known = tmp_path / "sub" / "known_hosts"
    assert ssh.known_host_keys(known, host.address, host.port) == []
    ssh.append_known_host(known, host.address, host.port, key)
    assert ssh.known_host_keys(known, host.address, host.port) == [key]
    assert known.stat().st_mode & 0o777 == 0o600
    # A hashed entry (ssh-keygen -H) is found and removed like a plain one.
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
    assert ssh.known_host_keys(known, host.address, host.port) == [key]
    ssh.remove_known_host(known, host.address, host.port)
    assert ssh.known_host_keys(known, host.address, host.port) == []
    known.write_text("# hand-edited, no final newline")
    ssh.append_known_host(known, host.address, host.port, key)
    assert ssh.known_host_keys(known, host.address, host.port) == [key]


def test_pool_opens_one_connection_per_host(inventory: Inventory,
                                            options: ssh.SshOptions) -> None:
    hosts = list(inventory.hosts.values())[:4]

    def client_ports(t: Transport, h: Host) -> set[str]:
        # $SSH_CONNECTION names the client port: the same port means the same connection.
        return {t.run(["sh", "-c", "echo $SSH_CONNECTION"]).stdout.split()[1] for _ in range(3)}

    with Pool(options, max_connections=8) as pool:
        first = pool.map_hosts(client_ports, hosts, 4)
        second = pool.map_hosts(client_ports, hosts, 4)
        assert pool.connects == 4 and pool.open_count() == 4
    assert all(isinstance(v, set) and len(v) == 1 for v in first.values())
    assert first == second


def test_pool_bounds_open_connections_and_reopens_a_dead_one(
    inventory: Inventory, options: ssh.SshOptions
) -> None:
    hosts = list(inventory.hosts.values())[:4]
    seen: list[int] = []
    with Pool(options, max_connections=2) as pool:

        def work(t: Transport, h: Host) -> str:
            seen.append(pool.open_count())
            return t.run(["echo", h.name]).stdout.strip()

        results = pool.map_hosts(work, hosts, 4)
        assert results == {h.name: h.name for h in hosts}
        assert max(seen) <= 2
        with pool.session(hosts[0]) as t:
            with pytest.raises(RuntimeError, match="nested"), pool.session(hosts[0]):
                pass  # waiting for itself would hang: refused at once
            t.close()
        before = pool.connects
        with pool.session(hosts[0]) as t:
            assert t.run(["echo", "back"]).stdout == "back\n"
        assert pool.connects == before + 1
    assert pool.open_count() == 0


def test_map_hosts_keeps_host_errors_and_raises_bugs(inventory: Inventory) -> None:
    hosts = list(inventory.hosts.values())[:3]

    def fn(h: Host) -> str:
        if h.name == "tb-02":
            raise HostUnreachable(h.name, "down")
        return h.name

    results = map_hosts(fn, hosts, 3)
    assert results["tb-01"] == "tb-01" and isinstance(results["tb-02"], HostUnreachable)

    def bug(h: Host) -> str:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        map_hosts(bug, hosts, 3)


def test_options_from_the_inventory_and_overrides(inventory: Inventory, testbed: Testbed,
                                                  tmp_path: Path) -> None:
    options = ssh.SshOptions.for_inventory(inventory)
    assert options.known_hosts == testbed.known_hosts_path
    assert options.identity_file == testbed.identity_path
    assert not options.allow_agent and not options.look_for_keys
    other = ssh.SshOptions.for_inventory(inventory, known_hosts=tmp_path / "kh", keepalive_s=5)
    assert (other.known_hosts, other.keepalive_s) == (tmp_path / "kh", 5)
    assert other.identity_file == testbed.identity_path


def test_a_connection_lost_mid_command_is_unreachable_and_reopened(
    inventory: Inventory, options: ssh.SshOptions
) -> None:
    host = inventory.hosts["tb-02"]
    with Pool(options) as pool:
        with pool.session(host) as t:
            started = time.monotonic()
            with pytest.raises(HostUnreachable, match="connection lost"):
                t.run(["python3", "-c", KILL_MY_SSHD], timeout=60)
            assert time.monotonic() - started < 5 and not t.alive
        # The command outlived its connection: the watcher started with it kills it.
        deadline = time.monotonic() + 5
        while processes_with_argv(["python3", "-c", KILL_MY_SSHD]):
            assert time.monotonic() < deadline, "the orphaned command is still running"
            time.sleep(0.1)
        with pool.session(host) as t:
            assert t.run(["echo", "reopened"]).stdout == "reopened\n"
        assert pool.connects == 2


@pytest.mark.parametrize("split", [1, 5, 17, 40])
def test_login_noise_before_the_marker_is_dropped(split: int) -> None:
    # What a chatty ~/.bashrc does to stdout: the wrapper's marker line comes after its noise.
    stream = b"Welcome to gpu-01\norchestrator-pgid:4242\n{\"schema\": 1}\n"
    capture = ssh.session._Capture(1000, marked=True)
    for i in range(0, len(stream), split):
        capture.add(stream[i : i + split])
    assert capture.pid == 4242 and capture.text() == '{"schema": 1}\n'
    # a shell that printed no marker: nothing is lost
    plain = ssh.session._Capture(1000, marked=True)
    plain.add(b"just output\n")
    assert plain.pid is None and plain.text() == "just output\n"
