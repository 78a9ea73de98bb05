"""The preflight of an image environment, from data fixtures: recorded host facts x the
metadata an image archive gives (orchestrator/core/imagechecks.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.core.compat import load_compat
from orchestrator.core.facts import HostFacts, parse_facts
from orchestrator.core.imagechecks import satisfied
from orchestrator.core.ociimage import ImageInfo, ImagePackage
from orchestrator.core.preflight import Check, HostVerdict, Requirements, Status, preflight

FACTS = Path(__file__).parent / "fixtures" / "facts"
GPU = Requirements(python=None, gpu_required=True)
CPU = Requirements(python=None)


PODMAN = {"name": "podman", "path": "/usr/bin/podman", "version": "4.3.1",
          "nvidia_runtime": False, "cdi_devices": ["nvidia.com/gpu=all"], "error": None}


def facts(profile: str, engines: tuple[dict[str, object], ...] = (PODMAN,)) -> HostFacts:
    """A recorded profile, with the engines a probe found (CDI-ready podman by default)."""
    data = json.loads((FACTS / f"{profile}.json").read_text())
    data["engines"] = list(engines)
    return parse_facts(f"gpu-{profile}", json.dumps(data))


def image(env: dict[str, str] | None = None, *packages: tuple[str, str],
          pythons: tuple[str, ...] = ("3.11",), size: int = 300 << 20) -> ImageInfo:
    return ImageInfo(archive="image.tar", sha256="0" * 64, format="docker-archive",
                     image_id="sha256:" + "1" * 64, env=env or {}, pythons=pythons,
                     packages=tuple(ImagePackage(n, v) for n, v in packages),
                     layers=3, size_bytes=size)


def run(profile: str, img: ImageInfo, req: Requirements = GPU) -> HostVerdict:
    return preflight(req, img, facts(profile), load_compat())


def check(verdict: HostVerdict, name: str) -> Check:
    return next(c for c in verdict.checks if c.name == name)


CUDA_12_8 = {"NVIDIA_REQUIRE_CUDA": "cuda>=12.8", "CUDA_VERSION": "12.8.1"}


@pytest.mark.parametrize(("profile", "driver", "cuda"), [
    ("old-driver", "470.82.01", "11.4"), ("h100", "550.54.15", "12.4"),
    ("t4", "535.104.05", "12.2")])
def test_require_cuda_is_strict_and_names_both_versions(profile: str, driver: str,
                                                        cuda: str) -> None:
    v = run(profile, image(CUDA_12_8))
    c = check(v, "image-cuda")
    assert c.status is Status.FAIL
    assert f"the image requires cuda>=12.8 (NVIDIA_REQUIRE_CUDA) but driver {driver} " \
           f"supports CUDA {cuda}" in c.message
    assert "without minor-version compatibility" in c.message
    assert "upgrade the driver to >= 570" in c.message  # CUDA 12.8's own driver (Table 3)
    names = [x.name for x in v.checks]
    assert names.index("image-cuda") == names.index("cuda-driver") + 1


def test_require_cuda_holds_on_a_new_enough_driver() -> None:
    c = check(run("blackwell", image(CUDA_12_8)), "image-cuda")
    assert c.status is Status.PASS, c.message
    assert "driver 575.57.08 supports CUDA 12.9" in c.message


def test_without_the_constraint_cuda_version_is_judged_like_a_venv() -> None:
    env = {"CUDA_VERSION": "12.8.1"}
    h100 = run("h100", image(env))
    assert check(h100, "image-cuda").status is Status.PASS
    cd = check(h100, "cuda-driver")  # 12.8 on a 12.4 driver: minor-version compatibility
    assert cd.status is Status.WARN, cd.message
    assert "the image's CUDA_VERSION=12.8.1 needs CUDA 12.8" in cd.message
    old = check(run("old-driver", image(env)), "cuda-driver")  # 11.4: another major
    assert old.status is Status.FAIL
    assert "CUDA_VERSION=12.8.1 needs CUDA 12.8 (driver >= 525.60.13)" in old.message


def test_disable_require_turns_the_constraint_off() -> None:
    env = {**CUDA_12_8, "NVIDIA_DISABLE_REQUIRE": "true"}
    assert check(run("h100", image(env)), "image-cuda").status is Status.PASS


def test_cuda_wheels_inside_the_image_are_judged_like_a_lock() -> None:
    img = image({}, ("nvidia-cuda-runtime-cu12", "12.9.79"), ("numpy", "2.1.0"))
    cd = check(run("old-driver", img), "cuda-driver")
    assert cd.status is Status.FAIL
    assert "nvidia-cuda-runtime-cu12 12.9.79 needs CUDA 12.9" in cd.message


def test_cpu_deployment_skips_the_gpu_and_image_cuda_checks() -> None:
    v = run("old-driver", image(CUDA_12_8), CPU)
    assert v.ok, v.reasons()
    assert "gpu.required is false" in check(v, "image-cuda").message


def test_python_is_the_images_not_the_hosts() -> None:
    v = run("h100", image({}, pythons=("3.12",)), Requirements(python="3.12"))
    assert check(v, "python").status is Status.PASS  # the host's python3 is 3.11
    bad = check(run("h100", image({"PYTHON_VERSION": "3.10.14"}), Requirements(python="3.12")),
                "python")
    assert bad.status is Status.FAIL
    assert "the image's Python is 3.10; the spec's environment.python is 3.12" in bad.message


def test_tensorflow_in_the_image_is_judged_against_the_images_python() -> None:
    img = image({"PYTHON_VERSION": "3.8.10"}, ("tensorflow", "2.21.0"))
    fw = check(run("h100", img), "framework")
    assert fw.status is Status.FAIL
    assert "supports Python 3.10-3.13; the image's Python is 3.8" in fw.message


def test_disk_needs_room_to_ship_and_load_the_image() -> None:
    assert check(run("small-disk", image()), "disk").status is Status.PASS
    small = check(run("small-disk", image(size=1536 << 20)), "disk")  # 2 GiB free
    assert small.status is Status.FAIL, small.message
    assert "about 3.0 GiB needed to ship and load the image" in small.message


@pytest.mark.parametrize(("constraint", "driver", "cuda", "ok"), [
    ("cuda>=12.4", "550.54.15", "12.4", True),
    ("cuda>=12.4,driver>=560", "550.54.15", "12.4", False),
    ("cuda>=12.8 cuda>=11.0,driver<471", "470.82.01", "11.4", True),  # an alternative holds
    ("cuda>=12.8 brand=tesla,driver>=470,driver<471", "470.82.01", "11.4", False),
    ("cuda<12", "550.54.15", "12.4", False),
])
def test_constraint_grammar(constraint: str, driver: str, cuda: str, ok: bool) -> None:
    assert satisfied(constraint, driver, cuda)[0] is ok


def test_engine_must_answer_and_give_gpus_for_a_gpu_deployment() -> None:
    cdi = check(preflight(GPU, image(), facts("h100"), load_compat()), "engine")
    assert cdi.status is Status.PASS and "podman 4.3.1" in cdi.message
    bare = {**PODMAN, "cdi_devices": []}
    none = check(preflight(GPU, image(), facts("h100", (bare,)), load_compat()), "engine")
    assert none.status is Status.FAIL and "would get no GPU" in none.message
    assert check(preflight(CPU, image(), facts("h100", (bare,)), load_compat()),
                 "engine").status is Status.PASS
    down = {**PODMAN, "name": "docker", "error": "Cannot connect to the Docker daemon"}
    gone = check(preflight(CPU, image(), facts("h100", (down,)), load_compat()), "engine")
    assert gone.status is Status.FAIL
    assert "no container engine answers" in gone.message and "Docker daemon" in gone.message


def test_unreadable_constraint_fails_naming_it() -> None:
    c = check(run("h100", image({"NVIDIA_REQUIRE_CUDA": "cuda~12"})), "image-cuda")
    assert c.status is Status.FAIL
    assert "cannot be read" in c.message and "cuda~12" in c.message
