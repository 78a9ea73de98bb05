"""The engine's GPU arguments for the placed GPUs (orchestrator/core/enginegpu.py), from engine
facts as the probe reports them: pure, no GPU and no NVIDIA Container Toolkit on the machines
this is tested on, so what the engines do with the arguments is not exercised here."""

from __future__ import annotations

import pytest

from orchestrator.core.enginegpu import gpu_args
from orchestrator.core.facts import Engine, Gpu
from orchestrator.errors import HostError
from tests.test_hostcontract import load_remote

A = Gpu(0, "NVIDIA H100", "GPU-aaaaaaaa-0000-0000-0000-000000000000", 80 << 30, 80 << 30, "9.0")
B = Gpu(1, "NVIDIA H100", "GPU-bbbbbbbb-0000-0000-0000-000000000000", 80 << 30, 80 << 30, "9.0")


def engine(name: str = "podman", *, runtime: bool = False, cdi: tuple[str, ...] = ()) -> Engine:
    return Engine(name, f"/usr/bin/{name}", "5.0.0", runtime, cdi, None)


@pytest.mark.parametrize(("eng", "gpus", "expect"), [
    # CDI named by UUID (nvidia-ctk --device-name-strategy=uuid): one --device per placed GPU
    (engine(cdi=(f"nvidia.com/gpu={A.uuid}", f"nvidia.com/gpu={B.uuid}", "nvidia.com/gpu=all")),
     [B], ("--device", f"nvidia.com/gpu={B.uuid}")),
    # CDI named by index (the default strategy): the placed GPU's index, never `all`
    (engine("docker", runtime=True, cdi=("nvidia.com/gpu=0", "nvidia.com/gpu=1",
                                         "nvidia.com/gpu=all")),
     [A, B], ("--device", "nvidia.com/gpu=0", "--device", "nvidia.com/gpu=1")),
    # Docker with the NVIDIA runtime, no CDI: --gpus, a list quoted for Docker's CSV parser
    (engine("docker", runtime=True), [A], ("--gpus", f"device={A.uuid}")),
    (engine("docker", runtime=True), [A, B], ("--gpus", f'"device={A.uuid},{B.uuid}"')),
    # Podman with the NVIDIA OCI hook: the variable the hook reads
    (engine(runtime=True), [A, B], ("-e", f"NVIDIA_VISIBLE_DEVICES={A.uuid},{B.uuid}")),
    # a CPU release: nothing, whatever the engine
    (engine(), [], ()),
])
def test_the_placed_gpus_become_the_engines_arguments(eng: Engine, gpus: list[Gpu],
                                                      expect: tuple[str, ...]) -> None:
    assert gpu_args("h1", eng, gpus) == expect


def test_an_engine_that_cannot_give_gpus_is_named() -> None:
    with pytest.raises(HostError, match=r"h1: podman 5.0.0 has neither CDI devices nor the "
                                        r"NVIDIA runtime"):
        gpu_args("h1", engine(), [A])


def test_a_placed_gpu_missing_from_the_cdi_specs_is_refused_not_replaced_by_all() -> None:
    with pytest.raises(HostError, match=r"GPU 1 \(GPU-bbbb.*not among the host's CDI devices "
                                        r"\(nvidia.com/gpu=0, nvidia.com/gpu=all\)"):
        gpu_args("h1", engine(cdi=("nvidia.com/gpu=0", "nvidia.com/gpu=all")), [B])


def test_the_host_accepts_exactly_these_arguments() -> None:
    """remote/hostops_image.py checks each argument before it reaches `engine run` or the
    launcher: every form built above passes, anything else is refused."""
    hostops_image = load_remote("hostops_image")
    built = [*gpu_args("h", engine("docker", runtime=True), [A, B]),
             *gpu_args("h", engine(runtime=True), [A]),
             *gpu_args("h", engine(cdi=(f"nvidia.com/gpu={A.uuid}",)), [A])]
    assert hostops_image.gpu_args_of({"gpu_args": built}) == built
    for bad in (["--privileged"], ["-v", "/:/host"], ["nvidia.com/gpu=0;rm -rf /"]):
        with pytest.raises(hostops_image.OpError):
            hostops_image.gpu_args_of({"gpu_args": bad})
