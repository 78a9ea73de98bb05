"""The SSH edge: the only module that imports paramiko.

`connect(host, options)` opens one authenticated connection and returns an `SshTransport`
(the `orchestrator.hosts.transport.Transport` interface). Every paramiko and socket exception is
turned into a `HostError` subclass here, so nothing above this module sees paramiko.

Host keys are checked against the orchestrator's own known_hosts file only: never the user's
~/.ssh/known_hosts, never auto-added. An unknown key is refused with its SHA256 fingerprint and
the command that trusts it; a changed key is refused with both fingerprints. `fetch_host_key`
and `append_known_host` are what `orchestrator trust` uses to make trusting explicit.

Each command runs in the session sshd starts with setsid(), after a first line naming its
process group: on a timeout or an output overflow that whole group is killed (over a second
channel) before the channel is closed. If the connection itself drops, a watcher started with
the command kills the group within a second. Either way nothing is left running on the host.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import posixpath
import re
import select
import socket
import stat
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import paramiko

from orchestrator.core.inventory import Inventory
from orchestrator.errors import (
    CommandFailed,
    CommandTimeout,
    FileTransferFailed,
    HostError,
    HostKeyRejected,
    HostUnreachable,
    InvalidInput,
    OutputTooLarge,
)
from orchestrator.hosts.transport import CommandResult, command_line
from orchestrator.xdg import user_dir

# The remote kill is plain python3 (always on a host): `kill -- -PGID` differs between shells.
_KILL_GROUP = (
    "import os,signal,sys,time\n"
    "g=int(sys.argv[1])\n"
    "for s in (signal.SIGTERM, signal.SIGKILL):\n"
    "    try: os.killpg(g, s)\n"
    "    except OSError: break\n"
    "    time.sleep(0.2)\n"
)
_READ_CHUNK = 1 << 16
# The first line each command prints: its process group id, which a timeout kills.
_PGID_MARKER = "orchestrator-pgid:"
# Around every command: a watcher that kills the command's process group (`kill 0`) once the
# sshd process serving the connection ($PPID) is gone, i.e. when the connection dropped; it is
# stopped when the command ends, whose exit status is kept. It is only started when the parent
# can be observed at all (kill -0 or /proc), so a host where neither works cannot kill early.
_WRAP_BEFORE = (
    f"echo {_PGID_MARKER}$$; p=$PPID; w=; "
    "alive() { kill -0 $p 2>/dev/null || [ -d /proc/$p ]; }; "
    "if alive; then (while alive; do sleep 1; done; kill -KILL 0) </dev/null >/dev/null 2>&1 & "
    "w=$!; fi; "
)
_WRAP_AFTER = '; s=$?; [ -n "$w" ] && kill $w 2>/dev/null; exit $s'

_PGID_LINE = re.compile(rb"(?:^|\n)" + _PGID_MARKER.encode() + rb"(\d+)\n")
_MAX_HEAD = 1 << 16


class HostAddress(Protocol):
    """What the transport needs of an inventory host."""

    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def user(self) -> str: ...


@dataclass(frozen=True)
class SshOptions:
    known_hosts: Path
    identity_file: Path | None = None
    allow_agent: bool = False
    look_for_keys: bool = False
    connect_timeout: float = 10.0
    banner_timeout: float = 10.0
    auth_timeout: float = 10.0
    command_timeout: float = 300.0
    keepalive_s: int = 15
    max_output_bytes: int = 4 << 20
    inventory_path: Path | None = None  # only to print the exact `orchestrator trust` command

    @classmethod
    def for_inventory(cls, inventory: Inventory, **overrides: Any) -> SshOptions:
        """The inventory's `ssh:` files (else the default known_hosts), plus any overrides."""
        fields: dict[str, Any] = {
            "known_hosts": inventory.ssh.known_hosts or default_known_hosts(),
            "identity_file": inventory.ssh.identity_file,
            "inventory_path": Path(inventory.file) if inventory.file != "<inventory>" else None,
        }
        return cls(**{**fields, **overrides})


def default_known_hosts() -> Path:
    """$ORCHESTRATOR_KNOWN_HOSTS, else ~/.config/orchestrator/known_hosts (never ~/.ssh's)."""
    return user_dir("CONFIG", "known_hosts", override="ORCHESTRATOR_KNOWN_HOSTS")


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


def known_hosts_name(address: str, port: int) -> str:
    """The host pattern OpenSSH writes: `addr` on port 22, else `[addr]:port`."""
    return address if port == 22 else f"[{address}]:{port}"


def trust_command(host: str, options: SshOptions) -> str:
    inventory = f" --inventory {options.inventory_path}" if options.inventory_path else ""
    return f"orchestrator trust {host}{inventory}"


