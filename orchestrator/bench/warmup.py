"""The warmup runner's own cost beside the models' time per call.

- the timing loop's overhead per call: the runner's `time_calls` around a no-op model, in-process;
- a no-op joblib model and a small scikit-learn model (LogisticRegression.predict_proba, batch
  1) run through the real runner script in a subprocess: p50/p99 per call, and the wall time
  from start to JSON (interpreter + imports + load + golden + benchmark);
- the same scikit-learn call made directly, without the runner: the difference is what the
  runner adds to each measured call;
- a tiny TensorFlow SavedModel through the runner, when TensorFlow is installed.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RUNNER = Path(__file__).resolve().parents[1] / "hosts" / "remote" / "warmup.py"
ITERATIONS = 2000

NOOP_MODULE = '''
class NoOp:
    def predict(self, x):
        return x
'''


class _NoOp:
    def run(self, prepared: Any) -> None:
        return None


def run() -> None:
    try:
        import joblib
        import numpy as np
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:
        print(f"skipped: {exc} (install the `ml` extra)")
        return
    runner: Any = importlib.import_module("orchestrator.hosts.remote.warmup")
    loop = runner.time_calls(_NoOp(), [None], 100_000)
    print(f"runner timing loop, no-op model (in-process): "
          f"p50 {_pct(loop, 50):.0f} ns/call, mean {sum(loop) / len(loop):.0f} ns/call")
    with tempfile.TemporaryDirectory(prefix="bench-warmup-") as tmp:
        d = Path(tmp)
        x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
        np.savez(d / "noop-golden.npz", inputs=x, outputs=x)
        (d / "noop").mkdir()
        (d / "noop" / "noop_model.py").write_text(NOOP_MODULE)
        sys.path.insert(0, str(d / "noop"))
        try:
            joblib.dump(importlib.import_module("noop_model").NoOp(), d / "noop" / "model.joblib")
        finally:
            sys.path.remove(str(d / "noop"))
            sys.modules.pop("noop_model", None)
        _report("no-op model (joblib) via runner", _via_runner(d, d / "noop", "joblib",
                                                                 d / "noop-golden.npz"))
        model = LogisticRegression(max_iter=300).fit(x, (x[:, 0] > 0).astype(int))
        joblib.dump(model, d / "lr.joblib")
        np.savez(d / "lr-golden.npz", inputs=x, outputs=model.predict_proba(x))
        direct = []
        for i in range(ITERATIONS):
            row = x[i % len(x)][None, :]
            t0 = time.perf_counter_ns()
            model.predict_proba(row)
            direct.append(time.perf_counter_ns() - t0)
        print(f"LogisticRegression.predict_proba, direct call: p50 {_pct(direct, 50) / 1e3:.1f} "
              f"us, p99 {_pct(direct, 99) / 1e3:.1f} us")
        _report("LogisticRegression via runner", _via_runner(
            d, d / "lr.joblib", "joblib", d / "lr-golden.npz", method="predict_proba"))
        _tensorflow(d, x)


def _tensorflow(d: Path, x: Any) -> None:
    try:
        import numpy as np
        import tensorflow as tf
    except ImportError:
        print("TensorFlow not installed: SavedModel figures skipped")
        return
    module = tf.Module()
    module.w = tf.Variable(np.ones((4, 3), np.float32))
    module.serve = tf.function(lambda inputs: {"y": tf.matmul(inputs, module.w)},
                               input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    tf.saved_model.save(module, str(d / "sm"), signatures={"serving_default": module.serve})
    np.savez(d / "sm-golden.npz", inputs=x, outputs=x @ np.ones((4, 3), np.float32))
    _report("tiny SavedModel via runner", _via_runner(d, d / "sm", "tensorflow-savedmodel",
                                                      d / "sm-golden.npz"))


def _via_runner(d: Path, model: Path, fmt: str, golden: Path, **extra: Any) -> dict[str, Any]:
    request = {"model_path": str(model), "format": fmt, "golden_path": str(golden),
               "iterations": ITERATIONS, "warmup_iterations": 50, "deadline_s": 300, **extra}
    path = d / "request.json"
    path.write_text(json.dumps(request))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-E", str(RUNNER), str(path)], capture_output=True,
                          text=True, start_new_session=True, timeout=360)
    result: dict[str, Any] = json.loads(proc.stdout)
    result["wall_s"] = time.perf_counter() - started
    return result


def _report(label: str, result: dict[str, Any]) -> None:
    lat = result.get("latency") or {}
    if not result.get("ok") or not lat.get("samples"):
        print(f"{label}: FAILED {result.get('error')}")
        return
    load = (result.get("load") or {}).get("seconds") or 0.0
    print(f"{label}: p50 {lat['p50_ms'] * 1e3:.1f} us, p99 {lat['p99_ms'] * 1e3:.1f} us, "
          f"cold start {lat['cold_start_ms']:.2f} ms, {lat['throughput_per_s']:.0f}/s; "
          f"load {load:.2f} s, start to JSON {result['wall_s']:.2f} s")


def _pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))])
