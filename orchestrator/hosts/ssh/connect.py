"""Opening a connection along a `Route` (route.py): each hop's host key checked against our own
known_hosts and paramiko's errors mapped to ours, each bastion's successor reached through a
`direct-tcpip` channel of the previous hop's transport (what OpenSSH's ProxyJump does, without
running an ssh process), and the whole open retried with backoff on a transient failure.

A refused, reset or timed-out TCP connect, a banner that never came, a bastion that could not
reach the next hop: transient, tried again (core/retry.py) within `SshOptions.connect_budget_s`
and the caller's deadline. An authentication failure or a host-key refusal: never retried.
"""

from __future__ import annotations

import contextlib
import random
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import paramiko
from paramiko.ssh_exception import IncompatiblePeer

from orchestrator.core.retry import retry
from orchestrator.errors import HostKeyRejected, HostUnreachable
from orchestrator.hosts.ssh.known_hosts import Opener, fingerprint
from orchestrator.hosts.ssh.options import (
    HostAddress,
    SshOptions,
    check_identity_file,
    trust_command,
)
from orchestrator.hosts.ssh.options import describe as _describe
from orchestrator.hosts.ssh.route import Hop, Route, resolve
from orchestrator.hosts.ssh.session import SshTransport


class _UnknownHostKey(Exception):
    def __init__(self, key: paramiko.PKey) -> None:
        super().__init__("unknown host key")
        self.key = key


def _gcm_first(ciphers: tuple[str, ...]) -> tuple[str, ...]:
    gcm = tuple(c for c in ciphers if c.endswith("-gcm@openssh.com"))
    return (*gcm, *(c for c in ciphers if c not in gcm))


def _transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
    """paramiko's transport with AES-GCM offered first (SSHClient's `transport_factory`). GCM
    authenticates in the same OpenSSL call that encrypts; with aes*-ctr paramiko adds an HMAC
    per packet: measured on the testbed, streaming a wheel cost the controller 3.7 s/GB with
    aes128-gcm against 6.5 with aes128-ctr + hmac-sha2-256. Only the order changes: a host
    without GCM gets CTR as before, and `disabled_algorithms` still removes the weak ones."""
    transport = paramiko.Transport(sock, disabled_algorithms=kwargs.get("disabled_algorithms"))
    options = transport.get_security_options()
    options.ciphers = _gcm_first(tuple(options.ciphers))
    return transport


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    """Refuse every key not already in our known_hosts (paramiko's AutoAdd must never apply)."""

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise _UnknownHostKey(key)


def connect(host: HostAddress, options: SshOptions, *,
            remaining: Callable[[], float] | None = None,
            rng: random.Random | None = None) -> SshTransport:
    """An authenticated connection to `host`, through its ProxyJump bastions if any."""
    route = resolve(host, options)
    for hop in route.hops:
        for key in hop.identity_files:
            check_identity_file(key)
    end = time.monotonic() + options.connect_budget_s

    def left() -> float:
        budget = end - time.monotonic()
        return min(budget, remaining()) if remaining is not None else budget

    clients = retry(lambda: _open_route(host.name, route, options), options.connect_retry,
                    transient=lambda exc: isinstance(exc, HostUnreachable) and exc.transient,
                    remaining=left, rng=rng)
    return SshTransport(host.name, clients[-1], options, jumps=clients[:-1])


def _open_route(name: str, route: Route, options: SshOptions) -> list[paramiko.SSHClient]:
    clients: list[paramiko.SSHClient] = []
    try:
        for i, hop in enumerate(route.hops):
            opener = _opener(name, route.hops[i - 1] if i else None,
                             clients[-1] if clients else None, hop, options)
            clients.append(_connect_hop(name, hop, opener, options, jump=hop is not route.target))
        return clients
    except BaseException:
        for client in reversed(clients):
            client.close()
        raise


@contextlib.contextmanager
def path_to(name: str, route: Route, index: int, options: SshOptions) -> Iterator[Opener]:
    """An opener of a stream to `route.hops[index]`, through the hops before it (connected and
    authenticated, their host keys checked): what `orchestrator trust` reads a key over."""
    clients = _open_route(name, Route(route.hops[:index - 1], route.hops[index - 1]), options) \
        if index else []
    try:
        yield _opener(name, route.hops[index - 1] if index else None,
                      clients[-1] if clients else None, route.hops[index], options)
    finally:
        for client in reversed(clients):
            client.close()


def _opener(name: str, via: Hop | None, client: paramiko.SSHClient | None, hop: Hop,
            options: SshOptions) -> Opener:
    if client is None or via is None:
        return lambda: _open_socket(name, hop, options)
    return lambda: _open_tunnel(name, via, client, hop, options.connect_timeout)


