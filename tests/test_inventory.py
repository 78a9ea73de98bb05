"""The inventory loader: strict models, group and selector resolution, errors with lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.inventory import Host, load_inventory
from orchestrator.errors import SpecError

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
hosts:
  gpu-01: {address: 127.0.0.2, port: 2201, user: deploy, deploy_root: /srv/models,
           labels: {zone: a, gpu: h100}}
  gpu-02: {address: 127.0.0.3, user: deploy, deploy_root: /srv/models/, labels: {zone: a}}
  gpu-03: {address: gpu-03.example.com, user: deploy, deploy_root: /srv/m, labels: {zone: b}}
groups:
  inference: [gpu-02, gpu-01]
ssh: {known_hosts: state/known_hosts, identity_file: /abs/id_ed25519}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return path


def test_example_inventory_loads() -> None:
    inv = load_inventory(REPO / "configs" / "inventory.yaml")
    assert set(inv.hosts) == {"gpu-01", "gpu-02", "gpu-03"}
    assert inv.hosts["gpu-03"].port is None  # unset: ssh.config's Port, else 22 (route.py)
    assert inv.ssh.known_hosts == REPO / "configs" / "known_hosts"
    assert inv.ssh.identity_file is not None and inv.ssh.identity_file.is_absolute()


def test_fields_defaults_and_ssh_paths(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, GOOD))
    h1 = inv.hosts["gpu-01"]
    assert h1 == Host("gpu-01", "127.0.0.2", 2201, "deploy", "/srv/models",
                      {"zone": "a", "gpu": "h100"})
    assert inv.hosts["gpu-02"].port is None  # unset: ssh.config's Port, else 22 (route.py)
    assert inv.hosts["gpu-02"].deploy_root == "/srv/models"  # normalised
    assert inv.groups == {"inference": ("gpu-02", "gpu-01")}
    assert inv.ssh.known_hosts == tmp_path / "state" / "known_hosts"
    assert inv.ssh.identity_file == Path("/abs/id_ed25519")


def test_resolve_keeps_order_and_deduplicates(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, GOOD))
    names = [h.name for h in inv.resolve(["gpu-03", "inference", "gpu-01", "zone=a"])]
    assert names == ["gpu-03", "gpu-02", "gpu-01"]
    assert [h.name for h in inv.resolve(["zone=a,gpu=h100"])] == ["gpu-01"]
    assert [h.name for h in inv.resolve(["zone=b"])] == ["gpu-03"]


@pytest.mark.parametrize("target, needle", [
    ("gpu-09", "unknown host or group 'gpu-09'"),
    ("zone=z", "selector 'zone=z' matches no host"),
    ("=a", "bad label selector"),
])
def test_resolve_refuses_unknown(tmp_path: Path, target: str, needle: str) -> None:
    inv = load_inventory(write(tmp_path, GOOD))
    with pytest.raises(SpecError, match=needle):
        inv.resolve(["gpu-01", target])
    with pytest.raises(SpecError, match="no targets"):
        inv.resolve([])


BAD = [
    # (yaml, line, field fragment, message fragment)
    ("hosts:\n  gpu-01: {address: a, user: u, deploy_root: /d, colour: red}\n",
     2, "hosts.gpu-01.colour", "unknown field"),
    ("hosts:\n  GPU_01: {address: a, user: u, deploy_root: /d}\n", 2, "hosts.GPU_01", "must be"),
    ("hosts:\n  gpu-01: {address: a, user: u, deploy_root: relative/dir}\n",
     2, "hosts.gpu-01.deploy_root", "must be"),
    ("hosts:\n  gpu-01: {address: a, user: u, deploy_root: /srv/../etc}\n",
     2, "hosts.gpu-01.deploy_root", "'..'"),
    ("hosts:\n  gpu-01: {address: a, user: u, deploy_root: '/srv/x; rm -rf /'}\n",
     2, "hosts.gpu-01.deploy_root", "must be"),
    ("hosts:\n  gpu-01: {address: -oProxyCommand=x, user: u, deploy_root: /d}\n",
     2, "hosts.gpu-01.address", "must be"),
    ("hosts:\n  gpu-01:\n    address: a\n    user: u\n    deploy_root: /d\n    port: 70000\n",
     6, "hosts.gpu-01.port", "less than or equal"),
    ("hosts:\n  gpu-01:\n    address: a\n    user: u\n    deploy_root: /d\n    port: '22'\n",
     6, "hosts.gpu-01.port", "valid integer"),
    ("hosts:\n  gpu-01: {address: a, user: u}\n", 2, "hosts.gpu-01.deploy_root", "required"),
    ("hosts:\n  gpu-01: {address: a, user: u, deploy_root: /d}\ngroups:\n  g: [gpu-01, gpu-02]\n",
     4, "groups.g[1]", "unknown host 'gpu-02'"),
    ("hosts:\n  gpu-01: {address: a, user: u, deploy_root: /d}\ngroups:\n  gpu-01: [gpu-01]\n",
     4, "groups.gpu-01", "name of a host"),
    ("hosts:\n  gpu-01: {address: a, user: u, deploy_root: /d}\n"
     "  gpu-01: {address: b, user: u, deploy_root: /d}\n", 3, "hosts.gpu-01", "duplicate key"),
    ("hosts: {}\n", 1, "hosts", "at least 1"),
    ("- a\n", 1, "", "must be a mapping"),
]


@pytest.mark.parametrize("text, line, field, needle", BAD)
def test_bad_inventories_name_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, needle: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_inventory(path)
    err = info.value
    assert err.file == str(path)
    assert err.line == line, str(err)
    assert (err.field or "") == field, str(err)
    assert needle in str(err)
    assert str(err).startswith(f"{path}:{line}: ")
