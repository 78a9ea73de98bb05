"""The SSH transport's defaults, against real sshd: weak algorithms are never negotiated (a host
offering nothing else is refused, unless the inventory allows them back), and a private key
readable by others is refused as OpenSSH refuses it."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import paramiko
import pytest
import yaml

from orchestrator.cli import app as cli
from orchestrator.core.inventory import WEAK_SSH_ALGORITHMS, Host, Inventory, load_inventory
from orchestrator.errors import EXIT_INVALID, HostUnreachable, InvalidInput, SpecError
from orchestrator.hosts import ssh
from orchestrator.testbed import Testbed, sshd

WEAK = {n for names in WEAK_SSH_ALGORITHMS.values() for n in names}

#: A restricted sshd per case: its extra config lines, and what the refusal must say.
ONLY_WEAK = {
    "cbc-and-3des": ("Ciphers aes128-cbc,aes256-cbc,3des-cbc", "no acceptable ciphers"),
    "sha1-md5-macs": ("Ciphers aes128-ctr\nMACs hmac-sha1,hmac-md5", "no acceptable macs"),
    "sha1-kex": ("KexAlgorithms diffie-hellman-group14-sha1,diffie-hellman-group1-sha1",
                 "no acceptable kex"),
}


@pytest.fixture(scope="module")
def options(inventory: Inventory) -> ssh.SshOptions:
    return ssh.SshOptions.for_inventory(inventory)


Restricted = Callable[..., tuple[Host, ssh.SshOptions]]


def keygen(path: Path, key_type: str) -> Path:
    bits = ["-b", "2048"] if key_type == "rsa" else []  # the smallest OpenSSH takes: fast
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, *bits, "-N", "", "-f", str(path)],
                   check=True)
    return path


@pytest.fixture
def restricted(testbed: Testbed, tmp_path: Path) -> Iterator[Restricted]:
    """`restricted(extra_config, identity=None, host_key_type="ed25519")` starts an sshd of its
    own, the testbed's but for the extra lines (and a user key of its own when `identity` is
    given), and returns a host and options (its known_hosts) that reach it; stopped after."""
    started: list[int] = []

    def start(extra: str, identity: Path | None = None,
              host_key_type: str = "ed25519") -> tuple[Host, ssh.SshOptions]:
        where = tmp_path / f"sshd-{len(started)}"
        where.mkdir()
        address = "127.0.0.1"
        authorized = testbed.dir / "authorized_keys"
        if identity is not None:
            authorized = where / "authorized_keys"
            authorized.write_text(Path(f"{identity}.pub").read_text())
        spec = sshd.SshdSpec(
            address=address, port=sshd.free_port([address]), user=testbed.hosts[0].user,
            host_key=keygen(where / "host_key", host_key_type), config=where / "sshd_config",
            log=where / "sshd.log", pid_file=where / "sshd.pid", authorized_keys=authorized,
            env=(),
        )
        spec.config.write_text(sshd.render_config(spec) + extra + "\n")
        run = sshd.start(testbed.sshd_path, spec)
        started.append(run.pid)
        sshd.wait_ready([(spec, run)], timeout=10)
        key_type, key = Path(f"{spec.host_key}.pub").read_text().split()[:2]
        known = where / "known_hosts"
        ssh.append_known_host(known, address, spec.port, ssh.HostKey(key_type, key))
        host = Host(name="legacy", address=address, port=spec.port, user=spec.user,
                    deploy_root=str(where))
        options = ssh.SshOptions(known_hosts=known, identity_file=identity or testbed.identity_path,
                                 connect_timeout=5)
        return host, options

    yield start
    sshd.stop(started)


def negotiated(transport: ssh.SshTransport) -> set[str]:
    """What this connection uses (each direction negotiates separately; paramiko's stubs lack
    the remote side, which is read through getattr)."""
    t = transport._client.get_transport()
    assert t is not None
    names = [t.local_cipher, t.local_mac, t.host_key_type,
             getattr(t, "remote_cipher"), getattr(t, "remote_mac")]  # noqa: B009
    return {n for n in names if isinstance(n, str)}


def test_the_defaults_disable_every_weak_algorithm(options: ssh.SshOptions) -> None:
    disabled = options.disabled_algorithms()
    assert {"aes128-cbc", "3des-cbc"} <= set(disabled["ciphers"])
    assert {"hmac-sha1", "hmac-md5"} <= set(disabled["macs"])
    assert "ssh-rsa" in disabled["keys"] and "ssh-rsa" in disabled["pubkeys"]
    assert "diffie-hellman-group1-sha1" in disabled["kex"]
    # What paramiko would still offer once they are gone: nothing weak, something left.
    for kind, names in disabled.items():
        offered = set(getattr(paramiko.Transport, f"_preferred_{kind}")) - set(names)
        assert offered and not offered & WEAK, kind


def test_the_testbed_still_connects_with_the_defaults(
    inventory: Inventory, options: ssh.SshOptions
) -> None:
    with ssh.connect(inventory.hosts["tb-01"], options) as transport:
        assert transport.run(["echo", "ok"]).stdout == "ok\n"
        assert not negotiated(transport) & WEAK


@pytest.mark.parametrize("case", sorted(ONLY_WEAK))
def test_a_host_offering_only_weak_algorithms_is_refused(
    restricted: Restricted, case: str
) -> None:
    extra, reason = ONLY_WEAK[case]
    host, options = restricted(extra)
    started = time.monotonic()
    with pytest.raises(HostUnreachable) as info:
        ssh.connect(host, options)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert message.startswith(f"legacy: no SSH algorithms in common with 127.0.0.1:{host.port}")
    assert reason in message and "legacy_algorithms" in message


def test_legacy_algorithms_are_allowed_back_by_name(
    restricted: Restricted
) -> None:
    host, options = restricted("Ciphers aes256-cbc\nMACs hmac-sha1")
    legacy = replace(options, legacy_algorithms=frozenset({"aes256-cbc", "hmac-sha1"}))
    with ssh.connect(host, legacy) as transport:
        assert transport.run(["echo", "old"]).stdout == "old\n"
        assert {"aes256-cbc", "hmac-sha1"} <= negotiated(transport)
    # One of the two is not enough.
    with pytest.raises(HostUnreachable, match="no acceptable macs"):
        ssh.connect(host, replace(options, legacy_algorithms=frozenset({"aes256-cbc"})))


def test_an_rsa_host_key_and_user_key_are_used_with_sha2_only(
    restricted: Restricted, tmp_path: Path
) -> None:
    user_key = keygen(tmp_path / "id_rsa", "rsa")
    host, options = restricted("PubkeyAcceptedAlgorithms rsa-sha2-512,rsa-sha2-256",
                               identity=user_key, host_key_type="rsa")
    with ssh.connect(host, options) as transport:
        assert transport.run(["echo", "rsa"]).stdout == "rsa\n"
        assert "ssh-rsa" not in negotiated(transport)
    # A host that signs its key only with SHA-1, or takes only SHA-1 user signatures: refused.
    host, options = restricted("HostKeyAlgorithms ssh-rsa", host_key_type="rsa")
    with pytest.raises(HostUnreachable, match="no acceptable host key"):
        ssh.connect(host, options)
    host, options = restricted("PubkeyAcceptedAlgorithms ssh-rsa", identity=user_key)
    # (paramiko reports the failed RSA attempt as "Invalid key": after it, it tries to read
    # the file as each other key type, and the last of those errors is the one it raises)
    with pytest.raises(HostUnreachable, match=f"legacy: cannot connect to 127.0.0.1:{host.port}"):
        ssh.connect(host, options)


def test_the_inventory_names_legacy_algorithms(testbed: Testbed, tmp_path: Path) -> None:
    data = yaml.safe_load(testbed.inventory_path.read_text())
    data["ssh"]["known_hosts"] = str(testbed.known_hosts_path)
    data["ssh"]["identity_file"] = str(testbed.identity_path)

    def inventory_with(names: list[str]) -> Path:
        path = tmp_path / "inventory.yaml"
        path.write_text(yaml.safe_dump({**data, "ssh": {**data["ssh"],
                                                        "legacy_algorithms": names}}))
        return path

    options = ssh.SshOptions.for_inventory(load_inventory(inventory_with(["3des-cbc",
                                                                          "ssh-rsa"])))
    assert options.legacy_algorithms == {"3des-cbc", "ssh-rsa"}
    disabled = options.disabled_algorithms()
    assert "3des-cbc" not in disabled["ciphers"] and "aes128-cbc" in disabled["ciphers"]
    assert "ssh-rsa" not in disabled["keys"] and "ssh-rsa" not in disabled["pubkeys"]
    with pytest.raises(SpecError, match=r":\d+: ssh\.legacy_algorithms\[1\]: 'rot13' is not an"
                                        r" algorithm disabled by default"):
        load_inventory(inventory_with(["3des-cbc", "rot13"]))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_a_private_key_open_to_others_is_refused(
    inventory: Inventory, options: ssh.SshOptions, testbed: Testbed, tmp_path: Path, mode: int
) -> None:
    key = tmp_path / "id_ed25519"
    shutil.copy(testbed.identity_path, key)
    key.chmod(mode)
    with pytest.raises(InvalidInput) as info:
        ssh.connect(inventory.hosts["tb-01"], replace(options, identity_file=key))
    assert str(info.value).startswith(f"SSH identity file {key} has mode {mode:04o}:")
    assert info.value.exit_code == EXIT_INVALID == 2
    key.chmod(0o600)  # as OpenSSH: 0600 (or 0400) is fine
    with ssh.connect(inventory.hosts["tb-01"], replace(options, identity_file=key)) as t:
        assert t.alive


def test_the_probe_command_exits_2_naming_the_open_key(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "id_ed25519"
    shutil.copy(testbed.identity_path, key)
    key.chmod(0o644)
    data = yaml.safe_load(testbed.inventory_path.read_text())
    data["ssh"] = {"known_hosts": str(testbed.known_hosts_path), "identity_file": str(key)}
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(data))
    assert cli.main(["probe", "--inventory", str(inventory), "tb-01"]) == 2
    err = capsys.readouterr().err
    assert f"SSH identity file {key} has mode 0644" in err and "chmod 600" in err


def test_trust_reads_host_keys_with_the_connections_algorithms(restricted: Restricted) -> None:
    """`orchestrator trust` negotiates like a connection: a host offering only weak algorithms
    is refused before any key is shown, and is trusted again once the inventory allows them."""
    from orchestrator.cli.commands.trust import trust_route

    host, options = restricted("Ciphers aes128-cbc,3des-cbc")
    with pytest.raises(HostUnreachable, match=r"no acceptable ciphers.*legacy_algorithms"):
        trust_route(host, options, yes=True, replace=False, interactive=False, quiet=True)
    with pytest.raises(HostUnreachable, match="no SSH algorithms in common"):
        ssh.fetch_host_key(host)  # the default is the hardened set too
    legacy = replace(options, legacy_algorithms=frozenset({"aes128-cbc"}))
    result = trust_route(host, legacy, yes=True, replace=False, interactive=False, quiet=True)
    assert result["trusted"] and result["action"] == "already"
