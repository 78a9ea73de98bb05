"""`make demo`: the whole story on one machine, told through the real CLI.

    python -m orchestrator.demo up   [--dir .demo]    # testbed, daemon, plan, rollouts, verify
    python -m orchestrator.demo down [--dir .demo]    # stop the daemon and the testbed

Every stage runs the `orchestrator` command a user would type (printed before it runs, output
live), against a testbed of four simulated GPU hosts and a daemon in the background:

1. `plan` of a TensorFlow SavedModel built for GPUs: the old-driver host is refused, with why;
2. version 1 of the model (TensorFlow on the CPU, see below) rolled out: canary, then the rest,
   followed by the latency each host measured;
3. version 2, whose predictions are wrong: the canary's verify step catches it before the switch,
   the rollout stops there and no host stops serving version 1;
4. version 3, whose input was renamed: it passes verify, but after the switch the clients' smoke
   request (the spec's health check) fails, so the canary is switched back to version 1
   automatically and version 3 is marked bad;
5. a driver upgrade on one host (its NVML now reports a driver/library mismatch), found by
   re-verification (`orchestrator verify`);
6. a scikit-learn model released as a container image, built by the daemon at deploy time
   (orchestrator/demo_image.py).

DIR holds everything: the testbed's hosts (DIR/hosts/), the daemon's state and log (DIR/daemon/),
the specs (DIR/specs/). `up` starts from a clean DIR each time; the wheels of the lock come from
the controller's wheel cache (~/.cache/orchestrator/wheelcache), so only the first run downloads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.cli.render import table
from orchestrator.core.hashing import hash_path
from orchestrator.demo_image import image_release
from orchestrator.errors import InvalidInput, OrchestratorError
from orchestrator.testbed import podman

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "configs" / "examples"
GPU_EXAMPLE = EXAMPLES / "tensorflow-savedmodel"
CPU_LOCK = EXAMPLES / "keras" / "requirements.lock"  # tensorflow-cpu==2.21.0, hashed
PROFILES = ("h100", "h100", "t4", "old-driver")
SERVING = ["tb-01", "tb-02", "tb-03"]  # the hosts the plan passes
MARKER = ".orchestrator-demo"  # only a DIR holding it is ever wiped
DAEMON_STOP_S = 40.0
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; keep a margin

CPU_SPEC = """\
# The demo's model on the testbed: TensorFlow's CPU build, gpu.required false (see the demo).
apiVersion: orchestrator/v1
kind: Deployment
name: iris
model: {{path: model, format: tensorflow-savedmodel, sha256: {sha}}}
environment: {{python: "3.11", requirements: requirements.lock}}
gpu: {{required: false}}
targets: [{targets}]
rollout: {{canary: 1, batch_size: 2, max_failed_hosts: 0, on_failure: rollback}}
verify:
  golden: golden.npz
  rtol: 1.0e-5
  atol: 1.0e-6
  warmup_iterations: 5
  iterations: 50
  latency_ms: {{p99: 200}}
  timeout_s: 300
# The health check after each switch: the request the clients send (the input named `features`),
# through the serving release's own venv. Versions 1 and 2 answer it; version 3 (input renamed
# `x`) cannot.
service:
  health_command: >-
    current/venv/bin/python -c "import tensorflow as tf;
    tf.saved_model.load('current/model').signatures['serving_default'](features=tf.zeros([1, 4]))"
  health_timeout_s: 8
