"""GPU health: the probe's recorded outputs of the health profiles -> facts -> preflight checks
and placement; the spec's gpu.health knobs; hostile health values."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core import findings as rv
from orchestrator.core import gpuhealth
from orchestrator.core.compat import load_compat
from orchestrator.core.facts import HostFacts, parse_facts
from orchestrator.core.gpufacts import GpuHealth as HealthFacts
from orchestrator.core.gpufacts import parse_health, parse_xid
from orchestrator.core.inventory import Inventory
from orchestrator.core.lockfile import load_lock
from orchestrator.core.preflight import Check, HostVerdict, Requirements, Status, preflight
from orchestrator.core.release import Manifest
from orchestrator.core.spec import load_spec
from orchestrator.core.spec_gpu import GpuHealth
from orchestrator.daemon.metrics import Metrics
from orchestrator.daemon.store import open_store
from orchestrator.deploy.steps import StepFailed
from orchestrator.deploy.steps import verify as verify_step
from orchestrator.errors import BadHostOutput, SpecError
from orchestrator.hosts import serving
from orchestrator.hosts.pool import Pool
from orchestrator.hosts.remote import probe_gpu

FIXTURES = Path(__file__).parent / "fixtures"
LOCK = load_lock(FIXTURES / "locks" / "tensorflow-2.21-gpu.lock")


def text(profile: str) -> str:
    return (FIXTURES / "probe" / f"{profile}.json").read_text()


def facts(profile: str) -> HostFacts:
    return parse_facts(f"gpu-{profile}", text(profile))


def req(count: int = 1, **health: Any) -> Requirements:
    return Requirements(python="3.11", gpu_required=True, gpu_count=count, min_memory_gib=8,
                        min_cc="7.0", health=GpuHealth(**health))


def verdict(profile: str, r: Requirements | None = None,
            f: HostFacts | None = None) -> HostVerdict:
    return preflight(r or req(), LOCK, f or facts(profile), load_compat())


def check(v: HostVerdict, name: str) -> Check:
    return next(c for c in v.checks if c.name == name)


# (profile, check, status, fragments the message must hold besides "GPU 0 (<uuid>)")
CASES = [
    ("ecc-uncorrectable", "gpu-health", Status.FAIL,
     ["2 uncorrectable ECC error(s) since the last reset", "ecc_volatile_uncorrected"]),
    ("row-remap-pending", "gpu-health", Status.FAIL, ["row remap is pending", "remap_pending"]),
    ("xid-79", "gpu-health", Status.FAIL,
     ["Xid 79 10 min ago", "NVRM: Xid (PCI:0000:3b:00): 79"]),
    ("mig", "gpu-health", Status.FAIL,
     ["MIG mode is enabled (4 MIG device(s): 3g.40gb, 2g.20gb, 1g.10gb x2)", "gpu.mig_profile"]),
    ("thermal-throttle", "gpu-conditions", Status.WARN,
     ["software thermal slowdown, hardware thermal slowdown", "throttle_reasons 0x60",
      "91 C (slowdown at 87 C)"]),
    ("busy", "gpu-conditions", Status.WARN,
     ["2 process(es) already use it: pid 31337 (60.0 GiB), pid 31338 (18.0 GiB)"]),
    ("busy", "gpu-health", Status.FAIL, ["2.0 GiB free, gpu.min_memory_gib is 8"]),
]


@pytest.mark.parametrize("profile, name, status, needles", CASES)
def test_each_health_profile_gives_its_verdict_naming_gpu_uuid_and_counter(
        profile: str, name: str, status: Status, needles: list[str]) -> None:
    f = facts(profile)
    v = verdict(profile, f=f)
    c = check(v, name)
    assert c.status is status, c
    assert f"GPU 0 ({f.gpus[0].uuid})" in c.message
    for needle in needles:
        assert needle in c.message, c.message
    assert v.status is status or v.status is Status.FAIL


def test_healthy_profile_passes_both_health_checks() -> None:
    v = verdict("h100")
    assert [check(v, n).status for n in ("gpu-health", "gpu-conditions")] == [Status.PASS] * 2
    assert check(v, "gpu-health").message.startswith("1 of 1 GPU(s) (gpu.count) placed: GPU 0")


def test_two_of_eight_with_two_sick_places_two_healthy_uuids() -> None:
    f = facts("multi-gpu")
    placed = gpuhealth.place(f, 2, 8, GpuHealth())
    assert placed.ok and placed.uuids == (f.gpus[0].uuid, f.gpus[1].uuid)
    c = check(verdict("multi-gpu", req(2), f), "gpu-health")
    assert c.status is Status.WARN  # sick GPUs passed over: the host still serves
    assert f"GPU 2 ({f.gpus[2].uuid}): 1 uncorrectable ECC error(s)" in c.message
    assert f"GPU 5 ({f.gpus[5].uuid}): a row remap is pending" in c.message
    assert verdict("multi-gpu", req(2), f).ok


def test_count_short_after_excluding_sick_gpus_fails_naming_why() -> None:
    c = check(verdict("multi-gpu", req(7)), "gpu-health")
    assert c.status is Status.FAIL
    assert c.message.startswith("7 GPU(s) needed (gpu.count), 6 healthy with enough free memory")
    one = check(verdict("h100", req(2)), "gpu-health")
    assert one.status is Status.FAIL
    assert one.message.startswith("2 GPU(s) needed (gpu.count), 1 healthy with enough free "
                                  "memory: GPU 0 (")


def test_gpu_health_knobs_tune_the_verdicts() -> None:
    assert check(verdict("ecc-uncorrectable", req(max_uncorrectable_ecc=2)),
                 "gpu-health").status is Status.PASS
    assert check(verdict("xid-79", req(fail_xids=[48])), "gpu-health").status is Status.PASS
    assert check(verdict("mig", req(allow_mig=True)), "gpu-health").status is Status.PASS
    assert check(verdict("thermal-throttle", req(throttling="fail")),
                 "gpu-conditions").status is Status.FAIL
    assert check(verdict("thermal-throttle", req(throttling="ignore")),
                 "gpu-conditions").status is Status.PASS
    f = facts("xid-79")
    old = replace(f, xid=replace(f.xid, events=tuple(
        replace(e, age_s=25 * 3600) for e in f.xid.events)))
    assert check(verdict("xid-79", f=old), "gpu-health").status is Status.PASS
    assert check(verdict("xid-79", req(xid_window_h=48), old), "gpu-health").status \
        is Status.FAIL


def test_not_supported_counters_are_unknown_not_failures() -> None:
    h100, a100 = facts("xid-79").gpus[0].health, facts("row-remap-pending").gpus[0].health
    assert h100.ecc_mode is True and h100.errors == {}
    assert h100.retired_pending is None  # Hopper: no page retirement, Not Supported
    assert a100.remap_pending is True and a100.pci == "0000:3b:00"


def _with(profile: str, path: tuple[Any, ...], value: object) -> str:
    data = json.loads(text(profile))
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(data)


@pytest.mark.parametrize("path, value, needle", [
    (("gpus", 0, "health", "ecc_volatile_uncorrected"), -1, "ecc_volatile_uncorrected"),
    (("gpus", 0, "health", "ecc_volatile_uncorrected"), 1 << 70, "ecc_volatile_uncorrected"),
    (("gpus", 0, "health", "remap_pending"), "yes", "remap_pending is not a boolean"),
    (("gpus", 0, "health", "temperature_c"), 1e300, "temperature_c"),
    (("gpus", 0, "health", "processes"), [{"pid": 1}] * 65, "more than 64"),
    (("gpus", 0, "health", "pci_bus_id"), "x" * 300, "pci_bus_id"),
    (("xid", "events"), [{"time": 1, "age_s": 0, "pci": "0000:3b:00", "code": "79",
                          "text": ""}], "xid.code"),
    (("xid", "events", 0, "pci"), "not-a-bus-id", "PCI bus id"),
    (("xid",), [], "xid is not an object"),
])
def test_hostile_health_values_are_bad_host_output(
        path: tuple[Any, ...], value: object, needle: str) -> None:
    with pytest.raises(BadHostOutput) as info:
        parse_facts("gpu-x", _with("xid-79" if path[0] == "xid" else "ecc-uncorrectable",
                                   path, value))
    assert "gpu-x" in str(info.value) and needle in str(info.value)


def test_older_probe_output_has_no_health_and_no_xid() -> None:
    # tests/fixtures/probe/h100.json was recorded before the health facts existed.
    old = facts("h100")
    assert old.xid.reported is False and old.gpus[0].health == HealthFacts()
    assert facts("xid-79").xid.reported is True and facts("xid-79").xid.source == "file"


SPEC = """\
apiVersion: orchestrator/v1
kind: Deployment
name: fraud-detector
model: {path: m.joblib, format: joblib, sha256: %s}
environment: {python: "3.11", requirements: r.lock}
gpu:
  required: true
  count: 2
  health: %s
