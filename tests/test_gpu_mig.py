"""Placement on MIG instances (`gpu.mig_profile`) from the recorded probe output of the `mig`
profile (an A100 80GB partitioned 3g.40gb + 2g.20gb + 1g.10gb x2), the preflight messages when
no instance matches, then on the testbed: the probe over SSH sees the fake NVML's MIG devices,
and real deployments (joblib, `gpu.required: true`) placed on 2 healthy GPUs of 8 and on a MIG
instance, whose warmup and service restart see exactly those UUIDs and whose manifest records
them (TensorFlow sees no GPU here, but what the launched processes were given is observable)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core import findings as rv
from orchestrator.core import gpuhealth
from orchestrator.core.facts import HostFacts, parse_facts
from orchestrator.core.preflight import Status
from orchestrator.core.spec import load_spec
from orchestrator.core.spec_gpu import GpuHealth
from orchestrator.deploy.steps import StepFailed
from orchestrator.deploy.steps import verify as verify_step
from orchestrator.errors import BadHostOutput, SpecError
from orchestrator.hosts.pool import Pool
from orchestrator.hosts.probe import probe_host
from orchestrator.testbed import Testbed
from orchestrator.testbed import profiles as gpu_profiles
from tests.test_deploy import run, v1_spec
from tests.test_gpuhealth import SPEC, check, facts, req, text, verdict

MIG = facts("mig")
[A100] = MIG.gpus
BY_PROFILE = {p: [m.uuid for m in A100.health.mig_instances if m.profile == p]
              for p in ("3g.40gb", "2g.20gb", "1g.10gb")}


def mig_req(profile: str, count: int = 1, **health: Any) -> Any:
    return replace(req(count, **health), mig_profile=profile)


def test_the_probe_reports_each_mig_instance_with_profile_uuid_and_memory() -> None:
    assert A100.health.mig_mode is True and A100.health.mig_devices == 4
    assert [m.profile for m in A100.health.mig_instances] == [
        "3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]
    assert all(m.uuid.startswith("MIG-") for m in A100.health.mig_instances)
    assert [m.gi for m in A100.health.mig_instances] == [2, 3, 9, 10]
    assert gpuhealth.profiles_of(A100) == "3g.40gb, 2g.20gb, 1g.10gb x2"


def test_mig_profile_places_matching_instances_by_mig_uuid() -> None:
    placed = gpuhealth.place(MIG, 1, 8, GpuHealth(), "1g.10gb")
    assert placed.ok and placed.uuids == (BY_PROFILE["1g.10gb"][0],)
    assert placed.visible_devices == BY_PROFILE["1g.10gb"][0]
    v = verdict("mig", mig_req("1g.10gb"), MIG)
    assert v.ok, v.checks
    health = check(v, "gpu-health")
    assert health.status is Status.PASS
    assert health.message.startswith(
        "1 of 1 MIG instance(s) of profile 1g.10gb (gpu.count, gpu.mig_profile) placed: "
        f"{BY_PROFILE['1g.10gb'][0]} on GPU 0 ({A100.uuid})")
    assert check(v, "gpu-memory").status is Status.PASS
    # Two of them: placed, with a warning that one CUDA process enumerates one MIG device.
    two = verdict("mig", mig_req("1g.10gb", 2), MIG)
    assert gpuhealth.place(MIG, 2, 8, GpuHealth(), "1g.10gb").uuids == tuple(
        BY_PROFILE["1g.10gb"])
    assert check(two, "gpu-count").status is Status.WARN
    assert "enumerates only one MIG device" in check(two, "gpu-count").message


def test_no_matching_instance_fails_naming_the_profiles_there_are() -> None:
    v = verdict("mig", mig_req("1g.20gb"), MIG)
    count, health = check(v, "gpu-count"), check(v, "gpu-health")
    assert count.status is Status.FAIL and health.status is Status.FAIL
    assert count.message == (
        "spec asks for 1 MIG instance(s) of profile 1g.20gb (gpu.count, gpu.mig_profile); host "
        "has 0 (GPU 0: 3g.40gb, 2g.20gb, 1g.10gb x2); create them with nvidia-smi mig -cgi "
        "1g.20gb -C, or change gpu.mig_profile")
    assert (f"passed over: GPU 0 ({A100.uuid}): no MIG instance of profile 1g.20gb (it has "
            "3g.40gb, 2g.20gb, 1g.10gb x2;") in health.message
    # Three 1g.10gb wanted, two exist.
    assert check(verdict("mig", mig_req("1g.10gb", 3), MIG), "gpu-count").message.startswith(
        "spec asks for 3 MIG instance(s) of profile 1g.10gb (gpu.count, gpu.mig_profile); host "
        "has 2")


def test_an_instance_with_too_little_memory_is_passed_over_naming_its_uuid() -> None:
    v = verdict("mig", replace(mig_req("1g.10gb"), min_memory_gib=12), MIG)
    assert check(v, "gpu-memory").status is Status.FAIL
    health = check(v, "gpu-health")
    assert health.status is Status.FAIL
    assert (f"MIG {BY_PROFILE['1g.10gb'][0]} (1g.10gb): 9.5 GiB free, gpu.min_memory_gib is 12"
            in health.message)
    big = gpuhealth.place(MIG, 1, 12, GpuHealth(), "3g.40gb")
    assert big.uuids == tuple(BY_PROFILE["3g.40gb"])


def test_a_gpu_not_in_mig_mode_or_sick_is_passed_over_saying_why() -> None:
    multi = facts("multi-gpu")  # 8 H100s, none in MIG mode
    placed = gpuhealth.place(multi, 1, 8, GpuHealth(), "1g.10gb")
    assert not placed.ok
    assert (f"GPU 0 ({multi.gpus[0].uuid}): not in MIG mode (gpu.mig_profile 1g.10gb asks for "
            "MIG instances)") in placed.describe()
    assert "GPU 0: not in MIG mode" in check(
        verdict("multi-gpu", mig_req("1g.10gb"), multi), "gpu-count").message
    sick_gpu = replace(A100, health=replace(A100.health, ecc_volatile_uncorrected=3))
    sick = gpuhealth.place(replace(MIG, gpus=(sick_gpu,)), 1, 8, GpuHealth(), "1g.10gb")
    assert not sick.ok and "3 uncorrectable ECC error(s)" in sick.describe()
    assert "MIG mode" not in sick.describe()  # wanted here: not a reason


def test_spec_mig_profile_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    body = SPEC.replace("count: 2", "count: 1\n  mig_profile: PROFILE") % ("a" * 64, "{}")
    for good in ('"1g.10gb"', '"1c.2g.20gb"', '"1g.10gb+me"'):
        path.write_text(body.replace("PROFILE", good))
        assert load_spec(path).gpu.mig_profile == good.strip('"')
    for bad in ('"big"', '"1g.10gb; rm -rf /"', "7"):
        path.write_text(body.replace("PROFILE", bad))
        with pytest.raises(SpecError) as info:
            load_spec(path)
        assert info.value.field == "gpu.mig_profile", str(info.value)


@pytest.mark.parametrize("field, value, needle", [
    ("profile", "1g.10gb;x", "mig.profile is not a MIG profile name"),
    ("uuid", 7, "mig.uuid"),
    ("memory_free_bytes", -1, "mig.memory_free_bytes"),
    ("gi", "2", "mig.gi"),
])
def test_hostile_mig_facts_are_bad_host_output(field: str, value: object, needle: str) -> None:
    data = json.loads(text("mig"))
    data["gpus"][0]["health"]["mig_instances"][0][field] = value
    with pytest.raises(BadHostOutput) as info:
        parse_facts("gpu-x", json.dumps(data))
    assert "gpu-x" in str(info.value) and needle in str(info.value)


def test_a_mig_uuid_unfit_for_cuda_visible_devices_is_never_placed() -> None:
    data = json.loads(text("mig"))
    data["gpus"][0]["health"]["mig_instances"][2]["uuid"] = "MIG-1,GPU-2"
    placed = gpuhealth.place(parse_facts("h", json.dumps(data)), 1, 8, GpuHealth(), "1g.10gb")
    assert placed.uuids == (BY_PROFILE["1g.10gb"][1],)
    assert "a MIG UUID that is not MIG-<hex>: 'MIG-1,GPU-2'" in placed.describe()


def test_verify_places_on_the_instance_and_reverify_fails_when_it_is_gone(
        tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.replace("count: 2", 'count: 1\n  mig_profile: "2g.20gb"')
                    % ("a" * 64, "{}"))
    spec = load_spec(path)
    assert verify_step.place(spec, MIG) == tuple(BY_PROFILE["2g.20gb"])
    path.write_text(SPEC.replace("count: 2", 'count: 1\n  mig_profile: "4g.40gb"')
                    % ("a" * 64, "{}"))
    with pytest.raises(StepFailed, match=r"1 MIG instance\(s\) of profile 4g.40gb"):
        verify_step.place(load_spec(path), MIG)
    # The GPU re-partitioned after the deploy: the placed 2g.20gb device no longer exists.
    gone = replace(A100, health=replace(A100.health, mig_instances=tuple(
        m for m in A100.health.mig_instances if m.profile != "2g.20gb")))
    found = rv.diff_facts(MIG, replace(MIG, gpus=(gone,)), placed=BY_PROFILE["2g.20gb"])
    assert [(f.status, f.message) for f in found if "MIG" in f.message] == [
        (rv.FAILED, f"MIG device {BY_PROFILE['2g.20gb'][0]} (2g.20gb) of GPU 0 ({A100.uuid}) "
                    "is gone")]


# -- the testbed: the probe over SSH, and real deployments placed by UUID ------------------------

HOST = "tb-01"


def test_probe_over_ssh_sees_the_fake_mig_devices(testbed: Testbed, pool: Pool,
                                                 inventory: Any) -> None:
    host = inventory.hosts[HOST]
    with testbed.profile(HOST, "mig"), pool.session(host) as t:
        f: HostFacts = probe_host(t, host)
    [gpu] = f.gpus
    assert [(m.uuid, m.profile) for m in gpu.health.mig_instances] == [
        (gpu_profiles.mig_uuid(HOST, 0, slot, p), p)
        for slot, p in enumerate(("3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"))]
    assert gpuhealth.place(f, 1, 8, GpuHealth(), "2g.20gb").uuids == (
        gpu_profiles.mig_uuid(HOST, 0, 1, "2g.20gb"),)


def _deploy(models_dir: Path, tmp_path: Path, inventory: Any, pool: Pool, app: str,
            gpu: str) -> tuple[dict[str, Any], str]:
    """Deploy v1 of `app` to HOST with `gpu` as the spec's gpu section; returns the release's
    manifest and what the service restart command saw as CUDA_VISIBLE_DEVICES."""
    seen = tmp_path / "seen"
    extra = (f"gpu: {gpu}\n"
             f"service: {{restart: 'printf %s \"$CUDA_VISIBLE_DEVICES\" > {seen}'}}\n")
    result, _ = run(v1_spec(models_dir, tmp_path, app, extra=extra), inventory, pool,
                    hosts=[HOST])
    assert result.ok, result.hosts[HOST].error
    current = Path(inventory.hosts[HOST].deploy_root) / app / "current"
    return json.loads((current / "manifest.json").read_text()), seen.read_text()


def test_a_real_deploy_places_two_healthy_gpus_of_eight_and_a_mig_instance(
        testbed: Testbed, inventory: Any, pool: Pool, models_dir: Path, tmp_path: Path) -> None:
    uuid = [gpu_profiles.gpu_uuid(HOST, i, "NVIDIA H100 80GB HBM3") for i in range(8)]
    with testbed.profile(HOST, "multi-gpu"):  # GPUs 2 and 5 sick
        manifest, seen = _deploy(models_dir, tmp_path / "multi", inventory, pool, "gpu-place",
                                 "{required: true, count: 2, min_memory_gib: 8}")
    assert manifest["gpus"] == [uuid[0], uuid[1]]
    assert seen == f"{uuid[0]},{uuid[1]}"  # the service restart's CUDA_VISIBLE_DEVICES
    # The warmup's NVML sampler opened exactly the devices CUDA_VISIBLE_DEVICES named.
    assert manifest["warmup"]["gpu_memory"]["uuids"] == [uuid[0], uuid[1]]

    mig = gpu_profiles.mig_uuid(HOST, 0, 2, "1g.10gb")
    with testbed.profile(HOST, "mig"):
        manifest, seen = _deploy(models_dir, tmp_path / "mig", inventory, pool, "gpu-place",
                                 '{required: true, count: 1, mig_profile: "1g.10gb", '
                                 "min_memory_gib: 8}")
    assert manifest["gpus"] == [mig] and seen == mig
    assert manifest["warmup"]["gpu_memory"]["uuids"] == [mig]


def test_reverify_a_sick_gpu_under_the_placed_mig_device_fails_the_host() -> None:
    sick = replace(A100, health=replace(A100.health, remap_pending=True))
    now = replace(MIG, gpus=(sick,))
    assert {f.status for f in rv.diff_facts(MIG, now, placed=BY_PROFILE["1g.10gb"][:1])
            if "remap" in f.message} == {rv.FAILED}
