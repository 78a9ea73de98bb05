"""The controller's wheel cache, with real `pip download` (offline, from the fixture wheelhouse
as its find-links "index"), real hashes and real files."""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from orchestrator.deploy.wheelcache import (
    WheelCache,
    WheelFetchFailed,
    filenames,
    from_wheelhouse,
    paths,
    platform_tags,
)
from orchestrator.errors import InvalidInput

SMALL = Path(__file__).resolve().parent / "fixtures" / "locks" / "small"
LOCK = SMALL / "requirements.lock"
SIX = "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"
DATEUTIL = "a8b2bc7bffae282281c8140a97d3aa9c14da0b136dfe83f850eea9a5f7470427"
TAGS = platform_tags("x86_64", "glibc 2.36")


def offline_cache(root: Path) -> WheelCache:
    """pip download against the fixture wheelhouse as its only index: no network in tests."""
    return WheelCache(root, find_links=[SMALL / "wheelhouse"], no_index=True)


def test_fill_stores_by_hash_with_real_filenames(tmp_path: Path) -> None:
    cache = offline_cache(tmp_path / "cache")
    wheels = cache.fill(LOCK, "3.11", TAGS)
    assert filenames(wheels) == {SIX: "six-1.16.0-py2.py3-none-any.whl",
                                 DATEUTIL: "python_dateutil-2.9.0.post0-py2.py3-none-any.whl"}
    for sha, path in paths(wheels).items():
        assert path == tmp_path / "cache" / "wheels" / f"{sha}.whl"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".lock", "index.json",
                                                                      "wheels"]


def test_second_fill_of_the_same_lock_never_runs_pip(tmp_path: Path) -> None:
    first = offline_cache(tmp_path / "cache").fill(LOCK, "3.11", TAGS)
    no_pip = WheelCache(tmp_path / "cache", pip=["/bin/false"])  # any run would fail the fill
    assert no_pip.fill(LOCK, "3.11", TAGS) == first
    # pure-Python wheels are valid for any Python and platform: no download either
    assert no_pip.fill(LOCK, "3.9", platform_tags("aarch64", "glibc 2.28")) == first


def test_a_cache_entry_gone_is_downloaded_again(tmp_path: Path) -> None:
    cache = offline_cache(tmp_path / "cache")
    cache.fill(LOCK, "3.11", TAGS)
    cache.path(SIX).unlink()
    assert cache.fill(LOCK, "3.11", TAGS)[SIX].path.is_file()


def test_a_lock_whose_hash_no_file_has_fails_naming_both(tmp_path: Path) -> None:
    cache = offline_cache(tmp_path / "cache")
    with pytest.raises(WheelFetchFailed) as failed:
        cache.fill(SMALL / "tampered.lock", "3.11", TAGS)
    assert str(failed.value).startswith(
        f"six==1.16.0: six-1.16.0-py2.py3-none-any.whl has sha256 {SIX}, the lock allows "
        f"{'0' * 64} (from file://")
    assert failed.value.exit_code == 3
    assert not cache.path(SIX).exists()


def make_wheel(directory: Path, name: str, version: str,
               tag: str = "cp311-cp311-manylinux_2_17_x86_64") -> Path:
    """A minimal real wheel (METADATA, WHEEL, RECORD) that pip downloads like an index's."""
    dist = f"{name.replace('-', '_')}-{version}"
    files = {f"{dist}.dist-info/METADATA":
             f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}.dist-info/WHEEL":
             f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: {tag}\n"}
    record = "".join(f"{n},,\n" for n in [*files, f"{dist}.dist-info/RECORD"])
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{dist}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, text in files.items():
            zf.writestr(member, text)
        zf.writestr(f"{dist}.dist-info/RECORD", record)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def a_lock(path: Path, hashes: dict[str, list[str]]) -> Path:
    """{"name==version": [sha256, ...]} written as a hashed requirements lock."""
    path.write_text("".join(f"{pin} " + " ".join(f"--hash=sha256:{d}" for d in digests) + "\n"
                            for pin, digests in hashes.items()))
    return path


def test_a_tampered_platform_wheel_names_package_file_hash_and_the_allowed_hashes(
        tmp_path: Path) -> None:
    """Issue 13: pip's own refusal lists the expected hashes one per line, and its tail was
    cut; the message is rebuilt from the lock and the file pip hashed, the allowed hashes cut
    after a few (a real lock has dozens). Nothing is cached."""
    index = tmp_path / "index"
    wheel = make_wheel(index, "demo-gpu", "1.5.2")
    shutil.copy(SMALL / "wheelhouse" / "six-1.16.0-py2.py3-none-any.whl", index)
    good = a_lock(tmp_path / "good.lock",
                  {"demo-gpu==1.5.2": [sha256(wheel)], "six==1.16.0": [SIX]})
    assert sorted(WheelCache(tmp_path / "ok", find_links=[index], no_index=True)
                  .fill(good, "3.11", TAGS)) == sorted([sha256(wheel), SIX])  # a real wheel
    allowed = [f"{i:x}" * 64 for i in range(10)]
    lock = a_lock(tmp_path / "tampered.lock",
                  {"demo-gpu==1.5.2": allowed, "six==1.16.0": [SIX]})
    cache = WheelCache(tmp_path / "cache", find_links=[index], no_index=True)
    with pytest.raises(WheelFetchFailed) as failed:
        cache.fill(lock, "3.11", TAGS)
    assert str(failed.value) == (
        f"demo-gpu==1.5.2: {wheel.name} has sha256 {sha256(wheel)}, the lock allows "
        f"{', '.join(allowed[:3])} ... and 7 more (from {wheel.as_uri()})")
    assert failed.value.exit_code == 3
    assert list((tmp_path / "cache" / "wheels").iterdir()) == []  # six neither: all or none
    assert cache.get(SIX) is None and cache.get(sha256(wheel)) is None