class _UnknownHostKey(Exception):
    def __init__(self, key: paramiko.PKey) -> None:
        super().__init__("unknown host key")
        self.key = key


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    """Refuse every key not already in our known_hosts (paramiko's AutoAdd must never apply)."""

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise _UnknownHostKey(key)


def connect(host: HostAddress, options: SshOptions) -> SshTransport:
    if options.identity_file is not None and not options.identity_file.is_file():
        raise InvalidInput(f"SSH identity file {options.identity_file} does not exist")
    client = paramiko.SSHClient()
    if options.known_hosts.exists():
        client.load_host_keys(str(options.known_hosts))
    client.set_missing_host_key_policy(_RejectUnknown())
    where = f"{host.address}:{host.port}"
    try:
        client.connect(
            host.address,
            port=host.port,
            sock=_open_socket(host, options.connect_timeout),
            username=host.user,
            key_filename=str(options.identity_file) if options.identity_file else None,
            timeout=options.connect_timeout,
            banner_timeout=options.banner_timeout,
            auth_timeout=options.auth_timeout,
            channel_timeout=options.connect_timeout,
            allow_agent=options.allow_agent,
            look_for_keys=options.look_for_keys,
        )
    except _UnknownHostKey as exc:
        client.close()
        raise HostKeyRejected(
            host.name,
            f"unknown host key for {where} ({exc.key.get_name()} {fingerprint(exc.key.asbytes())}),"
            f" not in {options.known_hosts}; if this fingerprint is right, trust it with:"
            f" {trust_command(host.name, options)}",
        ) from None
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyRejected(
            host.name,
            f"HOST KEY CHANGED for {where}: expected {fingerprint(exc.expected_key.asbytes())},"
            f" offered {exc.key.get_name()} {fingerprint(exc.key.asbytes())}; refusing to connect"
            f" (if the host was really reinstalled: {trust_command(host.name, options)} --replace)",
        ) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise HostUnreachable(host.name, f"authentication as {host.user!r} failed: {exc}") from exc
    except (paramiko.SSHException, OSError, EOFError) as exc:
        client.close()
        raise HostUnreachable(host.name, f"cannot connect to {where}: {_describe(exc)}") from exc
    transport = client.get_transport()
    assert transport is not None  # connect() succeeded, so it exists
    transport.set_keepalive(options.keepalive_s)
    return SshTransport(host.name, client, options)


