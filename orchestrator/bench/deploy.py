"""Deploy benchmark on a fresh local testbed (10 sshd hosts), with a small real lock (numpy +
scikit-learn + scipy, tests/fixtures/deploy/sklearn.lock) and a real scikit-learn model:

1. a cold deploy to one host (tb-01), per step, then a warm redeploy (new model) of it;
2. a cold deploy to 8 hosts at once (tb-02..tb-09), per step;
3. a warm redeploy (new model, same lock) to the same 8 hosts, per step, and what the
   orchestrator adds beyond the model's own warmup run (target: under 2 s);
4. on one fresh host (tb-10): pip vs uv for venv + install (+ the first import) of the lock,
   uv with and without compiling .pyc at install time, with its cache cold and warm (a new venv
   for an already-cached lock; target: under 1 s).

With ORCHESTRATOR_BENCH_DEPLOY=warm only 1-3 run (what the warm-redeploy target is about).

5. with ORCHESTRATOR_BENCH_TF=1 (it downloads 320 MB of wheels once and builds a 1.6 GB venv):
   a cold deploy of a tensorflow-cpu 2.21 lock with a small Keras model to one more host, then a
   warm redeploy (new model, same lock) of it.

The hosts share this machine's cores (and those of anyone else working on it): figures are what
this machine gave at that moment, printed, never asserted.

Recorded (2026-11-22, this 2-core machine, load 2-6 from other work; the tree before the round
trips were cut, cb5d1a0, run back to back with 3c99a18), orchestrator's time without the warmup
run, mean per host (connect, probe, stage, install, verify minus warmup, switch, check, prune):
    warm redeploy, 1 host:   before 1.27 s (16 commands, 4 puts, 2 gets)
                             after  0.85 s (11 commands, 2 puts, 1 get)
    warm redeploy, 8 hosts:  before 4.14 s, max 4.33 (probe 0.99, stage 1.09, install 0.37,
                             verify 0.87, switch 0.26, check 0.26, prune 0.20)
                             after  2.03 s, max 2.33 (probe 0.50, stage 0.21, install 0.16,
                             verify 0.56, switch 0.19, check 0.14, prune 0.19)
An empty command costs ~50 ms on a testbed host (sshd's session), an SFTP operation ~1 ms: the
commands are what is left to cut (the warmup's clean-up `rm`, the deploy lock's two).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.core.hashing import hash_path
from orchestrator.core.inventory import Inventory, load_inventory
from orchestrator.core.spec import load_spec
from orchestrator.deploy.batch import DeployResult, deploy, prepare
from orchestrator.deploy.environments.venv import local_uv
from orchestrator.deploy.steps.registry import STEP_ORDER
from orchestrator.deploy.steps.wheels import default_cache_dir
from orchestrator.deploy.wheelcache import WheelCache, platform_tags
from orchestrator.hosts import layout
from orchestrator.hosts.hostops import HostOps
from orchestrator.hosts.pool import Pool
from orchestrator.hosts.ssh import SshOptions, SshTransport
from orchestrator.hosts.transport import Transport
from orchestrator.testbed import Testbed

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
LOCK = FIXTURES / "deploy" / "sklearn.lock"
TF_LOCK = FIXTURES / "locks" / "tensorflow-cpu-2.21.lock"
STEPS = STEP_ORDER  # the registry's steps, in order
FLEET = [f"tb-{i:02d}" for i in range(2, 10)]
IMPORT = "import sklearn.linear_model, scipy.sparse, numpy"


class _Quiet:
    """The bench's event sink: keeps the warmup durations, prints nothing per event."""

    def __init__(self) -> None:
        self.warmup_s: dict[str, float] = {}
        self.install: dict[str, dict[str, float]] = {}  # installer runs of a built venv

    def emit(self, event: str, *, host: str | None = None, step: str | None = None,
             status: str | None = None, duration_ms: float | None = None, level: str = "info",
             **details: Any) -> None:
        if step == "verify" and status == "ok" and host is not None:
            self.warmup_s[host] = float(details.get("warmup_s") or 0.0)
        if step == "install" and status == "ok" and host is not None:
            self.install[host] = dict(details.get("install_durations") or {})


def _model(directory: Path, seed: int) -> tuple[Path, Path]:
    import joblib
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from orchestrator.core import golden

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    model = LogisticRegression(max_iter=300).fit(x, np.argmax(x[:, :3], axis=1))
    joblib.dump(model, directory / "model.joblib")
    np.savez(directory / "inputs.npz", inputs=x[:32])
    golden.record(directory / "model.joblib", "joblib", directory / "inputs.npz",
                  directory / "golden.npz", method="predict_proba")
    return directory / "model.joblib", directory / "golden.npz"


def _keras_model(directory: Path, seed: int) -> tuple[Path, Path]:
    import keras
    import numpy as np

    from orchestrator.core import golden

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    model.save(directory / "model.keras")
    np.savez(directory / "inputs.npz", inputs=rng.normal(size=(32, 4)).astype(np.float32))
    golden.record(directory / "model.keras", "keras", directory / "inputs.npz",
                  directory / "golden.npz")
    return directory / "model.keras", directory / "golden.npz"


