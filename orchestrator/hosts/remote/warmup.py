"""Warmup runner: load a model in the new venv, check it against its golden file, time it.

Shipped to a host and run by the *release's venv* python (3.9+), before anything is switched:

    <venv>/bin/python warmup.py REQUEST.json

Top level is stdlib-only; numpy and the framework are imported lazily from the venv. The tools
dir (this script's dir, so sys.path[0]) may hold `pynvml.py` for the GPU memory figure.

Output: exactly one JSON object on stdout, and nothing else. While it runs, fds 1 and 2 both
point at a private log file (TensorFlow and C++ libraries write there, whatever they print);
at the end the JSON goes to the saved original stdout and the log's tail to the original stderr.
While the warmup and latency iterations run, progress lines go to the original stderr
(`orchestrator-progress {"phase", "done", "total"}`, at most four a second per phase and the
last), which the controller reads as they come for the follow view.
Exit code 0 when the runner's own checks pass ("ok": true), 1 when they fail, 2 for a bad request.

Deadline: a watchdog thread emits a result with error DeadlineExceeded at `deadline_s` and then
SIGKILLs the runner's process group. The runner makes itself a process group leader at start and
writes its pid (= pgid) to REQUEST.json.pid, so the controller can kill the same group as well.

Request (JSON object):
    model_path, format (a name in formats.py's registry), golden_path,
    rtol (1e-5), atol (1e-6), warmup_iterations (20), iterations (200), batch_size (1),
    signature ("serving_default"), method ("predict", "predict_proba", ... or "__call__"),
    gpu_required (false),
    allow_version_mismatch (false), deadline_s (600), sys_path ([] dirs prepended to sys.path,
    for joblib models that pickle the project's own classes)

Golden .npz layout:
    inputs / outputs              a single unnamed input / output (joblib, Keras, one-input sigs)
    input:<name> / output:<name>  named inputs (SavedModel signature kwargs, Keras input names)
                                  and named outputs (SavedModel signature outputs)
    __fingerprint__               JSON string: the recording environment (see `environment`)
    __golden__                    JSON string: {"schema", "format", "signature", "method"}
All inputs share their first dimension: the samples. Latency batches take rows cyclically.

Result (JSON object, schema 1): ok, error {type, message, phase} | null, phase (the last one
reached: request, read-golden, load, cold-start, golden, gpu, warmup, latency, done), duration_s,
load {ok, seconds, error}, findings [{kind: "sklearn-version-mismatch", trained_with, running,
estimators, allowed, message}], warnings [...], golden {ok, samples, mismatched, rtol, atol,
message, outputs {name: {ok, samples, mismatched, max_abs_diff, worst [{index, element,
expected, got, abs_diff}]}}}, gpu {required, checked, ok (null: not applicable), gpus,
output_devices, built_with_cuda, build_info, missing_libraries, message}, latency
{cold_start_ms, warmup_iterations, samples, batch_size, p50_ms, p90_ms, p95_ms, p99_ms, max_ms,
mean_ms, throughput_per_s}, gpu_memory {peak_used_bytes, before_used_bytes, devices, error},
environment (see `environment`), log_tail (last lines of the captured stdout/stderr).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from typing import Any

# The runner's parts, one concept each. On a host this file runs as a script and its siblings
# sit beside it in the tools dir (sys.path[0]); on the controller (`golden record`, the tests)
# it is the module orchestrator.hosts.remote.warmup and they are its package's modules.
if __package__:
    from . import formats
    from .warmup_env import NvmlSampler, environment
    from .warmup_golden import compare_golden, method_cause, read_golden
else:
    import formats  # type: ignore[no-redef]
    from warmup_env import NvmlSampler, environment  # type: ignore[no-redef]
    from warmup_golden import compare_golden, method_cause, read_golden  # type: ignore[no-redef]

SCHEMA = 1
DYNLIB_MARK = "Could not load dynamic library"
LOG_TAIL_BYTES = 64 * 1024
DEFAULTS: dict[str, Any] = {
    "golden_path": None, "rtol": 1e-5, "atol": 1e-6, "warmup_iterations": 20,
    "iterations": 200, "batch_size": 1, "signature": "serving_default", "method": "predict",
    "gpu_required": False, "allow_version_mismatch": False, "deadline_s": 600.0, "sys_path": [],
}


#: Progress lines on stderr while the iterations run: `<prefix>{"phase", "done", "total"}`,
#: read as they come by the controller (orchestrator/core/progress.py: the same prefix).
PROGRESS_PREFIX = "orchestrator-progress "
PROGRESS_EVERY_S = 0.25

NUMBERS = (("rtol", float, 0), ("atol", float, 0), ("warmup_iterations", int, 0),
           ("iterations", int, 0), ("batch_size", int, 1), ("deadline_s", float, 0.1))


class BadRequest(Exception):
    pass


# ---------------------------------------------------------------- latency

def batches(inputs, batch_size, count):
    """`count` distinct batches of `batch_size` rows taken cyclically from the inputs."""
    import numpy as np

    n = len(next(iter(inputs.values())))
    cycle = n // math.gcd(n, batch_size)
    out = []
    for i in range(max(1, min(count, cycle))):
        idx = (i * batch_size + np.arange(batch_size)) % n
        out.append({k: v[idx] for k, v in inputs.items()})
    return out


def percentile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(durations_ns, batch_size):
    if not durations_ns:
        return {"samples": 0}
    ms = sorted(d / 1e6 for d in durations_ns)
    total_s = sum(durations_ns) / 1e9
    out = {"samples": len(ms), "batch_size": batch_size, "max_ms": round(ms[-1], 4),
           "mean_ms": round(sum(ms) / len(ms), 4),
           "throughput_per_s": round(len(ms) * batch_size / total_s, 2) if total_s > 0 else None}
    for q in (50, 90, 95, 99):
        out[f"p{q}_ms"] = round(percentile(ms, q), 4)  # 100 ns: below the clock's noise anyway
    return out


def time_calls(model, prepared, iterations, offset=0, report=None):
    """`report(done, total)` after each call (the progress lines; not timed)."""
    clock = time.perf_counter_ns
    durations = []
    for i in range(iterations):
        batch = prepared[(offset + i) % len(prepared)]
        t0 = clock()
        model.run(batch)
        durations.append(clock() - t0)
        if report is not None:
            report(i + 1, iterations)
    return durations


# ---------------------------------------------------------------- process plumbing

class Channel:
    """Owns the real stdout/stderr: only the JSON result reaches stdout, once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.emitted = False
        self.out_fd = self.err_fd = None
        self.log = None

    def capture(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.out_fd, self.err_fd = os.dup(1), os.dup(2)
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the process
        os.dup2(self.log.fileno(), 1)
        os.dup2(self.log.fileno(), 2)

    def log_text(self):
        if self.log is None:
            return ""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        size = os.fstat(self.log.fileno()).st_size
        want = min(size, LOG_TAIL_BYTES * 4)
        data = os.pread(self.log.fileno(), want, size - want)
        return data.decode("utf-8", "replace")

    def emit(self, result):
        """Write the one result; False when another thread already did."""
        with self.lock:
            if self.emitted:
                return False
            self.emitted = True
            log = self.log_text()
            missing = [ln.strip() for ln in log.splitlines() if DYNLIB_MARK in ln][:10]
            gpu = result.get("gpu")
            if isinstance(gpu, dict):
                gpu["missing_libraries"] = missing
                if missing and not gpu.get("ok"):
                    gpu["message"] += "; " + missing[0]
            result["log_tail"] = log.splitlines()[-20:]
            line = (json.dumps(result, sort_keys=True, default=str) + "\n").encode()
            out = self.out_fd if self.out_fd is not None else 1
            _write_all(out, line)
            if self.err_fd is not None and log:
                _write_all(self.err_fd, log[-LOG_TAIL_BYTES:].encode("utf-8", "replace"))
            return True


    def progress(self, phase):
        """A reporter of `phase`'s iterations: at most one line per PROGRESS_EVERY_S, and the
        last, on the original stderr, while the result is not written yet."""
        state = {"at": 0.0}

        def report(done, total):
            now = time.monotonic()
            if done < total and now - state["at"] < PROGRESS_EVERY_S:
                return
            state["at"] = now
            line = PROGRESS_PREFIX + json.dumps({"phase": phase, "done": done, "total": total})
            with self.lock:
                if not self.emitted and self.err_fd is not None:
                    _write_all(self.err_fd, (line + "\n").encode())
        return report


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


class State:
    """The result being built, shared with the watchdog (which may emit it half-done)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.data: dict[str, Any] = {"schema": SCHEMA, "ok": False, "error": None, "phase": "start",
                     "findings": [], "warnings": [], "load": None, "golden": None, "gpu": None,
                     "latency": None, "gpu_memory": None, "environment": None}
        self.started = time.monotonic()

    def set(self, **items):
        with self.lock:
            self.data.update(items)

    def snapshot(self):
        with self.lock:
            data = json.loads(json.dumps(self.data, default=str))
        data["duration_s"] = round(time.monotonic() - self.started, 3)
        return data


def start_watchdog(seconds, state, channel):
    """At the deadline: emit what is known, with DeadlineExceeded, then kill our process group."""
    done = threading.Event()

    def watch():
        if done.wait(seconds):
            return
        result = state.snapshot()
        result["ok"] = False
        result["error"] = {"type": "DeadlineExceeded", "phase": result["phase"],
                           "message": f"deadline of {seconds:g}s exceeded during {result['phase']}"}
        channel.emit(result)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="deadline", daemon=True).start()
    return done


def become_group_leader():
    with contextlib.suppress(OSError):  # a session leader already leads its group
        os.setpgid(0, 0)


def read_request(path):
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as exc:
        raise BadRequest(f"cannot read request {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise BadRequest("request must be a JSON object")
    missing = [k for k in ("model_path", "format", "golden_path") if not raw.get(k)]
    if missing:
        raise BadRequest("request lacks {}".format(", ".join(missing)))
    if raw["format"] not in formats.NAMES:
        known = ", ".join(formats.NAMES)
        raise BadRequest(f"unknown format {raw['format']!r} (one of {known})")
    request = dict(DEFAULTS)
    request.update(raw)
    for key, kind, low in NUMBERS:
        value = request[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low \
                or (kind is int and value != int(value)):
            raise BadRequest(f"{key} must be {kind.__name__} >= {low}, not {value!r}")
        request[key] = kind(value)
    if not isinstance(request["sys_path"], list):
        raise BadRequest("sys_path must be a list of directories")
    return request


# ---------------------------------------------------------------- the run

def error_of(exc, phase):
    return {"type": type(exc).__name__, "message": str(exc) or repr(exc), "phase": phase}


def verify(request, state, channel=None):
    """Load -> cold call -> golden -> GPU -> warmup -> timed calls; each phase into `state`."""
    for entry in reversed(request["sys_path"]):
        sys.path.insert(0, entry)
    required = bool(request["gpu_required"])
    state.set(phase="read-golden", gpu={"required": required, "checked": False, "ok": None,
                                        "message": "not checked: the runner stopped first"})
    try:
        inputs, expected = read_golden(request["golden_path"])
    except Exception as exc:  # numpy missing, no such file, not an .npz: not the model's fault
        state.set(error=error_of(exc, "read-golden"))
        return False
    state.set(phase="load")
    t0 = time.perf_counter()
    try:
        model = formats.get(request["format"]).load(request["model_path"], request["signature"],
                                                    request["method"])
    except Exception as exc:
        state.set(load={"ok": False, "seconds": time.perf_counter() - t0,
                        "error": error_of(exc, "load"),
                        "traceback": traceback.format_exc().splitlines()[-8:]},
                  error=error_of(exc, "load"))
        return False
    allowed = bool(request["allow_version_mismatch"])
    findings = [dict(f, allowed=allowed) for f in model.findings]
    state.set(load={"ok": True, "seconds": time.perf_counter() - t0, "error": None},
              findings=findings, warnings=model.warnings)
    sampler = NvmlSampler()
    sampler.start()
    try:
        ok = measure(model, inputs, expected, request, state, channel)
    finally:
        state.set(gpu_memory=sampler.report())
    return ok and (allowed or not findings)


def measure(model, inputs, expected, request, state, channel=None):
    b, iters = int(request["batch_size"]), int(request["iterations"])
    warm = int(request["warmup_iterations"])
    try:
        state.set(phase="cold-start")
        prepared = [model.prepare(x) for x in batches(inputs, b, iters + warm)]
        t0 = time.perf_counter_ns()
        model.run(prepared[0])
        cold_ms = round((time.perf_counter_ns() - t0) / 1e6, 4)
        state.set(phase="golden", latency={"cold_start_ms": cold_ms, "samples": 0})
        got = model.run(model.prepare(inputs))
        golden = compare_golden(expected, got, float(request["rtol"]), float(request["atol"]))
        cause = None if golden["ok"] else method_cause(
            request["golden_path"], request["method"],
            formats.get(request["format"]).calls_method)
        if cause:
            golden["message"] = f"{cause}: {golden['message']}"
        state.set(golden=golden, phase="gpu")
        gpu_ok = check_gpu(model, prepared[0], request, state)
        state.set(phase="warmup")
        report = (lambda phase: None) if channel is None else channel.progress
        time_calls(model, prepared, warm, offset=1, report=report("warmup"))
        state.set(phase="latency")
        durations = time_calls(model, prepared, iters, offset=1 + warm,
                               report=report("latency"))
    except Exception as exc:
        state.set(error=error_of(exc, state.snapshot()["phase"]))
        return False
    latency = dict(summarize(durations, b), cold_start_ms=cold_ms, warmup_iterations=warm)
    state.set(latency=latency, phase="done")
    return golden["ok"] and gpu_ok and latency["samples"] > 0


def check_gpu(model, prepared, request, state):
    """The format's own verdict (formats_*.py); ok None: a CPU-only format, nothing to fail."""
    required = bool(request["gpu_required"])
    gpu = model.gpu(prepared, required)
    state.set(gpu=gpu)
    return gpu["ok"] is None or bool(gpu["ok"]) or not required


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: python warmup.py REQUEST.json\n")
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep warnings: dlopen failures are W
    become_group_leader()
    channel, state = Channel(), State()
    channel.capture()
    try:
        request = read_request(argv[1])
    except BadRequest as exc:
        result = state.snapshot()
        result["error"] = error_of(exc, "request")
        channel.emit(result)
        return 2
    done = start_watchdog(float(request["deadline_s"]), state, channel)
    try:
        with open(argv[1] + ".pid", "w") as f:
            f.write(f"{os.getpgrp()}\n")
    except OSError:
        pass
    ok = False
    try:
        ok = verify(request, state, channel)
    except Exception as exc:  # a bug here must still come back as one JSON result
        state.set(error=error_of(exc, state.snapshot()["phase"]))
    state.set(environment=environment())
    result = state.snapshot()
    result["ok"] = bool(ok) and result["error"] is None
    done.set()
    channel.emit(result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    os._exit(code)  # skip TensorFlow's slow, sometimes noisy, interpreter teardown