def _open_socket(host: HostAddress, timeout: float) -> socket.socket:
    """A TCP connection with Nagle's algorithm off, as OpenSSH's own client sets it: each
    command is a few small packets each way, and with Nagle on they wait out the peer's delayed
    ACK, about 40 ms per command (measured on the testbed: 47 ms for `true`, 4 ms without)."""
    sock = socket.create_connection((host.address, host.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class _Capture:
    """Collects one output stream up to a cap. For stdout it first looks for the process-group
    marker line the command wrapper prints, and drops it with anything a login rc file printed
    before it (noise that would otherwise corrupt a script's JSON)."""

    def __init__(self, limit: int, marked: bool) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.pid: int | None = None
        self._head: bytes | None = b"" if marked else None  # None once the marker is behind us

    def add(self, data: bytes) -> None:
        if self._head is not None:
            self._head += data
            found = _PGID_LINE.search(self._head)
            if found is None and len(self._head) <= _MAX_HEAD:
                return
            if found is not None:
                self.pid, data = int(found.group(1)), self._head[found.end() :]
            else:  # no marker (an exotic login shell): keep everything as output
                data = self._head
            self._head = None
        self.chunks.append(data)
        self.size += len(data)

    @property
    def over(self) -> bool:
        return self.size > self.limit

    def text(self) -> str:
        rest = self._head or b""  # the marker never came: what we held back is output
        return (b"".join(self.chunks) + rest).decode("utf-8", "replace")


class SshTransport:
    """One paramiko connection to one host; one SFTP channel opened lazily and reused."""

    def __init__(self, host: str, client: paramiko.SSHClient, options: SshOptions) -> None:
        self.host = host
        self.options = options
        self._client = client
        self._sftp: paramiko.SFTPClient | None = None

    @property
    def alive(self) -> bool:
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        check: bool = True,
        max_output: int | None = None,
    ) -> CommandResult:
        command = command_line(argv)
        limit = self.options.max_output_bytes if max_output is None else max_output
        budget = self.options.command_timeout if timeout is None else timeout
        started = time.monotonic()
        chan = self._open_channel()
        try:
            chan.exec_command(f"{_WRAP_BEFORE}{command}{_WRAP_AFTER}")
            out, err = _Capture(limit, marked=True), _Capture(limit, marked=False)
            exit_code = self._pump(chan, command, stdin, out, err, started + budget, budget)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostUnreachable(self.host, f"connection lost running {command}: {exc}") from exc
        finally:
            chan.close()
        elapsed = time.monotonic() - started
        result = CommandResult(command, exit_code, out.text(), err.text(), elapsed)
        if check and exit_code != 0:
            raise CommandFailed(self.host, command, exit_code, result.stdout, result.stderr)
        return result

    def _open_channel(self) -> paramiko.Channel:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise HostUnreachable(self.host, "connection is closed")
        try:
            return transport.open_session(timeout=self.options.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostUnreachable(self.host, f"cannot open a channel: {_describe(exc)}") from exc

    def _pump(
        self, chan: paramiko.Channel, command: str, stdin: bytes | None,
        out: _Capture, err: _Capture, deadline: float, budget: float,
    ) -> int:
        """Feed stdin and drain stdout/stderr together (no deadlock on full windows)."""
        data, offset = stdin or b"", 0
        if not data:
            chan.shutdown_write()
        while True:
            pending = offset < len(data)
            if pending and chan.send_ready():
                offset = self._feed(chan, data, offset)
            while chan.recv_ready():
                out.add(chan.recv(_READ_CHUNK))
            while chan.recv_stderr_ready():
                err.add(chan.recv_stderr(_READ_CHUNK))
            if out.over or err.over:
                self._kill(out.pid)
                raise OutputTooLarge(
                    self.host, f"output of {command} exceeded {out.limit} bytes; it was stopped"
                )
            # `closed` without EOF: the connection died under us (paramiko closes its channels).
            drained = not chan.recv_ready() and not chan.recv_stderr_ready()
            if (chan.eof_received or chan.closed) and drained:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._timed_out(out.pid, command, budget)
            select.select([chan], [], [], min(remaining, 0.01 if pending else 0.5))
        received = chan.status_event.wait(max(deadline - time.monotonic(), 0.0))
        if not self.alive and (not received or chan.exit_status == -1):
            raise HostUnreachable(self.host, f"connection lost running {command}")
        if not received:
            self._timed_out(out.pid, command, budget)
        return chan.recv_exit_status()

    def _feed(self, chan: paramiko.Channel, data: bytes, offset: int) -> int:
        """Send the next chunk of stdin; EOF after the last. Returns the new offset."""
        try:
            offset += chan.send(data[offset : offset + _READ_CHUNK])
        except OSError:
            if not self.alive:
                raise
            return len(data)  # the command exited without reading all its stdin: drop the rest
        if offset >= len(data):
            chan.shutdown_write()
        return offset

    def _timed_out(self, pid: int | None, command: str, budget: float) -> None:
        self._kill(pid)
        raise CommandTimeout(self.host, f"{command} did not finish within {budget:g} s; stopped")

    def _kill(self, pgid: int | None) -> None:
        """Kill the remote process group over a fresh channel; best effort, bounded in time."""
        if pgid is None or not self.alive:
            return
        try:
            chan = self._open_channel()
            try:
                chan.settimeout(5.0)
                chan.exec_command(command_line(["python3", "-c", _KILL_GROUP, str(pgid)]))
                chan.shutdown_write()
                chan.status_event.wait(5.0)
            finally:
                chan.close()
        except (HostError, paramiko.SSHException, OSError, EOFError):
            pass  # the original error (timeout, overflow) is what the caller must see

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = self._client.open_sftp()
            except (paramiko.SSHException, paramiko.SFTPError, OSError, EOFError) as exc:
                raise HostUnreachable(self.host, f"cannot open SFTP: {_describe(exc)}") from exc
        return self._sftp

    def put(self, data_or_local_path: bytes | Path, remote_path: str, mode: int = 0o644) -> None:
        """Upload to a temporary name, chmod, then rename: readers never see a partial file.
        Missing parent directories are created (over SFTP: no shell, no extra command)."""
        sftp = self._sftp_client()
        tmp = f"{remote_path}.part-{uuid.uuid4().hex[:8]}"
        try:
            try:
                self._write(sftp, data_or_local_path, tmp)
            except FileNotFoundError:
                self._makedirs(sftp, posixpath.dirname(remote_path))
                self._write(sftp, data_or_local_path, tmp)
            sftp.chmod(tmp, mode)
            sftp.posix_rename(tmp, remote_path)
        except OSError as exc:  # IOError from the SFTP server: not a dir, permission, disk
            self._discard(sftp, tmp)
            raise FileTransferFailed(self.host, f"put {remote_path}: {_describe(exc)}") from exc
        except (paramiko.SSHException, paramiko.SFTPError, EOFError) as exc:
            raise HostUnreachable(self.host, f"SFTP failed writing {remote_path}: {exc}") from exc

    @staticmethod
    def _write(sftp: paramiko.SFTPClient, data_or_local_path: bytes | Path, path: str) -> None:
        if isinstance(data_or_local_path, bytes):
            sftp.putfo(io.BytesIO(data_or_local_path), path, confirm=True)
        else:
            sftp.put(os.fspath(data_or_local_path), path, confirm=True)

    @staticmethod
    def _makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
        missing: list[str] = []
        while path not in ("", "/"):
            try:
                sftp.stat(path)
                break
            except FileNotFoundError:
                missing.append(path)
                path = posixpath.dirname(path)
        for directory in reversed(missing):
            try:
                sftp.mkdir(directory)
            except OSError:
                # Created meanwhile by a concurrent upload is fine; anything else is not.
                if not stat.S_ISDIR(sftp.stat(directory).st_mode or 0):
                    raise

    @staticmethod
    def _discard(sftp: paramiko.SFTPClient, path: str) -> None:
        # nothing was written, or the connection is gone: either way nothing to clean
        with contextlib.suppress(OSError, paramiko.SSHException):
            sftp.remove(path)

    def get(self, remote_path: str) -> bytes:
        sftp = self._sftp_client()
        try:
            with sftp.open(remote_path, "rb") as handle:
                handle.prefetch()
                return handle.read()
        except OSError as exc:
            raise FileTransferFailed(self.host, f"get {remote_path}: {_describe(exc)}") from exc
        except (paramiko.SSHException, paramiko.SFTPError, EOFError) as exc:
            raise HostUnreachable(self.host, f"SFTP failed reading {remote_path}: {exc}") from exc

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        self._client.close()

    def __enter__(self) -> SshTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fetch_host_key(host: HostAddress, timeout: float = 10.0, prefer: Sequence[str] = ()) -> HostKey:
    """The key a host offers, read from a key exchange only (no authentication is attempted).

    `prefer` restricts the negotiation to these key types (those we already know for the host),
    so a host with several keys is compared like for like; if it offers none of them any key
    type is accepted, which then shows up as a changed key."""
    if prefer:
        try:
            return _fetch_key(host, timeout, _key_types(prefer))
        except HostUnreachable:
            pass  # none of the known types is offered any more: fall through to any type
    return _fetch_key(host, timeout, ())


def _key_types(known: Sequence[str]) -> list[str]:
    # An RSA key is listed as ssh-rsa but negotiated with its SHA-2 signature algorithms.
    rsa = ["rsa-sha2-512", "rsa-sha2-256"] if "ssh-rsa" in known else []
    return [*rsa, *known]


def _fetch_key(host: HostAddress, timeout: float, key_types: Sequence[str]) -> HostKey:
    where = f"{host.address}:{host.port}"
    try:
        sock = socket.create_connection((host.address, host.port), timeout=timeout)
    except OSError as exc:
        raise HostUnreachable(host.name, f"cannot connect to {where}: {_describe(exc)}") from exc
    transport = paramiko.Transport(sock)
    transport.banner_timeout = timeout
    if key_types:
        # Types paramiko does not implement (e.g. FIDO sk- keys) cannot be restricted to.
        with contextlib.suppress(ValueError):
            transport.get_security_options().key_types = list(key_types)
    try:
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        return HostKey(key.get_name(), key.get_base64())
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise HostUnreachable(host.name, f"no SSH key exchange with {where}: {exc}") from exc
    finally:
        transport.close()


def known_host_keys(known_hosts: Path, address: str, port: int) -> list[HostKey]:
    """The keys our known_hosts file holds for this address and port (hashed entries included)."""
    if not known_hosts.exists():
        return []
    entries = paramiko.HostKeys(str(known_hosts)).lookup(known_hosts_name(address, port))
    if entries is None:
        return []
    return [HostKey(key_type, key.get_base64()) for key_type, key in entries.items()]


def append_known_host(known_hosts: Path, address: str, port: int, key: HostKey) -> None:
    """Append one OpenSSH-format line; the file is created 0600 with its directory if needed."""
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    line = f"{known_hosts_name(address, port)} {key.key_type} {key.base64}\n"
    fd = os.open(known_hosts, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line  # a hand-edited file without a final newline: keep lines apart
        handle.write(line.encode("ascii"))


def remove_known_host(known_hosts: Path, address: str, port: int) -> None:
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