def test_a_downloader_that_skips_the_hash_check_is_still_refused(tmp_path: Path) -> None:
    """The cache hashes what it is given itself: a pip that does not enforce hashes (a wrapper,
    another installer) cannot put a wheel the lock does not allow into the cache."""
    index = tmp_path / "index"
    bad = make_wheel(index, "python-dateutil", "2.9.0.post0", "py2.py3-none-any")
    shutil.copy(SMALL / "wheelhouse" / "six-1.16.0-py2.py3-none-any.whl", index)
    fake_pip = tmp_path / "fake_pip.py"
    fake_pip.write_text(
        "import os, shutil, sys\n"
        "dest = sys.argv[sys.argv.index('-d') + 1]\n"
        "os.makedirs(dest)\n"
        f"for name in os.listdir({str(index)!r}):\n"
        f"    shutil.copy(os.path.join({str(index)!r}, name), dest)\n")
    cache = WheelCache(tmp_path / "cache", find_links=[index], no_index=True,
                       pip=[sys.executable, str(fake_pip)])
    with pytest.raises(WheelFetchFailed) as failed:
        cache.fill(LOCK, "3.11", TAGS)
    assert str(failed.value) == (
        f"python-dateutil==2.9.0.post0: {bad.name} has sha256 {sha256(bad)}, the lock allows "
        f"{DATEUTIL} (downloaded from {index})")
    assert list((tmp_path / "cache" / "wheels").iterdir()) == []  # the good six neither


def test_a_wheel_the_index_lacks_fails_the_fill(tmp_path: Path) -> None:
    house = tmp_path / "house"
    house.mkdir()
    shutil.copy(SMALL / "wheelhouse" / "six-1.16.0-py2.py3-none-any.whl", house)
    cache = WheelCache(tmp_path / "cache", find_links=[house], no_index=True)
    with pytest.raises(WheelFetchFailed, match="python-dateutil"):
        cache.fill(LOCK, "3.11", TAGS)


def test_from_wheelhouse_maps_hashes_and_refuses_gaps(tmp_path: Path) -> None:
    wheels = from_wheelhouse(LOCK, SMALL / "wheelhouse")
    assert sorted(wheels) == sorted([SIX, DATEUTIL])
    assert wheels[SIX].path == SMALL / "wheelhouse" / "six-1.16.0-py2.py3-none-any.whl"
    house = tmp_path / "house"
    house.mkdir()
    shutil.copy(SMALL / "wheelhouse" / "six-1.16.0-py2.py3-none-any.whl", house)
    with pytest.raises(InvalidInput, match=re.escape("python-dateutil==2.9.0.post0")):
        from_wheelhouse(LOCK, house)


def test_a_wheelhouse_wheel_the_lock_does_not_allow_is_named_with_its_hash(
        tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as refused:
        from_wheelhouse(SMALL / "tampered.lock", SMALL / "wheelhouse")
    assert str(refused.value) == (
        f"six==1.16.0: six-1.16.0-py2.py3-none-any.whl has sha256 {SIX}, the lock allows "
        f"{'0' * 64} (in the wheelhouse {SMALL / 'wheelhouse'})")
    assert refused.value.exit_code == 2
    house = tmp_path / "house"  # a platform wheel, several allowed hashes, another problem
    wheel = make_wheel(house, "demo-gpu", "1.5.2")
    allowed = ["a" * 64, "b" * 64]
    lock = a_lock(tmp_path / "l.lock", {"demo-gpu==1.5.2": allowed, "six==1.16.0": [SIX]})
    with pytest.raises(InvalidInput) as refused:
        from_wheelhouse(lock, house, python_version="3.11")
    assert str(refused.value) == (
        f"demo-gpu==1.5.2: {wheel.name} has sha256 {sha256(wheel)}, the lock allows "
        f"{', '.join(allowed)} (in the wheelhouse {house}) (and 1 more problems)")


def test_platform_tags_from_probe_facts() -> None:
    tags = platform_tags("x86_64", "glibc 2.36")
    assert tags[0] == "manylinux_2_36_x86_64" and tags[-2:] == ["manylinux_2_17_x86_64",
                                                                 "manylinux2014_x86_64"]
    with pytest.raises(InvalidInput, match="musl"):
        platform_tags("x86_64", "musl 1.2")