targets: [gpu-01]
verify: {golden: g.npz, latency_ms: {p50: 5, p95: 10, p99: 20}}
"""


def test_spec_gpu_health_defaults_and_strictness(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC % ("a" * 64, "{}"))
    health = load_spec(path).gpu.health
    assert health == GpuHealth() and health.fail_xids == [48, 79, 94, 95]
    path.write_text(SPEC % ("a" * 64, "{throttling: fail, xid_window_h: 6}"))
    assert load_spec(path).gpu.health.throttling == "fail"
    for bad, field in (("{colour: red}", "gpu.health.colour"),
                       ("{throttling: loud}", "gpu.health.throttling"),
                       ("{xid_window_h: 0}", "gpu.health.xid_window_h")):
        path.write_text(SPEC % ("a" * 64, bad))
        with pytest.raises(SpecError) as info:
            load_spec(path)
        assert info.value.field == field, str(info.value)


def test_verify_places_and_the_manifest_records_the_uuids() -> None:
    f = facts("multi-gpu")
    spec = load_spec_text(count=2)
    assert verify_step.place(spec, f) == (f.gpus[0].uuid, f.gpus[1].uuid)
    with pytest.raises(StepFailed, match=r"GPU placement failed: 7 GPU\(s\) needed"):
        verify_step.place(load_spec_text(count=7), f)
    manifest = Manifest.model_validate({
        "app": "a", "release_id": "20260101T000000Z-abcdef01", "created": "2026-01-01T00:00:00Z",
        "spec_digest": "d", "model_sha256": "a" * 64, "lock_sha256": "b" * 64,
        "env_hash": "c" * 16, "python_version": "3.11.2", "platform": "x",
        "gpus": [f.gpus[0].uuid, f.gpus[1].uuid]})
    assert manifest.to_json()["gpus"] == [f.gpus[0].uuid, f.gpus[1].uuid]


def load_spec_text(count: int) -> Any:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(SPEC.replace("count: 2", f"count: {count}") % ("a" * 64, "{}"))
        return load_spec(path)


# -- re-verification: health now against the deploy baseline ------------------------------------

def _health(f: HostFacts, index: int, **changes: Any) -> HostFacts:
    gpus = tuple(replace(g, health=replace(g.health, **changes)) if g.index == index else g
                 for g in f.gpus)
    return replace(f, gpus=gpus)


def test_reverify_a_new_xid_fails_a_gpu_the_release_uses_and_degrades_another() -> None:
    now = facts("xid-79")
    before = replace(now, xid=replace(now.xid, events=()))
    uuid = now.gpus[0].uuid
    found = rv.diff_facts(before, now)
    assert [(f.kind, f.status) for f in found] == [("gpu", rv.FAILED)]
    assert found[0].message.startswith(f"GPU 0 ({uuid}): new Xid 79: NVRM: Xid (PCI:0000:3b:00)")
    assert [f.status for f in rv.diff_facts(before, now, placed=["GPU-other"])] == [rv.DEGRADED]
    assert rv.diff_facts(now, now) == []  # the same event is not new
    not_listed = rv.diff_facts(before, now, GpuHealth(fail_xids=[48]))
    assert [f.status for f in not_listed] == [rv.DEGRADED]
    assert "(not in gpu.health.fail_xids)" in not_listed[0].message


def test_reverify_ecc_and_remap_since_deploy_and_placement_decides_the_severity() -> None:
    now = facts("multi-gpu")
    before = _health(_health(now, 2, ecc_volatile_uncorrected=0), 5, remap_pending=False)
    found = {f.message.split(":")[0]: f for f in rv.diff_facts(before, now)}
    u2, u5 = now.gpus[2].uuid, now.gpus[5].uuid
    assert found[f"GPU 2 ({u2})"].status == rv.FAILED
    assert "uncorrectable ECC errors 0 -> 1 (ecc_volatile_uncorrected)" in \
        found[f"GPU 2 ({u2})"].message
    assert "a row remap is pending (remap_pending)" in found[f"GPU 5 ({u5})"].message
    placed = [now.gpus[0].uuid, now.gpus[1].uuid]  # the release runs on 0 and 1 only
    assert {f.status for f in rv.diff_facts(before, now, placed=placed)} == {rv.DEGRADED}


def test_reverify_throttling_began_is_degraded_and_a_placed_gpu_gone_is_failed() -> None:
    now = facts("thermal-throttle")
    before = _health(now, 0, throttle_reasons=0)
    [found] = rv.diff_facts(before, now)
    assert found.status == rv.DEGRADED
    assert found.message == (f"GPU 0 ({now.gpus[0].uuid}): throttling began: software thermal "
                             "slowdown, hardware thermal slowdown (throttle_reasons 0x60)")
    eight = facts("multi-gpu")
    gone = replace(eight, gpus=eight.gpus[1:])
    status = {f.message: f.status for f in rv.diff_facts(eight, gone, placed=[
        eight.gpus[0].uuid])}
    assert status == {f"GPU 0 NVIDIA H100 80GB HBM3 ({eight.gpus[0].uuid}) is gone": rv.FAILED}
    assert [f.status for f in rv.diff_facts(eight, gone)] == [rv.DEGRADED]


# -- /metrics ------------------------------------------------------------------------------------

def test_metrics_export_per_gpu_health_from_the_recorded_facts(tmp_path: Path) -> None:
    store = open_store(tmp_path / "state.sqlite3")
    try:
        store.record_host("h8", "healthy", [], json.loads(text("multi-gpu")))
        store.record_host("hx", "healthy", [], json.loads(text("xid-79")))
        store.record_host("ht", "healthy", [], json.loads(text("thermal-throttle")))
        store.record_host("hm", "healthy", [], json.loads(text("mig")))
        store.record_host("old", "healthy", [], json.loads(text("h100")))  # no health facts
        out = Metrics(store).render().decode()
    finally:
        store.close()

    def value(series: str) -> float:
        found = re.search("^" + re.escape(series) + r" ([0-9.e+-]+)$", out, re.M)
        assert found, f"{series} not in:\n{out}"
        return float(found.group(1))

    eight, xid, hot, mig = (facts("multi-gpu"), facts("xid-79"), facts("thermal-throttle"),
                            facts("mig"))

    def labels(host: str, f: HostFacts, i: int) -> str:
        return f'gpu="{i}",host="{host}",uuid="{f.gpus[i].uuid}"'

    assert [value(f"orchestrator_gpu_sick{{{labels('h8', eight, i)}}}") for i in range(8)] == [
        0, 0, 1, 0, 0, 1, 0, 0]
    assert value(f'orchestrator_gpu_ecc_errors{{counter="uncorrected",{labels("h8", eight, 2)}}}'
                 ) == 1
    assert value(f"orchestrator_gpu_reset_pending{{{labels('h8', eight, 5)}}}") == 1
    assert value(f"orchestrator_gpu_xid_events{{{labels('hx', xid, 0)}}}") == 1
    assert value(f"orchestrator_gpu_sick{{{labels('hx', xid, 0)}}}") == 1
    # MIG mode is a spec's choice (gpu.mig_profile), not a fault: a healthy MIG GPU is not sick
    assert mig.gpus[0].health.mig_mode
    assert value(f"orchestrator_gpu_sick{{{labels('hm', mig, 0)}}}") == 0
    assert value(f"orchestrator_gpu_throttled{{{labels('ht', hot, 0)}}}") == 1
    assert value(f"orchestrator_gpu_temperature_celsius{{{labels('ht', hot, 0)}}}") == 91
    assert 'host="old"' not in out.split("orchestrator_gpu_ecc_errors", 1)[1]


# -- the host side: every NVML call guarded, the kernel log read within bounds ------------------

class _Nvml:
    """pynvml's exceptions, with each device call failing as `failures` says (else Not
    Supported), as an old driver or a consumer GPU answers."""

    def __init__(self, failures: dict[str, int]) -> None:
        import pynvml
        self._real, self._failures = pynvml, failures

    def __getattr__(self, name: str) -> Any:
        if name.startswith("NVMLError"):
            return getattr(self._real, name)
        code = self._failures.get(name, self._real.NVML_ERROR_NOT_SUPPORTED)

        def call(*args: object) -> Any:
            raise self._real.NVMLError(code)
        return call


def test_probe_health_turns_every_nvml_failure_into_a_fact() -> None:
    import pynvml
    health = probe_gpu.health(_Nvml({
        "nvmlDeviceGetTemperature": pynvml.NVML_ERROR_GPU_IS_LOST,
        "nvmlDeviceGetPowerUsage": pynvml.NVML_ERROR_NO_PERMISSION}), object())
    assert health["ecc_mode"] is None and health["remap_pending"] is None
    assert health["processes"] is None and health["process_count"] is None
    assert health["errors"] == {"temperature_c": "NVMLError_GpuIsLost",
                                "power_mw": "NVMLError_NoPermission"}
    parsed = parse_health(health)  # and the controller takes it as it is
    assert parsed.temperature_c is None and parsed.errors["temperature_c"] == "NVMLError_GpuIsLost"


def test_probe_reads_xids_of_the_window_from_the_kernel_log_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "kernel.log"
    now = time.time()
    log.write_text(
        f"{now - 3 * 86400:.6f} h kernel: NVRM: Xid (PCI:0000:3b:00): 48, old and outside\n"
        f"{now - 60:.6f} h kernel: NVRM: Xid (PCI:0000:3c:00): 79, pid=1, GPU has fallen off\n"
        f"{now - 30:.6f} h kernel: usb 1-1: new device, not an Xid\n"
        "garbage line without a time\n")
    monkeypatch.setenv("ORCHESTRATOR_KERNEL_LOG", str(log))
    xid = probe_gpu.xid_facts(86400)
    assert xid["source"] == "file" and xid["error"] is None
    [event] = xid["events"]
    assert (event["code"], event["pci"]) == (79, "0000:3c:00") and 59 <= event["age_s"] <= 70
    monkeypatch.setenv("ORCHESTRATOR_KERNEL_LOG", str(tmp_path / "missing.log"))
    gone = probe_gpu.xid_facts(86400)
    assert gone["source"] is None and "No such file" in gone["error"]
    assert parse_xid(gone).error == gone["error"]


def test_the_service_restart_command_sees_the_placed_gpus(
        inventory: Inventory, pool: Pool, tmp_path: Path) -> None:
    """Over SSH on a testbed host (the host's directories are this machine's)."""
    host = inventory.hosts["tb-01"]
    gpus = "GPU-00000000-0000-0000-0000-000000000001,GPU-00000000-0000-0000-0000-000000000002"
    with pool.session(host) as transport:
        serving.restart(transport, 'printf %s "$CUDA_VISIBLE_DEVICES" > seen', str(tmp_path),
                        60, gpus)
        assert (tmp_path / "seen").read_text() == gpus
        serving.restart(transport, 'printf %s "${CUDA_VISIBLE_DEVICES-unset}" > seen',
                        str(tmp_path), 60)
    assert (tmp_path / "seen").read_text() == "unset"  # a CPU deployment sets nothing
