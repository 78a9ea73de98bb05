"""Hosts of a rollout serve the wheels they hold to the hosts after them
(`environment.wheel_peers`, issue 15): the controller streams each wheel to few hosts, and the
others pull it by hash from a peer of the same platform.

    peers = WheelPeers()                         # one per rollout (DeployInputs.peers)
    got = deliver(hops, peers, host, key, wheels, missing=..., timeout=...)   # the stage step
    peers.close()                                # the rollout's end: every server stopped

A host whose stage has every wheel of the lock in its cache (streamed, pulled or already there)
becomes a holder for its platform (`platform_key`: Python minor, machine, libc, the wheel
resolver's memo key: the same wheels). Hosts of one batch stage at once, before anyone holds
everything: so the first host of a platform that must be streamed to becomes its *seed* at
once, a holder still filling, whose server knows which wheels are on their way (in the order
the controller streams them) and holds a request for one until it lands; the other hosts of
the platform pull from it meanwhile, in that order, so their pulls follow its stream a wheel
behind, and the controller streams one copy. A seed that completes is a holder like any;
one whose stream fails is broken and its server stopped at once (its pullers fall back
without waiting out a socket timeout). Another seed starts only when every seed of the
platform has its 16 pullers. A later host asks `source()` for a peer: the least busy holder
(complete holders first; at most 16 pullers at once each; a puller waits a while for a place
at a complete holder), its server (orchestrator/hosts/peers.py) started on the holder's own
connection at the first ask. The puller's `wheels-fetch` (layout `peer`)
keeps only what hashes to the lock's sha256; whatever a peer could not give (unreachable, busy,
a wrong hash) the controller streams as without peers, and that peer is handed out no more: a
peer's failure is never the puller's. The token in each URL is random per rollout, so only
this rollout's hosts can fetch.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
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
#: (transport, host, token, the sha256s a seed still expects) -> its running server
Starter = Callable[[Transport, Host, str, tuple[str, ...]], PeerServer]


def platform_key(facts: HostFacts) -> PlatformKey:
    return (facts.python_minor, facts.machine, facts.os.get("libc", ""))


def _start(transport: Transport, host: Host, token: str,
           expected: tuple[str, ...]) -> PeerServer:
    return start_peer_server(transport, host.deploy_root, bind=host.peer_address or host.address,
                             token=token, expected=expected)


@dataclass(frozen=True)
class Peer:
    """Where one puller pulls from: the holder's name and its server's URL; `order`, a
    seed's: the wheels in the order the controller streams them to it (pull them so)."""

    name: str
    url: str
    order: tuple[str, ...] = ()


