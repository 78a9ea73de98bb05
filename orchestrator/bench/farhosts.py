"""Far-away hosts (issue 15): 8 testbed hosts each a round trip away (`Testbed.up(rtt_ms=..)`:
network namespaces, netem or the delay relay), the deploy bench's scikit-learn lock and model:
a cold deploy, then a warm redeploy (new model, same lock), each a whole rollout as
`orchestrator deploy` runs it (the gate's probe and preflight of every host, then all of them
in one batch), printing per host and step (the gate's exchanges under "gate") the
seconds and the round trips (commands, uploads, downloads: hosts/counting.py), and the warm
redeploy's time outside the warmup run per host (target: <= 1.0 s at 50 ms).

    python -m orchestrator.bench farhosts [--rtt 50ms] [--hosts 8] [--anchors]

--anchors: then the anchors side by side at the same round trip and host count (`anchors --rtt
RTT --hosts N`, bench/anchors.py: the ssh+uv floor, pyinfra, Ansible and the project, each a
cold deploy and a warm redeploy of the tensorflow-cpu lock, their warm time outside the warmup
run printed beside each other).

Root only (network namespaces); skipped otherwise, saying so.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from orchestrator.bench import anchors
from orchestrator.bench.deploy import _mkdir, _model, _Quiet, _spec
from orchestrator.core.inventory import Inventory, load_inventory
from orchestrator.core.spec import load_spec
from orchestrator.deploy.batch import DeployResult, prepare
from orchestrator.deploy.rollout import rollout
from orchestrator.deploy.steps.registry import STEP_ORDER
from orchestrator.deploy.steps.wheels import default_cache_dir
from orchestrator.hosts import ssh
from orchestrator.hosts.counting import KINDS, Counting, Exchanges
from orchestrator.hosts.pool import Pool
from orchestrator.testbed import Testbed, netns
from orchestrator.testbed.far import parse_rtt

LABELS = ("connect", "gate", "lock", *STEP_ORDER, "unlock")
#: Every host at once, as `orchestrator deploy` with these settings runs them.
ONE_BATCH = "{canary: 0, batch_size: 1000, max_parallel: 16}"


class _Where(_Quiet):
    """The bench's sink: also tracks which step each host is in, to label its exchanges
    ("lock": before the first step, with the tools upload; "unlock": after the last)."""

    def __init__(self) -> None:
        super().__init__()
        self.current: dict[str, str] = {}  # not `step`: a sink with one is a StepSink
        # When the rollout started (its gate, then every host at once: 8 hosts) and when
        # each host's deploy lock was released: its whole pipeline, lock and unlock included.
        self.began = 0.0
        self.gating = False  # the rollout's gate (probe + preflight of every host) is running
        self.ended: dict[str, float] = {}
        self.locked: dict[str, float] = {}
        self._guard = threading.Lock()

    def emit(self, event: str, *, host: str | None = None, step: str | None = None,
             status: str | None = None, duration_ms: float | None = None, level: str = "info",
             **details: Any) -> None:
        super().emit(event, host=host, step=step, status=status, duration_ms=duration_ms,
                     level=level, **details)
        if event == "rollout.preflight" and status == "started":  # the rollout's start
            self.began, self.gating = time.perf_counter(), True
        elif event == "rollout.preflight":
            self.gating = False
        if host is None:
            return
        with self._guard:
            if event == "host.lock" and status in ("released", "failed"):
                self.ended[host] = time.perf_counter()
            if event == "step" and status == "started" and step is not None:
                self.current[host] = step
            elif event == "step":  # a step ended: what follows the last one is the unlock
                self.current[host] = "unlock"
            elif event == "host.lock" and status == "acquired":
                self.current[host] = "lock"
                self.locked[host] = time.perf_counter()

    def of(self, host: str) -> str:
        with self._guard:
            return self.current.get(host, "gate" if self.gating else "lock")


def _deploy(spec: Path, inv: Inventory, names: list[str]
            ) -> tuple[DeployResult, _Where, Exchanges, dict[str, float], float]:
    hosts = inv.resolve(names)
    sink, exchanges = _Where(), Exchanges()
    options = ssh.SshOptions.for_inventory(inv)

    def connector(host: ssh.HostAddress) -> Counting:
        return Counting(ssh.connect(host, options), exchanges,
                        label=lambda: sink.of(host.name))

    with Pool(options, max_connections=16, connector=connector) as pool:
        connect: dict[str, float] = {}
        for host in hosts:  # opened (and timed) first, then reused by the deploy
            t0 = time.perf_counter()
            with pool.session(host):
                connect[host.name] = time.perf_counter() - t0
        inputs = prepare(load_spec(spec), wheel_cache=default_cache_dir())
        t0 = time.perf_counter()
        result = rollout(inputs, hosts, pool=pool, sink=sink, max_parallel=16).deploy
        wall = time.perf_counter() - t0
    return result, sink, exchanges, connect, wall


def _print(title: str, result: DeployResult, sink: _Where, exchanges: Exchanges,
           connect: dict[str, float], wall: float) -> None:
    print(f"{title}: wall {wall:.2f} s, ok={result.ok}")
    steps = [s for s in LABELS if s != "connect"]
    print("  exchanges per host per step (commands, host-agent requests, uploads, downloads: "
          "each at least one round trip; verify includes the warmup run):")
    print("  host   " + " ".join(f"{s:>8}" for s in steps) + "    total")
    outside: list[float] = []
    whole: list[float] = []
    for name, r in result.hosts.items():
        cells = " ".join(f"{exchanges.total(name, s):8d}" for s in steps)
        print(f"  {name}  {cells}  {exchanges.total(name):7d}"
              + ("" if r.ok else f"  FAILED {r.failed_step}: {r.error}"))
        t = {s: ms / 1000 for s, ms in r.timings().items()}
        outside.append(connect[name] + sum(t.values()) - sink.warmup_s.get(name, 0.0))
        whole.append(connect[name] + sink.ended.get(name, sink.began) - sink.began
                     - sink.warmup_s.get(name, 0.0))
    kinds = {k: statistics.fmean(
        [sum(n for (h, _, kind), n in exchanges.count.items() if h == name and kind == k)
         for name in result.hosts]) for k in KINDS}
    print("  mean per host: " + ", ".join(f"{k} {v:.1f}" for k, v in kinds.items()))
    print("  seconds per step, mean per host (verify without the warmup run): " + ", ".join(
        f"{s} {statistics.fmean([r.timings().get(s, 0.0) / 1000 - (sink.warmup_s.get(n, 0.0) if s == 'verify' else 0.0) for n, r in result.hosts.items()]):.2f}"  # noqa: E501
        for s in STEP_ORDER))
    print(f"  time outside the warmup run per host, steps only (connect + steps - warmup): "
          f"mean {statistics.fmean(outside):.2f} s, max {max(outside):.2f} s")
    print(f"  of which the gate and the deploy lock's call (the agent's start, the gate's probe, "
          f"the lock with the pipeline's probe): mean "
          f"{statistics.fmean(sink.locked.get(n, sink.began) - sink.began for n in result.hosts):.2f} s")  # noqa: E501
    print(f"  time outside the warmup run per host, all of it (connect + gate .. unlock - "
          f"warmup): mean {statistics.fmean(whole):.2f} s, max {max(whole):.2f} s "
          "(target <= 1.0 s)")


def anchors_argv(args: argparse.Namespace) -> list[str] | None:
    """The `anchors` bench's options for the same fleet, or None without --anchors. Pure."""
    return ["--rtt", args.rtt, "--hosts", str(args.hosts)] if args.anchors else None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orchestrator.bench farhosts")
    p.add_argument("--rtt", default="50ms")
    p.add_argument("--hosts", type=int, default=8)
    p.add_argument("--anchors", action="store_true",
                   help="then pyinfra, Ansible and the ssh+uv floor at the same RTT")
    return p