def _open_socket(name: str, hop: Hop, options: SshOptions) -> socket.socket:
    """A TCP connection with Nagle's algorithm off, as OpenSSH's own client sets it: each
    command is a few small packets each way, and with Nagle on they wait out the peer's delayed
    ACK, about 40 ms per command (measured on the testbed: 47 ms for `true`, 4 ms without)."""
    try:
        sock = socket.create_connection((hop.address, hop.port), timeout=options.connect_timeout)
    except socket.gaierror as exc:  # not transient: a name that does not resolve stays so
        hint = "" if options.ssh_config else (
            "; if it is a Host alias of an ssh_config, name that file in the inventory's"
            " `ssh: config:` (~/.ssh/config is not read by default)")
        raise _unreachable(name, f"cannot connect to {_where(hop)}: {_describe(exc)}{hint}",
                           transient=False) from exc
    except OSError as exc:
        raise _unreachable(name, f"cannot connect to {_where(hop)}: {_describe(exc)}",
                           transient=True) from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _open_tunnel(name: str, via: Hop, client: paramiko.SSHClient, hop: Hop,
                 timeout: float) -> paramiko.Channel:
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise _unreachable(name, f"bastion {via.name} closed the connection", transient=True)
    try:
        return transport.open_channel("direct-tcpip", (hop.address, hop.port), ("127.0.0.1", 0),
                                      timeout=timeout)
    except paramiko.ChannelException as exc:  # the bastion's own connect failed (or is denied)
        raise _unreachable(name, f"bastion {via.name} cannot reach {_where(hop)}: {exc.text}",
                           transient=exc.code == 2) from exc
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise _unreachable(name, f"bastion {via.name} cannot open a channel to {_where(hop)}:"
                                 f" {_describe(exc)}", transient=True) from exc


def _connect_hop(name: str, hop: Hop, opener: Opener, options: SshOptions, *,
                 jump: bool) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    if options.known_hosts.exists():
        client.load_host_keys(str(options.known_hosts))
    client.set_missing_host_key_policy(_RejectUnknown())
    where = f"bastion {hop.name} ({_where(hop)})" if jump else _where(hop)
    try:
        client.connect(
            hop.address,
            port=hop.port,
            sock=opener(),
            username=hop.user,
            # paramiko documents a list of key files here; its type stub says one string.
            key_filename=[str(k) for k in hop.identity_files] or None,  # type: ignore[arg-type]
            timeout=options.connect_timeout,
            banner_timeout=options.banner_timeout,
            auth_timeout=options.auth_timeout,
            channel_timeout=options.connect_timeout,
            allow_agent=options.allow_agent and not hop.identities_only,
            look_for_keys=options.look_for_keys,
            disabled_algorithms=options.disabled_algorithms(),
            transport_factory=_transport,
        )
    except HostUnreachable:
        client.close()
        raise
    except _UnknownHostKey as exc:
        client.close()
        raise HostKeyRejected(
            name,
            f"unknown host key for {where} ({exc.key.get_name()} {fingerprint(exc.key.asbytes())}),"
            f" not in {options.known_hosts}; if this fingerprint is right, trust it with:"
            f" {trust_command(name, options)}",
        ) from None
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyRejected(
            name,
            f"HOST KEY CHANGED for {where}: expected {fingerprint(exc.expected_key.asbytes())},"
            f" offered {exc.key.get_name()} {fingerprint(exc.key.asbytes())}; refusing to connect"
            f" (if the host was really reinstalled: {trust_command(name, options)} --replace)",
        ) from None
    except IncompatiblePeer as exc:
        client.close()
        raise HostUnreachable(
            name,
            f"no SSH algorithms in common with {where} ({exc}): if it offers only weak ones (CBC"
            " ciphers, 3DES, SHA-1 or MD5 MACs, SHA-1 signatures or key exchanges), upgrade its"
            " sshd, or allow them by name in the inventory's `ssh: legacy_algorithms:`",
        ) from exc
    except paramiko.AuthenticationException as exc:
        client.close()
        raise HostUnreachable(name, f"authentication as {hop.user!r} on {where} failed: {exc}"
                              ) from exc
    except (paramiko.SSHException, OSError, EOFError) as exc:
        client.close()
        # A reset, a timeout, a banner that never came: the host may be (re)starting.
        raise _unreachable(name, f"cannot connect to {where}: {_describe(exc)}",
                           transient=True) from exc
    transport = client.get_transport()
    assert transport is not None  # connect() succeeded, so it exists
    transport.set_keepalive(options.keepalive_s)
    return client


def _unreachable(name: str, message: str, *, transient: bool) -> HostUnreachable:
    error = HostUnreachable(name, message)
    error.transient = transient
    return error


def _where(hop: Hop) -> str:
    return f"{hop.address}:{hop.port}"

