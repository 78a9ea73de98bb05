"""Webhooks: rollout outcomes POSTed to the URLs of `[webhooks]`, signed, off the critical path.

Which events become which notification (`notification_kind`, a pure function of one event):

- `rollout.started`: a deployment goes from `queued` to `running`;
- `rollout.finished`: a deployment ends: `succeeded`, `failed`, `rolled_back` or `cancelled`;
- `rollout.rolled_back`: a host is put back on its previous release (the pipeline's rollback,
  the rollout's or a manual undo, `reverify.on_failure: rollback`), one per host;
- `host.degraded`: a re-verification finds a host `degraded`.

The body is JSON: `{"id", "kind", "created", "deployment", "app", "host", "state", "event"}`
(`event` is the daemon's event record as `orchestrator logs --json` shows it). It is signed
like GitHub's: `X-Orchestrator-Signature: sha256=<hex HMAC-SHA256 of the raw body>` with the
secret of `secret_file`; `X-Orchestrator-Event` is the kind and `X-Orchestrator-Delivery` the
id, the same on every retry of one delivery (receivers deduplicate on it).

`Notifier.observe` is called on the deployment's own thread for every event (next to the
metrics): it only puts the event in a bounded queue and never waits; a full queue drops the
notification with a warning (at the 1st, 2nd, 4th, 8th... drop, with the count). One sender
thread takes them in order and POSTs them: a 2xx is done; a connection error, timeout, 429
or 5xx is retried `max_attempts` times in all, after `backoff_s`, doubling, with full jitter,
capped at `MAX_BACKOFF_S`; any other status is final.
This thread is the daemon's one exception to "threads only in the pools": a delivery must
outlive the runner that caused it and must not hold a deployment worker while a receiver is
slow. The secret is never logged; a delivery's log lines name its URL, kind and id.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from orchestrator import __version__
from orchestrator.core.states import UNDO_STEP, DeploymentState
from orchestrator.daemon.config import WebhookConfig, read_webhook_secret

log = structlog.get_logger("orchestrator.daemon.webhooks")
SIGNATURE_HEADER = "X-Orchestrator-Signature"
MAX_BACKOFF_S = 60.0
FINISHED = frozenset({DeploymentState.SUCCEEDED, DeploymentState.FAILED,
                      DeploymentState.ROLLED_BACK, DeploymentState.CANCELLED})


def notification_kind(event: dict[str, Any]) -> str | None:
    """The notification an event is, or None (most events are none)."""
    name, status = event.get("event"), event.get("status")
    if name == "deployment":
        if status == DeploymentState.RUNNING and event.get("from") == DeploymentState.QUEUED:
            return "rollout.started"
        if status in FINISHED:
            return "rollout.finished"
    elif status == "ok" and (name == "reverify.rollback" or (
            name == "recovery" and event.get("step") in ("rollback", UNDO_STEP))):
        return "rollout.rolled_back"
    elif name == "reverify" and event.get("host") and status == "degraded":
        return "host.degraded"
    return None


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: `sha256=` and the hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def backoff(attempt: int, base_s: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds before retry `attempt` (1 = the first retry): full jitter over base * 2^(n-1),
    capped (AWS's "exponential backoff and jitter": retries of many senders do not align)."""
    return float(rng() * min(MAX_BACKOFF_S, base_s * 2.0 ** (attempt - 1)))


@dataclass(frozen=True)
class Delivery:
    id: str
    kind: str
    body: bytes


class Notifier:
    """The bounded queue and its one sender thread; `observe` is the service's hook."""

    def __init__(self, config: WebhookConfig, app_of: Callable[[dict[str, Any]], str]) -> None:
        """Reads the secret now: a daemon with an unreadable one refuses to start."""
        secret = read_webhook_secret(config)
        self.config, self._secret, self._app_of = config, secret, app_of
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = \
            queue.Queue(maxsize=config.queue_size)  # None: stop
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.dropped = 0  # notifications refused by a full queue (also logged)
        self.delivered = 0
        self.failed = 0
        assert secret is not None or not config.urls  # config.py requires it with URLs

    @property
    def enabled(self) -> bool:
        return bool(self.config.urls)

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
            self._thread.start()

    def stop(self, grace_s: float) -> None:
        """Stop after what is queued is sent, or after `grace_s` (the rest is dropped)."""
        if self._thread is None:
            return
        deadline = time.monotonic() + grace_s
        with contextlib.suppress(queue.Full):  # full: the join below bounds the wait anyway
            self._queue.put(None, timeout=max(0.0, grace_s))
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._stopping.set()  # a retry still sleeping gives up
        self._thread.join(1.0)

    def observe(self, event: dict[str, Any]) -> None:
        """Called for every event of every deployment, on its thread: queue or drop, at once."""
        if not self.enabled:
            return
        kind = notification_kind(event)
        if kind is None or kind not in self.config.events:
            return
        try:
            self._queue.put_nowait((kind, event))
        except queue.Full:
            self.dropped += 1
            if self.dropped & (self.dropped - 1) == 0:  # the 1st, 2nd, 4th, ...: a flood of
                # drops must not cost a log line each on the deployment's own thread
                log.warning("webhook queue full: notification dropped", kind=kind,
                            deployment=event.get("deployment"), dropped=self.dropped,
                            queue_size=self.config.queue_size)

    # -- the sender thread -------------------------------------------------------------------

    def _run(self) -> None:
        with httpx.Client(timeout=self.config.timeout_s, follow_redirects=False,
                          headers={"user-agent": f"orchestrator/{__version__}"}) as client:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                kind, event = item
                delivery = self._delivery(kind, event)
                for url in self.config.urls:
                    self._send(client, url, delivery)

    def _delivery(self, kind: str, event: dict[str, Any]) -> Delivery:
        delivery = str(uuid.uuid4())
        body = {"id": delivery, "kind": kind,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "deployment": event.get("deployment"), "app": self._app_of(event),
                "host": event.get("host"), "state": event.get("status"), "event": event}
        raw = json.dumps(body, separators=(",", ":"), default=str).encode()
        return Delivery(delivery, kind, raw)

    def _send(self, client: httpx.Client, url: str, delivery: Delivery) -> bool:
        assert self._secret is not None
        headers = {"content-type": "application/json", "X-Orchestrator-Event": delivery.kind,
                   "X-Orchestrator-Delivery": delivery.id,
                   SIGNATURE_HEADER: sign(self._secret, delivery.body)}
        where = {"url": url, "kind": delivery.kind, "delivery": delivery.id}
        for attempt in range(1, self.config.max_attempts + 1):
            try:
                status: int | None = client.post(url, content=delivery.body,
                                                 headers=headers).status_code
                problem = f"HTTP {status}"
            except httpx.HTTPError as exc:
                status, problem = None, f"{type(exc).__name__}: {exc}"
            if status is not None and 200 <= status < 300:
                self.delivered += 1
                return True
            final = status is not None and status != 429 and status < 500
            if final or attempt == self.config.max_attempts or self._stopping.is_set():
                self.failed += 1
                log.warning("webhook not delivered", attempts=attempt, problem=problem, **where)
                return False
            delay = backoff(attempt, self.config.backoff_s)
            log.info("webhook retry", attempt=attempt, problem=problem, delay_s=round(delay, 3),
                     **where)
            if self._stopping.wait(delay):
                self.failed += 1
                return False
        return False  # not reached: the loop returns on its last attempt
