"""Re-verification of a host's current release, the pure part: findings and the host's status.

    manifest facts + new probe ──diff_facts──>   [Finding]
    remote/audit.py's JSON    ──audit_findings──> [Finding]     (model and venv files)
    warmup result + baseline  ──warmup_findings─> [Finding]     (orchestrator.core.gates gates)
    [Finding] ──decide──> (status, reasons);  per app ──combine──> the host's status

No I/O here (orchestrator/reverify/audit.py runs the checks over SSH). Which finding gives which
status, and why (a status is the worst of its findings; order: healthy < degraded < failed <
unreachable):

| finding                                                          | status    |
|------------------------------------------------------------------|-----------|
| driver / CUDA driver version changed, GPU gone/renamed/resized,  | degraded  |
| Python version changed: the stack moved under the release, but   |           |
| the warmup (run in the same pass) is what says whether it works  |           |
| GPU health since deploy (gpu.health of the spec): a new Xid of    | failed on a |
| `fail_xids`, uncorrectable ECC errors grew, a page retirement or  | GPU the     |
| row remap pending, a remap failure, a placed GPU gone             | release uses, |
|                                                                  | else degraded |
| throttling began, corrected ECC errors grew past the warning     | degraded  |
| limit, any other new Xid                                         |           |
| NVML error that was not there at deploy (e.g. LibRmVersionMismatch| degraded |
| after a driver upgrade without a reboot): the GPU stack is broken |           |
| but a CPU model may still serve; a GPU model fails its warmup's  |           |
| `gpu` gate, which makes it failed                                |           |
| a model file changed or missing (hash differs from the manifest) | failed    |
| a venv file changed or missing (hash differs from its RECORD)    | failed    |
| warmup gates run/load/golden/version/gpu/samples fail            | failed    |
| warmup gates latency:pNN/throughput/regression:pNN fail          | degraded  |
| unreadable manifest                                              | failed    |
| the app has no current release on a target (e.g. left out of its | skipped: not |
| rollout): nothing to verify                                       | in the status |
| the host cannot be reached                                       | unreachable |

`reverify.on_failure` (report | rollback | redeploy) acts only on `failed`: a degraded host is a
host whose environment drifted (a rollback or redeploy of the release would not undo a driver
upgrade), so it is reported and kept out of new rollouts until it verifies clean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.core.facts import Gpu, HostFacts
from orchestrator.core.gates import Gate
from orchestrator.core.gpufacts import POWER_BITS, THERMAL_BITS
from orchestrator.core.gpuhealth import label, xids_of
from orchestrator.core.spec_gpu import GpuHealth

HEALTHY, DEGRADED, FAILED, UNREACHABLE = "healthy", "degraded", "failed", "unreachable"
RANK = {HEALTHY: 0, DEGRADED: 1, FAILED: 2, UNREACHABLE: 3}
#: Statuses that keep a host out of new rollouts until it verifies clean again.
EXCLUDED = frozenset({DEGRADED, FAILED})
#: Warmup gates whose failure means "slower than it was/promised", not "broken".
SOFT_GATES = ("latency:", "throughput", "regression")


@dataclass(frozen=True)
class Finding:
    """One thing re-verification found; `status` is what it alone makes of the host."""

    kind: str  # facts | nvml | model | venv | warmup | container | release | connect
    status: str
    message: str


#: What the NVML errors a driver change brings mean (pynvml's own text is terser).
NVML_MEANING = {
    "LibRmVersionMismatch": "Driver/library version mismatch",
    "DriverNotLoaded": "the NVIDIA kernel driver is not loaded",
    "LibraryNotFound": "libnvidia-ml.so.1 not found",
    "NoPermission": "no permission to query the GPUs",
}


def _nvml_name(name: str) -> str:
    return name.removeprefix("NVMLError_")


def _nvml_text(name: str, message: str) -> str:
    short = _nvml_name(name)
    meaning = NVML_MEANING.get(short)
    return f"{short}: {meaning} ({message})" if meaning else f"{short}: {message}"


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def diff_facts(before: HostFacts, now: HostFacts, policy: GpuHealth | None = None,
               placed: Sequence[str] | None = None) -> list[Finding]:
    """What changed in the GPU stack since the release was deployed (manifest facts vs now).
    `policy`: the spec's gpu.health (defaults without one); `placed`: the UUIDs the release was
    placed on (None: it may use every GPU)."""
    out: list[Finding] = []
    was = f"driver {before.driver_version or 'none'}"
    if now.nvml_error is not None and (before.nvml_error is None
                                       or before.nvml_error.name != now.nvml_error.name):
        err = now.nvml_error
        out.append(Finding("nvml", DEGRADED,
                           f"{was} -> NVML error {_nvml_text(err.name, err.message)}"))
        return out  # with NVML failing, the GPU list and versions below are not observable
    if before.nvml_error is not None and now.nvml_error is None:
        out.append(Finding("nvml", HEALTHY, f"NVML error {_nvml_name(before.nvml_error.name)} "
                                            "at deploy time is gone"))
    if now.nvml_error is None and before.driver_version != now.driver_version:
        out.append(Finding("facts", DEGRADED,
                           f"{was} -> driver {now.driver_version or 'none'}"))
    if now.nvml_error is None and before.cuda_driver_version != now.cuda_driver_version:
        out.append(Finding("facts", DEGRADED, f"CUDA driver {before.cuda_driver_version} -> "
                                              f"{now.cuda_driver_version}"))
    if before.python_version != now.python_version:
        out.append(Finding("facts", DEGRADED, f"python3 {before.python_version} -> "
                                              f"{now.python_version}"))
    if now.nvml_error is None:
        out.extend(_diff_gpus(before, now, placed))
        out.extend(diff_health(before, now, policy or GpuHealth(), placed))
    return out


def diff_health(before: HostFacts, now: HostFacts, policy: GpuHealth,
                placed: Sequence[str] | None = None) -> list[Finding]:
    """GPU health that got worse since the baseline, per GPU present in both. What would make
    a GPU sick fails the host if the release uses that GPU (degraded otherwise: the release
    does not run there, but the next placement will avoid it)."""
    old = {g.uuid: g for g in before.gpus}
    out: list[Finding] = []
    for n in now.gpus:
        b = old.get(n.uuid)
        if b is None:
            continue
        # The release uses this GPU: whole, or one of its MIG devices (gpu.mig_profile).
        mine = {n.uuid, *(m.uuid for m in b.health.mig_instances)}
        severe = FAILED if placed is None or mine & set(placed) else DEGRADED
        out += [Finding("gpu", status, f"{label(n)}: {text}")
                for status, text in _worse(before, b, now, n, policy, severe)]
        began = n.health.throttle_names(THERMAL_BITS | POWER_BITS)
        if began and not b.health.throttle_names(THERMAL_BITS | POWER_BITS):
            out.append(Finding("gpu", DEGRADED, f"{label(n)}: throttling began: "
                               f"{', '.join(began)} (throttle_reasons "
                               f"0x{n.health.throttle_reasons or 0:x})"))
        was, now_c = b.health.ecc_volatile_corrected, n.health.ecc_volatile_corrected
        if was is not None and now_c is not None and now_c > max(was, policy.warn_corrected_ecc):
            out.append(Finding("gpu", DEGRADED, f"{label(n)}: corrected ECC errors {was} -> "
                               f"{now_c} (ecc_volatile_corrected)"))
    return out


def _worse(before: HostFacts, b: Gpu, now: HostFacts, n: Gpu, policy: GpuHealth,
           severe: str) -> list[tuple[str, str]]:
    """(status, text) of each sickness that appeared since the baseline."""
    h, was, texts = n.health, b.health, []
    if (h.ecc_volatile_uncorrected or 0) > (was.ecc_volatile_uncorrected or 0):
        texts.append((severe, f"uncorrectable ECC errors {was.ecc_volatile_uncorrected or 0} -> "
                     f"{h.ecc_volatile_uncorrected} (ecc_volatile_uncorrected)"))
    for flag, words in (("retired_pending", "a page retirement is pending"),
                        ("remap_pending", "a row remap is pending"),
                        ("remap_failure", "row remapping failed")):
        if getattr(h, flag) and not getattr(was, flag):
            texts.append((severe, f"{words} ({flag})"))
    seen = {(e.time, e.code) for e in xids_of(before, b)}
    for e in xids_of(now, n):
        if (e.time, e.code) not in seen:
            listed = e.code in policy.fail_xids
            texts.append((severe if listed else DEGRADED, f"new Xid {e.code}"
                          + ("" if listed else " (not in gpu.health.fail_xids)")
                          + f": {e.text[:120]}"))
    return texts


def _diff_gpus(before: HostFacts, now: HostFacts,
               placed: Sequence[str] | None = None) -> list[Finding]:
    old, new = {g.uuid: g for g in before.gpus}, {g.uuid: g for g in now.gpus}
    out = []
    for uuid, g in old.items():
        if uuid not in new:
            # A GPU the release was placed on (by UUID) is gone: its CUDA_VISIBLE_DEVICES
            # names a device that is not there, so the service cannot run as deployed.
            status = FAILED if placed and uuid in placed else DEGRADED
            out.append(Finding("facts", status, f"GPU {g.index} {g.name} ({uuid}) is gone"))
            continue
        n = new[uuid]
        if n.name != g.name:
            out.append(Finding("facts", DEGRADED, f"GPU {uuid} name {g.name} -> {n.name}"))
        if n.memory_total_bytes != g.memory_total_bytes:
            out.append(Finding("facts", DEGRADED, f"GPU {uuid} memory "
                               f"{_gib(g.memory_total_bytes)} -> {_gib(n.memory_total_bytes)}"))
    for uuid, n in new.items():
        if uuid not in old:
            out.append(Finding("facts", HEALTHY, f"new GPU {n.index} {n.name} ({uuid})"))
    # A MIG device the release was placed on (gpu.mig_profile) and destroyed or re-created
    # since (a new MIG UUID): the service's CUDA_VISIBLE_DEVICES names nothing.
    migs = {m.uuid for g in now.gpus for m in g.health.mig_instances}
    was = {m.uuid: (g, m) for g in before.gpus for m in g.health.mig_instances}
    for uuid in placed or ():
        if uuid in was and uuid not in migs:
            g, m = was[uuid]
            out.append(Finding("facts", FAILED, f"MIG device {uuid} ({m.profile}) of GPU "
                               f"{g.index} ({g.uuid}) is gone"))
    return out


#: NVML errors that describe a host without a (loaded) NVIDIA driver: a fact, not a fault.
NO_DRIVER = frozenset({"DriverNotLoaded", "LibraryNotFound"})


def facts_status(facts: HostFacts) -> tuple[str, list[str]]:
    """A host with no release to compare with: a broken GPU stack (e.g. a version mismatch) is
    degraded; no driver at all is how a CPU host looks, so healthy (it may take CPU models)."""
    err = facts.nvml_error
    if err is None or _nvml_name(err.name) in NO_DRIVER:
        return HEALTHY, []
    return DEGRADED, [f"NVML error {_nvml_text(err.name, err.message)}"]


def audit_findings(audit: Mapping[str, Any],
                   local_model: Mapping[str, str] | None = None) -> list[Finding]:
    """Findings from remote/audit.py's reply. `local_model` ({relative path: sha256} of the
    deployment's own model files) names which file of a directory model changed."""
    out = _model_findings(audit.get("model") or {}, local_model)
    venv = audit.get("venv") or {}
    if venv.get("error"):
        out.append(Finding("venv", FAILED, f"venv: {venv['error']}"))
    for key, verb in (("changed", "changed"), ("missing", "missing")):
        for entry in venv.get(key, ()):
            out.append(Finding("venv", FAILED, f"venv file {entry['path']} ({entry['package']}) "
                                               f"{verb}: differs from its RECORD"
                               if verb == "changed" else
                               f"venv file {entry['path']} ({entry['package']}) missing"))
        more = int(venv.get(f"{key}_count", 0)) - len(venv.get(key, ()))
        if more > 0:
            out.append(Finding("venv", FAILED, f"and {more} more venv files {verb}"))
    return out


