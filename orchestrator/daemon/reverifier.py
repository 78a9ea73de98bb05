"""Scheduled and on-demand re-verification of hosts, inside the daemon.

    service.check_progress(now)  (the daemon's periodic watchdog tick)
        -> Reverifier.tick(now): apps whose `reverify.every` (± jitter) has come round
        -> each due app is one job on the service's own worker pool (no thread of its own):
           the app's targets through the SSH pool, orchestrator/reverify/audit.py's reverify_host
           each
    POST /v1/hosts/verify -> Reverifier.verify_hosts(names): every app on those hosts, now

The schedule of an app starts from its last succeeded deployment that has a `reverify:` section;
each next run is `every * (1 ± JITTER)` later, so apps deployed together do not re-verify in
lock step. Daemons sharing a store (PostgreSQL) run each app once per interval between them, not
once each: a due run first claims the app's `reverify` lease for one interval, left to expire
rather than released; a daemon that finds it held moves its next run to that expiry, so
whichever daemon is due first after it runs the next one.

A run never overlaps a rollout of the same app: it skips an app while the store shows a
deployment of it queued or in flight, a deployment waits (`wait_idle`) for a run in flight (a
scheduled one of its app, or any on-demand one) to end before its rollout starts, and on each
host the run holds the app's deploy lock (a CLI deploy outside the daemon is excluded too).

A host's recorded status is the worst over its apps' last results. Each app's last result is a
row of the store (`app_results`), so a run of one app after a daemon restart still sees the
others': a host degraded by app A stays degraded (and out of new rollouts) when app B verifies
healthy, until A itself verifies clean. A run of every app on a host (`verify`) forgets the
results of apps no longer on it; an app skipped because it is being deployed keeps its last.
"""

from __future__ import annotations

import functools
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from orchestrator.core import findings as rv
from orchestrator.core.inventory import Host
from orchestrator.core.spec import Spec
from orchestrator.core.states import DEPLOYMENT_ACTIVE, DeploymentState
from orchestrator.daemon import bundle
from orchestrator.daemon.leases import REVERIFY
from orchestrator.daemon.store import Store
from orchestrator.errors import DaemonError, HostError, NotFound, OrchestratorError
from orchestrator.reverify.audit import HostCheckResult, reverify_host

log = structlog.get_logger("orchestrator.core.findings")
JITTER = 0.1


def next_run(after: float, every_s: float, rnd: random.Random, jitter: float = JITTER) -> float:
    """When the next run is due: `every_s` after `after`, spread by ± jitter. Pure but for rnd."""
    return after + every_s * (1.0 + rnd.uniform(-jitter, jitter))


class _LogSink:
    """Events of a re-verification whose app has no deployment in this daemon's store."""

    def emit(self, event: str, *, host: str | None = None, step: str | None = None,
             status: str | None = None, duration_ms: float | None = None, level: str = "info",
             **details: Any) -> dict[str, Any]:
        getattr(log, level)(event, host=host, step=step, status=status, **details)
        return {}


class _AppSink:
    """Routes each event to the log of the app's latest deployment (`logs ID` shows it).

    A plain event sink on purpose, with no `step`: the pipeline of a redeploy
    (`reverify.on_failure: redeploy`) then checks its step transitions itself (the pipeline's
    `StepReporter`) and writes no step rows. Its rows would be the deployment's own, already
    finished (`probe` ok cannot run again), and its events carry no `app`, so they go to the
    daemon's log, as they always have; the `reverify*` events (with `app`) go to the deployment's.
    """

    def __init__(self, reverifier: Reverifier) -> None:
        self.r = reverifier

    def emit(self, event: str, *, host: str | None = None, step: str | None = None,
             status: str | None = None, duration_ms: float | None = None, level: str = "info",
             **details: Any) -> None:
        app = details.get("app")
        latest = self.r.store.list_deployments(app=str(app), limit=1) if app else []
        sink = self.r.sink_of(latest[0].id) if latest else _LogSink()
        sink.emit(event, host=host, step=step, status=status, duration_ms=duration_ms,
                  level=level, **details)


