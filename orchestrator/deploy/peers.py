"""Hosts of a rollout serve the wheels they hold to the hosts after them
(`environment.wheel_peers`, issue 15): the controller streams each wheel to few hosts, and the
others pull it by hash from a peer of the same platform.

    peers = WheelPeers()                         # one per rollout (DeployInputs.peers)
    got = deliver(hops, peers, host, key, wheels, missing=..., timeout=...)   # the stage step
    peers.close()                                # the rollout's end: every server stopped

A host whose stage has every wheel of the lock in its cache (streamed, pulled or already there)
becomes a holder for its platform (`platform_key`: Python minor, machine, libc, the wheel
resolver's memo key: the same wheels). A later host of that platform asks `source()` for a peer:
the least busy holder (at most 16 pullers at once each; a puller waits a while for a place),
its server (orchestrator/hosts/peers.py) started on
the holder's own connection at the first ask. The puller's `wheels-fetch` (layout `peer`)
keeps only what hashes to the lock's sha256; whatever a peer could not give (unreachable, busy,
a wrong hash) the controller streams as without peers, and that peer is handed out no more: a
peer's failure is never the puller's. The token in each URL is random per rollout, so only
this rollout's hosts can fetch.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.core.facts import HostFacts
from orchestrator.core.inventory import Host
from orchestrator.errors import CommandTimeout, HostError
from orchestrator.hosts import ops
from orchestrator.hosts.hostops import FileProgress, HostOpFailed, HostOps
from orchestrator.hosts.peers import DEFAULT_CLIENTS, PeerServer, start_peer_server
from orchestrator.hosts.transport import Transport

#: (Python major.minor, machine, libc): hosts alike in these get the same wheels.
PlatformKey = tuple[str, str, str]
#: Each socket operation of a pull from a peer: a peer that stalls costs this, then the
#: controller streams instead.
PEER_TIMEOUT_S = 30.0
#: A pull's budget (`pull_budget`): this much, plus its bytes at this rate.
PEER_SETUP_S = 60.0
PEER_MIN_BYTES_S = 10e6
#: How long a puller waits for a place at a busy holder before the controller streams.
PEER_WAIT_S = 300.0
Starter = Callable[[Transport, Host, str], PeerServer]


def platform_key(facts: HostFacts) -> PlatformKey:
    return (facts.python_minor, facts.machine, facts.os.get("libc", ""))


def _start(transport: Transport, host: Host, token: str) -> PeerServer:
    return start_peer_server(transport, host.deploy_root, bind=host.peer_address or host.address,
                             token=token)


@dataclass(frozen=True)
class Peer:
    """Where one puller pulls from: the holder's name and its server's URL."""

    name: str
    url: str


@dataclass
class _Holder:
    host: Host
    transport: Transport
    key: PlatformKey
    active: int = 0   # pulls from it now (at most the server's max_clients)
    pullers: int = 0  # pulls from it so far
    server: PeerServer | None = None
    broken: str | None = None  # why it is handed out no more
    starting: threading.Lock = field(default_factory=threading.Lock)


class WheelPeers:
    """Which hosts of one rollout hold the wheels of which platform; their servers.

    A holder serves at most `max_pullers` pullers at once (its server's bound, so a puller of
    this rollout never meets a 503). When every holder of its platform is that busy, a puller
    waits up to `wait_s` for a free place (every finished pull adds a holder: a batch of 50
    after one canary is served 16 at a time, then 17 holders' worth), else the controller
    streams to it."""

    def __init__(self, *, token: str | None = None, start: Starter = _start,
                 max_pullers: int = DEFAULT_CLIENTS, wait_s: float = PEER_WAIT_S) -> None:
        self.token = token or secrets.token_urlsafe(24)
        self._start, self.max_pullers, self.wait_s = start, max_pullers, wait_s
        self._holders: dict[str, _Holder] = {}
        self._guard = threading.Condition()
        self._closed = False

    def holds(self, host: Host, transport: Transport, key: PlatformKey) -> None:
        """`host`'s cache has every wheel of the lock for `key`, hash-verified."""
        with self._guard:
            if not self._closed and host.name not in self._holders:
                self._holders[host.name] = _Holder(host, transport, key)
                self._guard.notify_all()

    def holders(self, key: PlatformKey) -> list[str]:
        with self._guard:
            return [n for n, h in self._holders.items() if h.key == key and h.broken is None]

    def source(self, host: Host, key: PlatformKey, wait_s: float | None = None) -> Peer | None:
        """A peer for `host` to pull from (the least busy holder of its platform whose server
        runs or starts now), or None: the controller streams. Give it back with `release`."""
        deadline = time.monotonic() + (self.wait_s if wait_s is None else wait_s)
        while True:
            with self._guard:
                holder = self._pick(host, key, deadline)
                if holder is None:
                    return None
                holder.active += 1
                holder.pullers += 1
            server = self._serving(holder)
            if server is not None:
                return Peer(holder.host.name, server.url)
            self.release(Peer(holder.host.name, ""))

    def _pick(self, host: Host, key: PlatformKey, deadline: float) -> _Holder | None:
        """Under the guard: the least busy usable holder, waiting while all are full."""
        while not self._closed:
            usable = [h for n, h in self._holders.items() if n != host.name
                      and h.key == key and h.broken is None and h.transport.alive]
            free = [h for h in usable if h.active < self.max_pullers]
            if free:
                return min(free, key=lambda h: (h.active, h.pullers))
            left = deadline - time.monotonic()
            if not usable or left <= 0:
                return None  # nobody holds them yet (the canary), or all stayed busy
            self._guard.wait(left)
        return None

    def release(self, peer: Peer) -> None:
        """A pull from `peer` ended (well or not): its place is free again."""
        with self._guard:
            holder = self._holders.get(peer.name)
            if holder is not None and holder.active > 0:
                holder.active -= 1
                self._guard.notify_all()

    def _serving(self, holder: _Holder) -> PeerServer | None:
        with holder.starting:  # one start per holder; its other pullers wait for it
            if holder.server is None and holder.broken is None:
                try:
                    holder.server = self._start(holder.transport, holder.host, self.token)
                except HostError as exc:
                    self._break(holder, f"its wheel server did not start: {exc}")
            with self._guard:
                if self._closed and holder.server is not None:
                    holder.server.stop()  # closed while it started: never left running
                    return None
            return holder.server if holder.broken is None else None

    def failed(self, peer: Peer, reason: str) -> None:
        """A puller could not get what it needed from `peer`: hand it out no more."""
        with self._guard:
            holder = self._holders.get(peer.name)
        if holder is not None:
            self._break(holder, reason)

    def _break(self, holder: _Holder, reason: str) -> None:
        # Its server keeps running for the pullers already at it (one puller's stall says
        # little of the others' downloads); close() stops it with the rest.
        with self._guard:
            holder.broken = holder.broken or reason
            self._guard.notify_all()  # waiting pullers look again (maybe at nobody)

    def close(self) -> None:
        """The rollout ended (or failed, or was aborted): stop every server."""
        with self._guard:
            self._closed = True
            servers = [h.server for h in self._holders.values() if h.server is not None]
            for h in self._holders.values():
                h.server = None
            self._guard.notify_all()
        for server in servers:
            server.stop()


@dataclass(frozen=True)
class Delivery:
    """How the wheels a host lacked reached it: the stage step's details."""

    pushed: tuple[str, ...] = ()   # streamed by the controller
    fetched: tuple[str, ...] = ()  # pulled from `peer`
    peer: str | None = None
    peer_error: str | None = None


def pull_budget(size: int, remaining: float) -> float:
    """How long a pull of `size` bytes from a peer may take: a peer slower than
    PEER_MIN_BYTES_S is given up for the controller's stream while at least half the step's
    `remaining` time is left for that."""
    return min(remaining / 2, PEER_SETUP_S + size / PEER_MIN_BYTES_S)


def deliver(hops: HostOps, peers: WheelPeers | None, host: Host, key: PlatformKey,
            wheels: Mapping[str, Path], *, missing: tuple[str, ...] | None, timeout: float,
            progress: Callable[[int], FileProgress] | None = None) -> Delivery:
    """The wheels ({sha256: local file}) the host lacks, from a peer where one holds them,
    the rest (all, without a peer) streamed by the controller; then the host is a holder.
    Only the host's own failures raise (its connection, the controller's stream)."""
    if missing is None:
        missing = hops.wheels_missing(sorted(wheels), timeout=timeout)
    wanted = tuple(missing)
    fetched: tuple[str, ...] = ()
    peer = peers.source(host, key, min(peers.wait_s, timeout / 4)) \
        if peers is not None and wanted else None
    error = None
    if peer is not None:
        assert peers is not None
        sizes = {sha: (wheels[sha].name, wheels[sha].stat().st_size) for sha in wanted}
        call = ops.wheels_fetch(peer.url, "peer", sizes, timeout_s=PEER_TIMEOUT_S)
        try:
            hops.run(call, timeout=pull_budget(sum(size for _, size in sizes.values()),
                                               timeout))
            fetched, missing = wanted, ()
        except (HostOpFailed, CommandTimeout) as exc:
            # The peer's failure (refused, a wrong hash, or so slow that the pull ran out of
            # its budget: the host's op was stopped): what it gave stays, the rest streams.
            # Its message names the URL: the token stays out of events and logs.
            error = str(exc).replace(peers.token, "<token>")
            peers.failed(peer, error)
            missing = hops.wheels_missing(sorted(wanted), timeout=timeout)
            fetched = tuple(s for s in wanted if s not in set(missing))
        finally:
            peers.release(peer)
    pushed = hops.push_wheels(dict(wheels), missing=missing, timeout=timeout, progress=progress)
    if peers is not None:
        peers.holds(host, hops.transport, key)
    return Delivery(pushed, fetched, None if peer is None else peer.name, error)
