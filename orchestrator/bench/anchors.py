"""Side by side with the anchors (issue 15): the ssh+uv shell loop (the floor), pyinfra, Ansible
(pipelining, release as one tgz) and this project, on 4 hosts each, with the same
tensorflow-cpu 2.21 lock (32 wheels, 335 MB), the same SavedModels (v1 cold, v2 warm) and the
same warmup (200 predictions), interleaved per rep: cold deploy of v1, then warm deploy of v2.
The project runs three ways: `project` ships the wheels from the controller (the wheelhouse in the
spec), `project-mirror` names a mirror of the same wheelhouse as `environment.wheel_source`, so
its hosts pull the wheels themselves, like the floor's hosts, which read them from a local path:
the like-for-like comparison. The bench starts that mirror (python -m http.server, a child of
the bench, outside the deploying process's tree: a real mirror is another machine) and prints
its CPU apart. Loopback only: the namespaced hosts of --rtt do not reach it. `project-peers`
ships from the controller with `environment.wheel_peers`: the 4 hosts stage as one batch, the
first becomes the seed, the controller streams to it alone and the others pull from it as its
wheels land (the testbed's 127.0.0.x hosts reach each other; loopback only, like the mirror).
With --rtt, every tool's hosts are that far away (issue 15's far hosts, side by side): the
project's on a `Testbed.up(rtt_ms=...)` testbed, the anchors' harness hosts behind the same
delay relay (bench/_farharness.py), 8 hosts unless --hosts says otherwise.

The anchors are the harness in ../shared/bench-anchors, materialised into a cache dir with
its tools, the lock's wheelhouse and the project's specs (bench/_anchorsetup.py).
Anchor runs: the harness's run_one.sh (cold = caches and deploy roots deleted; its verify.sh
checks every host). Before every tool's cold run the kernel's page cache is dropped
(bench/_anchorsetup.py `drop_caches`: on this VM, reclaiming it slowed the next install up to
4 times), then what a controller in use holds in memory is read back for every tool alike.
The project: `/usr/bin/time -v python -m orchestrator deploy` on a fresh
testbed (cold) or the same (warm), after the same quiesce.py wait. Controller CPU = user
+ sys of the deploying process and its children.

    python -m orchestrator.bench anchors [--reps N] [--tools ssh-uv,project-mirror] [--quick]
        [--hosts N] [--rtt 50ms]
    (--quick: 1 rep of the floor and the project; --setup-only; --report-since UTC)

Root only (the harness's sshds; --rtt: the project's network namespaces too). Results go to
<cache dir>/results.jsonl. Targets (printed, not asserted): cold <= 1.0x the floor, warm <=
0.9x, controller CPU cold <= 2 s; at --rtt, each tool's warm time outside the warmup run (its
wall less the warmup step of its slowest host; the project's also per host, from its events).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.bench import _farharness
from orchestrator.bench._anchorsetup import (
    Setup,
    cache_dir,
    drop_caches,
    mirror_specs,
    project_env,
    setup,
)
from orchestrator.errors import InvalidInput
from orchestrator.testbed import Testbed, netns
from orchestrator.testbed.far import MAX_HOSTS, parse_rtt
from orchestrator.testbed.mirror import serve_directory

FLOOR = "ssh-uv"
ANCHORS = ("ssh-uv", "pyinfra", "ansible-pipe-tgz")
# The project's tools: the spec each deploys (bench/_anchorsetup.py writes them).
PROJECTS = {"project": "spec.yaml", "project-mirror": "spec-mirror.yaml",
            "project-peers": "spec-peers.yaml"}
MIRRORED = "project-mirror"  # its hosts pull from a mirror on the controller's loopback
# Not with --rtt: their hosts reach the mirror, or each other, on loopback only.
LOOPBACK_ONLY = (MIRRORED, "project-peers")
TOOLS = (*ANCHORS, *PROJECTS)
NHOSTS = 4      # the side-by-side's fleet on loopback
FAR_HOSTS = 8   # with --rtt: issue 15's far fleet


@dataclass(frozen=True)
class Options:
    tools: list[str]
    reps: int
    hosts: int
    rtt_ms: float | None  # None: loopback


def _anchor(s: Setup, tool: str, phase: str, rep: int) -> dict[str, Any]:
    rel = "v1" if phase == "cold" else "v2"
    since = time.time()  # the window holds only this run's connections (its reset is local)
    proc = subprocess.run(["bash", "scripts/run_one.sh", tool, phase, rel, str(rep)],
                          cwd=s.harness, env=s.env(), capture_output=True, text=True,
                          check=False)
    relayed = (_farharness.tallies(s.harness, s.hosts, since, time.time())
               if s.rtt_ms is not None else {})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"ok": False, "error": proc.stderr.strip()[-300:]}
    r = json.loads(lines[-1])
    return {"ok": r["rc"] == 0 and r["hosts_ok"] == s.hosts, "wall_s": r["wall_s"],
            "cpu_s": r.get("controller_cpu_s"), "steps": r.get("steps"),
            "warmup_s": anchor_warmup(r), "machine_cpu_s": r.get("machine_cpu_busy_s"),
            "steal_s": r.get("steal_s"),
            **({"relayed": {h: [t.connections, t.turns] for h, t in relayed.items()}}
               if relayed else {})}


def anchor_warmup(result: dict[str, Any]) -> float | None:
    """The warmup step of a harness run's slowest host: Ansible's and pyinfra's step lasts until
    their last host is done; the shell loop's hosts report their own (its `warmup_max`). Pure."""
    raw = (result.get("steps_raw") or {}).get("warmup_max")
    value = raw if raw is not None else (result.get("steps") or {}).get("warmup")
    return None if value is None else float(value)