"""

SIMULATED = """\
The testbed's hosts are real OpenSSH servers on 127.0.0.2-5, each with its own host key and
deploy root. Their GPUs are simulated: a fake libnvidia-ml.so.1 answers NVML calls from a
profile (driver, CUDA version, GPU model, memory, compute capability), so the probe and the
preflight see exactly what they would see on an H100, a T4, or a V100 with an old driver."""

CPU_WHY = """\
No CUDA device exists behind those simulated GPUs, so TensorFlow can only run on the CPU here.
A spec with gpu.required: true would therefore (rightly) fail verify on every testbed host:
"the model must run on the GPU". The rollouts below deploy the same model with TensorFlow's
CPU build (tensorflow-cpu 2.21.0, hashed lock) and gpu.required: false, to the three hosts the
plan passed. Everything else is real: SSH, the upload checked by sha256 on the host, a venv built
offline from hashed wheels, the model loaded and checked against its golden outputs there."""


class Demo:
    def __init__(self, directory: Path) -> None:
        self.dir = directory.resolve()
        self.bin = Path(sys.executable).parent
        self.daemon_dir = self.dir / "daemon"
        self.socket = demo_socket(self.daemon_dir)
        self.started = time.monotonic()
        self.cleanup: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None

    # -- output ---------------------------------------------------------------------------------

    def stage(self, title: str, text: str = "") -> None:
        elapsed = time.monotonic() - self.started
        print(f"\n\033[1m== {title}\033[0m  (t+{elapsed:.0f} s)" if sys.stdout.isatty()
              else f"\n== {title}  (t+{elapsed:.0f} s)", flush=True)
        if text:
            print(text, flush=True)

    def run(self, *args: str, expect: Sequence[int] = (0,), capture: bool = False) -> str:
        """Run `orchestrator ARGS`, shown as typed, output live unless captured."""
        shown = " ".join(self.relative(a) for a in args)
        print(f"\n$ orchestrator {shown}", flush=True)
        env = {**os.environ, "ORCHESTRATOR_SOCKET": str(self.socket)}
        done = subprocess.run([str(self.bin / "orchestrator"), *args], env=env, text=True,
                              capture_output=capture, check=False)
        if done.returncode not in expect:
            if capture:
                print(done.stdout + done.stderr, file=sys.stderr)
            raise DemoFailed(f"`orchestrator {shown}` exited {done.returncode}")
        return done.stdout or ""

    def relative(self, arg: str) -> str:
        try:
            return str(Path(arg).relative_to(Path.cwd()))
        except ValueError:
            return arg

    # -- set-up ---------------------------------------------------------------------------------

    def prepare_dir(self) -> None:
        if self.dir.exists() and any(self.dir.iterdir()) and not (self.dir / MARKER).exists():
            raise InvalidInput(f"{self.dir} exists and is not a demo directory; "
                               "pick another with DEMO_DIR=...")
        stop(self.dir)
        aside = self.dir.with_name(f".{self.dir.name}.old-{os.getpid()}")
        if self.dir.exists():
            self.dir.rename(aside)
        (self.dir / "specs").mkdir(parents=True)
        if aside.exists():  # a last run's venvs are GBs: delete them while this one runs,
            trash = self.dir / ".old"  # from inside DIR (ignored by git like DIR itself)
            aside.rename(trash)
            self.cleanup = subprocess.Popen(["rm", "-rf", "--", str(trash)])
        self.daemon_dir.mkdir()
        (self.dir / MARKER).write_text("made by `python -m orchestrator.demo up`\n")

    def write_specs(self) -> dict[str, Path]:
        specs = self.dir / "specs"
        gpu = specs / "gpu"  # the example as it is, aimed at the testbed's hosts
        shutil.copytree(GPU_EXAMPLE, gpu, ignore=shutil.ignore_patterns("model-v*"))
        text = (gpu / "spec.yaml").read_text().replace("targets: [inference]",
                                                       "targets: [testbed]")
        (gpu / "spec.yaml").write_text(text)
        out = {"gpu": gpu / "spec.yaml"}
        for version, model in (("v1", "model"), ("v2", "model-v2"), ("v3", "model-v3")):
            d = specs / version
            d.mkdir()
            shutil.copytree(GPU_EXAMPLE / model, d / "model")
            shutil.copy(GPU_EXAMPLE / "golden.npz", d / "golden.npz")  # v1's answers, for both
            shutil.copy(CPU_LOCK, d / "requirements.lock")
            sha = hash_path(d / "model")
            (d / "spec.yaml").write_text(CPU_SPEC.format(sha=sha, targets=", ".join(SERVING)))
            out[version] = d / "spec.yaml"
        return out

    def start_daemon(self) -> int:
        config = self.daemon_dir / "orchestrator.toml"
        config.write_text(f'state_dir = "{self.daemon_dir}"\nsocket = "{self.socket}"\n'
                          f'inventory = "{self.dir / "inventory.yaml"}"\n')
        log = self.daemon_dir / "daemon.stderr.log"
        # The images the daemon builds (stage 7) go into a Podman storage of its own, run as this
        # machine runs Podman (runc, cgroupfs); `stop` unmounts it.
        env = {**os.environ, **podman.configure(self.daemon_dir / "podman", tag="demo")}
        with log.open("ab") as out:  # the daemon keeps its own copy of the descriptor
            proc = subprocess.Popen([str(self.bin / "orchestrator"), "daemon", "--config",
                                     str(config)], stdout=out, stderr=out, env=env,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.daemon = proc  # it outlives this driver: `make demo-down` stops it
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise DemoFailed(f"the daemon did not start; see {log}")
            time.sleep(0.2)
        return proc.pid

    # -- the story ------------------------------------------------------------------------------

    def up(self) -> None:
        try:
            self.story()
        finally:
            if self.cleanup is not None:
                self.cleanup.wait()

    def story(self) -> None:
        self.prepare_dir()
        specs = self.write_specs()
        self.stage("1. A testbed of 4 hosts: two H100, one T4, one with an old driver", SIMULATED)
        self.run("testbed", "up", "--hosts", "4", *(a for p in PROFILES for a in ("--profile", p)),
                 "--dir", str(self.dir))
        pid = self.start_daemon()
        print(f"\nThe daemon runs in the background (pid {pid}), its state in "
              f"{self.relative(str(self.daemon_dir))}/.")
        self.stage("2. Plan a TensorFlow model built for GPUs (changes nothing on any host)",
                   "tensorflow[and-cuda] 2.21 needs CUDA 12.5: a 470 driver (CUDA <= 11.4) "
                   "cannot run it.")
        self.run("plan", str(specs["gpu"]), "--inventory", str(self.dir / "inventory.yaml"),
                 expect=(3,))
        self.stage("3. Roll out version 1: canary tb-01, then tb-02 and tb-03", CPU_WHY)
        self.run("submit", str(specs["v1"]), "--follow")
        self.latency_table(self.last_deployment())
        self.stage("4. Roll out version 2, whose predictions are wrong",
                   "Version 2 has one weight changed; its golden file is version 1's answers.")
        self.run("submit", str(specs["v2"]), "--follow", expect=(3,))
        print("\nThe canary's verify step caught it before the switch: the rollout stopped on "
              "the canary,\nits staged release was removed, and every host still serves "
              "version 1.")
        self.stage("5. Roll out version 3, whose input was renamed from `features` to `x`",
                   "It passes its golden test, but the spec's health check sends the clients' "
                   "request\n(`features=...`) to the serving release after the switch.")
        self.run("submit", str(specs["v3"]), "--follow", expect=(3,))
        print("\nThe canary switched to version 3, its health check failed: it was switched "
              "back to\nversion 1 (whose check passes), version 3 was marked bad (never a "
              "rollback target),\nand the rollout stopped before any other host.")
        self.run("releases", "iris", "--inventory", str(self.dir / "inventory.yaml"))
        self.stage("6. A driver upgrade under a serving model, found by re-verification",
                   "tb-02's driver is upgraded without a reboot: the kernel module and the "
                   "user-space\nlibrary now differ (NVML: \"Driver/library version mismatch\"), "
                   "and CUDA would fail there.")
        self.run("testbed", "profile", "--dir", str(self.dir), "tb-02", "mismatch")
        self.run("verify", expect=(0, 3, 4))  # 3: a host failed; 4: degraded only
        self.run("status")
        image_release(self)
        self.end(pid)

    def last_deployment(self) -> str:
        listed = json.loads(self.run("status", "--json", capture=True))
        rows = listed if isinstance(listed, list) else listed.get("deployments", [])
        return str(rows[0]["id"])

    def latency_table(self, deployment: str) -> None:
        out = self.run("logs", deployment, "--json", capture=True)
        events = [json.loads(line) for line in out.splitlines() if line.strip()]
        print("\n" + render_latency(events) + "\n(measured on this machine's CPU, in the "
              "deployed venv on each host, warmup iterations discarded)")

    def end(self, pid: int) -> None:
        d = self.relative(str(self.dir))
        total = time.monotonic() - self.started
        print(f"""
