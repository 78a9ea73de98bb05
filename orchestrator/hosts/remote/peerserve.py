"""A host serves the wheels of its content-addressed cache to the other hosts of one rollout
(`environment.wheel_peers`, issue 15): the controller then streams each wheel to few hosts and
the others pull it from a peer by hash (`wheels-fetch`, layout `peer`).

    python3 -E -S peerserve.py      stdin, first line: {"root", "bind", "token",
                                    "max_lifetime_s", "max_clients", ["expected", "wait_s"]}

It binds `bind` (the host's `peer_address`) on an ephemeral port, prints one JSON line
`{"ok": true, "port": N}` (or `{"ok": false, "error"}` and exits 1), then serves until its stdin
reaches EOF (the controller closes the SSH channel at the rollout's end; sshd closes it when
the connection drops) or `max_lifetime_s` passes, whichever comes first. Never left running.

What it serves, and nothing else: GET `/<token>/<sha256>.whl`, a regular file of
`<root>/.orchestrator/wheels/` (opened without following a symlink). The token is random per
rollout and travels on stdin (not in argv: `ps` shows argv), so others on the network can
neither list nor fetch; any other path, a wrong token or a missing file is the same bare 404
(nothing tells a guesser which part was wrong). No listing, no other method. At most
`max_clients` requests at once (beyond: 503, the puller falls back to the controller); a
client that stalls is dropped after a socket timeout. The pullers trust it for nothing but
availability: each keeps a file only if its sha256 is the lock's.

A *seed* (a host whose own stream from the controller is still arriving) is started with
`expected`, the sha256s it is receiving: a request for one of those that has not landed yet
waits for it (the cache path polled, at most `wait_s`; an HTTP `100 Continue` every few seconds
keeps the puller's socket timeout from firing meanwhile), then is served; one that never lands
is the same 404. Only the controller names `expected` (on stdin), never a request. A waiting
request never sees a partial file: `wheels-receive` renames a wheel into the cache only once
its whole sha256 matched.

Stdlib only, Python 3.9+ (shipped with the other host tools).
"""

from __future__ import annotations

import hmac
import json
import os
import re
import socket
import stat
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import hostlayout

TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
PATH_RE = re.compile(r"^/([A-Za-z0-9_-]{1,128})/([0-9a-f]{64})\.whl$")
MAX_LIFETIME_S = 24 * 3600.0
MAX_CLIENTS = 64
SOCKET_TIMEOUT_S = 60.0
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_EXPECTED = 10000
MAX_WAIT_S = 600.0
#: How often a waiting request looks for its wheel, and tells the puller it is still there
#: (under the pullers' 30 s socket timeout).
POLL_S = 0.1
CONTINUE_EVERY_S = 10.0
#: The config line: `expected` can be 10000 hashes.
_CONFIG_BYTES = 1 << 20


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    token = ""
    wheels = ""
    expected: frozenset[str] = frozenset()
    wait_s = 0.0
    slots = threading.BoundedSemaphore(1)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = SOCKET_TIMEOUT_S
    server_version = "orchestrator-peer"
    sys_version = ""

    def do_GET(self):  # http.server calls it by this name
        if not self.server.slots.acquire(blocking=False):
            self.send_error(503, "busy")
            return
        try:
            self._serve()
        finally:
            self.server.slots.release()

    def _serve(self):
        found = PATH_RE.match(self.path)
        if found is None or not hmac.compare_digest(found.group(1), self.server.token):
            self.send_error(404)
            return
        sha = found.group(2)
        path = os.path.join(self.server.wheels, sha + ".whl")
        fd = _open(path)
        if fd is None and sha in self.server.expected:
            fd = self._wait(path)
        if fd is None:
            self.send_error(404)
            return
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):  # a FIFO or device put there: never read it
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(info.st_size))
            self.end_headers()
            self.wfile.flush()
            try:  # sendfile: the kernel copies, this process barely wakes up
                self.connection.sendfile(f, 0, info.st_size)
            except OSError:
                self.close_connection = True  # the puller went away; it falls back

    def _wait(self, path):
        """A wheel the seed is receiving: its fd once it lands, None after `wait_s`."""
        deadline = time.monotonic() + self.server.wait_s
        told = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(POLL_S)
            fd = _open(path)
            if fd is not None:
                return fd
            if time.monotonic() - told >= CONTINUE_EVERY_S:
                # A 1xx before the final answer: every HTTP/1.1 client skips it (RFC 9110
                # 15.2); it resets the puller's socket timeout, so a slow seed is not a stall.
                self.send_response_only(100)
                self.end_headers()
                told = time.monotonic()
        return None

    def log_message(self, format, *args):  # http.server's signature
        pass  # the controller reads stdout only for the port; stderr stays quiet


