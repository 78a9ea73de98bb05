"""Warmup runner: load a model in the new venv, check it against its golden file, time it.

Shipped to a host and run by the *release's venv* python (3.9+), before anything is switched:

    <venv>/bin/python warmup.py REQUEST.json

Top level is stdlib-only; numpy and the framework are imported lazily from the venv. The tools
dir (this script's dir, so sys.path[0]) may hold `pynvml.py` for the GPU memory figure.

Output: exactly one JSON object on stdout, and nothing else. While it runs, fds 1 and 2 both
point at a private log file (TensorFlow and C++ libraries write there, whatever they print);
at the end the JSON goes to the saved original stdout and the log's tail to the original stderr.
Exit code 0 when the runner's own checks pass ("ok": true), 1 when they fail, 2 for a bad request.

Deadline: a watchdog thread emits a result with error DeadlineExceeded at `deadline_s` and then
SIGKILLs the runner's process group. The runner makes itself a process group leader at start and
writes its pid (= pgid) to REQUEST.json.pid, so the controller can kill the same group as well.

Request (JSON object):
    model_path, format ("tensorflow-savedmodel" | "keras" | "joblib"), golden_path,
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
import platform
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings

SCHEMA = 1
FORMATS = ("tensorflow-savedmodel", "keras", "joblib")
DYNLIB_MARK = "Could not load dynamic library"
FRAMEWORKS = ("tensorflow", "keras", "scikit-learn", "numpy", "joblib")
WORST = 5
LOG_TAIL_BYTES = 64 * 1024
DEFAULTS = {
    "golden_path": None, "rtol": 1e-5, "atol": 1e-6, "warmup_iterations": 20,
    "iterations": 200, "batch_size": 1, "signature": "serving_default", "method": "predict",
    "gpu_required": False, "allow_version_mismatch": False, "deadline_s": 600.0, "sys_path": [],
}


NUMBERS = (("rtol", float, 0), ("atol", float, 0), ("warmup_iterations", int, 0),
           ("iterations", int, 0), ("batch_size", int, 1), ("deadline_s", float, 0.1))


class BadRequest(Exception):
    pass


# ---------------------------------------------------------------- golden files

def golden_key(kind, name):
    """npz key for an input/output name; "" is the single unnamed one."""
    return kind + "s" if name == "" else f"{kind}:{name}"


def split_golden(arrays):
    """{npz key: array} -> (inputs, outputs), each {name: array} ("" for unnamed)."""
    inputs, outputs = {}, {}
    for key, value in arrays.items():
        if key in ("inputs", "outputs"):
            (inputs if key == "inputs" else outputs)[""] = value
        elif key.startswith("input:"):
            inputs[key[len("input:"):]] = value
        elif key.startswith("output:"):
            outputs[key[len("output:"):]] = value
    return inputs, outputs


def read_golden(path):
    import numpy as np

    with np.load(path, allow_pickle=False) as npz:
        inputs, outputs = split_golden({k: npz[k] for k in npz.files})
    if not inputs:
        raise ValueError(f"golden file {path} has no inputs (keys inputs or input:<name>)")
    counts = {len(v) if v.ndim else 1 for v in inputs.values()}
    if len(counts) != 1:
        raise ValueError(f"golden inputs differ in their number of samples: {sorted(counts)}")
    return inputs, outputs


def _match_outputs(expected, got):
    """Pairs (name, expected, got|None); an unnamed golden output matches a single model output."""
    if set(expected) == {""} and len(got) == 1:
        return [("", expected[""], next(iter(got.values())))]
    if set(got) == {""} and len(expected) == 1:
        name = next(iter(expected))
        return [(name, expected[name], got[""])]
    return [(name, exp, got.get(name)) for name, exp in sorted(expected.items())]


def compare_output(expected, got, rtol, atol):
    """One output against its golden values, np.allclose semantics, per sample."""
    import numpy as np

    exp, act = np.asarray(expected), np.asarray(got)
    if exp.shape != act.shape:
        return {"ok": False, "samples": len(exp) if exp.ndim else 1, "mismatched": None,
                "message": f"shape {list(act.shape)}, golden has {list(exp.shape)}"}
    n = len(exp) if exp.ndim else 1
    numeric = exp.dtype.kind not in "USOb" and act.dtype.kind not in "USOb"
    if not numeric:  # class labels: equal or not, no distance
        close = exp == act
        diff = (~close).astype(np.float64)
    else:
        close = np.isclose(act, exp, rtol=rtol, atol=atol)
        diff = np.abs(act.astype(np.float64) - exp.astype(np.float64))
    close2, diff2 = close.reshape(n, -1), diff.reshape(n, -1)
    bad = np.flatnonzero(~close2.all(axis=1))
    worst = []
    per_sample = np.where(np.isnan(diff2), np.inf, diff2).max(axis=1) if diff2.size else diff2
    for i in sorted(bad.tolist(), key=lambda i: -float(per_sample[i]))[:WORST]:
        j = int(np.argmax(np.where(close2[i], -1.0, np.nan_to_num(diff2[i], nan=np.inf))))
        worst.append({"index": int(i), "element": j,
                      "expected": _scalar(exp.reshape(n, -1)[i, j]),
                      "got": _scalar(act.reshape(n, -1)[i, j]),
                      "abs_diff": _scalar(diff2[i, j]) if numeric else None})
    max_diff = _scalar(diff.max()) if diff.size and numeric else None
    return {"ok": not len(bad), "samples": n, "mismatched": len(bad),
            "max_abs_diff": max_diff, "worst": worst}


def compare_golden(expected, got, rtol, atol):
    outputs, problems = {}, []
    for name, exp, act in _match_outputs(expected, got):
        label = name or "outputs"
        if act is None:
            has = ", ".join(sorted(k or "outputs" for k in got))
            outputs[label] = {"ok": False,
                              "message": f"missing from the model's outputs (has: {has})"}
        else:
            outputs[label] = compare_output(exp, act, rtol, atol)
        entry = outputs[label]
        if not entry["ok"]:
            problems.append(_describe_mismatch(label, entry))
    samples = max([o.get("samples") or 0 for o in outputs.values()] or [0])
    mismatched = sum(o.get("mismatched") or 0 for o in outputs.values())
    return {"ok": not problems and bool(outputs), "samples": samples, "mismatched": mismatched,
            "rtol": rtol, "atol": atol, "outputs": outputs,
            "message": "; ".join(problems) if problems else
            ("no golden outputs to compare" if not outputs else f"all {samples} samples match")}


def _describe_mismatch(label, entry):
    if "worst" not in entry:
        return "{}: {}".format(label, entry["message"])
    worst = ", ".join(f"#{w['index']} expected {_fmt(w['expected'])} got {_fmt(w['got'])}"
                      + ("" if w["abs_diff"] is None else f" (|diff| {_fmt(w['abs_diff'])})")
                      for w in entry["worst"][:3])
    return (f"{label}: {entry['mismatched']} of {entry['samples']} samples differ;"
            f" worst: {worst}")


def _scalar(value):
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no inf/nan
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def _fmt(value):
    """A golden value in a message: floats short, "nan"/"inf" (strings after _scalar) bare."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value if value in ("nan", "inf", "-inf") else repr(value)


