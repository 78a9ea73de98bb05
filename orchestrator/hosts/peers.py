"""One host's wheel server for the other hosts of a rollout (`environment.wheel_peers`): the
shipped `peerserve.py`, started on its own exec channel of the host's existing connection and
stopped by closing that channel (remote/peerserve.py exits on EOF of its stdin, and after a
hard lifetime whatever happens).

    server = start_peer_server(transport, host.deploy_root, bind="10.0.0.11", token=token)
    server.url          # http://10.0.0.11:41237/<token>/  (wheels-fetch layout "peer")
    start_peer_server(..., expected=shas)   # a seed: these are still arriving; requests wait
    server.stop()       # kill its process group, close the channel; idempotent

The coordination (which host serves whom) is the rollout's: orchestrator/deploy/peers.py. What
the server prints is untrusted like any host reply: one bounded JSON line with a port, else
`BadHostOutput` naming the host (the server is killed first).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator.core import hostjson
from orchestrator.errors import BadHostOutput, HostError
from orchestrator.hosts import shipping
from orchestrator.hosts.transport import Conversation, Converser, Transport

#: The server's one line: {"ok": true, "port": N}.
_REPLY_BYTES = 4096
#: A server never outlives this, even if its channel is somehow left open (the host kills it).
DEFAULT_LIFETIME_S = 6 * 3600.0
DEFAULT_CLIENTS = 16
START_TIMEOUT_S = 30.0
#: How long a seed's server holds a request for a wheel still on its way to it: one wheel's
#: stream from the controller (a 700 MB cuDNN wheel at 6 MB/s), then the puller falls back.
SEED_WAIT_S = 120.0


@dataclass
class PeerServer:
    """A running peerserve.py on `host`, reachable by the other hosts at `url`."""

    host: str
    url: str
    _conv: Conversation
    _stopped: bool = False
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def stop(self) -> None:
        """Kill its process group and close the channel (best effort: a dropped connection
        already ended it, sshd closing its stdin)."""
        with self._guard:
            if self._stopped:
                return
            self._stopped = True
        with contextlib.suppress(HostError):
            self._conv.kill()


def url_host(address: str) -> str:
    """`address` as the host part of a URL: an IPv6 literal in brackets."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address
    return f"[{ip}]" if ip.version == 6 else str(ip)


def start_peer_server(transport: Transport, deploy_root: str, *, bind: str, token: str,
                      python: str = "python3", lifetime_s: float = DEFAULT_LIFETIME_S,
                      max_clients: int = DEFAULT_CLIENTS, expected: Sequence[str] = (),
                      wait_s: float = SEED_WAIT_S,
                      timeout: float = START_TIMEOUT_S) -> PeerServer:
    """Start the host's wheel server; raises a `HostError` naming the host when it cannot
    (no conversation on this transport, the address cannot be bound, a garbled reply).
    `expected`: the sha256s a seed is still receiving from the controller; a request for one
    of them waits for it, at most `wait_s`."""
    if not isinstance(transport, Converser):
        raise HostError(transport.host, "this transport cannot keep a command running: no "
                                        "wheel server")
    # No check and no upload: the host ran its pipeline from this bundle (it holds the wheels
    # because its stage ran), and its own pipeline may be using the SFTP channel right now.
    # Were the bundle gone, python3 fails to start and that is a BadHostOutput here.
    tools = shipping.expected_tools(deploy_root)
    conv = transport.converse([python, "-E", "-S", tools.script("peerserve.py")])
    try:
        config = {"root": deploy_root, "bind": bind, "token": token,
                  "max_lifetime_s": lifetime_s, "max_clients": max_clients,
                  "expected": list(expected), "wait_s": wait_s}
        conv.send(json.dumps(config).encode("utf-8") + b"\n", timeout=timeout)
        line = conv.read_line(timeout=timeout, limit=_REPLY_BYTES)
        port = _port(transport.host, line, conv)
    except BaseException:
        with contextlib.suppress(HostError):
            conv.kill()
        raise
    return PeerServer(transport.host, f"http://{url_host(bind)}:{port}/{token}/", conv)


def _port(host: str, line: bytes, conv: Conversation) -> int:
    try:
        reply = hostjson.loads(line)
    except ValueError:  # HostJsonError too: not JSON within our bounds
        reply = None
    if isinstance(reply, dict) and reply.get("ok") is False and isinstance(reply.get("error"),
                                                                         str):
        raise HostError(host, f"wheel server did not start: {reply['error'][:300]}")
    port = reply.get("port") if isinstance(reply, dict) else None
    if reply is None or not isinstance(port, int) or isinstance(port, bool) \
            or not 1 <= port <= 65535:
        tail = conv.stderr_tail()[-300:]
        raise BadHostOutput(host, f"wheel server sent {line[:80]!r} instead of its port"
                                  + (f"; stderr: {tail}" if tail else ""))
    return port
