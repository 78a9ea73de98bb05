"""`orchestrator plan` of an image release against the testbed: real `podman save` archives,
the CUDA an image declares judged against each profile's driver, a tampered archive refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli.app import main
from orchestrator.testbed import Testbed
from tests.podman import Podman, available

SITE = "usr/lib/python3.11/site-packages"


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny image with NVIDIA_REQUIRE_CUDA=cuda>=12.8 and the same without it (docker-archive,
    as `podman save` writes by default)."""
    why = available()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("images")
    (tmp / "rootfs" / SITE / "numpy-2.1.0.dist-info").mkdir(parents=True)
    out = {}
    for name, env in (("require", {"NVIDIA_REQUIRE_CUDA": "cuda>=12.8", "CUDA_VERSION": "12.8.1"}),
                      ("plain", {"CUDA_VERSION": "12.8.1"})):
        out[name] = Podman(tmp / name).archives(tmp / "rootfs", f"localhost/{name}:1", env)[0]
    return out


def write_spec(directory: Path, archive: Path, targets: list[str], *,
               gpu_required: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model = directory / "model.joblib"
    model.write_bytes(b"plan never loads it\n")
    (directory / "golden.npz").write_bytes(b"golden placeholder\n")
    data = archive.read_bytes()
    (directory / "image.tar").write_bytes(data)
    spec, model_sha = directory / "spec.yaml", hashlib.sha256(model.read_bytes()).hexdigest()
    spec.write_text(f"""\
apiVersion: orchestrator/v1
kind: Deployment
name: fraud-detector
model: {{path: model.joblib, format: joblib, sha256: {model_sha}}}
environment:
  image: {{archive: image.tar, sha256: {hashlib.sha256(data).hexdigest()}}}
  python: "3.11"
gpu: {{required: {str(gpu_required).lower()}}}
targets: [{", ".join(targets)}]
verify: {{golden: golden.npz}}
""")
    return spec


def plan(testbed: Testbed, spec: Path,
         capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["plan", str(spec), "--inventory", str(testbed.inventory_path), "--json"])
    out = capsys.readouterr()
    return code, json.loads(out.out) if code in (0, 3) else {"err": out.err}


def checks(result: dict[str, Any], host: str) -> dict[str, tuple[str, str]]:
    h = next(x for x in result["hosts"] if x["host"] == host)
    return {c["name"]: (c["status"], c["message"]) for c in h["checks"]}


def test_image_requiring_cuda_12_8_is_refused_on_old_and_550_drivers(
        testbed: Testbed, archives: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    old, h100 = testbed.hosts_with("old-driver")[0].name, testbed.hosts_with("h100")[0].name
    code, result = plan(testbed, write_spec(tmp_path, archives["require"], [old, h100]), capsys)
    assert code == 3
    for host, driver, cuda in ((old, "470.82.01", "11.4"), (h100, "550.54.15", "12.4")):
        status, message = checks(result, host)["image-cuda"]
        assert status == "fail"
        assert f"the image requires cuda>=12.8 (NVIDIA_REQUIRE_CUDA) but driver {driver} " \
               f"supports CUDA {cuda}" in message


def test_the_same_image_without_the_constraint_is_judged_like_a_venv(
        testbed: Testbed, archives: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    old, h100 = testbed.hosts_with("old-driver")[0].name, testbed.hosts_with("h100")[0].name
    code, result = plan(testbed, write_spec(tmp_path, archives["plain"], [old, h100]), capsys)
    assert code == 3  # the testbed's podman has no NVIDIA runtime: `engine` fails everywhere
    assert checks(result, h100)["image-cuda"][0] == "pass"
    status, message = checks(result, h100)["cuda-driver"]  # 12.8 on 12.4: minor-version compat
    assert status == "warn" and "CUDA_VERSION=12.8.1 needs CUDA 12.8" in message
    status, message = checks(result, old)["cuda-driver"]   # 11.4: another major version
    assert status == "fail" and "CUDA_VERSION=12.8.1 needs CUDA 12.8" in message
    status, message = checks(result, h100)["engine"]
    assert status == "fail" and "podman" in message and "would get no GPU" in message


def test_a_tampered_archive_is_refused_before_anything(
        testbed: Testbed, archives: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    h100 = testbed.hosts_with("h100")[0].name
    spec = write_spec(tmp_path, archives["plain"], [h100])
    archive = tmp_path / "image.tar"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 1
    archive.write_bytes(bytes(data))
    code = main(["plan", str(spec), "--inventory", str(testbed.inventory_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "environment.image.sha256: mismatch" in err and "refused before it is read" in err