def _open(path):
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                       | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None


def _first_line():
    # The raw fd, not sys.stdin: a daemon thread blocked in a buffered read would hold its
    # lock at interpreter shutdown (a fatal error when the lifetime ends first).
    line = b""
    while b"\n" not in line and len(line) <= _CONFIG_BYTES:
        chunk = os.read(0, _CONFIG_BYTES)
        if not chunk:
            break
        line += chunk
    return line.partition(b"\n")[0]


def _config():
    line = _first_line()
    try:
        conf = json.loads(line.decode("utf-8"))
    except ValueError:
        raise ValueError("the first stdin line must be a JSON object") from None
    if not isinstance(conf, dict):
        raise ValueError("the first stdin line must be a JSON object")
    root, bind, token = conf.get("root"), conf.get("bind"), conf.get("token")
    if not (isinstance(root, str) and os.path.isabs(root)):
        raise ValueError(f"root must be an absolute path: {root!r}")
    if not (isinstance(bind, str) and bind and not bind.startswith("-")):
        raise ValueError(f"bind must be an address: {bind!r}")
    if not (isinstance(token, str) and TOKEN_RE.match(token)):
        raise ValueError("token must be 16-128 URL-safe characters")
    lifetime = conf.get("max_lifetime_s", 3600)
    clients = conf.get("max_clients", 16)
    if not (isinstance(lifetime, (int, float)) and 0 < lifetime <= MAX_LIFETIME_S):
        raise ValueError(f"max_lifetime_s must be in (0, {MAX_LIFETIME_S:g}]: {lifetime!r}")
    if not (isinstance(clients, int) and 1 <= clients <= MAX_CLIENTS):
        raise ValueError(f"max_clients must be in [1, {MAX_CLIENTS}]: {clients!r}")
    expected, wait = conf.get("expected", []), conf.get("wait_s", 120)
    if not (isinstance(expected, list) and len(expected) <= MAX_EXPECTED
            and all(isinstance(e, str) and HASH_RE.match(e) for e in expected)):
        raise ValueError(f"expected must be a list of at most {MAX_EXPECTED} sha256 hex digests")
    if not (isinstance(wait, (int, float)) and not isinstance(wait, bool)
            and 0 <= wait <= MAX_WAIT_S):
        raise ValueError(f"wait_s must be in [0, {MAX_WAIT_S:g}]: {wait!r}")
    return root, bind, token, float(lifetime), clients, frozenset(expected), float(wait)


def _say(reply):
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()


def main():
    try:
        root, bind, token, lifetime, clients, expected, wait = _config()
        kind = _Server6 if ":" in bind else _Server
        server = kind((bind.strip("[]"), 0), _Handler)
    except (ValueError, OSError) as exc:
        _say({"ok": False, "error": str(exc)})
        return 1
    server.token, server.slots = token, threading.BoundedSemaphore(clients)
    server.expected, server.wait_s = expected, wait
    server.wheels = hostlayout.orch_path(root, "wheels")
    ended = threading.Event()

    def until_eof():
        while os.read(0, 4096):
            pass  # nothing more is expected on stdin: only its end matters
        ended.set()

    threading.Thread(target=until_eof, daemon=True).start()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                     daemon=True).start()
    _say({"ok": True, "port": server.server_address[1]})
    ended.wait(lifetime)
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
