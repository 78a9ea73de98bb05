"""Wheels reaching a host's cache (issue 15): `wheels-receive` (the controller's stream, hashed
on arrival) and `wheels-fetch` (the host pulling from an operator's mirror); and one file sent
whole, `file-receive` (uv, a .pyc archive); each run as a host runs it (/usr/bin/python3, the
shipped script, real files), the mirror a real local http.server. The testbed deploys through
them are in tests/test_deploy.py."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from orchestrator.hosts import ops as build
from orchestrator.testbed.mirror import serve_directory, synthetic_wheel, write_simple_index

SCRIPT = Path(__file__).resolve().parents[1] / "orchestrator" / "hosts" / "remote" / "hostops.py"
HOST_PYTHON = "/usr/bin/python3"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def host_op(root: Path, op: str, args: Mapping[str, Any], data: bytes = b"") -> dict[str, Any]:
    """The op as HostOps sends it: JSON arguments on stdin (a streaming op: one line, then its
    data)."""
    payload = json.dumps({"root": str(root), **args}).encode()
    stdin = payload + b"\n" + data if op in ("wheels-receive", "file-receive") else payload
    proc = subprocess.run([HOST_PYTHON, "-E", "-S", str(SCRIPT), op, "--json-args", "-"],
                          input=stdin, capture_output=True, check=False, timeout=60)
    reply: dict[str, Any] = json.loads(proc.stdout)
    assert proc.returncode == (0 if reply["ok"] else 2 if reply["kind"] == "bad-args" else 1), \
        proc.stderr
    return reply


def cache(root: Path) -> list[str]:
    return sorted(os.listdir(root / ".orchestrator" / "wheels"))


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two small real wheels, by sha256."""
    house = tmp_path_factory.mktemp("house")
    found = [synthetic_wheel(house, f"demo-{i}", 50_000 + i) for i in range(2)]
    return {sha256(p.read_bytes()): p for p in found}