def _project_run(s: Setup, tb_dir: Path, tool: str, phase: str, rep: int) -> dict[str, Any]:
    if phase == "cold":  # a fresh testbed (its host dirs too): no venv, wheels or uv cache
        Testbed.down(tb_dir)
        shutil.rmtree(tb_dir, ignore_errors=True)
        drop_caches(s)  # after the previous testbed's files went, as the floor's reset is
        Testbed.up(tb_dir, s.hosts, ["h100"], rtt_ms=s.rtt_ms)
    rel = "v1" if phase == "cold" else "v2"
    log = s.harness / "runs" / tool / f"{phase}-{rep}-{rel}"
    log.mkdir(parents=True, exist_ok=True)
    # The same wait as run_one.sh's, `sync` first as it does: the previous cold run's deleted
    # testbed (4 TensorFlow venvs) must not be written back during this run's install.
    os.sync()
    subprocess.run(["/usr/bin/python3", "scripts/quiesce.py"], cwd=s.harness,
                   capture_output=True, check=False)
    started = time.perf_counter()
    with open(log / "out.log", "w") as out:
        rc = subprocess.run(["/usr/bin/time", "-v", "-o", str(log / "time.txt"), sys.executable,
                             "-m", "orchestrator", "deploy", str(s.project / rel / PROJECTS[tool]),
                             "--inventory", str(tb_dir / "inventory.yaml"), "--json"],
                            stdout=out, stderr=subprocess.STDOUT, env=project_env(),
                            check=False).returncode
    wall = time.perf_counter() - started
    steps, warmups, outside = project_events((log / "out.log").read_text(errors="replace"))
    return {"ok": rc == 0, "wall_s": round(wall, 2), "cpu_s": _cpu(log / "time.txt"),
            "steps": steps, "warmup_s": max(warmups.values(), default=None),
            "outside_s": outside, **({} if rc == 0 else {"error": f"exit {rc}"})}


def _cpu(time_txt: Path) -> float | None:
    text = time_txt.read_text() if time_txt.exists() else ""
    parts = [re.search(rf"{k} time \(seconds\): ([\d.]+)", text) for k in ("User", "System")]
    return round(sum(float(m.group(1)) for m in parts if m), 2) if all(parts) else None


