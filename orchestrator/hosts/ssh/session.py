"""One SSH connection, as `connect` (connect.py) returns it: `SshTransport` runs commands in their
own process group, killed on a timeout, an output overflow or a dropped connection, and moves
files over SFTP."""

from __future__ import annotations

import contextlib
import re
import select
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import paramiko

from orchestrator.errors import (
    CommandFailed,
    CommandTimeout,
    FileTransferFailed,
    HostError,
    HostUnreachable,
    OutputTooLarge,
)
from orchestrator.hosts.ssh.conversation import SshConversation
from orchestrator.hosts.ssh.options import (
    SshOptions,
)
from orchestrator.hosts.ssh.options import describe as _describe
from orchestrator.hosts.ssh.sftp import get_file, put_file
from orchestrator.hosts.ssh.stream import BytesFeed, Feed, FilesFeed, LocalFileError
from orchestrator.hosts.transport import CommandResult, command_line

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
# struct tcp_info (linux/tcp.h): 8 one-byte fields, 24 u32s, then u64 pacing_rate,
# max_pacing_rate, bytes_acked (Linux >= 4.1).
_BYTES_ACKED = 8 + 24 * 4 + 2 * 8
_TCP_INFO_LEN = 232



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


def _exec_unconfirmed(chan: paramiko.Channel, command: str) -> None:
    """`chan.exec_command(command)` without its wait for the server's reply (paramiko has no
    public call for it): the same request, want-reply set, so that paramiko's own handlers
    still mark the channel ready on success (`event_ready`) or close it on failure."""
    m = paramiko.Message()
    m.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
    m.add_int(chan.remote_chanid)
    m.add_string("exec")
    m.add_boolean(True)
    m.add_string(command)
    # Private to paramiko (untyped there): what exec_command does, minus its wait.
    chan._event_pending()  # type: ignore[attr-defined]
    chan.get_transport()._send_user_message(m)  # type: ignore[attr-defined]


