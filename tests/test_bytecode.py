"""The lock's bytecode, compiled once on the controller and unpacked by the host into a venv it
builds (orchestrator/deploy/bytecode.py, remote/hostops_bytecode.py): the archive builder, the
host's unpacking (as a host runs it: /usr/bin/python3, real uv, real files), and a deploy over
the testbed's sshd hosts that ships it to a cold venv and nothing to a reused one."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.hashing import hash_file
from orchestrator.core.inventory import Inventory
from orchestrator.deploy import bytecode
from orchestrator.deploy.wheelcache import Wheel, from_wheelhouse
from orchestrator.hosts import layout, shipfile
from orchestrator.hosts.counting import Counting, Exchanges
from orchestrator.hosts.hostops import HostOps
from orchestrator.hosts.pool import Pool
from orchestrator.hosts.ssh import SshOptions, connect
from tests.specs import LOCK
from tests.test_deploy import HOST, run, v1_spec, v2_spec
from tests.test_hostops import (
    ENV,
    HOST_PYTHON,
    SMALL,
    ensure,
    fails,
    fill_host_wheels,
    ok,
    remote_module,
    uv_binary,
)

MINOR = "3.11"  # the testbed's hosts' python3 (and /usr/bin/python3 here)


def small_wheels() -> dict[str, Wheel]:
    return dict(from_wheelhouse(SMALL / "requirements.lock", SMALL / "wheelhouse",
                                python_version=MINOR, machine="x86_64"))


def interpreter() -> str:
    found = bytecode.interpreter_for(MINOR)
    assert found, f"the tests need a python{MINOR} on the controller"
    return found


def pyc_flags(path: Path) -> int:
    """PEP 552's flags word: 0 timestamp-checked (what an import writes), 3 checked hash."""
    return int.from_bytes(path.read_bytes()[4:8], "little")


@pytest.fixture
def wheels_root(tmp_path: Path) -> Path:
    """A deploy root whose wheel cache holds the small lock's wheels (test_hostops's)."""
    root = tmp_path / "deploy"
    root.mkdir()
    fill_host_wheels(root)
    return root


@pytest.fixture
def bundle(tmp_path: Path) -> bytecode.Bundle:
    built = bytecode.ensure_bundle(small_wheels(), MINOR, interpreter(), tmp_path / "bc")
    assert built is not None
    return built


def offer(root: Path, archive: Path, sha256: str | None = None) -> dict[str, Any]:
    """The archive uploaded as the install step does (to <sha>.tar.gz.part) and the arguments
    that offer it to venv-ensure."""
    sha = sha256 or hash_file(str(archive))
    dest = root / ".orchestrator" / "bytecode" / f"{sha}.tar.gz.part"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(archive, dest)
    return {"want_bytecode": True, "bytecode": {"sha256": sha, "size": archive.stat().st_size}}


def tar_of(members: list[tarfile.TarInfo], path: Path, data: bytes = b"x" * 32) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            if info.isfile():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


# ---------------------------------------------------------------- the controller's archive



def test_prefetch_builds_in_a_child_that_ensure_bundle_then_reads(tmp_path: Path) -> None:
    cache, wheels = tmp_path / "bc", small_wheels()
    assert bytecode.prefetch(wheels, MINOR, interpreter(), cache)
    assert not bytecode.prefetch(wheels, MINOR, interpreter(), cache)  # one child per key
    key = bytecode.bundle_key(wheels, MINOR)
    child = bytecode._children[key]
    assert child.wait(timeout=120) == 0
    built = bytecode.ensure_bundle(wheels, MINOR, interpreter(), cache)
    assert built is not None and built.cached  # the child built it; this call only read it
    assert not bytecode.prefetch(wheels, MINOR, interpreter(), cache)  # cached: nothing to do
    assert key not in bytecode._children  # the ended child was reaped

