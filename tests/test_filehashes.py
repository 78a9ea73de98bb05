"""The controller's remembered file hashes (orchestrator/core/filehashes.py): an unchanged large
file is not read again, any write to it is, and a broken memo is no memo."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.core import filehashes
from orchestrator.core.hashing import hash_file
from orchestrator.hosts.remote import contenthash

SIZE = filehashes.MIN_BYTES + 1


@pytest.fixture
def memo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "cache" / "file-hashes.json"
    monkeypatch.setenv("ORCHESTRATOR_HASH_MEMO", str(path))
    filehashes._loaded.clear()
    yield path
    filehashes._loaded.clear()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files really read for their hash."""
    seen: list[str] = []
    real = contenthash.sha256_file

    def counting(path: str) -> str:
        seen.append(path)
        return real(path)
    monkeypatch.setattr(contenthash, "sha256_file", counting)
    return seen


def big(path: Path, fill: bytes = b"a") -> Path:
    path.write_bytes(fill * SIZE)
    return path


def test_an_unchanged_file_is_read_once_even_by_a_new_process(
        tmp_path: Path, memo: Path, reads: list[str]) -> None:
    wheel = big(tmp_path / "w.whl")
    want = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert hash_file(wheel) == want
    assert hash_file(wheel) == want
    filehashes._loaded.clear()  # what the next `orchestrator deploy` starts with
    assert hash_file(wheel) == want
    assert reads == [str(wheel)]
    assert json.loads(memo.read_text())[os.path.abspath(wheel)][5] == want


def test_a_rewrite_with_the_same_size_and_mtime_is_read_again(
        tmp_path: Path, memo: Path, reads: list[str]) -> None:
    wheel = big(tmp_path / "w.whl")
    first = hash_file(wheel)
    st = os.stat(wheel)
    big(wheel, b"b")
    os.utime(wheel, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as before: ctime moved
    second = hash_file(wheel)
    assert second != first
    assert second == hashlib.sha256(b"b" * SIZE).hexdigest()
    assert len(reads) == 2


def test_a_replaced_file_is_read_again(tmp_path: Path, memo: Path, reads: list[str]) -> None:
    wheel = big(tmp_path / "w.whl")
    hash_file(wheel)
    big(tmp_path / "new.whl", b"c").replace(wheel)
    assert hash_file(wheel) == hashlib.sha256(b"c" * SIZE).hexdigest()
    assert len(reads) == 2


def test_small_files_and_memo_off_are_always_read(
        tmp_path: Path, memo: Path, reads: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    small = tmp_path / "lock"
    small.write_text("x==1\n")
    hash_file(small)
    hash_file(small)
    assert len(reads) == 2
    monkeypatch.setenv("ORCHESTRATOR_HASH_MEMO", "off")
    wheel = big(tmp_path / "w.whl")
    hash_file(wheel)
    hash_file(wheel)
    assert len(reads) == 4
    assert not memo.exists()


def test_a_corrupt_or_unwritable_memo_is_no_memo(
        tmp_path: Path, memo: Path, reads: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    memo.parent.mkdir(parents=True)
    memo.write_text('{"' + str(tmp_path / "w.whl") + '": [1, 2, "not a key"]')  # truncated
    wheel = big(tmp_path / "w.whl")
    want = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert hash_file(wheel) == want
    filehashes._loaded.clear()
    monkeypatch.setenv("ORCHESTRATOR_HASH_MEMO", str(tmp_path / "w.whl" / "memo.json"))
    assert hash_file(wheel) == want  # its directory cannot exist: hashed, nothing raised
    assert len(reads) == 2


def test_the_oldest_entries_go_first(tmp_path: Path, memo: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(filehashes, "MAX_ENTRIES", 2)
    files = [big(tmp_path / f"{i}.whl") for i in range(3)]
    for f in files:
        hash_file(f)
    kept = json.loads(memo.read_text())
    assert sorted(kept) == sorted(os.path.abspath(f) for f in files[1:])
