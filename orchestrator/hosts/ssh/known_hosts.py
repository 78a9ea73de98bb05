"""Host keys: our own known_hosts file (never ~/.ssh's, never auto-added), the key a host offers
(read from a key exchange alone, for `orchestrator trust`), and OpenSSH's fingerprints."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko.ssh_exception import IncompatiblePeer

from orchestrator.core.inventory import WEAK_SSH_ALGORITHMS
from orchestrator.errors import HostUnreachable
from orchestrator.hosts.ssh.options import HostAddress
from orchestrator.hosts.ssh.options import describe as _describe

#: Opens the byte stream to a hop: a TCP socket, or a channel through the previous hop.
Opener = Callable[[], "socket.socket | paramiko.Channel"]


@dataclass(frozen=True)
class HostKey:
    """A host's public key as offered on the wire."""

    key_type: str
    base64: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(base64.b64decode(self.base64))


def fingerprint(key_blob: bytes) -> str:
    """OpenSSH's `SHA256:...` fingerprint: base64 of sha256 of the key blob, without padding."""
    digest = hashlib.sha256(key_blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def known_hosts_name(address: str, port: int | None) -> str:
    """The host pattern OpenSSH writes: `addr` on port 22 (None: the default), else
    `[addr]:port`."""
    return address if port in (None, 22) else f"[{address}]:{port}"



def fetch_host_key(host: HostAddress, timeout: float = 10.0, prefer: Sequence[str] = (),
                   opener: Opener | None = None,
                   disabled_algorithms: Mapping[str, Sequence[str]] | None = None) -> HostKey:
    """The key a host offers, read from a key exchange only (no authentication is attempted),
    over a TCP connection or over what `opener` opens (a bastion's channel: connect.path_to).

    `disabled_algorithms` is what a connection disables (`SshOptions.disabled_algorithms`;
    None: every weak one, as by default): the key is read with the algorithms the connections
    will use, so a host that offers only weak ones is refused here as there, and the key
    trusted is one those connections can check (never an `ssh-rsa` SHA-1 signature).

    `prefer` restricts the negotiation to these key types (those we already know for the host),
    so a host with several keys is compared like for like; if it offers none of them any key
    type is accepted, which then shows up as a changed key."""
    if prefer:
        try:
            return _fetch_key(host, timeout, _key_types(prefer), opener, disabled_algorithms)
        except HostUnreachable:
            pass  # none of the known types is offered any more: fall through to any type
    return _fetch_key(host, timeout, (), opener, disabled_algorithms)


def _key_types(known: Sequence[str]) -> list[str]:
    # An RSA key is listed as ssh-rsa but negotiated with its SHA-2 signature algorithms.
    rsa = ["rsa-sha2-512", "rsa-sha2-256"] if "ssh-rsa" in known else []
    return [*rsa, *known]


def _fetch_key(host: HostAddress, timeout: float, key_types: Sequence[str],
               opener: Opener | None,
               disabled_algorithms: Mapping[str, Sequence[str]] | None) -> HostKey:
    port = host.port or 22
    where = f"{host.address}:{port}"
    sock: socket.socket | paramiko.Channel
    try:
        sock = opener() if opener else socket.create_connection((host.address, port), timeout)
    except OSError as exc:
        raise HostUnreachable(host.name, f"cannot connect to {where}: {_describe(exc)}") from exc
    if disabled_algorithms is None:
        disabled_algorithms = {kind: list(names) for kind, names in WEAK_SSH_ALGORITHMS.items()}
    transport = paramiko.Transport(sock, disabled_algorithms=disabled_algorithms)
    transport.banner_timeout = timeout
    if key_types:
        # Types paramiko does not implement (e.g. FIDO sk- keys) cannot be restricted to.
        with contextlib.suppress(ValueError):
            transport.get_security_options().key_types = list(key_types)
    try:
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        return HostKey(key.get_name(), key.get_base64())
    except IncompatiblePeer as exc:
        raise HostUnreachable(
            host.name, f"no SSH algorithms in common with {where} ({exc}): if it offers only"
            " weak ones, upgrade its sshd, or allow them by name in the inventory's"
            " `ssh: legacy_algorithms:`") from exc
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise HostUnreachable(host.name, f"no SSH key exchange with {where}: {exc}") from exc
    finally:
        transport.close()


def known_host_keys(known_hosts: Path, address: str, port: int | None) -> list[HostKey]:
    """The keys our known_hosts file holds for this address and port (hashed entries included)."""
    if not known_hosts.exists():
        return []
    entries = paramiko.HostKeys(str(known_hosts)).lookup(known_hosts_name(address, port))
    if entries is None:
        return []
    return [HostKey(key_type, key.get_base64()) for key_type, key in entries.items()]


def append_known_host(known_hosts: Path, address: str, port: int | None, key: HostKey) -> None:
    """Append one OpenSSH-format line; the file is created 0600 with its directory if needed."""
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    line = f"{known_hosts_name(address, port)} {key.key_type} {key.base64}\n"
    fd = os.open(known_hosts, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line  # a hand-edited file without a final newline: keep lines apart
        handle.write(line.encode("ascii"))


def remove_known_host(known_hosts: Path, address: str, port: int | None) -> None:
    """Drop every line naming this host, plain or hashed (`trust --replace`, before appending)."""
    if not known_hosts.exists():
        return
    name = known_hosts_name(address, port)
    lines = known_hosts.read_text(encoding="ascii").splitlines(keepends=True)
    kept = [line for line in lines if not _line_names(line, name)]
    if len(kept) == len(lines):
        return
    tmp = known_hosts.with_name(known_hosts.name + ".tmp")
    tmp.write_text("".join(kept), encoding="ascii")
    os.chmod(tmp, 0o600)
    os.replace(tmp, known_hosts)


def _line_names(line: str, name: str) -> bool:
    fields = line.split()
    if not fields or fields[0].startswith("#"):
        return False
    for pattern in fields[0].split(","):
        if pattern.startswith("|1|"):
            salt = pattern.split("|")[2]
            if paramiko.HostKeys.hash_host(name, salt) == pattern:
                return True
        elif pattern == name:
            return True
    return False
