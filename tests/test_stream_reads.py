"""The pieces one host's stream reads, kept for the other hosts of its batch
(orchestrator/hosts/ssh/stream.py `SharedReads`): what must hold is that a second stream of the
same file gets the same bytes without reading it again, that a file rewritten in place is read
afresh, and that what is kept stays within its bound."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.hosts.ssh import stream
from orchestrator.hosts.ssh.stream import FilesFeed, SharedReads


class _Chan:
    """What a feed uses of a channel: takes everything, packets of 1 KiB."""

    out_max_packet_size = 1024 + 64

    def __init__(self) -> None:
        self.got = bytearray()

    def send(self, s: bytes) -> int:
        self.got += s
        return len(s)

    def send_ready(self) -> bool:
        return True


def _stream(path: Path) -> bytes:
    feed, chan = FilesFeed(b"", [(path, path.stat().st_size)]), _Chan()
    while feed.pending:
        feed.feed(chan)
    feed.close()
    return bytes(chan.got)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> SharedReads:
    shared = SharedReads(limit=64 << 10)
    monkeypatch.setattr(stream, "_READS", shared)
    return shared


def test_a_second_stream_of_a_file_is_served_from_the_first_ones_reads(
        tmp_path: Path, reads: SharedReads, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = tmp_path / "a.whl"
    wheel.write_bytes(os.urandom(20_000))
    assert _stream(wheel) == wheel.read_bytes()
    calls: list[int] = []
    real = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        calls.append(offset)
        return real(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    assert _stream(wheel) == wheel.read_bytes() and calls == []  # no read of the file at all


def test_a_file_rewritten_in_place_is_read_afresh(tmp_path: Path, reads: SharedReads) -> None:
    wheel = tmp_path / "a.whl"
    wheel.write_bytes(b"a" * 5000)
    assert _stream(wheel) == b"a" * 5000
    wheel.write_bytes(b"b" * 5000)  # same inode and size, a later mtime
    os.utime(wheel, ns=(wheel.stat().st_atime_ns, wheel.stat().st_mtime_ns + 1_000_000))
    assert _stream(wheel) == b"b" * 5000


def test_what_is_kept_stays_within_the_bound(tmp_path: Path, reads: SharedReads) -> None:
    wheel = tmp_path / "big.whl"
    wheel.write_bytes(os.urandom(300_000))  # about 5 times the bound
    assert _stream(wheel) == wheel.read_bytes()
    assert 0 < reads.held <= reads.limit