== Done in {total:.0f} s ({total / 60:.1f} min).

  daemon     pid {pid}; socket {self.relative(str(self.socket))}; state {d}/daemon/state.sqlite3
  logs       {d}/daemon/logs/daemon.log (the daemon), {d}/daemon/logs/<id>.jsonl (deployments)
  testbed    {d}/inventory.yaml; hosts' deploy roots in {d}/hosts/tb-0N/root/
  try        export ORCHESTRATOR_SOCKET={self.socket}
             .venv/bin/orchestrator status; .venv/bin/orchestrator hosts
  stop       make demo-down   (stops the daemon and the testbed)""")


class DemoFailed(OrchestratorError):
    """A stage of the demo did not end as the story says."""


def render_latency(events: list[dict[str, Any]]) -> str:
    """The verify step's figures per host, from a deployment's events."""
    rows = [(str(e["host"]), *(_fmt(e.get(k)) for k in
             ("p50_ms", "p95_ms", "p99_ms", "cold_start_ms", "throughput_per_s")))
            for e in events if e.get("step") == "verify" and e.get("status") == "ok"]
    return table(("host", "p50 ms", "p95 ms", "p99 ms", "first call ms", "per s"), rows)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def demo_socket(daemon_dir: Path) -> Path:
    """DIR/daemon/orchestrator.sock, or a short path in /tmp when that one is too long for a
    Unix socket (108 bytes with its terminator) because the checkout lies deep."""
    path = daemon_dir / "orchestrator.sock"
    if len(os.fsencode(path)) < SOCKET_PATH_MAX:
        return path
    digest = hashlib.sha256(os.fsencode(daemon_dir)).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"orchestrator-demo-{os.getuid()}-{digest}.sock"


def _daemon_pid(daemon_dir: Path) -> int | None:
    """The pid in daemon.lock if that process is still an orchestrator daemon of this dir."""
    try:
        pid = int((daemon_dir / "daemon.lock").read_text().strip() or 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    config = str(daemon_dir / "orchestrator.toml").encode()
    return pid if b"daemon" in cmdline and config in cmdline else None


def stop(directory: Path) -> None:
    """Stop the demo's daemon (SIGTERM, then SIGKILL) and its testbed; quiet if none runs."""
    directory = directory.resolve()
    pid = _daemon_pid(directory / "daemon")
    if pid is not None:
        os.kill(pid, signal.SIGTERM)  # the daemon stops its own work; its group holds nothing else
        deadline = time.monotonic() + DAEMON_STOP_S
        while _daemon_pid(directory / "daemon") == pid and time.monotonic() < deadline:
            time.sleep(0.2)
        if _daemon_pid(directory / "daemon") == pid:
            os.kill(pid, signal.SIGKILL)
        print(f"daemon (pid {pid}) stopped")
    storage = directory / "daemon" / "podman"  # the storage of the images the daemon built
    podman.release(storage)
    shutil.rmtree(podman.runroot(storage, "demo"), ignore_errors=True)
    if (directory / "state.json").exists():
        from orchestrator.testbed import Testbed

        print(f"testbed: stopped {Testbed.down(directory)} sshd server(s) in {directory}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.demo", description=__doc__
                                     .splitlines()[0])
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--dir", type=Path, default=Path(".demo"))
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            Demo(args.dir).up()
        else:
            stop(args.dir)
    except OrchestratorError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        print("stop what it started with: make demo-down", file=sys.stderr)
        return exc.exit_code if hasattr(exc, "exit_code") else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
