"""The controller's wheel cache, with real `pip download` (offline, from the fixture wheelhouse
as its find-links "index"), real hashes and real files."""

from __future__ import annotations

import hashlib
import re
import shutil
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
    assert "six==1.16.0" in str(failed.value) and SIX in str(failed.value)
    assert "0" * 64 in str(failed.value) and failed.value.exit_code == 3
    assert not cache.path(SIX).exists()


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


def test_platform_tags_from_probe_facts() -> None:
    tags = platform_tags("x86_64", "glibc 2.36")
    assert tags[0] == "manylinux_2_36_x86_64" and tags[-2:] == ["manylinux_2_17_x86_64",
                                                                 "manylinux2014_x86_64"]
    with pytest.raises(InvalidInput, match="musl"):
        platform_tags("x86_64", "musl 1.2")