# ---------------------------------------------------------------- models

class SavedModel:
    """A TensorFlow SavedModel called through one named signature."""

    def __init__(self, path, signature):
        import tensorflow as tf

        self.tf = tf
        self.obj = tf.saved_model.load(path)
        if signature not in self.obj.signatures:
            has = ", ".join(sorted(self.obj.signatures)) or "none"
            raise LookupError(f"signature {signature!r} not in the SavedModel (has: {has})")
        self.fn = self.obj.signatures[signature]
        self.specs = dict(self.fn.structured_input_signature[1])
        self.findings = []

    def prepare(self, inputs):
        if set(inputs) == {""}:
            if len(self.specs) != 1:
                raise ValueError("golden has unnamed inputs but the signature takes {}: use "
                                 "input:<name> keys".format(", ".join(sorted(self.specs))))
            inputs = {next(iter(self.specs)): inputs[""]}
        if set(inputs) != set(self.specs):
            raise ValueError(f"golden inputs {sorted(inputs)}, "
                             f"signature inputs {sorted(self.specs)}")
        return {k: self.tf.constant(v, dtype=self.specs[k].dtype) for k, v in inputs.items()}

    def call(self, prepared):
        return self.fn(**prepared)

    def run(self, prepared):
        return {k: v.numpy() for k, v in self.call(prepared).items()}

    def devices(self, prepared):
        return sorted({v.device for v in self.call(prepared).values()})


