"""`orchestrator inventory import` (core/ansible_parse.py, core/ansible_inventory.py,
cli/commands/inventory.py): Ansible INI and YAML inventories converted to ours, the result
loaded by our own loader, and every problem located at its file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli.app import main
from orchestrator.core.ansible_inventory import convert, read_ansible
from orchestrator.core.ansible_parse import expand
from orchestrator.core.inventory import load_inventory
from orchestrator.errors import SpecError

INI = """\
# production
mail.example.com ansible_user=admin

[gpu]
gpu[01:03].example.com
big-box:2222 ansible_host=10.0.0.9 gpu=h100 ansible_become=true motd="hello world"

[gpu:vars]
zone=a
ansible_user=deploy

[serving:children]
gpu

[serving:vars]
zone=z
tier=prod

[all:vars]
orchestrator_deploy_root=/srv/models
ansible_python_interpreter=/usr/bin/python3
"""

YAML = """\
all:
  vars:
    orchestrator_deploy_root: /srv/models
    ansible_python_interpreter: /usr/bin/python3
  hosts:
    mail.example.com:
      ansible_user: admin
  children:
    serving:
      vars:
        zone: z
        tier: prod
      children:
        gpu:
          vars:
            zone: a
            ansible_user: deploy
          hosts:
            gpu[01:03].example.com:
            big-box:
              ansible_host: 10.0.0.9
              ansible_port: 2222
              gpu: h100
              ansible_become: true
              motd: hello world
"""

EXPECTED_HOSTS = {
    "mail-example-com": {"address": "mail.example.com", "user": "admin",
                         "deploy_root": "/srv/models"},
    **{f"gpu0{i}-example-com": {"address": f"gpu0{i}.example.com", "user": "deploy",
                                "deploy_root": "/srv/models",
                                "labels": {"zone": "a", "tier": "prod"}} for i in (1, 2, 3)},
    "big-box": {"address": "10.0.0.9", "port": 2222, "user": "deploy",
                "deploy_root": "/srv/models", "labels": {"zone": "a", "tier": "prod",
                                                         "gpu": "h100"}},
}
MEMBERS = ["gpu01-example-com", "gpu02-example-com", "gpu03-example-com", "big-box"]


@pytest.mark.parametrize("name, text, lines", [
    ("hosts", INI, {"ansible_become": 6, "motd": 6, "ansible_python_interpreter": 21}),
    ("hosts.yaml", YAML, {"ansible_become": 24, "motd": 25, "ansible_python_interpreter": 4}),
])
def test_both_formats_convert_to_the_same_inventory(name: str, text: str,
                                                    lines: dict[str, int]) -> None:
    result = convert(read_ansible(text, name))
    assert result.ok, [str(p) for p in result.problems]
    assert result.data["hosts"] == EXPECTED_HOSTS
    # The inner group's vars win over the outer's (zone=a over zone=z), as in Ansible.
    assert result.data["groups"] == {"gpu": MEMBERS, "serving": MEMBERS}
    warnings = {p.message.split()[0] if not p.message.startswith("var ")
                else p.message.split()[1]: p.line for p in result.problems}
    assert warnings == lines
    assert all(not p.fatal for p in result.problems)


def test_the_command_writes_an_inventory_our_loader_accepts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "hosts"
    source.write_text(INI)
    out = tmp_path / "inventory.yaml"
    assert main(["inventory", "import", str(source), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{source}:6: warning: ansible_become has no equivalent" in err
    inv = load_inventory(out)
    assert inv.hosts["big-box"].port == 2222
    assert [h.name for h in inv.resolve(["gpu in (h100)"])] == ["big-box"]
    assert [h.name for h in inv.resolve(["serving"])] == MEMBERS
    # Never over an existing file without --force; --strict turns warnings into exit 2.
    assert main(["inventory", "import", str(source), "-o", str(out)]) == 2
    assert "exists: pass --force" in capsys.readouterr().err
    assert main(["inventory", "import", str(source), "--strict"]) == 2
    assert main(["inventory", "import", str(source), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["inventory"]["hosts"] == EXPECTED_HOSTS
    assert {"file": str(source), "line": 6, "fatal": False,
            "message": "ansible_become has no equivalent in our inventory: ignored"} \
        in body["problems"]


@pytest.mark.parametrize("text, line, needle", [
    ("[gpu\nh1\n", 1, "bad section header"),
    ("[gpu]\nh[3:1]\n", 2, "bad host range"),
    ("[gpu]\nh[1:a]\n", 2, "mixes numbers and letters"),
    ("[gpu]\nh1 ansible_user\n", 2, "expected key=value after the host name"),
    ("[gpu]\nh1 motd='unclosed\n", 2, "cannot split the host line"),
    ("[gpu:vars]\njust-a-word\n", 2, r"expected key=value in \[gpu:vars\]"),
])
def test_unreadable_lines_are_located(text: str, line: int, needle: str) -> None:
    with pytest.raises(SpecError, match=needle) as info:
        read_ansible(text, "hosts")
    assert info.value.line == line and info.value.file == "hosts"


@pytest.mark.parametrize("text, line, needle", [
    ("h1 ansible_user=u ansible_port=99999\n", 1, "port '99999' is not 1-65535"),
    ("[a]\nh1 ansible_user=u\n[b]\nH1 ansible_user=u\n", 4, "would both be named 'h1'"),
    ("[a:children]\nnope\n[a]\nh1 ansible_user=u\n", 2, "unknown child group 'nope'"),
    ("[a:children]\nb\n[b:children]\na\n[b]\nh1 ansible_user=u\n", 4, "its own ancestor"),
    ("[a]\nh1\n", 2, "has no ansible_user"),
    ("[h1]\nh1 ansible_user=u\n", 1, "would have the name of host 'h1'"),
    ("h1 ansible_user=u ansible_host=-oProxyCommand=x\n", 1, "hosts.h1.address: must be"),
    ("h1 ansible_user='bad user'\n", 1, "hosts.h1.user: must be"),
])
def test_what_cannot_be_converted_is_an_error_at_its_line(text: str, line: int,
                                                          needle: str) -> None:
    result = convert(read_ansible(text, "hosts"), deploy_root="/srv/models")
    assert not result.ok
    fatal = [p for p in result.problems if p.fatal]
    assert any(needle in p.message and p.line == line for p in fatal), \
        [str(p) for p in result.problems]


def test_a_missing_deploy_root_and_yaml_errors_are_located(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "hosts.yml"
    source.write_text("all:\n  hosts:\n    h1:\n      ansible_user: u\n")
    assert main(["inventory", "import", str(source)]) == 2
    assert f"{source}:3: error: host 'h1' has no orchestrator_deploy_root" in \
        capsys.readouterr().err
    assert main(["inventory", "import", str(source), "--deploy-root", "/srv/m"]) == 0
    source.write_text("all:\n  hosts:\n    h1:\n  colour: red\n")
    assert main(["inventory", "import", str(source)]) == 2
    assert f"{source}:4: all.colour: unknown group key" in capsys.readouterr().err


def test_ranges_expand_like_ansible() -> None:
    assert expand("www[01:03].x", "f", 1) == ["www01.x", "www02.x", "www03.x"]
    assert expand("db-[a:c]", "f", 1) == ["db-a", "db-b", "db-c"]
    assert expand("n[0:10:5]", "f", 1) == ["n0", "n5", "n10"]
    assert expand("r[1:2]c[1:2]", "f", 1) == ["r1c1", "r1c2", "r2c1", "r2c2"]
