"""`orchestrator deploy SPEC --inventory FILE [--host H]...`: roll the spec out now, no daemon.

The same fleet rollout the daemon runs (orchestrator/deploy/rollout.py), in this process: the
preflight of every target first, the canary hosts, then batches, at most `max_parallel` SSH
sessions, the failure budget, and `rollout.on_failure`. One spec ends the same way whichever
way it is deployed, and the exit code follows the daemon's verdict (`submit --wait`'s).

Without a daemon there is nobody to `resume` or `abort`: where the daemon would hold a rollout
that went over budget under `on_failure: pause`, this command stops there and leaves the
switched hosts as they are (it says which). Hosts a daemon's re-verification recorded as
degraded or failed are kept out, as the daemon keeps them out, when its state dir is found.
Ctrl-C is the daemon's `cancel`: the rollout stops after the steps in flight.

Every event is printed as it happens (one readable line each, or JSON lines with --json), then a
one-line verdict per host. The rendering is pure (`render_event`); the command only wires the
spec, the inventory, the connection pool and the rollout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from orchestrator.cli import exits
from orchestrator.cli.follow import LiveFollow, ending
from orchestrator.cli.render import use_colour
from orchestrator.core.terminal import safe
from orchestrator.errors import EXIT_DEPLOY_FAILED, EXIT_INVALID, EXIT_OK, InvalidInput

if TYPE_CHECKING:
    from orchestrator.deploy.rollout import RolloutResult

EXITS = exits.table({
    EXIT_OK: "the deployment succeeded (failed hosts within rollout.max_failed_hosts are named)",
    EXIT_INVALID: "invalid input (spec, lock, inventory, unknown host)",
    EXIT_DEPLOY_FAILED: "the deployment failed or was rolled back (the canary failed, or more "
                        "than rollout.max_failed_hosts hosts did, unreachable ones included; "
                        "switched hosts rolled back unless on_failure: pause)"})

#: Event keys shown on a readable line, in this order (the rest is in --json).
SHOWN = ("release_id", "current", "reused", "installer", "env_hash", "wheels_pushed",
         "verdict", "generation", "removed", "reason", "error", "warnings",
         "item", "done", "total")  # the last three: a `progress` event's, plain


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "deploy", help="deploy a spec to its targets now, without the daemon",
        description="Roll the spec out as the daemon does: preflight of every target, the "
                    "canary, then batches under the failure budget; on each host the pipeline "
                    "(probe, preflight, stage, install, verify, switch, check, prune). Every "
                    "event is printed.",
        **exits.help_args(EXITS))
    parser.add_argument("spec", type=Path, metavar="SPEC", help="deployment spec YAML")
    parser.add_argument("--inventory", type=Path, required=True, help="inventory YAML file")
    parser.add_argument("--host", action="append", default=[], metavar="H",
                        help="deploy to these hosts/groups instead of the spec's targets")
    parser.add_argument("--installer", choices=("uv", "pip"), default="uv",
                        help="venv installer on the hosts (default uv; pip is the fallback)")
    parser.add_argument("--compile-bytecode", action="store_true",
                        help="compile every module of a new venv at install time (default: "
                             "the verify step's first import compiles what the model uses)")
    parser.add_argument("--no-ship-bytecode", dest="ship_bytecode", action="store_false",
                        help="do not ship the lock's .pyc files compiled once on the "
                             "controller: each new venv's first import compiles")
    parser.add_argument("--max-parallel", type=int, default=None, metavar="N",
                        help="hosts at once (default: the spec's rollout.max_parallel)")
    parser.add_argument("--break-lock", action="store_true",
                        help="take the app's deploy lock even if a dead deployment holds it")
    parser.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help="the daemon's state dir, whose host records keep degraded or "
                             "failed hosts out (default: $ORCHESTRATOR_STATE_DIR, else the "
                             "daemon's default; skipped when it holds no store)")
    parser.add_argument("--json", action="store_true", help="print events as JSON lines")
    index = parser.add_argument_group(
        "package index", "where the controller's wheel cache downloads the locked wheels from "
        "(a spec without a wheelhouse); the daemon takes the same from its config's [index]")
    index.add_argument("--index-url", metavar="URL", help="simple index (PEP 503) base URL")
    index.add_argument("--extra-index-url", action="append", default=[], metavar="URL",
                       help="another index, looked up too (repeatable)")
    index.add_argument("--index-cert", type=Path, metavar="PEM",
                       help="CA bundle to verify the index's TLS certificate with")
    index.add_argument("--index-credentials", type=Path, metavar="NETRC",
                       help="netrc file (mode 0600) with the index's login and password; "
                            "never put them in a URL")
    parser.set_defaults(func=run)


class PrintSink:
    """Prints each event as it is emitted; thread-safe (hosts run in parallel). With `live`
    (stdout a terminal, no --json), the follow view of `logs --follow` draws them instead."""

    def __init__(self, out: IO[str], as_json: bool, deployment: str,
                 live: LiveFollow | None = None) -> None:
        self.out, self.as_json, self.deployment = out, as_json, deployment
        self.live = live
        self._lock = threading.Lock()

    def emit(self, event: str, *, host: str | None = None, step: str | None = None,
             status: str | None = None, duration_ms: float | None = None, level: str = "info",
             **details: Any) -> None:
        record = {"ts": time.time(), "level": level, "event": event,
                  "deployment": self.deployment, "host": host, "step": step, "status": status,
                  "duration_ms": duration_ms, **details}
        if self.live is not None:
            self.live.show(record)  # LiveFollow has its own lock
            return
        with self._lock:
            print(json.dumps(record, default=str) if self.as_json else render_event(record),
                  file=self.out, flush=True)


def render_event(e: dict[str, Any]) -> str:
    """One readable line: time, host, step, status, duration, then the telling details; every
    field shown through `safe` on one line (hosts write the details)."""
    when = time.strftime("%H:%M:%S", time.localtime(float(e["ts"])))
    parts = [when, *(safe(field, line=True) for field in (
        e.get("host") or "-", e.get("step") or e["event"], e.get("status") or ""))]
    if e.get("duration_ms") is not None:
        parts.append(f"{float(e['duration_ms']) / 1000:.2f}s")
    for key in SHOWN:
        value = e.get(key)
        if value not in (None, "", [], {}):
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            parts.append(safe(f"{key}={text}", line=True))
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    # Imported here so `orchestrator --help` does not pay for paramiko.
    from orchestrator.core.ids import new_deployment_id
    from orchestrator.core.inventory import load_inventory
    from orchestrator.core.spec import load_spec
    from orchestrator.deploy.batch import prepare
    from orchestrator.deploy.pkgindex import PackageIndex
    from orchestrator.deploy.rollout import rollout, verdict
    from orchestrator.hosts.pool import Pool
    from orchestrator.hosts.ssh import SshOptions

    if args.max_parallel is not None and args.max_parallel < 1:
        raise InvalidInput("--max-parallel must be at least 1")
    spec = load_spec(args.spec)
    inventory = load_inventory(args.inventory)
    hosts = inventory.resolve(args.host or list(spec.targets))
    if not hosts:
        raise InvalidInput("no target hosts")
    deployment = new_deployment_id()
    index = PackageIndex(url=args.index_url, extra_urls=tuple(args.extra_index_url),
                         ca_bundle=args.index_cert, credentials_file=args.index_credentials)
    parallel = args.max_parallel or int(spec.rollout.max_parallel)
    excluded = excluded_by_daemon(args.state_dir, [h.name for h in hosts])
    terminal = not args.json and sys.stdout.isatty()
    live = LiveFollow(sys.stdout, use_colour(sys.stdout)) if terminal else None
    sink = PrintSink(sys.stdout, args.json, deployment, live)
    try:
        inputs = prepare(spec, deployment=deployment, installer=args.installer,
                         compile_bytecode=args.compile_bytecode, check_model=True, index=index,
                         sink=sink,  # an image built now (environment.image_base) is shown
                         ship_bytecode=args.ship_bytecode)
        with Pool(SshOptions.for_inventory(inventory), max_connections=parallel) as pool, \
                cancel_on_interrupt() as cancel:
            out = rollout(inputs, hosts, pool=pool, sink=sink, max_parallel=parallel,
                          cancel=cancel, excluded=excluded, break_lock=args.break_lock)
        judged = verdict(out)
        # The daemon's last event of a deployment is its state change; so is this command's.
        sink.emit("deployment", status=str(judged.state), release_id=inputs.release_id,
                  level="info" if judged.exit_code == EXIT_OK else "error",
                  reason=judged.reason)
    finally:
        view = live.close() if live is not None else None
    if view is not None:  # the live view's closing summary, as `submit --follow` ends
        print(ending(view, deployment, str(judged.state), judged.reason, judged.exit_code),
              flush=True)
    elif not args.json:
        for name in out.deploy.hosts:
            print(host_line(name, out, inputs.release_id), flush=True)
    return judged.exit_code


def host_line(name: str, out: RolloutResult, release_id: str) -> str:
    """`<host>: <outcome> <release id>[: why]`, the host's end of the rollout, shown through
    `safe` (the reason and error quote the host). Pure."""
    return safe(_host_outcome(name, out, release_id))


def _host_outcome(name: str, out: RolloutResult, release_id: str) -> str:
    r = out.deploy.hosts[name]
    if not r.ok:
        return f"{name}: {r.status.value} {release_id}: {r.reason} ({r.failed_step}: {r.error})"
    undone = out.undone.get(name)
    if undone is None:
        return f"{name}: {r.status.value} {release_id}"
    if undone.rolled_back:  # it had switched; the rollout stopped and put it back
        return f"{name}: {undone.value} {release_id}: the rollout stopped ({out.stopped})"
    return f"{name}: {r.status.value} {release_id}: the rollout stopped, and {undone.value}"


@contextlib.contextmanager
def cancel_on_interrupt() -> Iterator[threading.Event]:
    """Ctrl-C (SIGINT) as the daemon's `cancel`: hosts stop after the step in flight (before
    their switch if they had not reached it), no new host starts, switched hosts are left as
    they are; the verdict is `cancelled` (exit 3). A second Ctrl-C quits at once."""
    cancel = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield cancel  # signal handlers belong to the main thread (an embedding caller's)
        return

    def interrupted(signum: int, frame: object) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        print("interrupted: stopping after the steps in flight (Ctrl-C again to quit now)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        yield cancel
    finally:
        signal.signal(signal.SIGINT, previous)


def excluded_by_daemon(state_dir: Path | None, names: list[str]) -> dict[str, str]:
    """{host: reason} of the named hosts a daemon's re-verification last found degraded or
    failed (what the daemon's own rollout keeps out), read from its store; {} without one."""
    from orchestrator.core.findings import excluded_hosts
    from orchestrator.daemon.config import load_config
    from orchestrator.daemon.store import open_store

    config = load_config(None)  # the daemon's defaults and ORCHESTRATOR_STATE_DIR, as it reads them
    path = (state_dir or config.state_dir) / config.store_path.name
    if not path.is_file():
        return {}
    store = open_store(path)
    try:
        return excluded_hosts(store.hosts(), names)
    finally:
        store.close()
