"""`orchestrator plan` against the real testbed: sshd hosts with simulated GPUs, real lock files."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli.app import main
from orchestrator.testbed import Testbed
from orchestrator.testbed import profiles as gpu_profiles

LOCKS = Path(__file__).parent / "fixtures" / "locks"
GPU_LOCK = "tensorflow-2.21-gpu.lock"
CPU_LOCK = "tensorflow-cpu-2.21.lock"


def write_spec(directory: Path, targets: list[str], *, lock: str = GPU_LOCK,
               gpu_required: bool = True, python: str = "3.11", count: int = 1,
               mig_profile: str | None = None) -> Path:
    """A spec that validates: a small model file with its sha256, a golden file, a real lock."""
    directory.mkdir(parents=True, exist_ok=True)
    model = directory / "model.joblib"
    model.write_bytes(b"not really a model: plan never loads it\n")
    (directory / "golden.npz").write_bytes(b"golden placeholder\n")
    shutil.copy(LOCKS / lock, directory / "requirements.lock")
    mig = f"\n  mig_profile: {mig_profile!r}" if mig_profile else ""
    spec = directory / "spec.yaml"
    spec.write_text(f"""\
apiVersion: orchestrator/v1
kind: Deployment
name: fraud-detector
model:
  path: model.joblib
  format: joblib
  sha256: {hashlib.sha256(model.read_bytes()).hexdigest()}
environment:
  python: "{python}"
  requirements: requirements.lock
gpu:
  required: {str(gpu_required).lower()}
  count: {count}{mig}
  min_memory_gib: 8
  min_compute_capability: "7.0"
targets: [{", ".join(targets)}]
verify:
  golden: golden.npz
  latency_ms: {{p50: 5, p95: 10, p99: 20}}
""")
    return spec


def host(testbed: Testbed, profile: str) -> str:
    return testbed.hosts_with(profile)[0].name


def plan(testbed: Testbed, spec: Path, capsys: pytest.CaptureFixture[str],
         *extra: str) -> tuple[int, str]:
    code = main(["plan", str(spec), "--inventory", str(testbed.inventory_path), *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_fleet_plan_gives_each_profile_its_verdict(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    names = {p: host(testbed, p) for p in ("h100", "old-driver", "no-gpu", "no-driver",
                                           "mismatch")}
    code, out = plan(testbed, write_spec(tmp_path, list(names.values())), capsys, "--json")
    assert code == 3
    result = json.loads(out)
    by_host = {h["host"]: h for h in result["hosts"]}
    assert [h["host"] for h in result["hosts"]] == list(names.values())

    def failing(profile: str) -> dict[str, str]:
        return {c["name"]: c["message"] for c in by_host[names[profile]]["checks"]
                if c["status"] == "fail"}

    h100 = by_host[names["h100"]]
    assert h100["status"] != "fail", failing("h100")
    assert [s.split(":")[0] for s in h100["steps"]] == [
        "probe", "preflight", "stage", "install", "verify", "switch", "check", "prune"]
    assert failing("old-driver")["cuda-driver"].startswith(
        "driver 470.82.01 supports CUDA up to 11.4; tensorflow 2.21.0 needs CUDA 12.5 "
        "(driver >= 525.60.13)")
    assert "no GPU found: no NVIDIA driver library" in failing("no-gpu")["gpu-present"]
    assert "NVIDIA driver not loaded" in failing("no-driver")["driver"]
    assert "driver/library version mismatch: reboot or reload the nvidia module" in \
        failing("mismatch")["driver"]
    for profile in ("old-driver", "no-gpu", "no-driver", "mismatch"):
        assert by_host[names[profile]]["steps"][-1].startswith("stop: nothing would change")


def test_h100_alone_passes_and_plan_changes_nothing(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    tb_host = testbed.hosts_with("h100")[0]
    code, out = plan(testbed, write_spec(tmp_path, [tb_host.name]), capsys)
    assert code == 0, out
    assert f"{tb_host.name} ({tb_host.address}):" in out
    assert "from nvidia-cudnn-cu12" in out  # [and-cuda] wheels count
    assert re.search(r"install: build or reuse the venv \S+/\.orchestrator/venvs/[0-9a-f]{16,64} ",
                     out), out
    assert "1 of 1 host(s) pass" in out
    assert not (tb_host.deploy_root / "fraud-detector").exists()


def test_cpu_only_tensorflow_for_a_gpu_spec_fails(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = plan(testbed, write_spec(tmp_path, [host(testbed, "h100")], lock=CPU_LOCK),
                     capsys)
    assert code == 3
    assert "tensorflow-cpu 2.21.0 is a CPU-only build" in out


def test_python_mismatch_fails_naming_both_versions(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = plan(testbed, write_spec(tmp_path, [host(testbed, "t4")], python="3.12"),
                     capsys)
    assert code == 3
    line = next(ln for ln in out.splitlines() if "fail  python" in ln)
    assert re.search(r"host python3 is 3\.11\.\d+ .*environment\.python is 3\.12", line), line


def test_cpu_spec_passes_on_a_host_without_gpu(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    spec = write_spec(tmp_path, [host(testbed, "no-gpu")], lock=CPU_LOCK, gpu_required=False)
    code, out = plan(testbed, spec, capsys)
    assert code == 0, out
    assert "skipped: gpu.required is false" in out


def test_unreachable_host_is_a_failed_host_with_its_reason(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    good = testbed.hosts_with("h100")[0]
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(f"""\
ssh: {{known_hosts: {testbed.known_hosts_path}, identity_file: {testbed.identity_path}}}
hosts:
  {good.name}: {{address: {good.address}, port: {good.port}, user: {good.user},
                 deploy_root: {good.deploy_root}}}
  gone: {{address: 127.0.0.1, port: 9, user: {good.user}, deploy_root: /tmp/gone}}
