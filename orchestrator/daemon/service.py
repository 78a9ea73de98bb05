"""The daemon's core, without I/O of its own beyond the store: submissions, the bounded worker
pool, cancel, rollback, host verification, crash recovery and a clean stop.

Every deployment state change goes through `states.change_deployment_state`, every host-step
change through `states.change_step_state` (via `ServiceSink.step`), so each is checked, persisted
and emitted in one place. The pool is the one concurrency strategy: `max_parallel_deployments`
threads, each running one deployment through the `Runner` (which has its own bounded SSH pool).
Its sinks are daemon/sinks.py's; settling what a dead worker left is daemon/reconcile.py's;
an app's releases on its hosts (and unmark-bad) are daemon/apps.py's.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, cast

import structlog

from orchestrator.core.ids import new_deployment_id
from orchestrator.core.states import (
    DEPLOYMENT_ACTIVE,
    DeploymentState,
    HostStepState,
    change_deployment_state,
)
from orchestrator.daemon import bundle, watchdog
from orchestrator.daemon.config import DaemonConfig
from orchestrator.daemon.events import EventHub
from orchestrator.daemon.leases import DEPLOYMENT, Leases
from orchestrator.daemon.metrics import Metrics
from orchestrator.daemon.reconcile import reconcile, reconcile_with_runner
from orchestrator.daemon.reverifier import for_runner
from orchestrator.daemon.runners.base import DeploymentOutcome, Runner
from orchestrator.daemon.sinks import ServiceSink
from orchestrator.daemon.statedir import private_dir
from orchestrator.daemon.store import DeploymentRecord, Store
from orchestrator.daemon.webhooks import Notifier
from orchestrator.deploy.control import RolloutControl
from orchestrator.errors import Conflict, OrchestratorError, StoreUnavailable

D, S = DeploymentState, HostStepState
log = structlog.get_logger("orchestrator.daemon.service")


class Service:
    def __init__(self, config: DaemonConfig, store: Store, hub: EventHub, runner: Runner,
                 *, reconciler: Callable[[Store, ServiceSink, DeploymentRecord], None] = reconcile):
        self.config = config
        self.store = store
        self.hub = hub
        self.runner = runner
        self.reconciler = reconciler
        self._pool = ThreadPoolExecutor(config.max_parallel_deployments,
                                        thread_name_prefix="deploy")
        self._lock, self._fetch_lock = threading.Lock(), threading.Lock()
        self._cancels: dict[str, RolloutControl] = {}
        self._user_cancelled: set[str] = set()
        self._rollback_requested: set[str] = set()
        self._rollback_to: dict[str, str] = {}  # a manual rollback to a chosen release
        self._working: set[str] = set()
        self._stall_noted: set[str] = set()
        self._lease_lost: set[str] = set()
        self.leases = Leases(store, config.lease_ttl_s)
        self.stopping, self.idle = threading.Event(), threading.Condition()
        self.metrics = Metrics(store)
        self.webhooks = Notifier(config.webhooks, self.metrics.app_of)  # stopped by main.py
        # Re-verification (daemon/reverifier.py), for a runner that deploys (`reverifies`).
        self.reverifier = for_runner(runner, config, store, self.sink, self.bundle_dir,
                                     self._pool.submit, self.leases.owner)

    def sink(self, deployment: str) -> ServiceSink:
        sink = ServiceSink(self.hub, deployment, self._observe)
        sink.fence = self.leases.token(DEPLOYMENT, deployment)
        return sink

    def _observe(self, event: dict[str, Any]) -> None:  # webhooks only queue: never wait
        self.metrics.observe(event)
        self.webhooks.observe(event)

    def bundle_dir(self, deployment: str) -> Path:
        """The deployment's bundle on this daemon's disk (`bundle.local_copy`)."""
        return bundle.local_copy(self.store, self.config.bundles_dir / deployment,
                                 self._fetch_lock)

    # -- start and stop ----------------------------------------------------------------------

    def start(self) -> None:
        """Reconcile what the last daemon left in flight, then queue what it left queued."""
        self.webhooks.start()
        watchdog.take_over(self)

    def take_over(self, record: DeploymentRecord) -> None:
        """Work a deployment no live daemon holds (its lease just claimed by this one): a
        queued one is run; one left running is resumed from the hosts' real state if the
        runner can, else reconciled (settled)."""
        if record.state is D.QUEUED:
            self._schedule(record.id, "run")
            return
        resume = getattr(self.runner, "resume", None) is not None and record.state is D.RUNNING
        log.warning("reconciling", deployment=record.id, state=str(record.state), resume=resume)
        if resume:
            self._schedule(record.id, "resume")
            return
        try:
            self.reconcile(record)
        finally:
            self.leases.release(DEPLOYMENT, record.id)

    def reconcile(self, record: DeploymentRecord) -> None:
        """Settle a deployment the store shows in flight with no worker: the runner's own
        `reconcile` if it has one, else `self.reconciler` (orchestrator/daemon/reconcile.py)."""
        method = getattr(self.runner, "reconcile", None)
        sink = self.sink(record.id)
        if method is None:
            self.reconciler(self.store, sink, record)
            return
        reconcile_with_runner(self.store, sink, record, method, self.bundle_dir(record.id))

    def stop(self, grace_s: float) -> bool:
        """No new work; runners stop after their current step. Whether every worker finished
        within `grace_s` (the others stay `running`, reconciled at the next start)."""
        self.stopping.set()
        with self._lock:
            for event in self._cancels.values():
                event.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self.idle:
            return self.idle.wait_for(lambda: not self._working, timeout=grace_s)

    # -- submissions -------------------------------------------------------------------------

    def new_bundle(self) -> tuple[str, Path]:
        deployment = new_deployment_id()
        path = self.config.bundles_dir / deployment
        private_dir(path.parent)  # bundles/ holds what users submitted: the daemon's alone
        path.mkdir(mode=0o700)    # a new id: an existing dir is an error, not a reuse
        return deployment, path

    def submit(self, deployment: str, spec_name: str = bundle.SPEC_NAME) -> DeploymentRecord:
        """Validate the bundle already written for `deployment` and queue it. A second active
        deployment of the same app is refused (it would race the first on the same hosts)."""
        path = self.config.bundles_dir / deployment
        try:
            if self.stopping.is_set():
                raise Conflict("the daemon is stopping; submit again after it restarts")
            submission = bundle.validate(path, spec_name, check_model=True)
            check = getattr(self.runner, "check", None)
            if check is not None:  # e.g. targets that the inventory does not know: 400 now
                check(submission.spec)
            if self.store.shared:  # before the row: whichever daemon runs it finds the bundle
                bundle.keep_in_store(self.store, deployment, path)
            with self._lock:
                active = self.store.list_deployments(states=DEPLOYMENT_ACTIVE,
                                                     app=submission.app)
                if active:
                    raise Conflict(f"app {submission.app!r} is already being deployed by "
                                   f"{active[0].id} ({active[0].state}); wait for it or cancel it")
                # Held by this daemon before any other can see the row: it has the bundle.
                self.leases.claim(DEPLOYMENT, deployment)
                self.store.create_deployment(deployment, submission.app, submission.data)
        except OrchestratorError:
            shutil.rmtree(path, ignore_errors=True)
            if self.store.shared:
                self.store.drop_bundle(deployment)
            raise
        self.sink(deployment).emit("deployment", status=str(D.QUEUED), app=submission.app,
                                   targets=list(submission.targets))
        self._schedule(deployment, "run")
        return self.store.get_deployment(deployment)

    def _schedule(self, deployment: str, kind: str) -> None:
        with self._lock:
            if self.stopping.is_set():
                return
            if self.leases.claim(DEPLOYMENT, deployment) is None:
                log.info("held by another daemon", deployment=deployment, kind=kind)
                return
            if deployment not in self._cancels:
                control = self._cancels[deployment] = RolloutControl()
                control.on_hold = self._holder(deployment)
            self._pool.submit(self._work, deployment, kind)

    def _holder(self, deployment: str) -> Callable[[bool, str], None]:
        # The rollout reports it waits (paused) or goes on (running): one state change each.

        def on_hold(holding: bool, reason: str) -> None:
            try:
                change_deployment_state(self.store, self.sink(deployment), deployment,
                                        D.PAUSED if holding else D.RUNNING, reason=reason)
            except OrchestratorError as exc:  # e.g. a restart raced it: recorded, not fatal
                log.warning("hold not recorded", deployment=deployment, error=str(exc))

        return on_hold

    # -- the worker --------------------------------------------------------------------------

    def _work(self, deployment: str, kind: str) -> None:
        sink = self.sink(deployment)
        log_ = log.bind(deployment=deployment)
        with self.idle:
            self._working.add(deployment)
        try:
            cancel = sink.cancel = self._cancels[deployment]  # set too if the store is lost
            if self.stopping.is_set():
                return  # still queued in the store: the next start picks it up
            submission = bundle.validate(self.bundle_dir(deployment))
            if kind == "resume":  # left `running` by a dead daemon; scheduled if it has one
                resume = getattr(self.runner, "resume")  # noqa: B009 (not in the Protocol)
                outcome = self._call(resume, deployment, submission, sink, cancel)
            elif kind == "run":
                change_deployment_state(self.store, sink, deployment, D.RUNNING)
                if self.reverifier is not None:  # a re-verification of the app ends first
                    self.reverifier.wait_idle(submission.app)
                outcome = self._call(self.runner.run, deployment, submission, sink, cancel)
                if deployment in self._rollback_requested and outcome.state is not D.ROLLED_BACK:
                    outcome = self._call(self.runner.rollback, deployment, submission, sink,
                                         threading.Event())
            else:
                to, method = self._rollback_to.get(deployment), self.runner.rollback
                method = partial(cast(Any, self.runner).rollback, to=to) if to else method
                outcome = self._call(method, deployment, submission, sink, cancel)
            self._finish(deployment, sink, outcome)
        except OrchestratorError as exc:  # e.g. cancelled while queued: the transition lost
            log_.info("deployment not run", reason=str(exc))
        except Exception:  # a bug must not leave a deployment stuck or kill the pool thread
            log_.exception("worker crashed")
        finally:
            with self._lock:
                self._cancels.pop(deployment, None), self._rollback_to.pop(deployment, None)
                for noted in (self._user_cancelled, self._rollback_requested,
                              self._stall_noted, self._lease_lost):
                    noted.discard(deployment)
            self.leases.release(DEPLOYMENT, deployment)
            self.hub.close_log(deployment)
            with self.idle:
                self._working.discard(deployment)
                self.idle.notify_all()

    def _call(self, method: Callable[..., DeploymentOutcome], deployment: str,
              submission: bundle.Submission, sink: ServiceSink,
              cancel: threading.Event) -> DeploymentOutcome:
        try:
            return method(deployment, submission.bundle_dir, submission.spec, sink, cancel)
        except StoreUnavailable:
            raise  # not the deployment's outcome: it stays in flight for the next lease holder
        except OrchestratorError as exc:
            return DeploymentOutcome(D.FAILED, str(exc))
        except Exception as exc:
            log.exception("runner crashed", deployment=deployment)
            return DeploymentOutcome(D.FAILED, f"internal error in the runner ({exc!r}); "
                                               "please report (traceback in the daemon log)")

    def _finish(self, deployment: str, sink: ServiceSink, outcome: DeploymentOutcome) -> None:
        if deployment in self._lease_lost or sink.store_lost:  # the next holder resumes it
            sink.emit("deployment", status="interrupted", level="warning",
                      reason="lease or store lost; the daemon that holds it next resumes it")
            return
        if (self.stopping.is_set() and outcome.state is D.CANCELLED
                and deployment not in self._user_cancelled):
            # Interrupted by SIGTERM, not by a user: leave it in flight for `reconcile`.
            sink.emit("deployment", status="interrupted", level="warning",
                      reason="daemon stopping; reconciled at the next start")
            return
        if outcome.state is D.CANCELLED and deployment in self._stall_noted:
            outcome = DeploymentOutcome(D.FAILED, "stopped by the daemon's watchdog: no progress "
                                                  f"for {self.config.progress_timeout_s:g} s",
                                        outcome.hosts)
        change_deployment_state(self.store, sink, deployment, outcome.state,
                                reason=outcome.reason, result=outcome.as_json())

    # -- user actions ------------------------------------------------------------------------

    def cancel(self, deployment: str) -> DeploymentRecord:
        with self._lock:
            record = self.store.get_deployment(deployment)
            if record.state is D.QUEUED:
                change_deployment_state(self.store, self.sink(deployment), deployment,
                                        D.CANCELLED, reason="cancelled by request")
            elif record.state in DEPLOYMENT_ACTIVE and deployment in self._cancels:
                self._user_cancelled.add(deployment)
                self._cancels[deployment].set()
                self.sink(deployment).emit("cancel", status="requested", level="warning")
                # As it was when the request was taken: the worker may have stopped it by the
                # time the store is read again, and "cancel requested" must not depend on that.
                return record
            else:
                raise Conflict(f"deployment {deployment} is {record.state}: nothing to cancel")
        return self.store.get_deployment(deployment)

    def pause(self, deployment: str) -> DeploymentRecord:
        """Hold a running rollout before its next batch (shown `paused` once it waits)."""
        with self._lock:
            record = self.store.get_deployment(deployment)
            control = self._cancels.get(deployment)
            if record.state is not D.RUNNING or control is None:
                raise Conflict(f"deployment {deployment} is {record.state}: only a running "
                               "deployment can be paused")
            control.pause()
        self.sink(deployment).emit("pause", status="requested", level="warning",
                                   note="the batch in flight finishes first")
        return self.store.get_deployment(deployment)

    def resume(self, deployment: str) -> DeploymentRecord:
        """Let a paused rollout (by request, or held by `rollout.on_failure: pause`) go on."""
        with self._lock:
            record = self.store.get_deployment(deployment)
            control = self._cancels.get(deployment)
            if control is None or not (record.state is D.PAUSED or control.paused):
                raise Conflict(f"deployment {deployment} is {record.state}: nothing to resume")
            control.resume()
        self.sink(deployment).emit("resume", status="requested")
        return self.store.get_deployment(deployment)

    def abort(self, deployment: str) -> DeploymentRecord:
        """Start no more hosts (those in flight stop before their switch) and, with
        `rollout.on_failure: rollback`, put back the hosts this deployment switched; with
        `pause`, leave them. A queued deployment is simply cancelled."""
        with self._lock:
            record = self.store.get_deployment(deployment)
            control = self._cancels.get(deployment)
            if record.state is D.QUEUED:
                change_deployment_state(self.store, self.sink(deployment), deployment,
                                        D.CANCELLED, reason="aborted by request")
                return self.store.get_deployment(deployment)
            if record.state not in (D.RUNNING, D.PAUSED) or control is None:
                raise Conflict(f"deployment {deployment} is {record.state}: nothing to abort")
            self._user_cancelled.add(deployment)
            control.abort()
        self.sink(deployment).emit("abort", status="requested", level="warning")
        return self.store.get_deployment(deployment)

    def rollback(self, deployment: str, to: str | None = None) -> DeploymentRecord:
        """A running deployment is stopped and its switched hosts go back; a succeeded one's
        go to their previous good release, or `to`, once every host said it can (the runner's
        `check_rollback`: else 409 and nothing changed)."""
        record, check = self.store.get_deployment(deployment), getattr(
            self.runner, "check_rollback", None)
        if to is not None and (check is None or record.state is not D.SUCCEEDED):
            raise Conflict(f"deployment {deployment} is {record.state}: only a succeeded "
                           "deployment of the deploy runner can be rolled back to a chosen "
                           "release")
        if record.state is D.SUCCEEDED and check is not None:
            check(deployment, bundle.validate(self.bundle_dir(deployment)).spec, to)
        with self._lock:
            record = self.store.get_deployment(deployment)  # again: it may have moved since
            if record.state in (D.RUNNING, D.PAUSED) and deployment in self._cancels:
                self._rollback_requested.add(deployment)
                self._user_cancelled.add(deployment)
                self._cancels[deployment].set()
                self.sink(deployment).emit("rollback", status="requested", level="warning")
            elif record.state is D.SUCCEEDED:
                if active := self.store.list_deployments(states=DEPLOYMENT_ACTIVE,
                                                         app=record.app):
                    raise Conflict(f"app {record.app!r} has deployment {active[0].id} "
                                   f"{active[0].state}; wait for it or cancel it first")
                self._rollback_to.update({deployment: to} if to else {})
                change_deployment_state(self.store, self.sink(deployment), deployment,
                                        D.ROLLING_BACK, reason="rollback requested"
                                        + (f" to {to}" if to else ""))
            else:
                raise Conflict(f"deployment {deployment} is {record.state}: only a running or "
                               "succeeded deployment can be rolled back")
        if record.state is D.SUCCEEDED:
            self._schedule(deployment, "rollback")
        return self.store.get_deployment(deployment)

    def stop_worker(self, deployment: str, why: str) -> bool:
        """The deployment's worker starts no further step: its lease was lost (`why` "lease":
        it then ends `interrupted`, left for the next holder) or it made no progress ("stall":
        it ends failed; once). Whether a worker was told."""
        with self._lock:
            if why != "lease" and deployment in self._stall_noted:
                return False
            (self._lease_lost if why == "lease" else self._stall_noted).add(deployment)
            if cancel := self._cancels.get(deployment):
                cancel.set()
            return cancel is not None

    def works_on(self, deployment: str) -> bool:
        """A worker of this daemon has it (user actions on others are routed: routing.py)."""
        with self._lock:
            return deployment in self._cancels

    def check_progress(self, now: float, *, orphan_after_s: float = 30.0) -> list[str]:
        return watchdog.check_progress(self, now, orphan_after_s=orphan_after_s)  # watchdog.py

    def verify_hosts(self, names: list[str]) -> list[dict[str, Any]]:
        if self.reverifier is not None:  # probe, audit and warm up every app on those hosts
            wanted = set(self.reverifier.verify_hosts(names))
            return [h for h in self.store.hosts() if h["host"] in wanted]
        checks = self.runner.verify_hosts(names)
        for check in checks:
            self.store.record_host(check.host, check.status, check.reasons, check.facts)
        wanted = {c.host for c in checks}
        return [h for h in self.store.hosts() if h["host"] in wanted]
