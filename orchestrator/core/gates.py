"""Verification before the switch, the pure part: the runner's request, its result, the gates.

    spec ──WarmupRequest.from_spec──> request JSON ──(host: remote/warmup.py)──> result JSON
    result JSON ──parse_result──> WarmupResult ──gates(result, spec.verify, baseline)──> [Gate]

No I/O here: `orchestrator.hosts.warmup.run_warmup` moves the request and the result over a
transport.
The spec is read through the attributes DESIGN.md documents (spec.model.format, spec.gpu.required,
spec.verify.*), so any object with those attributes (or mappings with those keys) works.

Gates, in order (a gate's message always states the measured figure and the limit):
    run          the runner finished without an error (a deadline, a crash in predict)
    load         the model loaded (else the exception type and text)
    golden       predictions match the golden outputs within rtol/atol
    version      no framework-version finding, unless verify.allow_version_mismatch
    gpu          when the request required a GPU: TensorFlow listed one and placed the model on it
    samples      at least one timed sample
    latency:pNN  for each limit in verify.latency_ms
    throughput   verify.min_throughput, samples/s
    regression:pNN  verify.max_regression against the baseline result (p50, p95, p99 ratios)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.core import hostjson
from orchestrator.core.spec import Spec
from orchestrator.errors import BadHostOutput

SCHEMA = 1
PERCENTILES = ("p50", "p95", "p99")
MAX_RESULT_BYTES = 4 << 20


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """An attribute of a spec section, or a key of a mapping standing in for one."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


@dataclass(frozen=True)
class WarmupRequest:
    """What the runner is asked to do; paths are the host's."""

    model_path: str
    format: str
    golden_path: str
    rtol: float = 1e-5
    atol: float = 1e-6
    warmup_iterations: int = 20
    iterations: int = 200
    batch_size: int = 1
    signature: str = "serving_default"
    method: str = "predict"
    gpu_required: bool = False
    allow_version_mismatch: bool = False
    deadline_s: float = 600.0
    sys_path: tuple[str, ...] = ()

    @classmethod
    def from_spec(cls, spec: Spec, *, model_path: str, golden_path: str,
                  deadline_s: float | None = None) -> WarmupRequest:
        """The request for `spec` with the model and golden file at these host paths.
        `deadline_s` defaults to verify.timeout_s (pass what is left of the step's budget)."""
        v = _get(spec, "verify")
        return cls(
            model_path=model_path, format=str(_get(_get(spec, "model"), "format")),
            golden_path=golden_path,
            rtol=float(_get(v, "rtol", 1e-5)), atol=float(_get(v, "atol", 1e-6)),
            warmup_iterations=int(_get(v, "warmup_iterations", 20)),
            iterations=int(_get(v, "iterations", 200)), batch_size=int(_get(v, "batch_size", 1)),
            signature=str(_get(v, "signature", "serving_default")),
            method=str(_get(v, "method", "predict")),
            gpu_required=bool(_get(_get(spec, "gpu"), "required", False)),
            allow_version_mismatch=bool(_get(v, "allow_version_mismatch", False)),
            deadline_s=float(deadline_s if deadline_s is not None else _get(v, "timeout_s", 600)),
        )

    def to_json(self) -> str:
        data = asdict(self)
        data["sys_path"] = list(self.sys_path)
        return json.dumps(data, sort_keys=True)


@dataclass(frozen=True)
class Latency:
    samples: int
    batch_size: int | None
    cold_start_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    throughput_per_s: float | None

    def ms(self, percentile: str) -> float | None:
        value: float | None = getattr(self, f"{percentile}_ms", None)
        return value


@dataclass(frozen=True)
class WarmupResult:
    """The runner's result for one host; `raw` is the whole JSON (what manifest.json keeps)."""

    host: str
    ok: bool
    phase: str
    error: dict[str, str] | None
    load: dict[str, Any] | None
    golden: dict[str, Any] | None
    findings: tuple[dict[str, Any], ...]
    gpu: dict[str, Any] | None
    latency: Latency | None
    gpu_memory_peak_bytes: int | None
    environment: dict[str, Any]
    duration_s: float | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def error_text(self) -> str | None:
        if not self.error:
            return None
        return f"{self.error.get('type', 'Error')}: {self.error.get('message', '')}"


