"""File and tree hashes: agreement with sha256sum, refusals, and properties (order independence,
sensitivity to any byte or path change)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.cli.app import main
from orchestrator.core.hashing import hash_file, hash_path, tree_hash
from orchestrator.errors import SpecError


def make_tree(root: Path, files: dict[str, bytes], order: list[str] | None = None) -> Path:
    for rel in order or list(files):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[rel])
    return root


SAVEDMODEL = {
    "saved_model.pb": b"\x08\x01graph",
    "fingerprint.pb": b"fp",
    "variables/variables.index": b"index",
    "variables/variables.data-00000-of-00001": b"\x00" * 4096,
    "assets/vocab one.txt": "naïve\n".encode(),
}


def test_file_hash_is_sha256_of_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.joblib"
    data = os.urandom(3 * (1 << 20) + 7)  # more than one read chunk
    path.write_bytes(data)
    assert hash_file(path) == hash_path(path) == hashlib.sha256(data).hexdigest()


def test_tree_hash_matches_the_documented_shell_pipeline(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "model", SAVEDMODEL)
    (root / "empty-dir" / "nested").mkdir(parents=True)  # ignored
    shell = subprocess.run(
        "find . -type f -printf '%P\\0' | xargs -0 sha256sum | LC_ALL=C sort | sha256sum",
        shell=True, cwd=root, capture_output=True, text=True, check=True, timeout=30)
    assert hash_path(root) == shell.stdout.split()[0]


def test_tree_hash_definition(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "m", {"b/x": b"1", "a": b"2"})
    lines = sorted(f"{hashlib.sha256(c).hexdigest()}  {p}\n" for p, c in
                   {"b/x": b"1", "a": b"2"}.items())
    assert tree_hash(root) == hashlib.sha256("".join(lines).encode()).hexdigest()


def test_a_symlink_given_as_the_path_is_followed(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "model", SAVEDMODEL)
    os.symlink(root, tmp_path / "current")
    assert hash_path(tmp_path / "current") == hash_path(root)


@pytest.mark.parametrize("kind", ["file-link", "dir-link", "dangling", "fifo"])
def test_special_entries_inside_are_refused(tmp_path: Path, kind: str) -> None:
    root = make_tree(tmp_path / "model", SAVEDMODEL)
    target = root / "variables" / "odd"
    if kind == "file-link":
        os.symlink(root / "saved_model.pb", target)
    elif kind == "dir-link":
        os.symlink(tmp_path, target)
    elif kind == "dangling":
        os.symlink(tmp_path / "nowhere", target)
    else:
        os.mkfifo(target)
    with pytest.raises(SpecError) as info:
        hash_path(root)
    assert info.value.file == str(target)
    assert ("symlinks are refused" if kind != "fifo" else "not a regular file") in str(info.value)


def test_a_tree_without_files_and_a_missing_path_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(SpecError, match="holds no regular file"):
        hash_path(tmp_path / "empty")
    with pytest.raises(SpecError, match="cannot hash: No such file"):
        hash_path(tmp_path / "missing")


def test_hash_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_tree(tmp_path / "model", SAVEDMODEL)
    (tmp_path / "f").write_bytes(b"x")
    assert main(["hash", str(root)]) == 0
    assert capsys.readouterr().out == hash_path(root) + "\n"
    assert main(["hash", str(root), str(tmp_path / "f")]) == 0
    assert capsys.readouterr().out == (f"{hash_path(root)}  {root}\n"
                                       f"{hashlib.sha256(b'x').hexdigest()}  {tmp_path / 'f'}\n")
    assert main(["hash", str(tmp_path / "missing")]) == 2
    assert "missing: cannot hash" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["symlink", "fifo", "socket"])
def test_hash_cli_refuses_special_entries_naming_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    root = make_tree(tmp_path / "model", SAVEDMODEL)
    entry = root / "variables" / "notes.txt"
    if kind == "symlink":
        (tmp_path / "secret").write_text("x")
        os.symlink(tmp_path / "secret", entry)
    elif kind == "fifo":
        os.mkfifo(entry)
    else:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(entry))
    assert main(["hash", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"{entry}: cannot hash" in err
    assert main(["hash", str(entry)]) == 2 or kind == "symlink"  # a link given as PATH: followed
    capsys.readouterr()


# --- properties ----------------------------------------------------------------------------------

segment = st.text(st.characters(codec="utf-8", exclude_characters="/\\\n\x00",
                                exclude_categories=["Cs"]), min_size=1, max_size=8) \
    .filter(lambda s: s not in (".", ".."))
rel_paths = st.lists(segment, min_size=1, max_size=3).map("/".join)
trees = st.dictionaries(rel_paths, st.binary(max_size=64), min_size=1, max_size=6).filter(
    # a path may not be both a file and a directory
    lambda files: not any(a != b and b.startswith(a + "/") for a in files for b in files))


def hash_of(files: dict[str, bytes], order: list[str] | None = None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return tree_hash(make_tree(Path(tmp) / "t", files, order))


@settings(max_examples=60, deadline=None)
@given(trees, st.randoms(use_true_random=False))
def test_tree_hash_ignores_creation_order_and_location(files: dict[str, bytes], rnd: object
                                                       ) -> None:
    order = list(files)
    rnd.shuffle(order)  # type: ignore[attr-defined]
    assert hash_of(files) == hash_of(files, order)


@settings(max_examples=60, deadline=None)
@given(trees, st.data())
def test_tree_hash_changes_with_any_byte(files: dict[str, bytes], data: st.DataObject) -> None:
    rel = data.draw(st.sampled_from(sorted(files)))
    content = files[rel]
    if content and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(content) - 1))
        changed = content[:i] + bytes([content[i] ^ data.draw(st.integers(1, 255))]) \
            + content[i + 1:]
    else:
        changed = content + data.draw(st.binary(min_size=1, max_size=4))
    assert hash_of(files) != hash_of({**files, rel: changed})


@settings(max_examples=60, deadline=None)
@given(trees, st.data())
def test_tree_hash_changes_with_any_path(files: dict[str, bytes], data: st.DataObject) -> None:
    rel = data.draw(st.sampled_from(sorted(files)))
    new = data.draw(rel_paths.filter(lambda p: p not in files and not any(
        p.startswith(f + "/") or f.startswith(p + "/") for f in files)))
    moved = {(new if k == rel else k): v for k, v in files.items()}
    assert hash_of(files) != hash_of(moved)


def test_copying_the_tree_keeps_the_hash(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "a", SAVEDMODEL)
    copy = shutil.copytree(root, tmp_path / "b")
    os.utime(copy / "saved_model.pb", (0, 0))
    os.chmod(copy / "fingerprint.pb", 0o600)
    assert hash_path(root) == hash_path(copy)