def _spec(directory: Path, model: Path, golden: Path, *, lock: Path = LOCK,
          fmt: str = "joblib", name: str = "bench-app",
          rollout: str = "{max_parallel: 16}") -> Path:
    shutil.copy(model, directory / model.name)
    shutil.copy(golden, directory / "golden.npz")
    shutil.copy(lock, directory / "requirements.lock")
    method = ", method: predict_proba" if fmt == "joblib" else ""
    (directory / "spec.yaml").write_text(f"""\
apiVersion: orchestrator/v1
kind: Deployment
name: {name}
model: {{path: {model.name}, format: {fmt}, sha256: {hash_path(directory / model.name)}}}
environment: {{python: "3.11", requirements: requirements.lock}}
targets: [testbed]
rollout: {rollout}
verify: {{golden: golden.npz{method}, warmup_iterations: 5, iterations: 50, timeout_s: 300}}
service: {{health_command: "test -e current/model/{model.name}", health_timeout_s: 10}}
""")
    return directory / "spec.yaml"


Measured = tuple[DeployResult, _Quiet, dict[str, float], float, "_Calls"]


class _Calls:
    """Per (host, kind): how many remote commands/puts/gets, and the seconds they took."""

    def __init__(self) -> None:
        self.count: Counter[tuple[str, str]] = Counter()
        self.seconds: defaultdict[tuple[str, str], float] = defaultdict(float)


