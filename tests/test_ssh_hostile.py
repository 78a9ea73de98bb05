"""A hostile or broken host against the SSH edge, on the testbed's real sshd hosts: files read
back are bounded (type, size, deadline), whatever the host put at their path."""

from __future__ import annotations

import os
import signal
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.cli import app as cli
from orchestrator.core.inventory import Host, Inventory
from orchestrator.errors import BadHostOutput, CommandTimeout, OutputTooLarge
from orchestrator.hosts import ssh
from orchestrator.hosts.shipping import MARKER, ensure_tools
from orchestrator.testbed import Testbed

# Prints the pid of the sshd process serving this connection: the parent of the login shell
# that runs the command.
SESSION_PID = (
    "import os\n"
    "p = os.getppid()\n"
    "print(open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[1])\n"
)


@pytest.fixture(scope="module")
def host(inventory: Inventory) -> Host:
    return inventory.hosts["tb-03"]


@pytest.fixture
def transport(host: Host, inventory: Inventory) -> Iterator[ssh.SshTransport]:
    """A connection of its own: these tests leave SFTP sessions stalled or dropped."""
    with ssh.connect(host, ssh.SshOptions.for_inventory(inventory)) as t:
        yield t


@pytest.fixture
def scratch(transport: ssh.SshTransport, host: Host) -> Iterator[str]:
    path = f"{host.deploy_root}/hostile-{os.getpid()}"
    transport.run(["mkdir", "-p", path])
    yield path
    transport.run(["rm", "-rf", path])


def bounded(call: Callable[[], object]) -> tuple[BaseException, float, int]:
    """Run `call`, which must raise; returns the error, the seconds it took and the peak of
    Python memory allocated meanwhile."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        call()
    except Exception as exc:  # returned: the test checks its type
        error: BaseException = exc
    else:
        raise AssertionError("no error raised")
    finally:
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, elapsed, peak


def test_a_symlink_to_dev_zero_is_refused_at_once(
    transport: ssh.SshTransport, scratch: str
) -> None:
    target = f"{scratch}/manifest.json"
    transport.run(["ln", "-s", "/dev/zero", target])
    error, elapsed, peak = bounded(lambda: transport.get(target))
    assert isinstance(error, BadHostOutput) and error.host == "tb-03"
    assert str(error) == (f"tb-03: {target} is a character device, not a regular file;"
                          " refusing to read it")
    assert elapsed < 2 and peak < 1 << 20
    # The connection and its SFTP session are still good for the next file.
    transport.put(b"fine", f"{scratch}/ok")
    assert transport.get(f"{scratch}/ok") == b"fine"


def test_the_tools_marker_replaced_by_dev_zero(
    transport: ssh.SshTransport, host: Host
) -> None:
    # The case: `probe` grew to 2.1 GB in 43 s reading this marker, then died.
    tools = ensure_tools(transport, host.deploy_root)
    marker = tools.script(MARKER)
    transport.run(["ln", "-sf", "/dev/zero", marker])
    try:
        error, elapsed, peak = bounded(lambda: ensure_tools(transport, host.deploy_root))
        assert isinstance(error, BadHostOutput) and MARKER in str(error)
        assert elapsed < 2 and peak < 1 << 20
    finally:
        transport.put(f"{tools.digest}\n".encode(), marker)  # rename replaces the link
    assert ensure_tools(transport, host.deploy_root) == tools


def test_probe_names_the_host_whose_marker_is_dev_zero(
    transport: ssh.SshTransport, host: Host, testbed: Testbed,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The same through the command: one host's error (exit 3), in seconds, no MemoryError.
    tools = ensure_tools(transport, host.deploy_root)
    marker = tools.script(MARKER)
    transport.run(["ln", "-sf", "/dev/zero", marker])
    try:
        started = time.monotonic()
        assert cli.main(["probe", "--inventory", str(testbed.inventory_path), "tb-03"]) == 3
        assert time.monotonic() - started < 10
    finally:
        transport.put(f"{tools.digest}\n".encode(), marker)
    err = capsys.readouterr().err
    assert f"tb-03: {marker} is a character device, not a regular file" in err


def test_a_file_over_the_cap_is_refused_by_its_size(
    transport: ssh.SshTransport, scratch: str
) -> None:
    exact, sparse = f"{scratch}/exact", f"{scratch}/sparse"
    transport.put(b"x" * 1000, exact)
    assert transport.get(exact, max_bytes=1000) == b"x" * 1000
    with pytest.raises(OutputTooLarge, match=r"exact is 1000 bytes, over the cap of 999 bytes"):
        transport.get(exact, max_bytes=999)
    # 64 GiB that take no disk: refused from its size before a byte is read.
    transport.run(["truncate", "-s", "64G", sparse])
    error, elapsed, peak = bounded(lambda: transport.get(sparse))
    assert isinstance(error, OutputTooLarge)
    assert f"{68719476736} bytes, over the cap of {4 << 20} bytes" in str(error)
    assert elapsed < 2 and peak < 1 << 20


def test_a_file_larger_than_its_size_says_is_cut_at_the_cap(
    transport: ssh.SshTransport,
) -> None:
    # procfs files report size 0 whatever they hold: only counting what is read stops them.
    with pytest.raises(OutputTooLarge, match=r"/proc/self/maps is more than 64 bytes"):
        transport.get("/proc/self/maps", max_bytes=64)


def test_a_fifo_is_never_opened(transport: ssh.SshTransport, scratch: str) -> None:
    # Opening a FIFO with no writer blocks the host's SFTP server for good.
    fifo = f"{scratch}/fifo"
    transport.run(["mkfifo", fifo])
    error, elapsed, _ = bounded(lambda: transport.get(fifo))
    assert isinstance(error, BadHostOutput) and "is a FIFO, not a regular file" in str(error)
    assert elapsed < 2
    with pytest.raises(BadHostOutput, match="is a directory"):
        transport.get(scratch)


def test_a_stalled_sftp_server_meets_the_deadline(
    transport: ssh.SshTransport, scratch: str
) -> None:
    target = f"{scratch}/slow"
    transport.put(b"content", target)
    assert transport.get(target) == b"content"  # the SFTP session is open
    server = sftp_server(int(transport.run(["python3", "-c", SESSION_PID]).stdout))
    os.kill(server, signal.SIGSTOP)  # the testbed's hosts are this machine
    try:
        error, elapsed, _ = bounded(lambda: transport.get(target, timeout=1))
    finally:
        os.kill(server, signal.SIGCONT)
    assert isinstance(error, CommandTimeout)
    assert str(error) == f"tb-03: reading {target} did not finish within 1 s; stopped"
    assert 0.9 < elapsed < 3
    # The stalled session was dropped: the next read opens a new one.
    assert transport.get(target) == b"content"


def sftp_server(session: int) -> int:
    """The internal-sftp process sshd forked for this connection's SFTP channel."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == session and b"internal-sftp" in cmdline:
            return int(entry.name)
    raise LookupError(f"no internal-sftp process under sshd {session}")
