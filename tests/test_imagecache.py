"""The controller's image cache (deploy/imagebuild.py) does not grow forever: each new archive
prunes it to the most recently used (a cache hit counts as a use), never the archive in use,
never one used within the last day, and partial files only once no build can still be
writing them."""

from __future__ import annotations

import os
import time
from pathlib import Path

from orchestrator.core.hashing import hash_path
from orchestrator.core.spec import load_spec
from orchestrator.deploy.imagebuild import (
    CACHE_KEEP,
    CACHE_MIN_AGE_S,
    TIMEOUT_S,
    built_archive_path,
    deploy_time_image,
    pack_layout,
    prune_image_cache,
)
from tests.specs import joblib_spec

DAY = 24 * 3600.0


def archive(cache: Path, name: str, age_s: float, now: float) -> Path:
    path = cache / name
    path.write_bytes(name.encode())
    os.utime(path, (now - age_s, now - age_s))
    return path


def test_prune_keeps_the_newest_the_one_in_use_and_the_recently_used(tmp_path: Path) -> None:
    now = time.time()
    # built-0 (used 1 day + 1 h ago) ... built-7 (8 days + 1 h ago), all past the minimum age
    old = [archive(tmp_path, f"built-{i:032x}.tar", DAY + 3600 + i * DAY, now) for i in range(8)]
    in_use = old[-1]  # the oldest, but the deployment being prepared uses it
    recent = archive(tmp_path, f"layout-{99:032x}.tar", CACHE_MIN_AGE_S - 60, now)
    others = [archive(tmp_path, "base-bookworm-0123456789abcdef.tar", 30 * DAY, now),
              archive(tmp_path, "notes.txt", 30 * DAY, now)]  # not the cache's: never touched
    dead = archive(tmp_path, f"built-{1:032x}.tar.part", 2 * TIMEOUT_S + 60, now)
    building = archive(tmp_path, f"layout-{2:032x}.tar.1234abcd.part", 60, now)

    removed = prune_image_cache(tmp_path, keep=in_use, now=now)

    # kept besides the one in use: the CACHE_KEEP most recently used (`recent`, built-0..2)
    assert CACHE_KEEP == 4
    assert sorted(removed) == sorted([*old[3:-1], dead])
    assert all(p.exists() for p in [in_use, recent, *old[:3], *others, building])
    assert not any(p.exists() for p in removed)
    assert prune_image_cache(tmp_path, keep=in_use, now=now) == []  # nothing more to do


def test_nothing_past_the_newest_is_removed_while_recently_used(tmp_path: Path) -> None:
    now = time.time()
    paths = [archive(tmp_path, f"built-{i:032x}.tar", 60 * i, now) for i in range(10)]
    assert prune_image_cache(tmp_path, keep=None, now=now) == []
    assert all(p.exists() for p in paths)


def image_base_spec(folder: Path, models: Path) -> Path:
    """A venv spec naming a base archive that is never built on: the tests give its image."""
    path = joblib_spec(folder, "cache-app", models / "model.joblib", models / "golden.npz",
                       ["tb-01"])
    (folder / "base.tar").write_bytes(b"a base archive\n")
    path.write_text(path.read_text().replace(
        "requirements: requirements.lock}",
        "requirements: requirements.lock, image_base: {archive: base.tar, sha256: "
        + "f" * 64 + "}}"))  # the wrong sha256: a build would be refused, a hit never checks
    return path


def test_a_cache_hit_marks_its_archive_used_and_builds_nothing(tmp_path: Path,
                                                              models_dir: Path) -> None:
    spec = load_spec(image_base_spec(tmp_path / "spec", models_dir))
    cache = tmp_path / "cache"
    cache.mkdir()
    now = time.time()
    cached = built_archive_path(spec, cache)
    archive(cache, cached.name, 10 * DAY, now)
    ready = deploy_time_image(spec, cache_dir=cache, engine=["false"])  # no engine is run
    assert ready.paths.image == cached and ready.environment.image is not None
    assert cached.stat().st_mtime >= now - 5  # used now: a prune keeps it among the newest


def test_packing_a_layout_prunes_the_cache(tmp_path: Path, models_dir: Path) -> None:
    now = time.time()
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = [archive(cache, f"built-{i:032x}.tar", 2 * DAY + i, now) for i in range(6)]
    layout = tmp_path / "spec" / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text('{"manifests": []}')
    path = joblib_spec(tmp_path / "spec", "cache-app", models_dir / "model.joblib",
                       models_dir / "golden.npz", ["tb-01"])
    path.write_text(path.read_text().replace(
        "requirements: requirements.lock}",
        f"image: {{archive: layout, sha256: {hash_path(layout)}}}}}"))
    packed = pack_layout(load_spec(path), cache_dir=cache)
    assert packed.paths.image is not None and packed.paths.image.is_file()
    # the new archive and the CACHE_KEEP most recently used of the others are left
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [packed.paths.image.name, *(p.name for p in stale[:CACHE_KEEP])])
