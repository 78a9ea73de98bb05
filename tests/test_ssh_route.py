"""Resolving a host's route from the inventory and an ssh_config (hosts/ssh/route.py): the
precedence, ProxyJump chains, and what is refused. Pure: no connection is opened."""

from __future__ import annotations

import getpass
from pathlib import Path

import paramiko
import pytest

from orchestrator.core.inventory import Host
from orchestrator.errors import InvalidInput
from orchestrator.hosts.ssh import SshOptions, resolve
from orchestrator.hosts.ssh.route import load_ssh_config, parse_jump

CONFIG = """\
Host gpu-*
  User ops
  Port 2222
  ProxyJump jump1,admin@jump2:2200
  IdentitiesOnly yes
Host jump1
  HostName bastion1.example.com
  User hop
Host legacy
  ProxyCommand nc %h %p
"""


def host(address: str, port: int | None = None, user: str | None = None) -> Host:
    return Host(name="h", address=address, port=port, user=user, deploy_root="/srv")


def options(tmp_path: Path) -> SshOptions:
    (tmp_path / "ssh_config").write_text(CONFIG)
    return SshOptions(known_hosts=tmp_path / "kh", ssh_config=tmp_path / "ssh_config")


def test_ssh_config_fills_what_the_inventory_leaves_out(tmp_path: Path) -> None:
    route = resolve(host("gpu-7"), options(tmp_path))
    assert (route.target.address, route.target.port, route.target.user) == ("gpu-7", 2222, "ops")
    assert route.target.identities_only
    assert [(j.address, j.port, j.user) for j in route.jumps] == [
        ("bastion1.example.com", 22, "hop"), ("jump2", 2200, "admin")]
    assert route.describe().startswith("hop@bastion1.example.com:22 -> admin@jump2:2200 -> ")


def test_the_inventory_wins_where_both_are_set(tmp_path: Path) -> None:
    route = resolve(host("gpu-7", port=22, user="deploy"), options(tmp_path))
    assert (route.target.port, route.target.user) == (22, "deploy")
    assert len(route.jumps) == 2  # ProxyJump only comes from the ssh_config


def test_no_ssh_config_means_openssh_defaults(tmp_path: Path) -> None:
    route = resolve(host("10.0.0.1"), SshOptions(known_hosts=tmp_path / "kh"))
    assert route.jumps == ()
    assert (route.target.port, route.target.user) == (22, getpass.getuser())


def test_proxy_command_is_refused_not_ignored(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="sets proxycommand for legacy"):
        resolve(host("legacy"), options(tmp_path))


def test_a_missing_ssh_config_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        load_ssh_config(tmp_path / "nope")
    assert isinstance(load_ssh_config(None), paramiko.SSHConfig)


@pytest.mark.parametrize(("spec", "parsed"), [
    ("b", (None, "b", None)),
    ("u@b:2200", ("u", "b", 2200)),
    ("[::1]:22", (None, "::1", 22)),
])
def test_jump_specs(spec: str, parsed: tuple[str | None, str, int | None]) -> None:
    assert parse_jump(spec, "h") == parsed


@pytest.mark.parametrize("spec", ["b:0", "b:x", "-oProxyCommand=x", "u@"])
def test_bad_jump_specs(spec: str) -> None:
    with pytest.raises(InvalidInput, match="ProxyJump"):
        parse_jump(spec, "h")