def _model_findings(model: Mapping[str, Any],
                    local: Mapping[str, str] | None) -> list[Finding]:
    if not model or model.get("ok"):
        return []
    if model.get("kind") == "missing":
        return [Finding("model", FAILED, "model directory missing from the release")]
    files: Mapping[str, str] = model.get("files") or {}
    exp, act = str(model.get("expected"))[:12], str(model.get("actual"))[:12]
    if model.get("kind") == "file":
        name = next(iter(files), "?")
        return [Finding("model", FAILED, f"model file model/{name} changed: sha256 {exp}... "
                                         f"in the manifest, {act}... on the host")]
    if local is None:
        return [Finding("model", FAILED, f"model tree hash {act}... differs from the manifest's "
                                         f"{exp}... ({len(files)} files)")]
    out = [Finding("model", FAILED, f"model file model/{rel} changed")
           for rel in sorted(files) if rel in local and files[rel] != local[rel]]
    out += [Finding("model", FAILED, f"model file model/{rel} missing")
            for rel in sorted(local) if rel not in files]
    out += [Finding("model", FAILED, f"model file model/{rel} added")
            for rel in sorted(files) if rel not in local]
    return out or [Finding("model", FAILED, f"model tree hash {act}... differs from {exp}...")]


def warmup_findings(verdicts: Sequence[Gate]) -> list[Finding]:
    """Failed gates of the re-run warmup: slower is degraded, anything else failed."""
    return [Finding("warmup", DEGRADED if g.name.startswith(SOFT_GATES) else FAILED,
                    f"warmup {g.name}: {g.message}") for g in verdicts if not g.passed]