def run(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv or [])
    rtt = parse_rtt(args.rtt)
    reason = netns.why_not()
    if reason is not None:
        print(f"farhosts: skipped ({reason})")
        return
    work = Path(tempfile.mkdtemp(prefix="bench-farhosts-"))
    tb = Testbed.up(work / "testbed", args.hosts, ["h100"], rtt_ms=rtt)
    try:
        relay = "delay relay (no netem here)" if tb.hosts[0].relay_pid else "netem"
        print(f"farhosts: {args.hosts} hosts {rtt:g} ms away ({relay})")
        inv = load_inventory(tb.inventory_path)
        names = [h.name for h in tb.hosts]
        v1 = _spec(_mkdir(work / "v1"), *_model(work / "m1", seed=1), rollout=ONE_BATCH)
        v2 = _spec(_mkdir(work / "v2"), *_model(work / "m2", seed=2), rollout=ONE_BATCH)
        _print("cold deploy", *_deploy(v1, inv, names))
        _print("warm redeploy (new model, same lock)", *_deploy(v2, inv, names))
    finally:
        Testbed.down(work / "testbed")
        shutil.rmtree(work, ignore_errors=True)
    side = anchors_argv(args)
    if side is not None:
        print(f"farhosts --anchors: anchors {' '.join(side)}", flush=True)
        anchors.run(side)