@contextlib.contextmanager
def _counting() -> Iterator[_Calls]:
    """Count each host's remote commands and file transfers while a deploy runs (the bench's
    own instrument: how many round trips a step costs is the figure being cut)."""
    calls = _Calls()
    guard = threading.Lock()
    saved = {name: getattr(SshTransport, name) for name in ("run", "put", "get")}

    def wrap(name: str) -> Any:
        inner = saved[name]

        def counted(self: SshTransport, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(self, *args, **kwargs)
            finally:
                with guard:
                    calls.count[(self.host, name)] += 1
                    calls.seconds[(self.host, name)] += time.perf_counter() - t0
        return counted

    for name in saved:
        setattr(SshTransport, name, wrap(name))
    try:
        yield calls
    finally:
        for name, fn in saved.items():
            setattr(SshTransport, name, fn)


def _deploy(spec_path: Path, inv: Inventory, names: list[str]) -> Measured:
    hosts = inv.resolve(names)
    sink = _Quiet()
    with Pool(SshOptions.for_inventory(inv), max_connections=16) as pool:
        connect: dict[str, float] = {}
        for host in hosts:  # connections opened (and timed) first, then reused by the deploy
            t0 = time.perf_counter()
            with pool.session(host):
                connect[host.name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        inputs = prepare(load_spec(spec_path), wheel_cache=default_cache_dir())
        with _counting() as counts:
            result = deploy(inputs, hosts, pool=pool, sink=sink, max_parallel=16)
        wall = time.perf_counter() - t0
    return result, sink, connect, wall, counts


def _print_steps(title: str, result: DeployResult, sink: _Quiet, connect: dict[str, float],
                 wall: float, calls: _Calls) -> None:
    print(f"{title}: wall {wall:.2f} s, ok={result.ok}")
    print("  host   connect " + " ".join(f"{s:>9}" for s in STEPS)
          + "   warmup  added  cmds puts gets (count/seconds; cmds include the warmup run)")
    added_all: list[float] = []
    per_step: dict[str, list[float]] = {s: [] for s in ("connect", *STEPS)}
    for name, r in result.hosts.items():
        t = {s: ms / 1000 for s, ms in r.timings().items()}
        warm = sink.warmup_s.get(name, 0.0)
        added = connect[name] + sum(t.values()) - warm
        added_all.append(added)
        per_step["connect"].append(connect[name])
        for s in STEPS:  # the step's time without the warmup run itself
            per_step[s].append(t.get(s, 0.0) - (warm if s == "verify" else 0.0))
        cells = " ".join(f"{t.get(s, 0):8.2f}s" for s in STEPS)
        ops = " ".join(f"{calls.count[(name, k)]:3d}/{calls.seconds[(name, k)]:.2f}"
                       for k in ("run", "put", "get"))
        built = " ".join(f"{k} {v:.2f}" for k, v in sink.install.get(name, {}).items())
        print(f"  {name}  {connect[name]:6.2f}s {cells}  {warm:6.2f}s {added:6.2f}s  {ops}"
              + (f"  (built: {built})" if built else "")
              + ("" if r.ok else f"  FAILED {r.failed_step}: {r.error}"))
    means = {s: statistics.fmean(v) for s, v in per_step.items() if v}
    print("  orchestrator's time without the warmup run, mean per host: "
          + ", ".join(f"{s} {v:.2f}" for s, v in means.items())
          + f"; total {sum(means.values()):.2f} s")
    if len(added_all) > 1:
        print(f"  orchestrator-added time (all but the warmup run) per host: max "
              f"{max(added_all):.2f} s, mean {statistics.fmean(added_all):.2f} s "
              "(target for the warm redeploy to 8 hosts: under 2 s)")


def _installers(inv: Inventory, work: Path) -> None:
    """pip vs uv, venv + install + first import, on a fresh host (tb-10)."""
    host = inv.hosts["tb-10"]
    wheels = WheelCache(default_cache_dir()).fill(LOCK, "3.11", platform_tags("x86_64",
                                                                            "glibc 2.36"))
    with Pool(SshOptions.for_inventory(inv)) as pool, pool.session(host) as t:
        ops = HostOps(t, host.deploy_root)
        ops.push_wheels({sha: w.path for sha, w in wheels.items()})
        uv = ops.push_uv(local_uv())
        names = {sha: w.filename for sha, w in wheels.items()}
        rows: list[tuple[str, float, float, Any]] = []
        for label, installer, compile_bc, cold in (
                ("pip", "pip", True, True),
                ("uv, cold cache", "uv", True, True), ("uv, warm cache", "uv", True, False),
                ("uv no .pyc, cold", "uv", False, True), ("uv no .pyc, warm", "uv", False, False)):
            if cold:  # uv's cache on the host gone: it unpacks every wheel again
                t.run(["rm", "-rf", layout.uv_cache(host.deploy_root)], timeout=60)
            lock = layout.orchestrator_dir(host.deploy_root, f"bench-{installer}-{len(rows)}.lock")
            # Each run gets its own lock bytes, hence its own env hash: a real new venv.
            t.put(LOCK.read_bytes() + f"# {label}\n".encode(), lock, 0o644)
            env = f"{len(rows):02d}" + "b" * 22
            t0 = time.perf_counter()
            out = ops.venv_ensure(env, lock, names, installer=installer, uv=uv,
                                  compile_bytecode=compile_bc)
            build = time.perf_counter() - t0
            imp = _first_import(t, layout.venv_python(out.path))
            rows.append((label, build, imp, out.durations))
    print("installers on one host (venv + install of the lock, then the first import; "
          "the pipeline uses uv without .pyc):")
    for label, build, imp, parts in rows:
        detail = ", ".join(f"{k} {v:.2f}s" for k, v in parts.items())
        print(f"  {label:17} build {build:6.2f} s ({detail})  first import {imp:5.2f} s  "
              f"total {build + imp:6.2f} s")
    total = {label: build + imp for label, build, imp, _ in rows}
    print(f"  cold host, uv vs pip: {total['pip'] / total['uv, cold cache']:.1f}x with .pyc, "
          f"{total['pip'] / total['uv no .pyc, cold']:.1f}x without (target >= 2.5x); "
          f"new venv for a cached lock: {rows[4][1]:.2f} s without .pyc, {rows[2][1]:.2f} s "
          "with (target < 1 s)")


def _first_import(t: Transport, python: str) -> float:
    t0 = time.perf_counter()
    t.run([python, "-c", IMPORT], timeout=300)
    return time.perf_counter() - t0


def run() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    quick = os.environ.get("ORCHESTRATOR_BENCH_DEPLOY") == "warm"
    tb = Testbed.up(work / "testbed", 9 if quick else 11, ["h100"])
    try:
        inv = load_inventory(tb.inventory_path)
        v1 = _spec(_mkdir(work / "v1"), *_model(work / "m1", seed=1))
        v2 = _spec(_mkdir(work / "v2"), *_model(work / "m2", seed=2))
        _print_steps("cold deploy, 1 host", *_deploy(v1, inv, ["tb-01"]))
        _print_steps("warm redeploy (new model, same lock), 1 host", *_deploy(v2, inv, ["tb-01"]))
        _print_steps("cold deploy, 8 hosts at once", *_deploy(v1, inv, FLEET))
        _print_steps("warm redeploy (new model, same lock), 8 hosts", *_deploy(v2, inv, FLEET))
        if os.environ.get("ORCHESTRATOR_BENCH_DEPLOY") == "warm":
            return
        _installers(inv, work)
        if os.environ.get("ORCHESTRATOR_BENCH_TF") == "1":
            t1 = _spec(_mkdir(work / "tf1"), *_keras_model(work / "k1", seed=1), lock=TF_LOCK,
                       fmt="keras", name="bench-tf")
            t2 = _spec(_mkdir(work / "tf2"), *_keras_model(work / "k2", seed=2), lock=TF_LOCK,
                       fmt="keras", name="bench-tf")
            _print_steps("tensorflow-cpu 2.21, cold deploy, 1 host", *_deploy(t1, inv, ["tb-11"]))
            _print_steps("tensorflow-cpu 2.21, warm redeploy (new model), 1 host",
                         *_deploy(t2, inv, ["tb-11"]))
    finally:
        Testbed.down(work / "testbed")
        shutil.rmtree(work, ignore_errors=True)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
