"""The probe's container engines (orchestrator/hosts/remote/probe_engine.py): CDI specs read
from files, the facts parsed, and the real podman of testbed hosts, each with its own storage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.core.facts import HostFacts, parse_facts
from orchestrator.core.inventory import Inventory
from orchestrator.errors import BadHostOutput
from orchestrator.hosts import agent, ssh
from orchestrator.hosts.hostops import HostOpFailed, HostOps
from orchestrator.hosts.ops import Op, OpCall
from orchestrator.hosts.pool import Pool
from orchestrator.hosts.probe import probe_host
from orchestrator.hosts.remote import probe_engine
from orchestrator.testbed import Testbed
from tests.podman import available

FACTS = Path(__file__).parent / "fixtures" / "facts"

CDI_YAML = """\
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
- name: all
  containerEdits: {}
"""


def test_cdi_specs_of_nvidia_gpus_are_listed_in_both_spellings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "nvidia.yaml").write_text(CDI_YAML)
    (tmp_path / "other.json").write_text(json.dumps(
        {"cdiVersion": "0.5.0", "kind": "vendor.com/fpga", "devices": [{"name": "f0"}]}))
    (tmp_path / "gpu.json").write_text(json.dumps(
        {"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
         "devices": [{"name": "GPU-1234", "containerEdits": {}}]}))
    monkeypatch.setattr(probe_engine, "CDI_DIRS", (str(tmp_path),))
    assert probe_engine.cdi_devices() == ["nvidia.com/gpu=GPU-1234", "nvidia.com/gpu=0",
                                          "nvidia.com/gpu=all"]


def with_engines(engines: object) -> HostFacts:
    data = json.loads((FACTS / "h100.json").read_text())
    data["engines"] = engines
    return parse_facts("gpu-01", json.dumps(data))


def test_facts_pick_the_first_engine_that_answers() -> None:
    facts = with_engines([
        {"name": "docker", "path": "/usr/bin/docker", "version": None, "nvidia_runtime": False,
         "cdi_devices": [], "error": "Cannot connect to the Docker daemon"},
        {"name": "podman", "path": "/usr/bin/podman", "version": "4.3.1",
         "nvidia_runtime": False, "cdi_devices": ["nvidia.com/gpu=all"], "error": None}])
    assert facts.engine is not None and facts.engine.label == "podman 4.3.1"
    assert facts.engine.gpu_ready  # CDI devices are enough for podman --device
    assert with_engines(None).engine is None  # a probe of before engines were reported


def test_malformed_engines_are_bad_host_output() -> None:
    with pytest.raises(BadHostOutput, match="gpu-01"):
        with_engines([{"path": "/usr/bin/podman"}])


@pytest.fixture(scope="module")
def pool(inventory: Inventory) -> Iterator[Pool]:
    with Pool(ssh.SshOptions.for_inventory(inventory)) as p:
        yield p


def test_testbed_hosts_report_podman_each_with_its_own_storage(
        testbed: Testbed, inventory: Inventory, pool: Pool) -> None:
    why = available()
    if why:
        pytest.skip(why)
    a, b = testbed.hosts[0], testbed.hosts[1]
    roots = []
    for tb in (a, b):
        host = inventory.hosts[tb.name]
        with pool.session(host) as t:
            engine = probe_host(t, host).engine
            assert engine is not None and engine.name == "podman"
            assert engine.version and engine.version[0].isdigit()
            assert not engine.gpu_ready  # no NVIDIA toolkit on this machine
            out = t.run(["podman", "info", "--format", "{{.Store.GraphRoot}}"], timeout=60)
        assert out.exit_code == 0, out.stderr
        roots.append(out.stdout.strip())
    assert roots == [str(a.containers_dir / "storage"), str(b.containers_dir / "storage")]


def test_a_probe_without_engines_does_not_ask_them_and_says_so(
        testbed: Testbed, inventory: Inventory, pool: Pool) -> None:
    why = available()
    if why:
        pytest.skip(why)
    host = inventory.hosts[testbed.hosts[0].name]
    with pool.session(host) as t:
        asked = probe_host(t, host)
        skipped = probe_host(t, host, engines=False)
        with agent.serving(t, host.deploy_root):  # the same op through the host's agent
            by_agent = probe_host(t, host, engines=False)
            assert agent.current(t, host.deploy_root, "python3") is not None
    assert asked.engine is not None and asked.raw["engines"]
    for facts in (skipped, by_agent):
        assert facts.raw["engines"] is None and facts.engine is None  # null: not asked
        assert facts.python_version == asked.python_version and facts.gpus == asked.gpus


def test_the_probe_op_refuses_an_engines_argument_that_is_not_a_boolean(
        inventory: Inventory, pool: Pool) -> None:
    host = next(iter(inventory.hosts.values()))
    with pool.session(host) as t:
        hops = HostOps(t, host.deploy_root)
        with pytest.raises(HostOpFailed, match="engines must be true or false"):
            hops.run(OpCall(Op.PROBE, {"engines": "no"}, dict), timeout=60)