def container_findings(name: str, running: bool, image_id: str | None,
                       release_id: str | None, expected_image_id: str,
                       current: str) -> list[Finding]:
    """The serving container (service.container) against the current release: not running,
    or running another image or release than the one verified (a container replaced by hand,
    or an image re-tagged under it), fails the app: what serves is not what was verified."""
    if image_id is None:
        return [Finding("container", FAILED, f"serving container {name}: none on the host "
                                             f"(release {current} runs in {expected_image_id})")]
    wrong = []
    if image_id != expected_image_id:
        wrong.append(f"runs image {image_id}, release {current} was verified in "
                     f"{expected_image_id}")
    if release_id != current:
        wrong.append(f"serves release {release_id or '(no orchestrator label)'}, current is "
                     f"{current}")
    if not running:
        wrong.append("is not running")
    return [Finding("container", FAILED, f"serving container {name} {w}") for w in wrong]


def decide(findings: Sequence[Finding]) -> tuple[str, list[str]]:
    """The worst status among the findings, and the reasons (every non-healthy message)."""
    status = max((f.status for f in findings), key=RANK.__getitem__, default=HEALTHY)
    return status, [f.message for f in findings if f.status != HEALTHY]


def combine(per_app: Mapping[str, tuple[str, list[str]]],
            host_level: tuple[str, list[str]] = (HEALTHY, [])) -> tuple[str, list[str]]:
    """The host's status: the worst of its apps' (reasons prefixed by app) and its own."""
    status, reasons = host_level[0], list(host_level[1])
    for app, (s, rs) in sorted(per_app.items()):
        if RANK[s] > RANK[status]:
            status = s
        reasons += [f"{app}: {r}" for r in rs]
    return status, reasons


def action_for(status: str, on_failure: str | None) -> str:
    """What `reverify.on_failure` does for this status: report, rollback or redeploy."""
    if status != FAILED or on_failure in (None, "report"):
        return "report"
    return str(on_failure)


def excluded_hosts(records: Sequence[Mapping[str, Any]],
                   names: Sequence[str]) -> dict[str, str]:
    """{host: reason} of the named hosts whose last recorded status keeps them out of a new
    rollout (degraded or failed, until a re-verification finds them healthy again)."""
    latest = {r["host"]: r for r in records}
    out = {}
    for name in names:
        rec = latest.get(name)
        if rec is not None and rec.get("status") in EXCLUDED:
            why = "; ".join(rec.get("reasons") or ()) or "no reason recorded"
            out[name] = f"host {rec['status']} at its last verification: {why}"
    return out