class SshTransport:
    """One paramiko connection to one host; one SFTP channel opened lazily and reused."""

    def __init__(self, host: str, client: paramiko.SSHClient, options: SshOptions,
                 jumps: Sequence[paramiko.SSHClient] = ()) -> None:
        self.host = host
        self.options = options
        self._client = client
        self._jumps = tuple(jumps)  # the bastions' connections the target's runs through
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
        on_stderr: Callable[[bytes], None] | None = None,
    ) -> CommandResult:
        return self._run(argv, BytesFeed(stdin or b""), timeout=timeout, check=check,
                         max_output=max_output, on_stderr=on_stderr)

    def run_with_files(
        self,
        argv: Sequence[str],
        header: bytes,
        files: Sequence[tuple[Path, int]],
        *,
        timeout: float | None = None,
        check: bool = True,
        max_output: int | None = None,
        on_sent: Callable[[int], None] | None = None,
    ) -> CommandResult:
        """`run`, its stdin `header` then each (file, size) back to back, read as it is sent
        (stream.py): one exec channel carries them all, one packet of one file in memory.
        `on_sent(n)`: the files' bytes sent so far (as a progress callback)."""
        feed = FilesFeed(header, files, on_sent)
        try:
            return self._run(argv, feed, timeout=timeout, check=check, max_output=max_output)
        except LocalFileError as exc:
            raise FileTransferFailed(self.host, f"cannot send a local file: {exc}") from exc
        finally:
            feed.close()

    def converse(self, argv: Sequence[str]) -> SshConversation:
        """Start `argv` on its own channel, its stdin left open (conversation.py): wrapped as
        `run` wraps a command, so a timeout or a dropped connection kills its group.

        The exec request is sent without waiting for its reply (one round trip less: the
        caller's first line goes right behind it, and sshd handles a channel's messages in
        order, so the line reaches the started command). The reply still comes: a refusal
        closes the channel, and the conversation's first read or send says the host refused
        to run the command (conversation.py)."""
        command = command_line(argv)
        chan = self._open_channel()
        try:
            _exec_unconfirmed(chan, f"{_WRAP_BEFORE}{command}{_WRAP_AFTER}")
        except (paramiko.SSHException, OSError, EOFError) as exc:
            chan.close()
            raise HostUnreachable(self.host, f"connection lost starting {command}: {exc}") from exc
        return SshConversation(self.host, command, chan, _PGID_LINE, self._kill)

    def _run(self, argv: Sequence[str], feed: Feed, *, timeout: float | None, check: bool,
             max_output: int | None,
             on_stderr: Callable[[bytes], None] | None = None) -> CommandResult:
        command = command_line(argv)
        limit = self.options.max_output_bytes if max_output is None else max_output
        budget = self.options.command_timeout if timeout is None else timeout
        started = time.monotonic()
        chan = self._open_channel()
        try:
            chan.exec_command(f"{_WRAP_BEFORE}{command}{_WRAP_AFTER}")
            out, err = _Capture(limit, marked=True), _Capture(limit, marked=False)
            exit_code = self._pump(chan, command, feed, out, err, started + budget, budget,
                                   on_stderr)
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
        self, chan: paramiko.Channel, command: str, feed: Feed,
        out: _Capture, err: _Capture, deadline: float, budget: float,
        on_stderr: Callable[[bytes], None] | None = None,
    ) -> int:
        """Feed stdin and drain stdout/stderr together (no deadlock on full windows)."""
        if not feed.pending:
            chan.shutdown_write()
        while True:
            pending = feed.pending
            if pending and chan.send_ready():
                self._feed(chan, feed)
            while chan.recv_ready():
                out.add(chan.recv(_READ_CHUNK))
            while chan.recv_stderr_ready():
                piece = chan.recv_stderr(_READ_CHUNK)
                err.add(piece)
                if on_stderr is not None:
                    self._hook(on_stderr, piece, out.pid)
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
            if feed.pending and chan.send_ready():
                continue  # the window has room: keep sending, do not sleep
            # A full send window has no file descriptor to wait on: poll briefly for it.
            select.select([chan], [], [], min(remaining, 0.005 if pending else 0.5))
        received = chan.status_event.wait(max(deadline - time.monotonic(), 0.0))
        if not self.alive and (not received or chan.exit_status == -1):
            raise HostUnreachable(self.host, f"connection lost running {command}")
        if not received:
            self._timed_out(out.pid, command, budget)
        return chan.recv_exit_status()

    def _feed(self, chan: paramiko.Channel, feed: Feed) -> None:
        """Send the next piece of stdin; EOF after the last."""
        try:
            feed.feed(chan)
        except OSError:
            if not self.alive:
                raise
            feed.close()  # the command exited without reading all its stdin: drop the rest
        if not feed.pending:
            chan.shutdown_write()

    def _hook(self, hook: Callable[[bytes], None], data: bytes, pgid: int | None) -> None:
        """A caller's hook; should it raise, nothing of the command is left running."""
        try:
            hook(data)
        except BaseException:
            self._kill(pgid)
            raise

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

    def put(self, data_or_local_path: bytes | Path, remote_path: str, mode: int = 0o644,
            progress: Callable[[int, int], None] | None = None) -> None:
        """Atomic (temporary name, chmod, rename); missing parents created (sftp.py);
        `progress(sent, size)` as the bytes go out."""
        sftp = self._sftp_client()
        try:
            put_file(sftp, data_or_local_path, remote_path, mode, progress)
        except OSError as exc:  # IOError from the SFTP server: not a dir, permission, disk
            raise FileTransferFailed(self.host, f"put {remote_path}: {_describe(exc)}") from exc
        except (paramiko.SSHException, paramiko.SFTPError, EOFError) as exc:
            raise HostUnreachable(self.host, f"SFTP failed writing {remote_path}: {exc}") from exc

    def get(
        self, remote_path: str, *, max_bytes: int | None = None, timeout: float | None = None
    ) -> bytes:
        """A regular file of at most `max_bytes` (default `options.max_file_bytes`), read
        within `timeout` seconds (default `options.command_timeout`): see sftp.py's
        `get_file` for what a hostile host meets."""
        sftp = self._sftp_client()
        limit = self.options.max_file_bytes if max_bytes is None else max_bytes
        budget = self.options.command_timeout if timeout is None else timeout
        try:
            return get_file(sftp, self.host, remote_path, max_bytes=limit, timeout=budget)
        except CommandTimeout:
            self._drop_sftp()  # a request is still unanswered: the next call opens a new one
            raise
        except OSError as exc:
            raise FileTransferFailed(self.host, f"get {remote_path}: {_describe(exc)}") from exc
        except (paramiko.SSHException, paramiko.SFTPError, EOFError) as exc:
            self._drop_sftp()
            raise HostUnreachable(self.host, f"SFTP failed reading {remote_path}: {exc}") from exc

    def _drop_sftp(self) -> None:
        sftp, self._sftp = self._sftp, None
        if sftp is not None:
            with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
                sftp.close()

    def bytes_sent(self) -> int:
        """Bytes the host has acknowledged on this connection's TCP socket (TCP_INFO's
        bytes_acked: encryption and SSH framing included), 0 through a bastion's channel. For
        the ship bench's "controller bytes per host"."""
        transport = self._client.get_transport()
        sock = getattr(transport, "sock", None)
        if not isinstance(sock, socket.socket):
            return 0
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
        if len(info) < _BYTES_ACKED + 8:
            return 0
        return int.from_bytes(info[_BYTES_ACKED:_BYTES_ACKED + 8], sys.byteorder)

    def close(self) -> None:
        self._drop_sftp()
        self._client.close()
        for jump in reversed(self._jumps):
            jump.close()

    def __enter__(self) -> SshTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
