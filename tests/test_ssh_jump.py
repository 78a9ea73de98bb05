"""SSH as operators have it, against real sshd servers: an ssh_config alias, a host reachable
only through a bastion (tests/bastions.py: the target listens in a network namespace of its
own), a chain of two jumps, `orchestrator trust` hop by hop, a changed bastion key refused with
its fingerprint, and connect retries on transient errors only."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.core.inventory import Inventory, load_inventory
from orchestrator.core.retry import RetryPolicy
from orchestrator.errors import HostKeyRejected, HostUnreachable
from orchestrator.hosts import ssh
from orchestrator.testbed import Testbed, sshd
from tests import bastions


@pytest.fixture(scope="module")
def hidden(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[bastions.Hidden]:
    reason = bastions.why_not()
    if reason is not None:
        pytest.skip(f"no hidden host behind a bastion: {reason}")
    h = bastions.up(testbed, tmp_path_factory.mktemp("hidden"))
    try:
        yield h
    finally:
        h.down()


def write_inventory(tmp_path: Path, testbed: Testbed, hidden: bastions.Hidden) -> Path:
    tb01 = testbed.hosts[0]
    (tmp_path / "ssh_config").write_text(f"""\
Host bastion
  HostName {hidden.bastion_address}
  Port {hidden.bastion_port}
Host tb01
  HostName {tb01.address}
  Port {tb01.port}
Host hidden
  HostName 127.0.0.1
  Port {hidden.target_port}
  ProxyJump bastion
Host hidden2
  HostName 127.0.0.1
  Port {hidden.target_port}
  ProxyJump tb01,bastion
  IdentitiesOnly yes
Host tb-alias
  HostName {tb01.address}
  Port {tb01.port}
  User {tb01.user}
Host *
  IdentityFile {testbed.identity_path}
""")
    shutil.copy(testbed.known_hosts_path, tmp_path / "known_hosts")
    inv = tmp_path / "inventory.yaml"
    inv.write_text(f"""\
hosts:
  hidden: {{address: hidden, deploy_root: /srv/hidden}}
  hidden2: {{address: hidden2, deploy_root: /srv/hidden}}
  alias: {{address: tb-alias, deploy_root: /srv/alias}}
  direct: {{address: 127.0.0.1, port: {hidden.target_port}, user: {tb01.user},
           deploy_root: /srv/direct}}