class KerasModel:
    """A .keras file, called directly (model(x, training=False)), as a server would."""

    def __init__(self, path):
        import tensorflow as tf

        try:
            import keras
            load = keras.models.load_model
        except ImportError:
            load = tf.keras.models.load_model
        self.tf = tf
        self.model = load(path, compile=False)
        self.findings = []

    def _input_dtypes(self):
        out = {}
        for t in getattr(self.model, "inputs", None) or []:
            dtype = str(getattr(t, "dtype", "float32"))
            out[getattr(t, "name", "")] = dtype.replace("<dtype: '", "").rstrip("'>")
        return out

    def prepare(self, inputs):
        dtypes = self._input_dtypes()
        if set(inputs) == {""}:
            dtype = next(iter(dtypes.values()), "float32")
            return self.tf.convert_to_tensor(inputs[""].astype(dtype))
        return {k: self.tf.convert_to_tensor(v.astype(dtypes.get(k, "float32")))
                for k, v in inputs.items()}

    def call(self, prepared):
        out = self.model(prepared, training=False)
        if isinstance(out, dict):
            return dict(out)
        if isinstance(out, (list, tuple)):
            names = list(getattr(self.model, "output_names", None) or [])
            if len(names) != len(out):
                names = [str(i) for i in range(len(out))]
            return dict(zip(names, out, strict=False))
        return {"": out}

    def run(self, prepared):
        return {k: v.numpy() for k, v in self.call(prepared).items()}

    def devices(self, prepared):
        return sorted({getattr(v, "device", "") for v in self.call(prepared).values()})


class JoblibModel:
    """An object saved with joblib (a scikit-learn estimator or pipeline, or any picklable
    model whose package the lock installs), called through `method`."""

    def __init__(self, path, method):
        import joblib

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.model = joblib.load(path)
        self.findings, self.warnings = version_findings(caught)
        self.fn = getattr(self.model, method, None)
        if self.fn is None:
            raise AttributeError(f"{type(self.model).__name__} has no method {method}")

    def prepare(self, inputs):
        if len(inputs) != 1:
            raise ValueError(f"a joblib model takes one input array, golden has {sorted(inputs)}")
        return next(iter(inputs.values()))

    def run(self, prepared):
        import numpy as np

        return {"": np.asarray(self.fn(prepared))}

    def devices(self, prepared):
        return []


def version_findings(caught):
    """scikit-learn's InconsistentVersionWarning (one per pickled estimator) -> one finding."""
    pairs, others = {}, []
    for w in caught:
        msg = w.message
        if type(msg).__name__ == "InconsistentVersionWarning":
            key = (str(getattr(msg, "original_sklearn_version", "?")),
                   str(getattr(msg, "current_sklearn_version", "?")))
            pairs.setdefault(key, []).append(str(getattr(msg, "estimator_name", "?")))
        else:
            others.append(f"{type(msg).__name__}: {msg}")
    findings = [{"kind": "sklearn-version-mismatch", "trained_with": old, "running": new,
                 "estimators": sorted(set(names)),
                 "message": "model pickled with scikit-learn {}, running {} ({})".format(
                     old, new, ", ".join(sorted(set(names))))}
                for (old, new), names in sorted(pairs.items())]
    return findings, others[:20]