@dataclass
class _Holder:
    host: Host
    transport: Transport
    key: PlatformKey
    active: int = 0   # pulls from it now (at most the server's max_clients)
    pullers: int = 0  # pulls from it so far
    server: PeerServer | None = None
    broken: str | None = None  # why it is handed out no more
    filling: tuple[str, ...] = ()  # a seed: what the controller is streaming to it, in order
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
        """`host`'s cache has every wheel of the lock for `key`, hash-verified (a seed's
        stream completed: the same)."""
        with self._guard:
            holder = self._holders.get(host.name)
            if self._closed or (holder is not None and not holder.filling):
                return
            if holder is None:
                self._holders[host.name] = _Holder(host, transport, key)
            else:  # its server's expected wheels have all landed: it serves on unchanged
                holder.filling = ()
            self._guard.notify_all()

    def holders(self, key: PlatformKey) -> list[str]:
        with self._guard:
            return [n for n, h in self._holders.items() if h.key == key and h.broken is None]

    def source(self, host: Host, key: PlatformKey, wait_s: float | None = None, *,
               seed: tuple[Transport, Sequence[str]] | None = None) -> Peer | None:
        """A peer for `host` to pull from (the least busy holder of its platform whose server
        runs or starts now), or None: the controller streams. Give it back with `release`.
        With `seed` (its transport, the wheels the controller would stream to it, in that
        order), a None also makes `host` its platform's seed, when no holder can take it:
        then `holds` once its stream completed, or `seed_failed`."""
        deadline = time.monotonic() + (self.wait_s if wait_s is None else wait_s)
        while True:
            with self._guard:
                holder = self._pick(host, key, deadline, seed)
                if holder is None:
                    return None
                holder.active += 1
                holder.pullers += 1
            server = self._serving(holder)
            if server is not None:
                return Peer(holder.host.name, server.url, holder.filling)
            self.release(Peer(holder.host.name, ""))

    def _pick(self, host: Host, key: PlatformKey, deadline: float,
              seed: tuple[Transport, Sequence[str]] | None) -> _Holder | None:
        """Under the guard: the least busy usable holder (a complete one before a seed),
        waiting while all are full; None (the controller streams) after registering `seed`
        when only seeds are there and all are full, or nobody at all."""
        while not self._closed:
            usable = [h for n, h in self._holders.items() if n != host.name
                      and h.key == key and h.broken is None and h.transport.alive]
            free = [h for h in usable if h.active < self.max_pullers]
            if free:
                return min(free, key=lambda h: (bool(h.filling), h.active, h.pullers))
            if seed is not None and all(h.filling for h in usable) \
                    and host.name not in self._holders:
                # Waiting would cost a whole stream's time: stream to this one, and let the
                # next ones pull from it.
                self._holders[host.name] = _Holder(host, seed[0], key,
                                                   filling=tuple(seed[1]))
                self._guard.notify_all()
                return None
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
            with self._guard:
                start = holder.server is None and holder.broken is None and not self._closed
                expected = holder.filling
            if start:
                try:
                    server = self._start(holder.transport, holder.host, self.token, expected)
                except HostError as exc:
                    self._break(holder, f"its wheel server did not start: {exc}")
                else:
                    with self._guard:
                        ended = self._closed or holder.broken is not None
                        if not ended:
                            holder.server = server
                    if ended:  # closed, or its seed failed, while it started: never left
                        server.stop()
            with self._guard:
                return holder.server if holder.broken is None and not self._closed else None

    def failed(self, peer: Peer, reason: str) -> None:
        """A puller could not get what it needed from `peer`: hand it out no more."""
        with self._guard:
            holder = self._holders.get(peer.name)
        if holder is not None:
            self._break(holder, reason)

    def seed_failed(self, host: Host, reason: str) -> None:
        """`host`'s own stream from the controller failed: if it was a seed, it is broken
        and its server stopped now, so the requests waiting there end at once (its pullers
        fall back to the controller). A host that was no seed: nothing to do."""
        with self._guard:
            holder = self._holders.get(host.name)
            if holder is None or not holder.filling:
                return
            holder.broken = holder.broken or f"its own stream failed: {reason}"
            server, holder.server = holder.server, None
            self._guard.notify_all()
        if server is not None:
            server.stop()

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
    """The wheels ({sha256: local file}) the host lacks, from a peer where one holds them
    (or is receiving them), the rest (all, without a peer) streamed by the controller, this
    host meanwhile the seed of its platform when it is the first; then the host is a holder.
    Only the host's own failures raise (its connection, the controller's stream)."""
    if missing is None:
        missing = hops.wheels_missing(sorted(wheels), timeout=timeout)
    wanted = tuple(missing)
    fetched: tuple[str, ...] = ()
    peer = peers.source(host, key, min(peers.wait_s, timeout / 4),
                        seed=(hops.transport, wanted)) \
        if peers is not None and wanted else None
    error = None
    if peer is not None:
        assert peers is not None
        # A seed's order first (what it holds already comes at once, then what it receives,
        # as it lands): this pull follows its stream a wheel behind.
        rank = {sha: i for i, sha in enumerate(peer.order)}
        sizes = {sha: (wheels[sha].name, wheels[sha].stat().st_size)
                 for sha in sorted(wanted, key=lambda sha: rank.get(sha, -1))}
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
    try:
        pushed = hops.push_wheels(dict(wheels), missing=missing, timeout=timeout,
                                  progress=progress)
    except BaseException as exc:
        if peers is not None:  # a seed: its pullers stop waiting for what will not come
            peers.seed_failed(host, f"{type(exc).__name__}: {exc}")
        raise
    if peers is not None:
        peers.holds(host, hops.transport, key)
    return Delivery(pushed, fetched, None if peer is None else peer.name, error)
