"""The container engine's GPU arguments for the GPUs placement chose (core/gpuhealth.py):
pure, from the probe's engine facts (hosts/remote/probe_engine.py) and the placed GPUs.

- CDI (Podman, Docker 25+ with `nvidia-ctk cdi generate`): one `--device nvidia.com/gpu=X`
  per placed GPU, X its UUID when the host's CDI specs name devices by UUID
  (`--device-name-strategy=uuid`), else its index (the default strategy). `nvidia.com/gpu=all`
  is never used for a placed deployment: the container would see GPUs placement passed over.
- The NVIDIA runtime without CDI: Docker `--gpus "device=U1,U2"` (the quotes are Docker's
  CSV syntax for a list); Podman with the NVIDIA OCI hook `-e NVIDIA_VISIBLE_DEVICES=U1,U2`
  (what the hook reads).
By UUID where possible: an index can change at a reboot, a UUID cannot. No GPU placed: no
arguments. Used by the image environment's launcher (verify's warmup) and its serving
container (remote/hostops_image.py writes both from the one list)."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.core.facts import Engine, Gpu
from orchestrator.errors import HostError

CDI_PREFIX = "nvidia.com/gpu="


def gpu_args(host: str, engine: Engine, gpus: Sequence[Gpu]) -> tuple[str, ...]:
    """The arguments of `engine run` that give a container exactly `gpus`; HostError when the
    engine has no way to (the preflight's `engine` check refuses such a host first)."""
    if not gpus:
        return ()
    if engine.cdi_devices:
        return tuple(arg for g in gpus for arg in ("--device", _cdi_device(host, engine, g)))
    if engine.nvidia_runtime:
        uuids = ",".join(g.uuid for g in gpus)
        if engine.name == "docker":
            return ("--gpus", f'"device={uuids}"' if len(gpus) > 1 else f"device={uuids}")
        return ("-e", f"NVIDIA_VISIBLE_DEVICES={uuids}")
    raise HostError(host, f"{engine.label} has neither CDI devices nor the NVIDIA runtime: "
                          "it cannot give a container GPUs (install the NVIDIA Container "
                          "Toolkit; `nvidia-ctk cdi generate`)")


def _cdi_device(host: str, engine: Engine, g: Gpu) -> str:
    for name in (g.uuid, str(g.index)):
        if CDI_PREFIX + name in engine.cdi_devices:
            return CDI_PREFIX + name
    raise HostError(host, f"GPU {g.index} ({g.uuid}) is not among the host's CDI devices "
                          f"({', '.join(engine.cdi_devices)}): regenerate the CDI spec "
                          "(`nvidia-ctk cdi generate`) after a GPU change")