def model_file(path, suffixes):
    """A model given as a directory: its one file with one of `suffixes` (model.* first)."""
    if not os.path.isdir(path):
        return path
    names = sorted(n for n in os.listdir(path) if n.endswith(suffixes))
    preferred = [n for n in names if n.startswith("model.")]
    if len(preferred) == 1 or len(names) == 1:
        return os.path.join(path, (preferred or names)[0])
    kinds = "/".join(suffixes)
    raise FileNotFoundError(f"{path}: expected one {kinds} file in the model directory, "
                            f"found {names or 'none'}")


def load_model(fmt, path, signature="serving_default", method="predict"):
    """A directory model for joblib may carry the modules its pickle references (a project's
    own estimator classes): the directory goes on sys.path before unpickling."""
    if fmt == "tensorflow-savedmodel":
        return SavedModel(path, signature)
    if fmt == "keras":
        return KerasModel(model_file(path, (".keras", ".h5")))
    if fmt == "joblib":
        if os.path.isdir(path) and path not in sys.path:
            sys.path.insert(0, path)
        return JoblibModel(model_file(path, (".joblib", ".pkl", ".pickle")), method)
    raise ValueError("unknown model format {!r} (one of {})".format(fmt, ", ".join(FORMATS)))


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


def time_calls(model, prepared, iterations, offset=0):
    clock = time.perf_counter_ns
    durations = []
    for i in range(iterations):
        batch = prepared[(offset + i) % len(prepared)]
        t0 = clock()
        model.run(batch)
        durations.append(clock() - t0)
    return durations


# ---------------------------------------------------------------- GPU

def tensorflow_gpu(tf, devices, required):
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    info = {k: str(v) for k, v in dict(tf.sysconfig.get_build_info()).items()}
    on_gpu = bool(devices) and all("GPU" in d.upper() for d in devices)
    ok = bool(gpus) and on_gpu
    saw = "TensorFlow {}: built with CUDA {} (cuda {}, cudnn {}), GPUs listed: {}, " \
        "outputs on {}".format(
        tf.__version__, tf.test.is_built_with_cuda(), info.get("cuda_version", "none"),
        info.get("cudnn_version", "none"), ", ".join(gpus) or "none",
        ", ".join(devices) or "unknown")
    return {"required": required, "checked": True, "ok": ok, "gpus": gpus,
            "output_devices": devices, "built_with_cuda": bool(tf.test.is_built_with_cuda()),
            "build_info": info,
            "message": ("model runs on the GPU: " if ok else "model does not run on a GPU: ") + saw}


class NvmlSampler(threading.Thread):
    """Peak used GPU memory (bytes, per device) sampled every 20 ms while the model runs."""

    def __init__(self):
        threading.Thread.__init__(self, daemon=True)
        self.stop_event = threading.Event()
        self.error, self.before, self.peak, self.handles, self.nvml = None, [], [], [], None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            count = pynvml.nvmlDeviceGetCount()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self.before = self._used()
            self.peak = list(self.before)
        except Exception as exc:  # no pynvml, no driver: the figure is null, with the reason
            self.error = f"{type(exc).__name__}: {exc}"

    def _used(self):
        return [int(self.nvml.nvmlDeviceGetMemoryInfo(h).used) for h in self.handles]

    def run(self):
        while self.nvml is not None and not self.stop_event.wait(0.02):
            try:
                self.peak = [max(a, b) for a, b in zip(self.peak, self._used(), strict=False)]
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                return

    def report(self):
        self.stop_event.set()
        if self.nvml is None or not self.handles:
            return {"peak_used_bytes": None, "before_used_bytes": None, "devices": [],
                    "error": self.error or "no GPU"}
        return {"peak_used_bytes": max(self.peak), "before_used_bytes": max(self.before),
                "devices": self.peak, "error": self.error}


