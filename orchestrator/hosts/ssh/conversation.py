"""A command kept running on one exec channel, talking in lines: the host agent's wire
(orchestrator/hosts/agent.py; the `Conversation` interface of orchestrator/hosts/transport.py).

Started like any command of session.py (its own process group, named on its first stdout line,
with the watcher that kills the group when the connection drops), but its stdin stays open:
the controller writes a request line, reads a reply line, and so on. What the host writes is
untrusted: a line longer than the caller's limit is `OutputTooLarge`, a reply later than the
caller's timeout `CommandTimeout`; either way the command's group is killed (the stream is out
of step, nothing more is read from it). stderr is drained as it comes (a full window would
stall the command) and only its last bytes kept, for error messages. Its exec request was
sent without waiting for the reply (session.py `converse`); a refusal shows here, at the first
send or read after it, as `CommandFailed` ("the host refused to run it").
"""

from __future__ import annotations

import re
import select
import time
from collections.abc import Callable

import paramiko

from orchestrator.errors import (
    CommandFailed,
    CommandTimeout,
    HostError,
    HostUnreachable,
    OutputTooLarge,
)

_READ_CHUNK = 1 << 16
_STDERR_TAIL = 1 << 14
_MAX_HEAD = 1 << 16  # login noise tolerated before the process-group line


class SshConversation:
    """One running command on `chan` (exec'd already); `kill(pgid)` stops its group."""

    def __init__(self, host: str, command: str, chan: paramiko.Channel,
                 pgid_line: re.Pattern[bytes], kill: Callable[[int | None], None]) -> None:
        self.host, self.command = host, command
        self._chan, self._pgid_line, self._kill = chan, pgid_line, kill
        self._buf = b""
        self._err = b""
        self._pgid: int | None = None
        self._head = True  # the process-group line is still ahead in stdout

    def send(self, data: bytes, *, timeout: float) -> None:
        self._chan.settimeout(max(timeout, 0.001))
        try:
            self._chan.sendall(data)
        except TimeoutError:
            self.kill()
            raise CommandTimeout(self.host, f"{self.command} did not take a request within "
                                            f"{timeout:.3g} s; stopped") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._lost(f": {exc}") from exc

    def read_line(self, *, timeout: float, limit: int) -> bytes:
        deadline = time.monotonic() + timeout
        try:
            while True:
                line = self._take_line(limit)
                if line is not None:
                    return line
                if self._chan.eof_received and not self._chan.recv_ready():
                    rest, self._buf = self._buf, b""
                    return rest  # b"" (or an unterminated last piece) once stdout ended
                if self._chan.closed and not self._chan.recv_ready():
                    raise self._lost("")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.kill()
                    raise CommandTimeout(self.host, f"{self.command} did not answer within "
                                                    f"{timeout:.3g} s; stopped")
                select.select([self._chan], [], [], min(remaining, 0.5))
                self._drain()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._lost(f": {exc}") from exc

    def _lost(self, detail: str) -> HostError:
        """The channel closed under us: the host refused the exec (session.py sends it without
        waiting for its reply; a refusal closes the channel and never marks it ready), or the
        connection dropped."""
        transport = self._chan.get_transport()
        if not self._chan.event_ready and transport is not None and transport.is_active():
            return CommandFailed(self.host, self.command, -1, "",
                                 "the host refused to run it (its SSH exec request failed)")
        return HostUnreachable(self.host, f"connection lost talking to {self.command}{detail}")

    def _drain(self) -> None:
        while self._chan.recv_stderr_ready():
            self._err = (self._err + self._chan.recv_stderr(_READ_CHUNK))[-_STDERR_TAIL:]
        while self._chan.recv_ready():
            data = self._chan.recv(_READ_CHUNK)
            if not data:
                break
            self._buf += data

    def _take_line(self, limit: int) -> bytes | None:
        if self._head:
            found = self._pgid_line.search(self._buf)
            if found is None:
                if len(self._buf) <= _MAX_HEAD:
                    return None
                self._head = False  # no marker (an exotic login shell): all of it is output
            else:
                self._pgid, self._buf = int(found.group(1)), self._buf[found.end():]
                self._head = False
        end = self._buf.find(b"\n", 0, limit + 1)
        if end < 0:
            if len(self._buf) > limit:
                self.kill()
                raise OutputTooLarge(self.host, f"a line of {self.command} exceeded {limit} "
                                                "bytes; it was stopped")
            return None
        line, self._buf = self._buf[:end + 1], self._buf[end + 1:]
        return line

    def stderr_tail(self) -> str:
        self._drain()
        return self._err.decode("utf-8", "replace")

    def exit_code(self) -> int | None:
        return self._chan.exit_status if self._chan.exit_status_ready() else None

    def close(self) -> None:
        """EOF on the command's stdin (it ends by itself), the channel closed; no waiting."""
        try:
            if not self._chan.closed:
                self._chan.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError):
            pass
        self._chan.close()

    def kill(self) -> None:
        self._kill(self._pgid)
        self.close()