def test_the_archive_holds_only_checked_hash_pyc_of_the_wheels_sources(
        bundle: bytecode.Bundle, tmp_path: Path) -> None:
    with tarfile.open(bundle.path) as tar:
        members = tar.getmembers()
        assert members and all(m.isfile() for m in members)
        names = [m.name for m in members]
        assert all(n.split("/")[-2] == "__pycache__" and n.endswith(".cpython-311.pyc")
                   for n in names)
        assert "__pycache__/six.cpython-311.pyc" in names  # the wheel's root module
        assert "dateutil/parser/__pycache__/_parser.cpython-311.pyc" in names
        first = tar.extractfile(members[0])
        assert first is not None
        assert int.from_bytes(first.read()[4:8], "little") == 3  # checked-hash
    assert bundle.files == len(names) and bundle.size == bundle.path.stat().st_size
    assert bundle.sha256 == hash_file(str(bundle.path)) and not bundle.cached


def test_the_archive_is_keyed_by_wheels_and_python_and_built_once(tmp_path: Path) -> None:
    wheels, cache = small_wheels(), tmp_path / "bc"
    key = bytecode.bundle_key(wheels, MINOR)
    assert key != bytecode.bundle_key(wheels, "3.12")
    assert key != bytecode.bundle_key(dict(list(wheels.items())[:1]), MINOR)
    got: list[bytecode.Bundle | None] = []
    threads = [threading.Thread(target=lambda: got.append(
        bytecode.ensure_bundle(wheels, MINOR, interpreter(), cache))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(b is not None for b in got)
    assert sorted(b.cached for b in got if b is not None) == [False, True, True]
    assert len({b.sha256 for b in got if b is not None}) == 1
    assert sorted(p.name for p in cache.iterdir()) == [f"{key}.json", f"{key}.lock",
                                                       f"{key}.tar.gz"]
    files = {b.files for b in got if b is not None}
    assert json.loads((cache / f"{key}.json").read_text())["files"] in files
    # the same bytes from the same wheels in another cache (another controller)
    elsewhere = bytecode.ensure_bundle(wheels, MINOR, interpreter(), tmp_path / "other")
    assert elsewhere is not None and {elsewhere.sha256} == {b.sha256 for b in got if b}


def test_a_wheel_without_python_source_gives_no_archive(tmp_path: Path) -> None:
    import zipfile

    wheel = tmp_path / "data_only-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("data_only/table.csv", "a,b\n")
        zf.writestr("data_only-1.0.dist-info/METADATA", "Name: data-only\n")
    wheels = {"f" * 64: Wheel("f" * 64, wheel.name, wheel)}
    assert bytecode.ensure_bundle(wheels, MINOR, interpreter(), tmp_path / "bc") is None
    assert bytecode.ensure_bundle(wheels, MINOR, interpreter(), tmp_path / "bc") is None


def test_site_names_follow_the_wheel_layout() -> None:
    assert bytecode._site_name("pkg/mod.py") == "pkg/mod.py"
    assert bytecode._site_name("x-1.0.data/purelib/pkg/a.py") == "pkg/a.py"
    assert bytecode._site_name("x-1.0.data/platlib/pkg/b.py") == "pkg/b.py"
    assert bytecode._site_name("x-1.0.data/scripts/run.py") is None
    assert bytecode._site_name("x-1.0.dist-info/foo.py") is None
    assert bytecode._site_name("../evil.py") is None
    assert bytecode._site_name("pkg/data.json") is None
    assert bytecode._site_name("pkg/tests/test_mod.py") is None  # never imported to serve


# ---------------------------------------------------------------- the host's unpacking


def test_a_built_venv_gets_the_pyc_before_any_import(wheels_root: Path,
                                                     bundle: bytecode.Bundle) -> None:
    code, built = ensure(wheels_root, "uv", **offer(wheels_root, bundle.path))
    assert code == 0, built
    assert built["bytecode"]["shipped"] is True and built["bytecode"]["files"] == bundle.files
    assert "bytecode" in built["durations"]
    site = next((wheels_root / ".orchestrator/venvs" / ENV / "lib").glob("python*/site-packages"))
    pyc = site / "dateutil" / "parser" / "__pycache__" / "_parser.cpython-311.pyc"
    assert pyc.is_file() and pyc_flags(pyc) == 3  # before anything imported dateutil
    before = pyc.read_bytes()
    vpy = wheels_root / ".orchestrator/venvs" / ENV / "bin" / "python"
    subprocess.run([str(vpy), "-c", "import dateutil.parser"], check=True)
    assert pyc.read_bytes() == before  # the import read it: valid as shipped
    assert list((wheels_root / ".orchestrator" / "bytecode").iterdir()) == []  # used once


def test_a_reused_venv_needs_no_archive_and_a_build_waits_for_it(wheels_root: Path) -> None:
    want: dict[str, Any] = {"want_bytecode": True}
    reply = fails("venv-ensure", wheels_root, "bytecode-missing",
                  **{"env_hash": ENV, "lock": str(SMALL / "requirements.lock"),
                     "wheels": {}, "python": HOST_PYTHON, **want})
    assert reply["bytecode_missing"] is True
    assert not (wheels_root / ".orchestrator/venvs" / ENV).exists()
    assert ensure(wheels_root, "uv")[1]["reused"] is False
    code, again = ensure(wheels_root, "uv", **want)
    assert code == 0 and again["reused"] is True and again["bytecode"] is None


def test_an_archive_that_hashes_wrong_is_deleted_and_builds_nothing(
        wheels_root: Path, bundle: bytecode.Bundle) -> None:
    args = offer(wheels_root, bundle.path, sha256="0" * 64)
    code, reply = ensure(wheels_root, "uv", **args)
    assert code != 0 and reply["kind"] == "hash-mismatch", reply
    assert reply["actual"] == bundle.sha256 and "0" * 64 in reply["error"]
    assert list((wheels_root / ".orchestrator" / "bytecode").iterdir()) == []
    assert not (wheels_root / ".orchestrator/venvs" / ENV).exists()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(("member", "why"), [
    (_member("../outside/__pycache__/six.cpython-311.pyc"), "'..'"),
    (_member("/tmp/__pycache__/six.cpython-311.pyc"), "absolute"),
    (_member("__pycache__/six.cpython-311.pyc", tarfile.SYMTYPE, "/etc/passwd"),
     "not a regular file"),
    (_member("__pycache__/six.cpython-311.pyc", tarfile.LNKTYPE, "six.py"),
     "not a regular file"),
    (_member("__pycache__/nosuch.cpython-311.pyc"), "no such .py"),
    (_member("six.cpython-311.pyc"), "__pycache__"),
    (_member("dateutil/__pycache__/evil.sh"), "__pycache__"),
])
def test_the_host_refuses_what_an_archive_may_not_write(
        wheels_root: Path, tmp_path: Path, member: tarfile.TarInfo, why: str) -> None:
    archive = tar_of([member], tmp_path / "bad.tar.gz")
    code, reply = ensure(wheels_root, "uv", **offer(wheels_root, archive))
    assert code != 0 and reply["kind"] == "bad-bytecode", reply
    assert why in reply["error"] and member.name in reply["error"]
    assert not (wheels_root / ".orchestrator/venvs" / ENV).exists()  # never half-marked


def test_the_host_refuses_an_archive_past_its_bounds(wheels_root: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    hb = remote_module("hostops_bytecode")
    venv = tmp_path / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    (site / "pkg").mkdir(parents=True)
    for n in range(3):
        (site / "pkg" / f"m{n}.py").write_text("x = 1\n")
    members = [_member(f"pkg/__pycache__/m{n}.cpython-311.pyc") for n in range(3)]
    archive = tar_of(members, tmp_path / "many.tar.gz")
    args = offer(wheels_root, archive)
    assert hb.bytecode_missing(str(wheels_root), args) is False  # verified, renamed in place
    monkeypatch.setattr(hb, "MAX_FILES", 2)
    with pytest.raises(hb.OpError) as refused:
        hb.unpack_bytecode(str(wheels_root), str(venv), args)
    assert refused.value.kind == "bad-bytecode" and "more than 2 files" in str(refused.value)
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b not really gzip")
    args = offer(wheels_root, garbage)
    hb.bytecode_missing(str(wheels_root), args)
    with pytest.raises(hb.OpError, match="unreadable"):
        hb.unpack_bytecode(str(wheels_root), str(venv), args)


def test_prune_removes_archives_a_cut_deploy_left_after_a_day(wheels_root: Path) -> None:
    uploads = wheels_root / ".orchestrator" / "bytecode"
    uploads.mkdir(parents=True)
    old, fresh = uploads / f"{'a' * 64}.tar.gz.part", uploads / f"{'b' * 64}.tar.gz"
    old.write_bytes(b"cut")
    fresh.write_bytes(b"for a build under way")
    day_ago = time.time() - 86400 - 60
    os.utime(old, (day_ago, day_ago))
    ok("prune", wheels_root, app="a", keep=1)
    assert sorted(uploads.iterdir()) == [fresh]


# ---------------------------------------------------------------- a deploy


def test_uv_and_the_archive_arrive_by_stream_hashed_and_in_place(
        inventory: Inventory, bundle: bytecode.Bundle, tmp_path: Path) -> None:
    """Over the testbed's sshd, into a deploy root of this test's own (nothing on a shared
    host's root): each is one exec channel (`file-receive`), no SFTP put; uv lands at its
    content address, executable; the archive where venv-ensure takes it as verified."""
    root, exchanges = str(tmp_path / "fresh-root"), Exchanges()
    options = SshOptions.for_inventory(inventory)
    with Pool(options, connector=lambda host: Counting(connect(host, options), exchanges)) \
            as pool, pool.session(inventory.hosts[HOST]) as t:
        ops = HostOps(t, root)
        shipfile.ship_bytecode(ops, bundle.path, bundle.sha256, timeout=60)
        uv = shipfile.ship_uv(ops, Path(uv_binary()), timeout=60)
        shipfile.ship_uv(ops, Path(uv_binary()), timeout=60)  # again: the same file, in place
    assert uv == layout.uv_binary(root, hash_file(uv_binary()))
    assert subprocess.run([uv, "--version"], capture_output=True, check=True).stdout
    archive = Path(layout.bytecode_archive(root, bundle.sha256))
    assert archive.read_bytes() == bundle.path.read_bytes()
    assert sorted(p.name for p in archive.parent.iterdir()) == [archive.name]  # no .part
    kinds = {kind: n for (_, _, kind), n in exchanges.count.items() if n}
    # The tools bundle (its marker read, then its own stream) and one exec a file: no put.
    assert kinds == {"get": 1, "run": 4}, kinds
    hb = remote_module("hostops_bytecode")
    assert hb.bytecode_missing(root, {"want_bytecode": True, "bytecode": {
        "sha256": bundle.sha256, "size": bundle.size}}) is False


def test_a_cold_deploy_ships_the_pyc_and_a_reused_venv_ships_nothing(
        inventory: Inventory, pool: Pool, models_dir: Path, tmp_path: Path) -> None:
    # A lock of its own (the same wheels, one comment more): a venv no other test built.
    lock = tmp_path / "sklearn-bytecode.lock"
    lock.write_text(LOCK.read_text() + "# test_bytecode: a venv of its own\n")
    first, sink = run(v1_spec(models_dir, tmp_path / "v1", "bytecode", lock=lock), inventory,
                      pool)
    assert first.ok, {name: r.error for name, r in first.hosts.items()}
    install = sink.find("install", "ok")
    shipped = install["bytecode"]
    assert install["reused"] is False and shipped["shipped"] is True, shipped
    assert shipped["files"] == shipped["archive_files"] > 100 and shipped["unpack_s"] >= 0
    venv = Path(inventory.hosts[HOST].deploy_root) / ".orchestrator" / "venvs"
    site = next((venv / install["env_hash"] / "lib").glob("python*/site-packages"))
    # imported by the verify step: still the checked-hash file shipped (an import would have
    # written a timestamp one had it compiled), and one the model never imports is there too
    assert pyc_flags(site / "sklearn" / "__pycache__" / "__init__.cpython-311.pyc") == 3
    assert pyc_flags(site / "scipy" / "io" / "__pycache__" / "_idl.cpython-311.pyc") == 3

    second, sink2 = run(v2_spec(models_dir, tmp_path / "v2", "bytecode", lock=lock),
                        inventory, pool)
    assert second.ok, {name: r.error for name, r in second.hosts.items()}
    again = sink2.find("install", "ok")
    assert again["reused"] is True
    assert again["bytecode"] == {"shipped": False, "reason": "venv reused"}
    uploads = Path(inventory.hosts[HOST].deploy_root) / ".orchestrator" / "bytecode"
    assert not uploads.exists() or list(uploads.iterdir()) == []