# ---------------------------------------------------------------- environment

def environment():
    """Where the model runs: Python, every installed distribution, GPU/driver as NVML sees them.

    The same structure is the golden file's fingerprint (recorded where the model was trained),
    so the two can be diffed key by key.
    """
    try:
        from importlib import metadata
        packages = {}
        for dist in metadata.distributions():
            name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()  # PEP 503
            if name:
                packages[name] = dist.version
    except Exception as exc:
        packages = {"<error>": str(exc)}
    frameworks = {name: packages.get(name) for name in FRAMEWORKS}
    if frameworks["tensorflow"] is None:  # tensorflow-cpu, -gpu, -intel, -macos builds
        frameworks["tensorflow"] = next((v for k, v in sorted(packages.items())
                                         if k.startswith("tensorflow-") and k.split("-", 1)[1]
                                         in ("cpu", "gpu", "intel", "macos")), None)
    env = {"python": platform.python_version(), "implementation": platform.python_implementation(),
           "executable": sys.executable, "platform": platform.platform(),
           "machine": platform.machine(), "frameworks": frameworks, "packages": packages,
           "gpu": nvml_facts()}
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        with contextlib.suppress(Exception):
            build = dict(tf.sysconfig.get_build_info())
            env["tensorflow_build"] = {k: str(v) for k, v in build.items()}
    return env


def nvml_facts():
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:
        return {"driver": None, "cuda_driver": None, "devices": [],
                "error": f"{type(exc).__name__}: {exc}"}
    try:
        def text(v):
            return v.decode() if isinstance(v, bytes) else str(v)

        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            devices.append({"name": text(pynvml.nvmlDeviceGetName(h)),
                            "memory_total_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                            "compute_capability": f"{major}.{minor}"})
        return {"driver": text(pynvml.nvmlSystemGetDriverVersion()),
                "cuda_driver": f"{cuda // 1000}.{(cuda % 1000) // 10}",
                "devices": devices, "error": None}
    except Exception as exc:
        return {"driver": None, "cuda_driver": None, "devices": [],
                "error": f"{type(exc).__name__}: {exc}"}
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


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


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


class State:
    """The result being built, shared with the watchdog (which may emit it half-done)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.data = {"schema": SCHEMA, "ok": False, "error": None, "phase": "start",
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
    if raw["format"] not in FORMATS:
        known = ", ".join(FORMATS)
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


def verify(request, state):
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
        model = load_model(request["format"], request["model_path"], request["signature"],
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
              findings=findings, warnings=getattr(model, "warnings", []))
    sampler = NvmlSampler()
    sampler.start()
    try:
        ok = measure(model, inputs, expected, request, state)
    finally:
        state.set(gpu_memory=sampler.report())
    return ok and (allowed or not findings)


def measure(model, inputs, expected, request, state):
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
        state.set(golden=golden, phase="gpu")
        gpu_ok = check_gpu(model, prepared[0], request, state)
        state.set(phase="warmup")
        time_calls(model, prepared, warm, offset=1)
        state.set(phase="latency")
        durations = time_calls(model, prepared, iters, offset=1 + warm)
    except Exception as exc:
        state.set(error=error_of(exc, state.snapshot()["phase"]))
        return False
    latency = dict(summarize(durations, b), cold_start_ms=cold_ms, warmup_iterations=warm)
    state.set(latency=latency, phase="done")
    return golden["ok"] and gpu_ok and latency["samples"] > 0


def check_gpu(model, prepared, request, state):
    required = bool(request["gpu_required"])
    tf = getattr(model, "tf", None)
    if tf is None:
        state.set(gpu={"required": required, "checked": True, "ok": None,
                       "message": "not applicable: {} runs on the CPU".format(request["format"])})
        return True
    gpu = tensorflow_gpu(tf, model.devices(prepared), required)
    state.set(gpu=gpu)
    return gpu["ok"] or not required


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
        ok = verify(request, state)
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
