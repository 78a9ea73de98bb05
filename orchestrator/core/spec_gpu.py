"""The spec's `gpu.health` section: how strictly the preflight, placement and re-verification
judge the GPU health facts (orchestrator/core/gpuhealth.py applies it). The defaults are the safe
ones: a GPU that needs a reset or fell off the bus is never used; what only slows a model down
(throttling, corrected ECC errors, persistence off, a narrow PCIe link, other processes) warns.
Its own module so the spec model (orchestrator/core/spec.py) stays one screenful per section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Advice = Literal["fail", "warn", "ignore"]

#: Xid 48 double-bit ECC error, 79 fallen off the bus, 94 contained / 95 uncontained ECC error.
DEFAULT_FAIL_XIDS = [48, 79, 94, 95]


class GpuHealth(BaseModel):
    """GPU health limits; every field has a safe default (docs/spec.md, docs/troubleshooting.md)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    max_uncorrectable_ecc: int = Field(
        default=0, ge=0, le=1_000_000,
        description="Uncorrectable (volatile, since the last reset) ECC errors a GPU may have "
                    "and still be used; more makes it sick.")
    warn_corrected_ecc: int = Field(
        default=1000, ge=0, le=1_000_000_000,
        description="Corrected (volatile) ECC errors above which a GPU warns: a rising count "
                    "often precedes uncorrectable ones.")
    fail_xids: list[int] = Field(
        default_factory=lambda: list(DEFAULT_FAIL_XIDS), max_length=64,
        description="Xid codes that make a GPU sick when the kernel logged one for it within "
                    "xid_window_h.")
    xid_window_h: int = Field(
        default=24, ge=1, le=168, description="How recent (hours) an Xid must be to count.")
    throttling: Advice = Field(
        default="warn",
        description="A GPU held down by thermal or power slowdown: fail, warn or ignore.")
    persistence_off: Advice = Field(
        default="warn",
        description="Persistence mode off (the driver re-initialises the GPU at each first use: "
                    "seconds of first-call latency).")
    pcie_degraded: Advice = Field(
        default="warn",
        description="PCIe link narrower than its maximum width (a bad riser or seat).")
    foreign_processes: Advice = Field(
        default="warn",
        description="Processes this deployment did not start hold memory on the GPU.")
    allow_mig: bool = Field(
        default=False,
        description="true: a GPU in MIG mode may be placed on (the model then sees a MIG device, "
                    "not the whole GPU); false: it is left out of placement.")