""")
    spec = write_spec(tmp_path / "spec", [good.name, "gone"])
    code = main(["plan", str(spec), "--inventory", str(inventory), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 4  # a host unreachable, no preflight failed: the exit table's 4
    gone = next(h for h in result["hosts"] if h["host"] == "gone")
    assert gone["status"] == "fail" and gone["error"].startswith("unreachable: "), gone
    assert gone["checks"] == []
    assert next(h for h in result["hosts"] if h["host"] == good.name)["status"] != "fail"


def test_invalid_input_exits_2_before_touching_a_host(
    testbed: Testbed, tmp_path: Path,
) -> None:
    spec = write_spec(tmp_path, ["no-such-host"])
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "plan", str(spec), "--inventory",
         str(testbed.inventory_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown host or group 'no-such-host'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unknown_host_key_is_a_failed_host_naming_the_fingerprint(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    spec = write_spec(tmp_path / "spec", [host(testbed, "h100")])
    code, out = plan(testbed, spec, capsys, "--json", "--known-hosts", str(empty))
    assert code == 3
    (only,) = json.loads(out)["hosts"]
    assert only["error"].startswith("host key rejected: ") and "SHA256:" in only["error"]


# (profile, check, status, what the message says besides the GPU's index and UUID)
HEALTH = [
    ("ecc-uncorrectable", "gpu-health", "fail", "uncorrectable ECC error(s) since the last reset "
                                                "(ecc_volatile_uncorrected"),
    ("row-remap-pending", "gpu-health", "fail", "a row remap is pending (remap_pending"),
    ("xid-79", "gpu-health", "fail", "Xid 79 0 min ago (kernel log: NVRM: Xid (PCI:0000:3b:00)"),
    ("mig", "gpu-health", "fail", "MIG mode is enabled (4 MIG device(s): 3g.40gb, 2g.20gb, "
                                  "1g.10gb x2)"),
    ("busy", "gpu-conditions", "warn", "2 process(es) already use it: pid 31337 (60.0 GiB)"),
    ("thermal-throttle", "gpu-conditions", "warn", "(throttle_reasons 0x60, 91 C (slowdown at "
                                                   "87 C))"),
]


@pytest.mark.parametrize("profile, name, status, needle", HEALTH)
def test_plan_on_each_health_profile_names_gpu_uuid_and_counter(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    profile: str, name: str, status: str, needle: str,
) -> None:
    tb_host = testbed.hosts_with("h100")[0]
    with testbed.profile(tb_host.name, profile):
        code, out = plan(testbed, write_spec(tmp_path, [tb_host.name]), capsys, "--json")
    result = json.loads(out)["hosts"][0]
    checks = {c["name"]: c for c in result["checks"]}
    uuid = gpu_profiles.gpu_uuid(tb_host.name, 0, gpu_profiles.render(profile, "x")["gpus"][0][
        "name"])
    assert checks[name]["status"] == status, checks[name]
    assert f"GPU 0 ({uuid})" in checks[name]["message"] and needle in checks[name]["message"]
    assert code == (3 if "fail" in (status, result["status"]) else 0), out
    if status == "fail":
        assert result["steps"][-1].startswith("stop: nothing would change")


def test_plan_places_two_healthy_gpus_of_eight_and_refuses_two_on_one(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    tb_host = testbed.hosts_with("h100")[0]
    with testbed.profile(tb_host.name, "multi-gpu"):
        code, out = plan(testbed, write_spec(tmp_path / "a", [tb_host.name], count=2), capsys,
                         "--json")
    assert code == 0, out
    result = json.loads(out)["hosts"][0]
    health = next(c for c in result["checks"] if c["name"] == "gpu-health")
    uuids = [gpu_profiles.gpu_uuid(tb_host.name, i, "NVIDIA H100 80GB HBM3") for i in range(8)]
    assert health["status"] == "warn"
    assert health["message"].startswith(
        f"2 of 2 GPU(s) (gpu.count) placed: GPU 0 ({uuids[0]}), GPU 1 ({uuids[1]}); passed over: "
        f"GPU 2 ({uuids[2]}): 1 uncorrectable ECC error(s)")
    assert f"GPU 5 ({uuids[5]}): a row remap is pending" in health["message"]
    verify = next(s for s in result["steps"] if s.startswith("verify:"))
    assert f"CUDA_VISIBLE_DEVICES={uuids[0]},{uuids[1]}" in verify
    code, out = plan(testbed, write_spec(tmp_path / "b", [tb_host.name], count=2), capsys)
    assert code == 3
    assert f"2 GPU(s) needed (gpu.count), 1 healthy with enough free memory: GPU 0 ({uuids[0]})" \
        in out


def test_plan_places_a_mig_instance_of_the_profile_or_names_the_profiles_there_are(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    tb_host = testbed.hosts_with("h100")[0]
    with testbed.profile(tb_host.name, "mig"):
        code, out = plan(testbed, write_spec(tmp_path / "a", [tb_host.name],
                                             mig_profile="1g.10gb"), capsys, "--json")
        missing, text = plan(testbed, write_spec(tmp_path / "b", [tb_host.name],
                                                 mig_profile="1g.20gb"), capsys)
    mig = gpu_profiles.mig_uuid(tb_host.name, 0, 2, "1g.10gb")
    assert code == 0, out
    result = json.loads(out)["hosts"][0]
    health = next(c for c in result["checks"] if c["name"] == "gpu-health")
    assert health["status"] == "pass" and health["message"].startswith(
        f"1 of 1 MIG instance(s) of profile 1g.10gb (gpu.count, gpu.mig_profile) placed: {mig}")
    assert any(s.startswith("verify:") and f"CUDA_VISIBLE_DEVICES={mig}" in s
               for s in result["steps"])
    assert missing == 3
    assert ("host has 0 (GPU 0: 3g.40gb, 2g.20gb, 1g.10gb x2); create them with nvidia-smi mig "
            "-cgi 1g.20gb -C, or change gpu.mig_profile") in " ".join(text.split())