def _last_json_line(host: str, text: str) -> dict[str, Any]:
    if len(text) > MAX_RESULT_BYTES:
        raise BadHostOutput(host, f"warmup output of {len(text)} bytes exceeds the cap")
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        raise BadHostOutput(host, "warmup printed nothing (killed before it could report?)")
    try:
        data = hostjson.loads(lines[-1])
    except ValueError as exc:
        raise BadHostOutput(host, f"warmup output is not JSON within bounds ({exc}): "
                                  f"{lines[-1][:200]!r}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise BadHostOutput(host, f"warmup output is not a schema-{SCHEMA} result object")
    return data


def _section(host: str, data: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = data.get(key)
    if value is not None and not isinstance(value, dict):
        raise BadHostOutput(host, f"warmup result: {key} is not an object")
    return value


def _num(host: str, section: dict[str, Any], key: str) -> float | None:
    value = section.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadHostOutput(host, f"warmup result: latency.{key} is not a number: {value!r}")
    return float(value)


def _latency(host: str, section: dict[str, Any] | None) -> Latency | None:
    if section is None:
        return None
    samples = section.get("samples", 0)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
        raise BadHostOutput(host, f"warmup result: latency.samples is not a count: {samples!r}")
    batch = section.get("batch_size")
    return Latency(
        samples=samples, batch_size=batch if isinstance(batch, int) else None,
        **{k: _num(host, section, k) for k in (
            "cold_start_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms",
            "throughput_per_s")},
    )


def parse_result(host: str, text: str) -> WarmupResult:
    """The runner's stdout (its last non-empty line) as a WarmupResult; BadHostOutput if not."""
    data = _last_json_line(host, text)
    error = _section(host, data, "error")
    findings = data.get("findings") or []
    if not isinstance(findings, list) or not all(isinstance(f, dict) for f in findings):
        raise BadHostOutput(host, "warmup result: findings is not a list of objects")
    memory = _section(host, data, "gpu_memory") or {}
    peak = memory.get("peak_used_bytes")
    return WarmupResult(
        host=host, ok=data.get("ok") is True, phase=str(data.get("phase", "?")),
        error={str(k): str(v) for k, v in error.items()} if error else None,
        load=_section(host, data, "load"), golden=_section(host, data, "golden"),
        findings=tuple(findings), gpu=_section(host, data, "gpu"),
        latency=_latency(host, _section(host, data, "latency")),
        gpu_memory_peak_bytes=peak if isinstance(peak, int) else None,
        environment=_section(host, data, "environment") or {},
        duration_s=data["duration_s"] if isinstance(data.get("duration_s"), int | float) else None,
        raw=data,
    )


def result_from_raw(host: str, raw: Mapping[str, Any]) -> WarmupResult:
    """A stored result (manifest.json's `warmup`) back as a WarmupResult."""
    return parse_result(host, json.dumps(dict(raw)))


# ---------------------------------------------------------------- gates

@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    message: str


def _fmt_ms(value: float) -> str:
    return f"{value:.3f} ms" if value < 100 else f"{value:.1f} ms"


def _run_gate(result: WarmupResult) -> Gate:
    err = result.error
    if err is None:
        return Gate("run", True, f"runner finished in {result.duration_s or 0:.1f} s")
    if err.get("type") == "DeadlineExceeded":
        return Gate("run", False, f"killed at the deadline during {err.get('phase', '?')}: "
                                  f"{err.get('message', '')}")
    return Gate("run", False, f"failed during {err.get('phase', '?')}: {result.error_text}")


def _load_gate(result: WarmupResult) -> Gate:
    load = result.load or {}
    if load.get("ok"):
        return Gate("load", True, f"model loaded in {float(load.get('seconds') or 0):.2f} s")
    err = load.get("error") or result.error or {}
    if not load:
        return Gate("load", False, f"model not loaded (runner stopped during {result.phase})")
    return Gate("load", False, f"model failed to load: {err.get('type', 'Error')}: "
                               f"{err.get('message', '')}")


def _golden_gate(result: WarmupResult) -> Gate:
    golden = result.golden
    if not golden:
        return Gate("golden", False, f"golden outputs not checked (runner stopped during "
                                     f"{result.phase})")
    tol = f"rtol {golden.get('rtol')}, atol {golden.get('atol')}"
    return Gate("golden", bool(golden.get("ok")), f"{golden.get('message', '')} ({tol})")


def _version_gate(result: WarmupResult, allow: bool) -> Gate:
    found = [f for f in result.findings if f.get("kind", "").endswith("version-mismatch")]
    if not found:
        return Gate("version", True, "no framework version mismatch")
    text = "; ".join(str(f.get("message")) for f in found)
    if allow:
        return Gate("version", True, f"{text} (allowed by verify.allow_version_mismatch)")
    return Gate("version", False, f"{text}; set verify.allow_version_mismatch to accept it")


def _gpu_gate(result: WarmupResult) -> Gate:
    gpu = result.gpu
    if gpu is None:  # only a runner killed from outside reports no GPU section at all
        return Gate("gpu", False, f"GPU not checked (runner stopped during {result.phase})")
    required, message = bool(gpu.get("required")), str(gpu.get("message", ""))
    if not required:
        return Gate("gpu", True, f"GPU not required ({message})" if message else "not required")
    if gpu.get("checked") is False:
        return Gate("gpu", False, f"GPU required but not checked (runner stopped during "
                                  f"{result.phase})")
    if gpu.get("ok") is None:  # a framework that never runs on a GPU (scikit-learn)
        return Gate("gpu", True, message)
    return Gate("gpu", bool(gpu.get("ok")), message)


def _latency_gates(lat: Latency | None, verify: Any) -> list[Gate]:
    if lat is None or lat.samples == 0:
        return [Gate("samples", False, "zero timed samples: latency not measured")]
    out = [Gate("samples", True, f"{lat.samples} timed calls at batch size {lat.batch_size}")]
    limits = _get(verify, "latency_ms")
    for p in PERCENTILES:
        limit, got = _get(limits, p), lat.ms(p)
        if limit is None:
            continue
        if got is None:
            out.append(Gate(f"latency:{p}", False, f"{p} not reported (limit {float(limit):g} ms)"))
            continue
        ok = got <= float(limit)
        out.append(Gate(f"latency:{p}", ok, f"{p} {_fmt_ms(got)} {'<=' if ok else '>'} "
                                            f"limit {float(limit):g} ms"))
    floor = _get(verify, "min_throughput")
    if floor is not None:
        tp = lat.throughput_per_s or 0.0
        ok = tp >= float(floor)
        out.append(Gate("throughput", ok, f"throughput {tp:.1f}/s {'>=' if ok else '<'} "
                                          f"minimum {float(floor):g}/s"))
    return out


def _regression_gates(lat: Latency | None, baseline: Latency | None, factor: Any) -> list[Gate]:
    if factor is None or lat is None or lat.samples == 0:
        return []
    if baseline is None or baseline.samples == 0:
        return [Gate("regression", True, "no baseline to compare with (first release)")]
    out = []
    for p in PERCENTILES:
        now, before = lat.ms(p), baseline.ms(p)
        if now is None or not before:
            continue
        ratio = now / before
        ok = ratio <= float(factor)
        out.append(Gate(f"regression:{p}", ok, f"{p} {_fmt_ms(now)} is {ratio:.2f}x the baseline "
                                               f"{_fmt_ms(before)} (max {float(factor):g}x)"))
    return out


def gates(result: WarmupResult, spec_verify: Any,
          baseline: WarmupResult | Mapping[str, Any] | None = None) -> list[Gate]:
    """Every gate for this result under `spec.verify`; the release may switch only if all pass."""
    if isinstance(baseline, Mapping):
        try:
            baseline = result_from_raw(result.host, baseline)
        except BadHostOutput:
            baseline = None  # an unreadable old baseline must not block a good release
    allow = bool(_get(spec_verify, "allow_version_mismatch", False))
    return [
        _run_gate(result), _load_gate(result), _golden_gate(result),
        _version_gate(result, allow), _gpu_gate(result),
        *_latency_gates(result.latency, spec_verify),
        *_regression_gates(result.latency, baseline.latency if baseline else None,
                           _get(spec_verify, "max_regression")),
    ]


def passed(gate_list: list[Gate]) -> bool:
    return all(g.passed for g in gate_list)


def failures(gate_list: list[Gate]) -> str:
    """One line naming every failed gate with its message ("" when all passed)."""
    return "; ".join(f"{g.name}: {g.message}" for g in gate_list if not g.passed)
