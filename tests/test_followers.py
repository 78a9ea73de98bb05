"""Followers and request bodies against the real daemon over its real socket (issue 13, item 4):
a follower that stops reading is dropped with a `lagged` line and resumes by seq, seeing each
event exactly once, while the rollout goes on without waiting for it; followers past
`max_followers` get 503; a body over its limit is refused before it is read (declared) or as
soon as it passes the limit (chunked)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.cli.client import Client
from orchestrator.deploy.steps.registry import STEP_ORDER
from tests.daemons import ECHO, Daemon, stored_events, wait_for, write_config
from tests.specs import stub_spec

HOSTS = 300  # 300 x 8 steps x 2 events: far more than the socket buffers and the feed hold


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _submit(daemon: Daemon, tmp_path: Path, hosts: int, name: str = "fraud-detector") -> str:
    spec = stub_spec(tmp_path / name, [f"h{i}" for i in range(hosts)], name=name)
    result = daemon.cli("submit", str(spec), "--json")
    assert result.returncode == 0, result.stderr
    deployment: str = json.loads(result.stdout)["id"]
    return deployment


def test_a_stalled_follower_is_dropped_lagged_and_resumes_every_seq_exactly_once(
        tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    daemon = daemons(write_config(tmp_path, ECHO), env={"ORCHESTRATOR_ECHO_DELAY_S": "0"})
    deployment = _submit(daemon, tmp_path, HOSTS)
    total = HOSTS * len(STEP_ORDER) * 2 + 3  # queued, running, succeeded
    client = Client(daemon.socket)
    with daemon.http() as http, http.stream(
            "GET", f"/v1/deployments/{deployment}/events", params={"follow": True},
            timeout=120) as raw:
        lines = raw.iter_lines()
        first = json.loads(next(lines))
        through_client = client.events(deployment, follow=True)
        client_first = next(through_client)
        # Both stop reading; the rollout must finish regardless, in a bounded time.
        started = time.monotonic()
        wait_for(lambda: http.get(f"/v1/deployments/{deployment}").json()["state"]
                 == "succeeded", timeout=120, what="the rollout behind two stalled followers")
        assert time.monotonic() - started < 120
        rest = [json.loads(line) for line in lines if line]
    marker = rest.pop()
    assert marker == {"event": "lagged", "deployment": deployment, "after": rest[-1]["seq"]}
    assert all("seq" in e for e in rest) and len(rest) + 1 < total  # dropped, not buffered
    with daemon.http() as http:
        resumed = [json.loads(line) for line in http.get(
            f"/v1/deployments/{deployment}/events",
            params={"follow": True, "after": marker["after"]}).text.splitlines()]
    got = [first, *rest, *resumed]
    assert [e["seq"] for e in got] == list(range(1, total + 1))
    assert got == stored_events(daemon, deployment)
    # The client resumed by itself: every event once, no marker.
    via_client = [client_first, *through_client]
    client.close()
    assert [e["seq"] for e in via_client] == list(range(1, total + 1))


def test_followers_past_max_followers_get_503(
        tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    daemon = daemons(write_config(tmp_path, ECHO + "max_followers = 2\n"),
                     env={"ORCHESTRATOR_ECHO_DELAY_S": "2"})
    deployment = _submit(daemon, tmp_path, 1)
    url = f"/v1/deployments/{deployment}/events"
    with daemon.http() as one, daemon.http() as two, daemon.http() as three:
        with one.stream("GET", url, params={"follow": True}) as a, \
                two.stream("GET", url, params={"follow": True}) as b:
            assert a.status_code == b.status_code == 200
            refused = three.get(url, params={"follow": True})
            assert refused.status_code == 503
            assert "max_followers" in refused.json()["error"]
            assert three.get(url).status_code == 200  # a replay is not a follower
        # Once a follower leaves, there is room again.
        with three.stream("GET", url, params={"follow": True}) as c:
            assert c.status_code == 200


def _raw(daemon: Daemon, head: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(str(daemon.socket))
    sock.sendall(head.encode())
    return sock


def _status(sock: socket.socket) -> tuple[int, dict[str, str]]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        body += chunk
    status = int(head.split()[1])
    text = body.decode(errors="replace")
    return status, json.loads(text[text.index("{"):text.rindex("}") + 1])


def test_a_declared_oversize_body_is_refused_before_it_is_read(
        tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    daemon = daemons(write_config(tmp_path, ECHO))
    for path in ("/v1/hosts/verify", "/v1/deployments"):  # JSON: limited to 1 MiB on both
        # 300 MiB announced, not one byte of it sent: the answer comes all the same.
        sock = _raw(daemon, f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                            f"application/json\r\nContent-Length: {300 << 20}\r\n\r\n")
        status, body = _status(sock)
        sock.close()
        assert (status, body["kind"]) == (413, "PayloadTooLarge"), (path, body)


def test_a_chunked_oversize_body_is_cut_at_the_limit(
        tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    daemon = daemons(write_config(tmp_path, ECHO))
    before = _rss_mb(daemon.proc.pid)
    sock = _raw(daemon, "POST /v1/hosts/verify HTTP/1.1\r\nHost: localhost\r\n"
                        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"%x\r\n%s\r\n" % (1 << 16, b" " * (1 << 16))
    sent = 0
    try:
        while sent < 300 << 20:
            sock.sendall(piece)
            sent += 1 << 16
    except OSError:
        pass  # the daemon answered and closed: it stopped reading
    assert sent < 64 << 20, f"the daemon read {sent} bytes of a body limited to 1 MiB"
    status, body = _status(sock)
    sock.close()
    assert (status, body["kind"]) == (413, "PayloadTooLarge")
    assert _rss_mb(daemon.proc.pid) - before < 50
    with daemon.http() as http:
        assert http.get("/healthz").status_code == 200


def test_live_followers_get_every_event_once_over_http_1_0_and_1_1(
        tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    """The deployment's writer frames what it writes itself (daemon/fanout.py): chunked for
    an HTTP/1.1 client, raw until the close for HTTP/1.0; both read the same events, the
    live part included, as the store holds them."""
    daemon = daemons(write_config(tmp_path, ECHO), env={"ORCHESTRATOR_ECHO_DELAY_S": "0.05"})
    deployment = _submit(daemon, tmp_path, 4)
    head = (f"GET /v1/deployments/{deployment}/events?follow=true HTTP/1.0\r\n"
            "Host: localhost\r\n\r\n")
    old = _raw(daemon, head)
    with daemon.http() as http, http.stream(
            "GET", f"/v1/deployments/{deployment}/events", params={"follow": True},
            timeout=120) as new:
        live = [json.loads(line) for line in new.iter_lines() if line]
    data = b""
    while chunk := old.recv(65536):
        data += chunk
    old.close()
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head_bytes.lower()
    raw = [json.loads(line) for line in body.decode().splitlines() if line]
    stored = stored_events(daemon, deployment)
    assert live == raw == stored and stored[-1]["status"] == "succeeded"
    assert len(stored) == 4 * len(STEP_ORDER) * 2 + 3