def project_events(out: str) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """From `orchestrator deploy --json`'s event lines: the slowest host's seconds per step,
    each host's warmup run (the verify step's `warmup_s`) and each host's seconds in its steps
    outside that warmup run. Pure; other lines are skipped."""
    worst: dict[str, float] = {}
    per_host: dict[str, float] = {}
    warmups: dict[str, float] = {}
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event") != "step" or e.get("status") != "ok" or e.get("duration_ms") is None:
            continue
        secs, host, step = float(e["duration_ms"]) / 1000, str(e.get("host")), str(e["step"])
        worst[step] = round(max(worst.get(step, 0.0), secs), 2)
        per_host[host] = per_host.get(host, 0.0) + secs
        if step == "verify" and e.get("warmup_s") is not None:
            warmups[host] = float(e["warmup_s"])
    outside = {h: round(t - warmups.get(h, 0.0), 2) for h, t in sorted(per_host.items())}
    return worst, warmups, outside


def measure(s: Setup, tools: list[str], reps: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    tb_dir = cache_dir() / "testbed"
    run = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # pairs a run's rows, not a rerun's
    mirror = contextlib.ExitStack()
    try:
        if MIRRORED in tools:
            mirror.enter_context(_mirror(s))
        for rep in range(1, reps + 1):
            # Rotated per rep so no tool always runs first (or right after the noisiest one).
            order = tools[(rep - 1) % len(tools):] + tools[:(rep - 1) % len(tools)]
            for tool in order:
                for phase in ("cold", "warm"):
                    if phase == "cold" and tool not in PROJECTS:  # the project's: its own
                        # In the project's order: the previous state deleted (the harness's
                        # own reset; run_one.sh's then finds nothing), then the drop.
                        subprocess.run(["bash", "scripts/reset_hosts.sh"], cwd=s.harness,
                                       env=s.env(), capture_output=True, check=False)
                        drop_caches(s)
                    load = os.getloadavg()[0]
                    r = (_project_run(s, tb_dir, tool, phase, rep) if tool in PROJECTS
                         else _anchor(s, tool, phase, rep))
                    r = {"tool": tool, "phase": phase, "rep": rep, "load1": round(load, 2),
                         "hosts": s.hosts, "rtt_ms": s.rtt_ms, "run": run,
                         "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **r}
                    rows.append(r)
                    with open(s.results, "a") as fh:
                        fh.write(json.dumps(r) + "\n")
                    print(f"  rep {rep} {tool:17} {phase}: {r.get('wall_s', 0):7.2f} s, "
                          f"controller CPU {r.get('cpu_s')} s, load {load:.1f}"
                          + ("" if r["ok"] else f"  FAILED {r.get('error', '')}")
                          + (f"  steps {r['steps']}" if tool in PROJECTS else "")
                          + _relayed(r), flush=True)
    finally:
        mirror.close()
        _teardown(s, tb_dir)
    return rows


@contextlib.contextmanager
def _mirror(s: Setup) -> Iterator[str]:
    """The wheelhouse served over HTTP for `project-mirror`'s hosts, its specs written with its
    URL; on exit the server is stopped and its own CPU printed (the bench's child, never the
    deploying process's: it is not in the controller CPU column)."""
    with contextlib.ExitStack() as server:
        url = server.enter_context(serve_directory(s.wheelhouse))
        mirror_specs(s.project, url)
        print(f"  {MIRRORED}: the hosts pull the wheels from {url} (python -m http.server over "
              f"{s.wheelhouse}), started by the bench outside the project's timed process "
              "tree, as a real mirror is another machine", flush=True)
        try:
            yield url
        finally:
            before = _children_cpu()
            server.close()  # waits for the server: its rusage joins this process's children
            print(f"  {MIRRORED}: the mirror's own CPU over the run: "
                  f"{_children_cpu() - before:.2f} s (not the controller's)", flush=True)


def _children_cpu() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def _relayed(row: dict[str, Any]) -> str:
    """`connections c, turns t per host` of a relayed anchor run (mean over its hosts)."""
    counts = list((row.get("relayed") or {}).values())
    if not counts:
        return ""
    return (f"  per host: {statistics.fmean(c for c, _ in counts):.1f} connections, "
            f"{statistics.fmean(t for _, t in counts):.1f} turns (max {max(t for _, t in counts)})")


def _teardown(s: Setup, tb_dir: Path) -> None:
    """Both fleets down, the relays stopped; the project's testbed removed (8 TensorFlow venvs:
    about 16 GB; a cold run makes a fresh one anyway)."""
    Testbed.down(tb_dir)
    shutil.rmtree(tb_dir, ignore_errors=True)
    _farharness.stop(s.harness)
    subprocess.run(["bash", "scripts/hosts.sh", "down"], cwd=s.harness, capture_output=True,
                   env=s.env(), check=False)


def _ratios(rows: list[dict[str, Any]], tool: str, phase: str) -> list[float]:
    """`tool`'s wall time over the floor's, pair by pair (same run, rep and phase, both ok)."""
    return [r["wall_s"] / f["wall_s"] for r in rows for f in rows
            if r["tool"] == tool and f["tool"] == FLOOR and r["phase"] == f["phase"] == phase
            and r["rep"] == f["rep"] and r.get("run") == f.get("run") and r["ok"] and f["ok"]]


def report(rows: list[dict[str, Any]]) -> None:
    """One table per fleet (hosts, round trip): figures of different fleets never mix."""
    fleets = sorted({(r.get("hosts", NHOSTS), r.get("rtt_ms")) for r in rows},
                    key=lambda f: (f[0], f[1] or 0.0))
    for n, rtt in fleets:
        if len(fleets) > 1:
            print(f"  {n} hosts " + (f"{rtt:g} ms away:" if rtt else "on loopback:"))
        _report_fleet([r for r in rows
                       if (r.get("hosts", NHOSTS), r.get("rtt_ms")) == (n, rtt)])


def _report_fleet(rows: list[dict[str, Any]]) -> None:
    def cell(tool: str, phase: str, key: str) -> list[float]:
        return [r[key] for r in rows if r["tool"] == tool and r["phase"] == phase and r["ok"]
                and r.get(key) is not None]

    def fmt(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values) or "-"

    print(f"  {'tool':17} {'cold s':>20} {'warm s':>20} {'ctrl CPU cold / warm s':>26}"
          "   ratio to floor, by rep: cold / warm")
    for tool in dict.fromkeys(r["tool"] for r in rows):
        cpu = fmt(cell(tool, "cold", "cpu_s")) + " / " + fmt(cell(tool, "warm", "cpu_s"))
        print(f"  {tool:17} {fmt(cell(tool, 'cold', 'wall_s')):>20} "
              f"{fmt(cell(tool, 'warm', 'wall_s')):>20} {cpu:>26}   "
              f"{fmt(_ratios(rows, tool, 'cold'))} / {fmt(_ratios(rows, tool, 'warm'))}")
    loads = sorted(r.get("load1", 0.0) for r in rows)
    if loads:
        print(f"  load average (1 min) at the runs' starts: {loads[0]:.1f} to {loads[-1]:.1f}"
              f" on {os.cpu_count()} cores")
    targets = (("cold", "cold <= 1.0x the floor", 1.0, "x"), ("warm", "warm <= 0.9x", 0.9, "x"),
               ("cpu", "controller CPU cold <= 2 s", 2.0, " s"))
    for tool in PROJECTS:  # a run without the project has no target to judge
        found = {"cold": _ratios(rows, tool, "cold"), "warm": _ratios(rows, tool, "warm"),
                 "cpu": cell(tool, "cold", "cpu_s")}
        if any(found.values()):
            print(f"  targets, {tool} (medians): " + "; ".join(
                f"{label}: {statistics.median(found[k]):.2f}{unit} "
                f"({'met' if statistics.median(found[k]) <= limit else 'not met'})"
                for k, label, limit, unit in targets if found[k]))
    _report_outside(rows)


def _report_outside(rows: list[dict[str, Any]]) -> None:
    """Each warm run's time outside the warmup run: the wall less its slowest host's warmup
    step, for every tool alike; the project's per host too (its steps less its warmup)."""
    print("  warm, outside the warmup run (wall - slowest host's warmup step):")
    for r in rows:
        if r["phase"] != "warm" or not r["ok"] or r.get("warmup_s") is None:
            continue
        line = (f"    rep {r['rep']} {r['tool']:17} wall {r['wall_s']:6.2f} s, warmup "
                f"{r['warmup_s']:6.2f} s, outside {r['wall_s'] - r['warmup_s']:6.2f} s")
        per_host = list((r.get("outside_s") or {}).values())
        if per_host:
            line += (f"; per host (steps - warmup): mean {statistics.fmean(per_host):.2f} s, "
                     f"max {max(per_host):.2f} s")
        print(line + _relayed(r))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orchestrator.bench anchors")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--tools", default=None,
                   help=f"comma-separated, of {', '.join(TOOLS)} (default: all; with --rtt "
                        f"all but {', '.join(LOOPBACK_ONLY)}: loopback only)")
    p.add_argument("--quick", action="store_true", help="1 rep, the floor and the project")
    p.add_argument("--hosts", type=int, default=None,
                   help=f"hosts per tool (default {NHOSTS}, {FAR_HOSTS} with --rtt)")
    p.add_argument("--rtt", metavar="RTT", default=None,
                   help="every tool's hosts this far away, e.g. 50ms (root: namespaces "
                        "and delay relays)")
    p.add_argument("--setup-only", action="store_true")
    p.add_argument("--report-since", metavar="UTC",
                   help="measure nothing: print the table of the results file's runs from "
                        "this time on (e.g. 2026-12-04T22:00)")
    return p


def options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Options:
    """What to measure, checked (parser.error, exit 2, naming the option). Pure."""
    try:
        rtt = None if args.rtt is None else parse_rtt(args.rtt)
    except InvalidInput as exc:
        parser.error(str(exc))
    tools = ([FLOOR, "project"] if args.quick else args.tools.split(",") if args.tools
             else [t for t in TOOLS if rtt is None or t not in LOOPBACK_ONLY])
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown:
        parser.error(f"unknown tool(s) {', '.join(unknown)} (of {', '.join(TOOLS)})")
    near = [t for t in tools if t in LOOPBACK_ONLY]
    if rtt is not None and near:
        parser.error(f"--tools {','.join(near)} with --rtt: the hosts in their network "
                     "namespaces reach neither the mirror on the controller's loopback nor "
                     "each other")
    hosts = args.hosts if args.hosts is not None else (NHOSTS if rtt is None else FAR_HOSTS)
    if not 1 <= hosts <= MAX_HOSTS:
        parser.error(f"--hosts {hosts}: between 1 and {MAX_HOSTS}")
    reps = 1 if args.quick else args.reps
    if reps < 1:
        parser.error(f"--reps {reps}: at least 1")
    return Options(tools, reps, hosts, rtt)


def run(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv or [])
    if args.report_since:
        lines = (cache_dir() / "results.jsonl").read_text().splitlines()
        report([r for r in map(json.loads, lines) if r["at"] >= args.report_since])
        return
    opts = options(args, p)
    if os.geteuid() != 0:
        print("anchors: skipped (needs root: the harness's sshds use /run/sshd and 127.0.0.11+)")
        return
    reason = netns.why_not() if opts.rtt_ms is not None else None
    if reason is not None:
        print(f"anchors: skipped (--rtt: {reason})")
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # measure's finally: fleets down
    s = setup(opts.hosts, opts.rtt_ms)
    if args.setup_only:
        print(f"anchors: set up in {s.harness.parent}")
        _teardown(s, cache_dir() / "testbed")
        return
    far = f", {opts.rtt_ms:g} ms away (delay relays)" if opts.rtt_ms is not None else ""
    print(f"anchors: {opts.hosts} hosts{far}, {', '.join(opts.tools)}, {opts.reps} rep(s), "
          f"results appended to {s.results}", flush=True)
    report(measure(s, opts.tools, opts.reps))


