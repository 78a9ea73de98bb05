"""Webhooks (daemon/webhooks.py) against a real local HTTP receiver (http.server in a thread):
the body, its HMAC-SHA256 signature, retries with backoff, a queue that never blocks the
deployment, the `[webhooks]` config, and the real daemon notifying a rollout's start and end."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from orchestrator.daemon.config import WEBHOOK_EVENTS, WebhookConfig, load_config
from orchestrator.daemon.webhooks import Notifier, backoff, notification_kind
from orchestrator.errors import SpecError
from tests.daemons import ECHO, Daemon, wait_for, write_config
from tests.specs import LOCK, stub_spec

SECRET = b"webhook-secret-0123456789abcdef"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """What the receiver answers: `statuses` in turn (then 200), after `delay_s` each."""

    url: str
    statuses: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    requests: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            r = state[0]
            body = self.rfile.read(int(self.headers["content-length"]))
            r.requests.append(Received({k.lower(): v for k, v in self.headers.items()}, body,
                                       time.monotonic()))
            if r.delay_s:
                r.release.wait(r.delay_s)
            status = r.statuses.pop(0) if r.statuses else 200
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.append(Receiver(f"http://127.0.0.1:{server.server_port}/hook"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state[0]
    state[0].release.set()
    server.shutdown()
    server.server_close()


def verified(request: Received) -> dict[str, Any]:
    """The body, once its signature checks out as a receiver would check it."""
    expected = "sha256=" + hmac.new(SECRET, request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["x-orchestrator-signature"], expected)
    body: dict[str, Any] = json.loads(request.body)
    assert request.headers["x-orchestrator-event"] == body["kind"]
    assert request.headers["x-orchestrator-delivery"] == body["id"]
    return body


def notifier(tmp_path: Path, url: str, **overrides: Any) -> Notifier:
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET + b"\n")
    config = WebhookConfig(urls=(url,), secret_file=secret, **overrides)
    return Notifier(config, lambda event: "fraud")


def finished(deployment: str = "d1", status: str = "succeeded") -> dict[str, Any]:
    return {"deployment": deployment, "event": "deployment", "status": status,
            "from": "running", "host": None, "step": None, "seq": 9}


def test_signed_body_and_retries_with_backoff(tmp_path: Path, receiver: Receiver) -> None:
    receiver.statuses = [500, 503]  # twice refused, then accepted
    n = notifier(tmp_path, receiver.url, backoff_s=0.2)
    n.start()
    with capture_logs() as logs:
        n.observe(finished())
        wait_for(lambda: n.delivered == 1, timeout=30, what="the delivery")
        n.stop(5)
    assert len(receiver.requests) == 3
    bodies = [verified(r) for r in receiver.requests]
    assert bodies[0] == bodies[2]  # a retry sends the same delivery: same id, same bytes
    body = bodies[0]
    assert body["kind"] == "rollout.finished" and body["state"] == "succeeded"
    assert body["deployment"] == "d1" and body["app"] == "fraud"
    assert body["event"]["seq"] == 9
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert all(0 <= gap < 5 for gap in gaps), gaps
    retries = [e for e in logs if e["event"] == "webhook retry"]
    assert [e["problem"] for e in retries] == ["HTTP 500", "HTTP 503"]
    assert SECRET.decode() not in repr(logs)


def test_a_client_error_is_final_and_an_unreachable_receiver_gives_up(tmp_path: Path,
                                                                       receiver: Receiver) -> None:
    receiver.statuses = [400]
    n = notifier(tmp_path, receiver.url, backoff_s=0.01, max_attempts=3)
    n.start()
    n.observe(finished())
    wait_for(lambda: n.failed == 1, timeout=30, what="the refusal")
    assert len(receiver.requests) == 1  # 400: the receiver will not change its mind
    n.stop(5)

    dead = notifier(tmp_path, "http://127.0.0.1:9/nobody", backoff_s=0.01, max_attempts=3,
                    timeout_s=2)
    dead.start()
    with capture_logs() as logs:
        dead.observe(finished())
        wait_for(lambda: dead.failed == 1, timeout=30, what="giving up")
        dead.stop(5)
    gave_up = [e for e in logs if e["event"] == "webhook not delivered"]
    assert gave_up and gave_up[0]["attempts"] == 3 and "ConnectError" in gave_up[0]["problem"]
    assert SECRET.decode() not in repr(logs)


def test_a_slow_receiver_never_blocks_the_caller(tmp_path: Path, receiver: Receiver) -> None:
    receiver.delay_s = 30  # until released
    n = notifier(tmp_path, receiver.url, queue_size=3, timeout_s=60)
    n.start()
    start = time.monotonic()
    with capture_logs() as logs:
        for i in range(20):
            n.observe(finished(f"d{i}"))
    took = time.monotonic() - start
    assert took < 0.5, took  # queued or dropped, never waited for
    # One in flight at the receiver, three queued: the rest dropped, each logged.
    wait_for(lambda: len(receiver.requests) == 1, timeout=10, what="the first request")
    assert n.dropped >= 20 - 1 - 3
    drops = [e["dropped"] for e in logs if e["event"] == "webhook queue full: notification dropped"]
    assert drops == [1, 2, 4, 8, 16][:len(drops)] and drops[-1] * 2 > n.dropped  # not one each
    receiver.release.set()
    receiver.delay_s = 0
    wait_for(lambda: n.delivered == 20 - n.dropped, timeout=30, what="the queued ones")
    n.stop(5)


@pytest.mark.parametrize("event, kind", [
    ({"event": "deployment", "status": "running", "from": "queued"}, "rollout.started"),
    ({"event": "deployment", "status": "running", "from": "paused"}, None),  # a resume
    ({"event": "deployment", "status": "failed", "from": "running"}, "rollout.finished"),
    ({"event": "deployment", "status": "rolled_back", "from": "rolling_back"},
     "rollout.finished"),
    ({"event": "deployment", "status": "rolling_back", "from": "running"}, None),
    ({"event": "recovery", "step": "rollback", "status": "ok", "host": "h"},
     "rollout.rolled_back"),
    ({"event": "recovery", "step": "undo", "status": "ok", "host": "h"}, "rollout.rolled_back"),
    ({"event": "recovery", "step": "rollback", "status": "failed", "host": "h"}, None),
    ({"event": "reverify.rollback", "status": "ok", "host": "h"}, "rollout.rolled_back"),
    ({"event": "reverify", "status": "degraded", "host": "h"}, "host.degraded"),
    ({"event": "reverify", "status": "healthy", "host": "h"}, None),
    ({"event": "step", "step": "switch", "status": "ok", "host": "h"}, None),
])
def test_which_events_notify(event: dict[str, Any], kind: str | None) -> None:
    assert notification_kind(event) == kind


def test_backoff_doubles_with_full_jitter_and_a_cap() -> None:
    assert [backoff(n, 1.0, lambda: 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff(20, 1.0, lambda: 1.0) == 60.0
    assert backoff(3, 1.0, lambda: 0.5) == 2.0


@pytest.mark.parametrize("table, field_name, needle", [
    ('urls = ["ftp://x"]\nsecret_file = "s"', "webhooks.urls[0]", "http:// or https://"),
    ('urls = ["https://hooks.example/x"]', "webhooks.secret_file", "required"),
    ('urls = []\nevents = ["rollout.exploded"]', "webhooks.events[0]", "must be one of"),
    ('url = "https://x"', "webhooks.url", "unknown key"),
    ('urls = ["https://x"]\nsecret_file = "s"\nmax_attempts = 0', "webhooks.max_attempts",
     "between"),
])
def test_config_errors_name_the_key(tmp_path: Path, table: str, field_name: str,
                                    needle: str) -> None:
    path = tmp_path / "o.toml"
    path.write_text(f"[webhooks]\n{table}\n")
    with pytest.raises(SpecError, match=needle) as info:
        load_config(path, env={})
    assert info.value.field == field_name


def test_config_defaults_and_a_short_secret_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.toml"
    path.write_text('[webhooks]\nurls = ["https://hooks.example/o"]\nsecret_file = "s"\n')
    config = load_config(path, env={}).webhooks
    assert config.urls == ("https://hooks.example/o",) and config.events == WEBHOOK_EVENTS
    assert config.secret_file == tmp_path / "s"
    (tmp_path / "s").write_text("short\n")
    with pytest.raises(SpecError, match="at least 16 bytes") as info:
        Notifier(config, lambda e: "x")
    assert "short" not in str(info.value)


def test_the_daemon_notifies_start_and_finish_and_a_slow_receiver_does_not_hold_it(
        tmp_path: Path, receiver: Receiver, daemons: Callable[..., Daemon]) -> None:
    (tmp_path / "webhook.secret").write_bytes(SECRET)
    receiver.delay_s = 600  # the first answer waits until the rollout is over
    daemon = daemons(write_config(tmp_path, ECHO + (
        f'[webhooks]\nurls = ["{receiver.url}"]\nsecret_file = "webhook.secret"\n')))
    spec = stub_spec(tmp_path / "spec", ["tb-01", "tb-02"], name="fraud", lock=LOCK, gpu=None)
    done = daemon.cli("submit", str(spec), "--wait")
    assert done.returncode == 0, done.stderr
    # The rollout finished while the receiver still holds the first notification unanswered.
    assert len(receiver.requests) == 1 and not receiver.release.is_set()
    receiver.delay_s = 0
    receiver.release.set()
    wait_for(lambda: len(receiver.requests) == 2, timeout=30, what="both notifications")
    bodies = [verified(r) for r in receiver.requests]
    assert [(b["kind"], b["state"], b["app"]) for b in bodies] == [
        ("rollout.started", "running", "fraud"), ("rollout.finished", "succeeded", "fraud")]
    assert bodies[0]["deployment"] == bodies[1]["deployment"]
    log = (daemon.state_dir / "logs" / "daemon.log").read_text()
    assert SECRET.decode() not in log and SECRET.decode() not in daemon.output.read_text()