ssh: {{known_hosts: known_hosts, config: ssh_config}}
""")
    return inv


def trust(inventory: Path, *hosts: str, replace: bool = False) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "orchestrator", "trust", *hosts, "--inventory", str(inventory),
            "--yes", *(["--replace"] if replace else [])]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def home_of(inv: Inventory, name: str) -> str:
    with ssh.connect(inv.hosts[name], ssh.SshOptions.for_inventory(inv)) as t:
        return t.run(["sh", "-c", 'echo "$HOME"']).stdout.strip()


def fp(hidden: bastions.Hidden, key: Path) -> str:
    return ssh.HostKey(*hidden.public_key(key)).fingerprint


def test_the_target_cannot_be_reached_directly(tmp_path: Path, testbed: Testbed,
                                               hidden: bastions.Hidden) -> None:
    for address in ("127.0.0.1", hidden.bastion_address):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, hidden.target_port), timeout=5).close()
    inv = load_inventory(write_inventory(tmp_path, testbed, hidden))
    with pytest.raises(HostUnreachable, match=f"cannot connect to 127.0.0.1:{hidden.target_port}"):
        ssh.connect(inv.hosts["direct"], ssh.SshOptions.for_inventory(
            inv, connect_retry=RetryPolicy(attempts=1)))


def test_trust_hop_by_hop_then_run_on_the_host_behind_the_bastion(
        tmp_path: Path, testbed: Testbed, hidden: bastions.Hidden) -> None:
    path = write_inventory(tmp_path, testbed, hidden)
    inv = load_inventory(path)
    with pytest.raises(HostKeyRejected, match=re.escape(
            f"unknown host key for bastion bastion ({hidden.bastion_address}:"
            f"{hidden.bastion_port}) (ssh-ed25519 {fp(hidden, hidden.bastion_key)})")):
        home_of(inv, "hidden")
    done = trust(path, "hidden")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (f"hidden via bastion bastion [{hidden.bastion_address}]:"
                        f"{hidden.bastion_port} ssh-ed25519 {fp(hidden, hidden.bastion_key)}")
    assert lines[2] == (f"hidden [127.0.0.1]:{hidden.target_port} ssh-ed25519 "
                        f"{fp(hidden, hidden.target_key)}")
    assert home_of(inv, "hidden").endswith("/target")  # the target's sshd SetEnv HOME


def test_a_chain_of_two_jumps(tmp_path: Path, testbed: Testbed, hidden: bastions.Hidden) -> None:
    path = write_inventory(tmp_path, testbed, hidden)
    done = trust(path, "hidden2")  # tb01 is trusted already: the testbed's known_hosts
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == "  already trusted"
    assert home_of(load_inventory(path), "hidden2").endswith("/target")


def test_an_alias_from_the_ssh_config(tmp_path: Path, testbed: Testbed,
                                      hidden: bastions.Hidden) -> None:
    inv = load_inventory(write_inventory(tmp_path, testbed, hidden))
    route = ssh.resolve(inv.hosts["alias"], ssh.SshOptions.for_inventory(inv))
    tb01 = testbed.hosts[0]
    assert (route.jumps, route.target.address, route.target.port) == ((), tb01.address, tb01.port)
    assert route.target.identity_files == (testbed.identity_path,)
    assert home_of(inv, "alias") == str(tb01.home)


def test_a_changed_bastion_key_is_refused_with_its_fingerprint(
        tmp_path: Path, testbed: Testbed, hidden: bastions.Hidden) -> None:
    path = write_inventory(tmp_path, testbed, hidden)
    assert trust(path, "hidden").returncode == 0
    known = tmp_path / "known_hosts"
    ssh.remove_known_host(known, hidden.bastion_address, hidden.bastion_port)
    forged = ssh.HostKey(*hidden.public_key(hidden.target_key))  # another key for the bastion
    ssh.append_known_host(known, hidden.bastion_address, hidden.bastion_port, forged)
    with pytest.raises(HostKeyRejected) as caught:
        home_of(load_inventory(path), "hidden")
    assert str(caught.value) == (
        f"hidden: HOST KEY CHANGED for bastion bastion ({hidden.bastion_address}:"
        f"{hidden.bastion_port}): expected {forged.fingerprint}, offered ssh-ed25519 "
        f"{fp(hidden, hidden.bastion_key)}; refusing to connect (if the host was really "
        f"reinstalled: orchestrator trust hidden --inventory {path} --replace)")
    refused = trust(path, "hidden")
    assert refused.returncode == 3 and "the host key CHANGED" in refused.stderr  # not added
    assert ssh.known_host_keys(known, hidden.bastion_address, hidden.bastion_port) == [forged]


def test_a_refused_connect_is_retried_until_the_host_listens(
        tmp_path: Path, testbed: Testbed) -> None:
    """A host whose sshd starts while we knock: the connect retries and gets in."""
    tb01 = testbed.hosts[0]
    port = sshd.free_port([tb01.address], first=tb01.port + 1)
    spec = sshd.SshdSpec(address=tb01.address, port=port, user=tb01.user,
                         host_key=tb01.host_key, config=tmp_path / "sshd_config",
                         log=tmp_path / "sshd.log", pid_file=tmp_path / "sshd.pid",
                         authorized_keys=testbed.dir / "authorized_keys", env=())
    spec.config.write_text(sshd.render_config(spec))
    shutil.copy(testbed.known_hosts_path, tmp_path / "known_hosts")
    pub = Path(f"{tb01.host_key}.pub").read_text().split()
    ssh.append_known_host(tmp_path / "known_hosts", tb01.address, port, ssh.HostKey(*pub[:2]))
    host = bastions_host(tb01.address, port, tb01.user)
    options = ssh.SshOptions(known_hosts=tmp_path / "known_hosts",
                             identity_file=testbed.identity_path,
                             connect_retry=RetryPolicy(attempts=20, base_s=0.2, cap_s=0.5))
    waits: list[float] = []
    started: list[sshd.Running] = []
    timer = threading.Timer(1.0, lambda: started.append(sshd.start(testbed.sshd_path, spec)))
    timer.start()
    try:
        with ssh.connect(host, options, remaining=counting(waits)) as t:
            assert t.run(["true"]).exit_code == 0
    finally:
        timer.join()
        sshd.stop([r.pid for r in started])
    assert len(waits) >= 1  # it did wait and try again


def test_an_authentication_failure_is_not_retried(testbed: Testbed) -> None:
    tb01 = testbed.hosts[0]
    options = ssh.SshOptions(known_hosts=testbed.known_hosts_path,
                             identity_file=testbed.identity_path,
                             connect_retry=RetryPolicy(attempts=5, base_s=2.0, cap_s=2.0))
    asked: list[float] = []
    started = time.monotonic()
    with pytest.raises(HostUnreachable, match="authentication as 'nobody'"):
        ssh.connect(bastions_host(tb01.address, tb01.port, "nobody"), options,
                    remaining=counting(asked))
    assert asked == [] and time.monotonic() - started < 10


def counting(calls: list[float]) -> Callable[[], float]:
    """A `remaining` that records each time it is asked: only before a retry's wait."""
    def remaining() -> float:
        calls.append(1.0)
        return 30.0
    return remaining


def bastions_host(address: str, port: int, user: str) -> ssh.Hop:
    return ssh.Hop(name="knock", address=address, port=port, user=user)


def test_an_alias_without_an_ssh_config_says_where_to_name_one(testbed: Testbed) -> None:
    """The issue's symptom (`cannot connect to tb-alias:22`) now says what to do, at once:
    a name that does not resolve is not retried."""
    options = ssh.SshOptions(known_hosts=testbed.known_hosts_path,
                             connect_retry=RetryPolicy(attempts=5, base_s=2.0, cap_s=2.0))
    asked: list[float] = []
    with pytest.raises(HostUnreachable, match=r"cannot connect to tb-alias:22: .*name that file"
                                              r" in the inventory's `ssh: config:`"):
        ssh.connect(bastions_host("tb-alias", 22, "deploy"), options, remaining=counting(asked))
    assert asked == []