class Reverifier:
    def __init__(self, store: Store, probe_runner: Any, sink_of: Callable[[str], Any],
                 bundle_dir: Callable[[str], Any], submit: Callable[[Callable[[], None]], Any],
                 max_sessions: int, rnd: random.Random | None = None,
                 owner: str | None = None) -> None:
        self.store, self.runner, self.sink_of = store, probe_runner, sink_of
        self.owner = owner  # this daemon in the store's leases; None: no lease is taken
        self.bundle_dir, self.submit, self.max_sessions = bundle_dir, submit, max_sessions
        self.rnd = rnd or random.Random()
        self._due: dict[str, float] = {}
        # Runs of different apps on one host end on different workers: recording a result and
        # combining the host's rows into its status is one step, or a stale view could win.
        self._record_lock = threading.Lock()
        self._specs: dict[str, Any] = {}
        self._busy: set[str] = set()
        self._manual = 0  # on-demand runs in flight (`orchestrator verify`): any app
        self._cond = threading.Condition()

    # -- the spec of a deployment ------------------------------------------------------------

    def spec_for(self, deployment: str | None) -> Any:
        """A deployment's spec from its bundle, loaded once (a bundle never changes, and
        loading it hashes the model: not something to redo at every tick)."""
        if deployment is None:
            return None
        if deployment not in self._specs:
            try:
                self.store.get_deployment(deployment)
                self._specs[deployment] = bundle.validate(self.bundle_dir(deployment)).spec
            except (NotFound, OrchestratorError):
                return None  # not remembered: a deployment being submitted may appear later
        return self._specs[deployment]

    # -- the schedule ------------------------------------------------------------------------

    def scheduled_apps(self) -> dict[str, tuple[float, Any]]:
        """{app: (when its last succeeded deployment finished, its spec)} for apps whose spec
        asks for re-verification."""
        out: dict[str, tuple[float, Any]] = {}
        seen: set[str] = set()
        for rec in self.store.list_deployments(states=frozenset({DeploymentState.SUCCEEDED}),
                                               limit=1 << 30):  # newest first
            if rec.app in seen:
                continue  # only the app's latest succeeded deployment says what to do
            seen.add(rec.app)
            if not (rec.spec or {}).get("reverify"):
                continue
            spec = self.spec_for(rec.id)
            if spec is not None and spec.reverify is not None:
                out[rec.app] = (rec.updated, spec)
        return out

    def tick(self, now: float) -> list[str]:
        """Start the runs that are due; returns their apps."""
        started = []
        for app, (since, spec) in self.scheduled_apps().items():
            every = float(spec.reverify.every_s)
            due = self._due.setdefault(app, next_run(since, every, self.rnd))
            if now < due or not self._claim(app):
                continue
            if not self._slot(app, every, now):
                self._done(app)
                continue
            self._due[app] = next_run(now, every, self.rnd)
            try:
                self.submit(functools.partial(self._run_app, app, spec))
            except RuntimeError:  # the service's pool is shut down: the daemon is stopping
                self._done(app)
                continue
            started.append(app)
        return started

    def _slot(self, app: str, every: float, now: float) -> bool:
        """This interval's run of `app` is this daemon's to make (the store's lease on it, held
        for one interval); else its next run is due when that lease expires."""
        if self.owner is None:
            return True
        try:
            held = self.store.lease(REVERIFY, app)
            if held is None or float(held["expiry"]) <= now:
                if self.store.claim(REVERIFY, app, self.owner, every, now=now) is not None:
                    return True
                held = self.store.lease(REVERIFY, app)  # another daemon's claim won just now
        except DaemonError as exc:  # the store is down: no run without the lease
            log.warning("re-verification not claimed", app=app, error=str(exc))
            return False
        self._due[app] = float(held["expiry"]) if held else next_run(now, every, self.rnd)
        return False

    def _claim(self, app: str) -> bool:
        """Mark the app busy unless it is being deployed (checked under the same lock that
        `wait_idle` waits on, so a deployment and a run never both start)."""
        with self._cond:
            if app in self._busy or self.deploying(app):
                return False
            self._busy.add(app)
            return True

    def _done(self, app: str) -> None:
        with self._cond:
            self._busy.discard(app)
            self._cond.notify_all()

    def wait_idle(self, app: str, timeout: float | None = None) -> bool:
        """Block until no re-verification of `app` is in flight (a deployment calls this)."""
        with self._cond:
            return self._cond.wait_for(lambda: app not in self._busy and not self._manual,
                                       timeout=timeout)

    def deploying(self, app: str) -> bool:
        """The store shows a deployment of `app` queued or in flight."""
        return bool(self.store.list_deployments(states=DEPLOYMENT_ACTIVE, app=app))

    def _run_app(self, app: str, spec: Spec) -> None:
        try:
            inventory = self.runner._inventory()
            self.run(inventory.resolve(list(spec.targets)), inventory, apps=[app])
        except Exception:  # a bug must not kill the service's worker thread
            log.exception("scheduled re-verification crashed", app=app)
        finally:
            self._done(app)

    # -- running -----------------------------------------------------------------------------

    def run(self, hosts: Sequence[Host], inventory: Any,
            apps: Sequence[str] | None = None) -> list[HostCheckResult]:
        """Re-verify `apps` (default: every app with a current release) on the hosts and
        record each host's status; unreachable hosts are recorded as such."""
        sink = _AppSink(self)
        with self.runner._pool(inventory) as pool:
            found = pool.map_hosts(
                lambda t, h: reverify_host(t, h, self.spec_for, sink, apps=apps,
                                           deploying=self.deploying),
                list(hosts), self.max_sessions)
        results = []
        for name, res in found.items():
            if isinstance(res, HostCheckResult):
                results.append(self._record(res, all_apps=apps is None))
            else:  # not checked: the apps' stored results stand, none is forgotten
                status = rv.UNREACHABLE if _unreachable(res) else rv.FAILED
                results.append(self._record(HostCheckResult(name, status, [str(res)], None),
                                            all_apps=False, error=True))
        return results

    def _record(self, res: HostCheckResult, all_apps: bool,
                error: bool = False) -> HostCheckResult:
        """Store the apps' results and the host's status: the worst of every app's last result
        (from the store, so an app not run now still counts), or unreachable."""
        with self._record_lock:
            if all_apps:  # every app on the host was listed: the others are no longer there
                self.store.forget_app_results(res.host, keep=set(res.apps))
            for app, check in res.apps.items():
                if check.skipped is None:
                    self.store.record_app_result(res.host, app, check.status, check.reasons)
            per_app = self.store.app_results(res.host)
            # Unreachable says more than any app's last result. A check that failed counts
            # beside the apps' last results; a check that ran is exactly those results.
            if res.status != rv.UNREACHABLE and (per_app or error):
                own = (res.status, res.reasons) if error else (rv.HEALTHY, [])
                res.status, res.reasons = rv.combine(per_app, own)
            self.store.record_host(res.host, res.status, res.reasons, res.facts)
        return res

    def verify_hosts(self, names: list[str]) -> list[str]:
        """On demand (`orchestrator verify [HOST...]`): every app on those hosts, now."""
        inventory = self.runner._inventory()
        hosts = inventory.resolve(names) if names else list(inventory.hosts.values())
        with self._cond:
            self._manual += 1  # a deployment starting now waits for this run to end
        try:
            return [r.host for r in self.run(hosts, inventory)]
        finally:
            with self._cond:
                self._manual -= 1
                self._cond.notify_all()


def for_runner(runner: Any, config: Any, store: Store, sink_of: Callable[[str], Any],
               bundle_dir: Callable[[str], Any], submit: Callable[[Callable[[], None]], Any],
               owner: str) -> Reverifier | None:
    """The daemon's re-verification, for a runner that deploys (`reverifies`); else None."""
    if not getattr(runner, "reverifies", False):
        return None
    from orchestrator.daemon.runners.probe import ProbeRunner

    return Reverifier(store, ProbeRunner(config), sink_of, bundle_dir, submit,
                      config.max_ssh_sessions, owner=owner)


def _unreachable(exc: HostError) -> bool:
    from orchestrator.errors import HostKeyRejected, HostUnreachable

    return isinstance(exc, HostUnreachable | HostKeyRejected)
