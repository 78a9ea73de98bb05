"""What a command reads on its stdin: a few bytes (a host op's JSON arguments), or a stream of
files sent back to back after a header line (`wheels-receive`: one exec channel per host carries
every wheel the host lacks).

Why a stream and not SFTP: an SFTP put is a request and an acknowledgement per 32 KiB write,
each one a Python round through paramiko's packetizer both ways; over one exec channel the
controller only encrypts and sends, in SSH packets as large as the host's channel accepts
(OpenSSH: 32 KiB), each a fresh `bytes` of exactly one packet's payload (paramiko's `send` slices
and copies what it is given: a larger buffer would be copied once per packet). What the host
receives it hashes as it writes (hostops_receive.py), so nothing is trusted because it came
over this channel.

The controller holds one packet's worth of one file at a time per host, whatever the file's
size: memory is bounded per host (the file is read as it is sent). Hosts of one batch are sent
the same wheels in the same order at about the same pace, so the pieces one host's stream read
are kept a while for the others (`SharedReads`, 32 MiB in all): a wheel is read from the page
cache about once per batch, not once per host (the kernel's copy was 0.44 s of a 4-host cold
deploy's 2.9 s of controller CPU).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

#: paramiko takes 64 bytes of every packet for its own header (Channel._wait_for_send_window).
_PACKET_OVERHEAD = 64
#: Packets sent per call before the caller drains the host's output again.
_PACKETS_PER_FEED = 32
#: What `SharedReads` keeps of the pieces read lately, in all.
SHARED_READS_BYTES = 32 << 20

#: A piece of a file as read: (device, inode, size, mtime_ns) of the open file, offset, length.
PieceKey = tuple[int, int, int, int, int, int]


class SharedReads:
    """The pieces of files read lately by any host's stream, oldest dropped first past
    `limit` bytes: another host's stream of the same file reads them from here. The key holds
    the open file's identity and mtime, so a file replaced or rewritten is read afresh (and
    each host hashes what it receives anyway)."""

    def __init__(self, limit: int = SHARED_READS_BYTES) -> None:
        self.limit, self.held = limit, 0
        self._pieces: OrderedDict[PieceKey, bytes] = OrderedDict()
        self._guard = threading.Lock()

    def read(self, fd: int, key: PieceKey) -> bytes:
        with self._guard:
            piece = self._pieces.get(key)
        if piece is not None:
            return piece
        piece = os.pread(fd, key[5], key[4])
        if len(piece) == key[5]:
            with self._guard:
                if key not in self._pieces:
                    self._pieces[key] = piece
                    self.held += len(piece)
                while self.held > self.limit:
                    self.held -= len(self._pieces.popitem(last=False)[1])
        return piece


_READS = SharedReads()


class LocalFileError(Exception):
    """A file being streamed could not be read as announced (gone, changed size): the
    controller's problem, not the host's; the transport reports it as a failed transfer."""


class Sender(Protocol):
    """What of paramiko's Channel a feed uses."""

    out_max_packet_size: int

    def send(self, s: bytes) -> int: ...

    def send_ready(self) -> bool: ...


class Feed(Protocol):
    """A command's stdin, sent piece by piece as the channel's window allows."""

    @property
    def pending(self) -> bool: ...

    def feed(self, chan: Sender) -> None:
        """Send what the channel takes now (at least one packet's worth when it is ready)."""
        ...

    def close(self) -> None: ...


class BytesFeed:
    """A small stdin held in memory (a host op's JSON arguments)."""

    def __init__(self, data: bytes) -> None:
        self._data, self._offset = data, 0

    @property
    def pending(self) -> bool:
        return self._offset < len(self._data)

    def feed(self, chan: Sender) -> None:
        self._offset += chan.send(self._data[self._offset:self._offset + (1 << 16)])

    def close(self) -> None:
        self._offset = len(self._data)


class FilesFeed:
    """A header, then each file's bytes in order. A file whose size changed since its header
    was built is refused here (the host would read the wrong frame): `LocalFileError`.
    `on_sent(n)` is told the files' bytes handed to the channel so far."""

    def __init__(self, header: bytes, files: Sequence[tuple[Path, int]],
                 on_sent: Callable[[int], None] | None = None) -> None:
        self._head = header
        self._on_sent, self._sent = on_sent, 0
        self._files = list(files)  # (path, size the header announced)
        self._current: BinaryIO | None = None
        self._ident = (0, 0, 0, 0)  # the open file's device, inode, size, mtime_ns
        self._offset = self._left = 0
        self._piece = b""

    @property
    def pending(self) -> bool:
        return bool(self._head or self._piece or self._left or self._files)

    def feed(self, chan: Sender) -> None:
        if self._head:
            self._head = self._head[chan.send(self._head):]
            return
        size = max(chan.out_max_packet_size - _PACKET_OVERHEAD, 1024)
        for _ in range(_PACKETS_PER_FEED):
            if not self._piece:
                self._piece = self._next(size)
                if not self._piece:
                    return
            sent = chan.send(self._piece)
            # Short when the window was smaller: keep the rest for the next call.
            self._piece = self._piece[sent:] if sent < len(self._piece) else b""
            if self._on_sent is not None:
                self._sent += sent
                self._on_sent(self._sent)
            if not chan.send_ready():
                return

    def _next(self, size: int) -> bytes:
        try:
            return self._read(size)
        except OSError as exc:
            raise LocalFileError(str(exc)) from exc

    def _read(self, size: int) -> bytes:
        while self._current is None or not self._left:
            if self._current is not None:
                self._current.close()
                self._current = None
            if not self._files:
                return b""
            path, self._left = self._files.pop(0)
            self._current = open(path, "rb")  # noqa: SIM115 - closed at its end or by close()
            st = os.fstat(self._current.fileno())
            if st.st_size != self._left:
                raise OSError(f"{path} changed size while it was being sent")
            self._ident, self._offset = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), 0
        piece = _READS.read(self._current.fileno(),
                            (*self._ident, self._offset, min(size, self._left)))
        if not piece:
            raise OSError("file shrank while it was being sent")
        self._left -= len(piece)
        self._offset += len(piece)
        return piece

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        self._files, self._left, self._piece, self._head = [], 0, b"", b""
