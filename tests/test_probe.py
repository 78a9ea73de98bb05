"""The host probe: against every testbed profile, on recorded outputs, and through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from orchestrator.cli import app as cli
from orchestrator.cli.commands.trust import Action, decide
from orchestrator.core.facts import MAX_FACTS_BYTES, HostFacts, parse_facts
from orchestrator.core.inventory import Inventory, load_inventory
from orchestrator.errors import BadHostOutput, HostError
from orchestrator.hosts import ssh
from orchestrator.hosts.pool import Pool
from orchestrator.hosts.probe import probe_host, probe_hosts
from orchestrator.hosts.remote import probe as remote_probe
from orchestrator.hosts.shipping import MARKER, bundle, ensure_tools
from orchestrator.testbed import Testbed
from orchestrator.testbed import profiles as gpu_profiles

FIXTURES = Path(__file__).parent / "fixtures" / "probe"
PROFILES = ("h100", "t4", "old-driver", "no-driver", "no-gpu", "mismatch")
NVML_ERRORS = {
    "no-driver": (9, "NVMLError_DriverNotLoaded"),
    "no-gpu": (12, "NVMLError_LibraryNotFound"),
    "mismatch": (18, "NVMLError_LibRmVersionMismatch"),
}


@pytest.fixture(scope="module")
def pool(inventory: Inventory) -> Iterator[Pool]:
    with Pool(ssh.SshOptions.for_inventory(inventory)) as p:
        yield p


@pytest.fixture(scope="module")
def all_facts(pool: Pool, inventory: Inventory) -> dict[str, HostFacts | HostError]:
    return probe_hosts(pool, list(inventory.hosts.values()), 8)


def facts_of(all_facts: dict[str, HostFacts | HostError], name: str) -> HostFacts:
    result = all_facts[name]
    assert isinstance(result, HostFacts), result
    return result


@pytest.mark.parametrize("profile", PROFILES)
def test_probe_reports_the_profile(testbed: Testbed, all_facts: Any, profile: str) -> None:
    tb_host = testbed.hosts_with(profile)[0]
    facts = facts_of(all_facts, tb_host.name)
    expected = gpu_profiles.render(profile, tb_host.name)
    assert facts.host == tb_host.name
    assert facts.python_version.startswith("3.") and facts.disk_free_bytes > 0
    assert facts.disk_path == str(tb_host.deploy_root)
    if profile in NVML_ERRORS:
        assert facts.nvml_error is not None
        assert (facts.nvml_error.code, facts.nvml_error.name) == NVML_ERRORS[profile]
        assert facts.gpus == () and facts.driver_version is None
    else:
        cuda = expected["cuda_driver_version"]
        assert facts.nvml_error is None
        assert facts.driver_version == expected["driver_version"]
        assert facts.cuda_driver_version == f"{cuda // 1000}.{cuda % 1000 // 10}"
        assert [(g.name, g.uuid, g.memory_total_bytes, g.memory_free_bytes, g.cc)
                for g in facts.gpus] == [
            (g["name"], g["uuid"], g["memory_total"],
             g["memory_total"] - g["memory_used"] - g["memory_reserved"],
             (g["cc_major"], g["cc_minor"])) for g in expected["gpus"]]
    # The profile's CUDA libraries, found on LD_LIBRARY_PATH and read through ctypes (the
    # machine's own /usr/local/cuda* may add more).
    found = {(lib.name, lib.path, lib.version) for lib in facts.libraries}
    for lib in expected["libraries"]:
        assert (lib["name"], f"{tb_host.lib_dir}/{lib['soname']}", lib["version"]) in found


def test_mismatch_is_a_fact_with_the_nvml_message(testbed: Testbed, all_facts: Any) -> None:
    facts = facts_of(all_facts, testbed.hosts_with("mismatch")[0].name)
    assert facts.nvml_error is not None and "mismatch" in facts.nvml_error.message.lower()


def test_a_profile_change_is_seen_by_the_next_probe(testbed: Testbed, pool: Pool,
                                                    inventory: Inventory) -> None:
    host = inventory.hosts[testbed.hosts_with("h100")[-1].name]
    with testbed.profile(host.name, "old-driver"), pool.session(host) as t:
        assert probe_host(t, host).driver_version == "470.82.01"
    with pool.session(host) as t:
        assert probe_host(t, host).driver_version == "550.54.15"


def test_releases_and_tools_are_read_from_the_deploy_root(pool: Pool,
                                                          inventory: Inventory) -> None:
    base = inventory.hosts["tb-07"]
    host = replace(base, deploy_root=f"{base.deploy_root}/releases-test")
    script = ('mkdir -p "$1/app-a/releases/r1" "$1/app-b/releases" && '
              'ln -sfn releases/r1 "$1/app-a/current"')
    with pool.session(host) as t:
        t.run(["sh", "-c", script, "sh", host.deploy_root])
        facts = probe_host(t, host)
        tools = ensure_tools(t, host.deploy_root)
        shipped = t.run(["ls", "-A", tools.root]).stdout.split()
        t.run(["rm", "-rf", host.deploy_root])
    assert facts.releases == {"app-a": "r1", "app-b": None}
    assert {name for name, _ in bundle().files} | {MARKER} <= set(shipped)
    assert "pynvml.py" in shipped and "probe.py" in shipped


def test_tools_are_uploaded_once(pool: Pool, inventory: Inventory) -> None:
    host = inventory.hosts["tb-08"]
    root = f"{host.deploy_root}/tools-test"
    with pool.session(host) as t:
        tools = ensure_tools(t, root)
        t.run(["rm", tools.script("pynvml.py")])
        # The marker says complete: nothing is uploaded again (no round trips but one read).
        assert ensure_tools(t, root) == tools
        assert t.run(["test", "-e", tools.script("pynvml.py")], check=False).exit_code == 1
        t.run(["rm", tools.script(MARKER)])
        ensure_tools(t, root)  # an incomplete bundle is completed
        assert t.get(tools.script("pynvml.py")) == dict(bundle().files)["pynvml.py"]
        t.run(["rm", "-rf", root])


@pytest.mark.parametrize("script, message", [
    ("print('Traceback: not facts')", "not JSON"),
    ("print('[1, 2]')", "not a schema-1 facts object"),
    ("import sys; sys.stdout.write('x' * (2 << 20))", "more than"),
])
def test_garbage_or_huge_output_names_the_host(pool: Pool, inventory: Inventory,
                                               script: str, message: str) -> None:
    base = inventory.hosts["tb-07"]
    host = replace(base, deploy_root=f"{base.deploy_root}/garbage-test")
    with pool.session(host) as t:
        tools = ensure_tools(t, host.deploy_root)
        t.put(script.encode(), tools.script("probe.py"))  # a host whose probe misbehaves
        try:
            with pytest.raises(BadHostOutput, match=message) as info:
                probe_host(t, host)
        finally:
            t.run(["rm", "-rf", host.deploy_root])
    assert info.value.host == "tb-07" and str(info.value).startswith("tb-07: ")


@pytest.mark.parametrize("profile", PROFILES)
def test_recorded_outputs_parse(profile: str) -> None:
    text = (FIXTURES / f"{profile}.json").read_text()
    facts = parse_facts("gpu-01", text)
    assert facts.host == "gpu-01"
    assert (facts.nvml_error.code if facts.nvml_error else 0) == NVML_ERRORS.get(profile, (0,))[0]
    assert bool(facts.gpus) == (profile not in NVML_ERRORS)


@pytest.mark.parametrize("text", [
    "", "not json", "[]", '{"schema": 2}', "x" * (MAX_FACTS_BYTES + 1),
    (FIXTURES / "h100.json").read_text()[:500],
    (FIXTURES / "h100.json").read_text().replace('"9.0"', '"nine"'),
])
def test_malformed_outputs_are_bad_host_output(text: str) -> None:
    with pytest.raises(BadHostOutput) as info:
        parse_facts("gpu-07", text)
    assert info.value.host == "gpu-07"


def test_disk_is_measured_at_the_nearest_existing_parent(tmp_path: Path) -> None:
    disk = remote_probe.disk_facts(str(tmp_path / "not" / "yet"))
    assert disk["path"] == str(tmp_path) and 0 < disk["free_bytes"] <= disk["total_bytes"]


def test_soname_fallback_version() -> None:
    assert remote_probe.soname_version("/nonexistent/libcudnn.so.8.9.7") == "8.9.7"
    assert remote_probe.soname_version("/nonexistent/libcudnn.so") is None


def write_inventory(testbed: Testbed, tmp_path: Path, known_hosts: Path,
                    extra: dict[str, Any] | None = None) -> Path:
    data = yaml.safe_load(testbed.inventory_path.read_text())
    data["ssh"] = {"known_hosts": str(known_hosts), "identity_file": str(testbed.identity_path)}
    data["hosts"].update(extra or {})
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_probe_cli_json_and_table(testbed: Testbed, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["probe", "--inventory", str(testbed.inventory_path), "--all", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["facts"]) == {h.name for h in testbed.hosts} and out["errors"] == {}
    t4 = testbed.hosts_with("t4")[0].name
    assert cli.main(["probe", "--inventory", str(testbed.inventory_path), t4]) == 0
    table = capsys.readouterr().out
    assert "Tesla T4 (CC 7.5, 16.0 GiB)" in table and "8.9.7" in table and "550.54.15" in table


def test_probe_cli_exit_codes(testbed: Testbed, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    down = {"gone": {"address": "127.0.0.254", "port": 1, "user": "root",
                     "deploy_root": "/tmp/gone"}}
    inventory = write_inventory(testbed, tmp_path, testbed.known_hosts_path, down)
    assert cli.main(["probe", "--inventory", str(inventory), "gone", "tb-01"]) == 4
    captured = capsys.readouterr()
    assert "tb-01" in captured.out and "error: gone: cannot connect" in captured.err
    assert cli.main(["probe", "--inventory", str(inventory), "nosuchhost"]) == 2
    assert cli.main(["probe", "--inventory", str(inventory)]) == 2


def test_trust_cli(testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    known = tmp_path / "known_hosts"
    inventory = str(write_inventory(testbed, tmp_path, known))
    fingerprint = ssh.HostKey(*Path(f"{testbed.host('tb-01').host_key}.pub")
                              .read_text().split()[:2]).fingerprint
    assert cli.main(["trust", "tb-01", "--inventory", inventory]) == 3  # no --yes, no terminal
    assert fingerprint in capsys.readouterr().out and not known.exists()
    assert cli.main(["trust", "tb-01", "--inventory", inventory, "--yes"]) == 0
    assert cli.main(["probe", "tb-01", "--inventory", inventory]) == 0
    assert cli.main(["trust", "tb-01", "--inventory", inventory]) == 0
    assert "already trusted" in capsys.readouterr().out
    # tb-02's key recorded for tb-01: a changed key is refused, then replaced on request.
    tb01, tb02 = load_inventory(inventory).hosts["tb-01"], load_inventory(inventory).hosts["tb-02"]
    known.write_text(known.read_text().replace(
        ssh.known_hosts_name(tb01.address, tb01.port), "placeholder"))
    ssh.append_known_host(known, tb01.address, tb01.port, ssh.fetch_host_key(tb02))
    assert cli.main(["trust", "tb-01", "--inventory", inventory, "--yes"]) == 3
    assert "CHANGED" in capsys.readouterr().err
    assert cli.main(["trust", "tb-01", "--inventory", inventory, "--replace"]) == 0
    assert ssh.known_host_keys(known, tb01.address, tb01.port) == [ssh.fetch_host_key(tb01)]


def test_trust_decision() -> None:
    key, other = ("ssh-ed25519", "AAAA1"), ("ssh-ed25519", "AAAA2")
    assert decide([key], key, yes=False, replace=False, interactive=False) is Action.ALREADY
    assert decide([], key, yes=True, replace=False, interactive=False) is Action.ADD
    assert decide([], key, yes=False, replace=False, interactive=True) is Action.ASK
    assert decide([], key, yes=False, replace=False, interactive=False) is Action.NOT_CONFIRMED
    assert decide([other], key, yes=True, replace=False, interactive=True) is Action.REFUSE_CHANGED
    assert decide([other], key, yes=False, replace=True, interactive=False) is Action.REPLACE


@pytest.mark.parametrize("answer, code", [("y", 0), ("n", 3)])
def test_trust_asks_on_a_terminal(testbed: Testbed, tmp_path: Path, answer: str,
                                  code: int) -> None:
    known = tmp_path / "known_hosts"
    inventory = str(write_inventory(testbed, tmp_path, known))
    controller, terminal = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "trust", "tb-03", "--inventory", inventory],
            stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.write(controller, f"{answer}\n".encode())
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert proc.returncode == code and "Trust this key for tb-03? [y/N]" in out
    host = load_inventory(inventory).hosts["tb-03"]
    trusted = ssh.known_host_keys(known, host.address, host.port)
    assert trusted == ([ssh.fetch_host_key(host)] if answer == "y" else [])


def test_cuda_version_falls_back_when_the_v2_call_is_missing() -> None:
    import pynvml

    def missing() -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

    old_driver = SimpleNamespace(
        NVMLError_FunctionNotFound=pynvml.NVMLError_FunctionNotFound,
        nvmlSystemGetCudaDriverVersion_v2=missing,
        nvmlSystemGetCudaDriverVersion=lambda: 11040,
    )
    assert remote_probe.cuda_driver_version(old_driver) == 11040


def test_a_deployment_reads_the_tools_marker_once(pool: Pool, inventory: Inventory) -> None:
    """Inside `remembered` (deploy_host's whole run on a host) a bundle found complete is not
    read again: each read is a round trip. Outside it, every call reads the marker."""
    from orchestrator.hosts.counting import Counting, Exchanges
    from orchestrator.hosts.shipping import remembered

    host = inventory.hosts["tb-08"]
    exchanges = Exchanges()
    with pool.session(host) as t:
        ensure_tools(t, host.deploy_root)  # uploaded if this host has none yet (not counted)
        counted = Counting(t, exchanges)
        with remembered(counted):
            for _ in range(3):
                ensure_tools(counted, host.deploy_root)
        assert exchanges.total("tb-08") == 1
        ensure_tools(counted, host.deploy_root)
        ensure_tools(counted, host.deploy_root)
    assert exchanges.total("tb-08") == 3