@pytest.fixture(scope="module")
def mirror(wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = write_simple_index({p.name: p for p in wheels.values()},
                                   tmp_path_factory.mktemp("mirror"))
    (directory / "files" / "demo_0-1.0-py3-none-any.whl.bak").write_bytes(b"x")
    with serve_directory(directory) as base:
        yield base


def test_a_stream_keeps_what_hashes_right_drops_an_altered_file_and_a_short_one(
        tmp_path: Path, wheels: dict[str, Path]) -> None:
    (good, good_path), (other, other_path) = wheels.items()
    data, altered = good_path.read_bytes(), bytearray(other_path.read_bytes())
    altered[100] ^= 1
    sizes = {good: len(data), other: len(altered)}
    call = build.wheels_receive(sizes)
    reply = host_op(tmp_path, "wheels-receive", dict(call.args), data + bytes(altered))
    assert reply["kind"] == "wheel-hash-mismatch" and reply["verified"] == [good]
    assert reply["bad"] == [{"expected": other, "actual": sha256(bytes(altered))}]
    assert cache(tmp_path) == [f"{good}.whl"]  # no .part left behind
    # The stream ends in the middle of the second file: nothing of it is kept.
    (tmp_path / ".orchestrator" / "wheels" / f"{good}.whl").unlink()
    short = host_op(tmp_path, "wheels-receive", dict(call.args), data + b"partial")
    assert short["kind"] == "missing-wheel" and short["missing"] == [other]
    assert cache(tmp_path) == [f"{good}.whl"]


@pytest.mark.parametrize("layout, path", [("index", "simple/"), ("directory", "files/")])
def test_a_host_fetches_from_a_mirror_by_hash(tmp_path: Path, wheels: dict[str, Path],
                                              mirror: str, layout: str, path: str) -> None:
    want = {sha: (p.name, p.stat().st_size) for sha, p in wheels.items()}
    reply = host_op(tmp_path, "wheels-fetch",
                    dict(build.wheels_fetch(mirror + path, layout, want).args))
    assert reply["ok"] and sorted(reply["verified"]) == sorted(wheels)
    assert reply["bytes"] == sum(size for _, size in want.values())
    assert cache(tmp_path) == sorted(f"{sha}.whl" for sha in wheels)


def test_a_mirror_file_that_is_not_the_locked_one_is_refused(
        tmp_path: Path, wheels: dict[str, Path], mirror: str) -> None:
    (sha, path), = list(wheels.items())[:1]
    other = "0" * 64  # the lock wants other bytes than the mirror serves under this name
    size = path.stat().st_size
    reply = host_op(tmp_path, "wheels-fetch", dict(build.wheels_fetch(
        mirror + "files/", "directory", {other: (path.name, size)}).args))
    assert reply["kind"] == "wheel-hash-mismatch"
    assert f"gave {sha}, the lock wants {other}" in reply["error"]
    # Bigger than the controller knows it to be: stopped at that size, nothing kept.
    capped = host_op(tmp_path, "wheels-fetch", dict(build.wheels_fetch(
        mirror + "files/", "directory", {sha: (path.name, size - 1)}).args))
    assert capped["kind"] == "wheel-hash-mismatch" and f"more than {size - 1} bytes" in \
        capped["error"]
    # The index lists no file with that hash: named, with the page.
    unlisted = host_op(tmp_path, "wheels-fetch", dict(build.wheels_fetch(
        mirror + "simple/", "index", {other: (path.name, size)}).args))
    assert unlisted["kind"] == "mirror-unreachable"
    assert f"{mirror}simple/demo-0/ lists no {path.name} with sha256 {other}" in \
        unlisted["error"]
    assert cache(tmp_path) == []


def test_an_unreachable_mirror_names_the_url_and_the_status(
        tmp_path: Path, wheels: dict[str, Path], mirror: str) -> None:
    (sha, path), = list(wheels.items())[:1]
    want = {sha: (path.name, path.stat().st_size)}
    missing = host_op(tmp_path, "wheels-fetch",
                      dict(build.wheels_fetch(mirror + "nowhere/", "directory", want).args))
    assert missing["kind"] == "mirror-unreachable" and missing["status"] == 404
    assert f"answered 404 File not found for {mirror}nowhere/{path.name}" in missing["error"]
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    down = host_op(tmp_path, "wheels-fetch", dict(build.wheels_fetch(
        f"http://127.0.0.1:{port}/simple/", "index", want).args))
    assert down["kind"] == "mirror-unreachable" and down["status"] is None
    assert f"cannot reach the wheel mirror at http://127.0.0.1:{port}/simple/demo-0/" in \
        down["error"] and "refused" in down["error"]


def test_a_model_streamed_into_a_staged_release_lands_whole_and_stays_inside_it(
        tmp_path: Path) -> None:
    rid = "20261204T220000Z-abcdef12"
    assert host_op(tmp_path, "stage-begin", {"app": "m", "release_id": rid})["ok"]
    call = build.model_receive("m", rid, {"model/a.bin": 3, "model/sub/b.bin": 2})
    op = "model-receive"
    payload = json.dumps({"root": str(tmp_path), **call.args}).encode() + b"\n"
    proc = subprocess.run([HOST_PYTHON, "-E", "-S", str(SCRIPT), op, "--json-args", "-"],
                          input=payload + b"abcde", capture_output=True, check=False)
    assert json.loads(proc.stdout) == {"ok": True, "files": 2, "bytes": 5}
    staged = tmp_path / "m" / "releases" / f"{rid}.staging" / "model"
    assert (staged / "a.bin").read_bytes() == b"abc"
    assert (staged / "sub/b.bin").read_bytes() == b"de"
    escape = build.model_receive("m", rid, {"../../../evil": 1})
    proc = subprocess.run([HOST_PYTHON, "-E", "-S", str(SCRIPT), op, "--json-args", "-"],
                          input=json.dumps({"root": str(tmp_path), **escape.args}).encode()
                          + b"\nx", capture_output=True, check=False)
    assert json.loads(proc.stdout)["kind"] == "bad-args" and proc.returncode == 2
    assert not (tmp_path / "evil").exists()


# -- file-receive: one content-addressed file (uv, a .pyc archive) --------------------------

UV_BYTES = b"#!/bin/sh\necho uv 0.0.0\n" + bytes(range(256)) * 64


def bin_dir(root: Path) -> list[str]:
    where = root / ".orchestrator" / "bin"
    return sorted(os.listdir(where)) if where.exists() else []


def test_a_file_received_whole_lands_at_its_content_address_executable(tmp_path: Path) -> None:
    sha = sha256(UV_BYTES)
    reply = host_op(tmp_path, "file-receive", build.file_receive("uv", sha, len(UV_BYTES)).args,
                    UV_BYTES)
    landed = tmp_path / ".orchestrator" / "bin" / f"uv-{sha[:16]}"
    assert reply == {"ok": True, "path": str(landed), "bytes": len(UV_BYTES)}
    assert landed.read_bytes() == UV_BYTES and os.access(landed, os.X_OK)
    assert bin_dir(tmp_path) == [landed.name]  # no .part left
    archive = b"\x1f\x8b not unpacked here"
    reply = host_op(tmp_path, "file-receive",
                    build.file_receive("bytecode", sha256(archive), len(archive)).args, archive)
    assert Path(reply["path"]).read_bytes() == archive
    assert reply["path"].endswith(f"bytecode/{sha256(archive)}.tar.gz")


def test_a_file_that_hashes_otherwise_is_not_kept_and_the_error_names_it(
        tmp_path: Path) -> None:
    sha = sha256(UV_BYTES)
    altered = bytearray(UV_BYTES)
    altered[-1] ^= 1
    reply = host_op(tmp_path, "file-receive", build.file_receive("uv", sha, len(UV_BYTES)).args,
                    bytes(altered))
    assert reply["kind"] == "hash-mismatch" and reply["expected"] == sha
    assert reply["actual"] == sha256(bytes(altered))
    assert f"uv-{sha[:16]}" in reply["error"] and "nothing kept" in reply["error"]
    assert bin_dir(tmp_path) == []


@pytest.mark.parametrize(("sent", "kind", "words"), [
    (UV_BYTES[:-10], "missing-file", f"{len(UV_BYTES) - 10} of {len(UV_BYTES)} bytes"),
    (UV_BYTES + b"more", "too-large", "goes on past"),
])
def test_a_short_or_overlong_stream_leaves_nothing(tmp_path: Path, sent: bytes, kind: str,
                                                   words: str) -> None:
    call = build.file_receive("uv", sha256(UV_BYTES), len(UV_BYTES))
    reply = host_op(tmp_path, "file-receive", call.args, sent)
    assert reply["kind"] == kind and words in reply["error"], reply
    assert bin_dir(tmp_path) == []


def test_a_size_past_the_bound_is_refused_before_a_byte_is_written(tmp_path: Path) -> None:
    call = build.file_receive("uv", sha256(b"x"), 2 << 30)
    reply = host_op(tmp_path, "file-receive", call.args, b"x")
    assert reply["kind"] == "too-large" and str(2 << 30) in reply["error"]
    assert bin_dir(tmp_path) == []
    bad = host_op(tmp_path, "file-receive", {**call.args, "size": 1, "what": "../etc"}, b"x")
    assert bad["kind"] == "bad-args"
