"""How commands and files reach a host: the one interface the rest of the code depends on.

`orchestrator.hosts.ssh.SshTransport` implements it over paramiko (the only package that imports
paramiko); tests of ordering logic may use a fake. Every failure surfaces as a `HostError`
subclass from `orchestrator.errors`, never as a library exception.

Commands are argument lists, never shell strings: `command_line` quotes each element, so a
value such as `x; touch pwned $(id)` reaches the host as one argument. When shell syntax is
really needed, say so explicitly: `["sh", "-c", script]`.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class CommandResult:
    """What a finished remote command left behind (output decoded as UTF-8, bad bytes replaced)."""

    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def command_line(argv: Sequence[str]) -> str:
    """The shell-safe command line for `argv`: every element quoted, whatever it contains."""
    if not argv:
        raise ValueError("empty command")
    return shlex.join(str(a) for a in argv)


@runtime_checkable
class Transport(Protocol):
    """One open connection to one host.

    `run` raises `CommandFailed` (when `check` and the exit code is not 0), `CommandTimeout`
    (the remote process is killed first), `OutputTooLarge` (stdout or stderr beyond the cap;
    the remote process is killed too), `HostUnreachable` (connection lost).
    `put` writes atomically (temporary name, then rename), sets `mode` and creates missing
    parent directories; `get` reads a file. Both raise `FileTransferFailed` when the host
    refuses (no such file, not a directory, permission, disk full).
    A host is untrusted: `get` reads only a regular file (else `BadHostOutput`: a symlink to
    /dev/zero, a FIFO), at most `max_bytes` of it (else `OutputTooLarge`; None: the transport's
    default, a few MiB), within `timeout` seconds (else `CommandTimeout`). A caller that knows
    its file is small (a marker) passes a smaller cap.
    Progress hooks (orchestrator/deploy/progress.py): `put`'s `progress(sent, size)` is called
    as the file's bytes go out; `run`'s `on_stderr(data)` with each piece of stderr as it
    arrives (it is still captured whole in the result). A hook that raises stops the command
    (its process group is killed) and the exception propagates.
    """

    host: str

    @property
    def alive(self) -> bool:
        """False once the connection is known to be lost (the pool then reopens it)."""
        ...

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        check: bool = True,
        max_output: int | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
    ) -> CommandResult: ...

    def put(
        self, data_or_local_path: bytes | Path, remote_path: str, mode: int = 0o644,
        progress: Callable[[int, int], None] | None = None,
    ) -> None: ...

    def get(
        self, remote_path: str, *, max_bytes: int | None = None, timeout: float | None = None
    ) -> bytes: ...

    def close(self) -> None: ...


@runtime_checkable
class FileStreamer(Protocol):
    """A transport that can send files on a command's stdin as it reads them (SshTransport):
    `header`, then each (file, size) back to back, one bounded buffer in memory. Raises what
    `run` raises, and `FileTransferFailed` when a local file changed while being sent.
    `on_sent(n)`: the files' bytes sent so far, for progress."""

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
    ) -> CommandResult: ...


class Conversation(Protocol):
    """A command that stays running on one channel, exchanging lines with the controller (the
    host agent, orchestrator/hosts/agent.py). A host is untrusted: `read_line` returns one line
    of at most `limit` bytes (else `OutputTooLarge`) within `timeout` seconds (else
    `CommandTimeout`), or b"" once the command's stdout ended; `HostUnreachable` when the
    connection drops. `close` ends its stdin (the command sees EOF) without waiting; `kill`
    stops its process group as `run` does on a timeout, then closes."""

    def send(self, data: bytes, *, timeout: float) -> None: ...

    def read_line(self, *, timeout: float, limit: int) -> bytes: ...

    def stderr_tail(self) -> str: ...

    def exit_code(self) -> int | None: ...

    def close(self) -> None: ...

    def kill(self) -> None: ...


@runtime_checkable
class Converser(Protocol):
    """A transport that can start a `Conversation` (SshTransport); one exec channel."""

    def converse(self, argv: Sequence[str]) -> Conversation: ...
