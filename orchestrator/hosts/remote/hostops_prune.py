"""hostops' `prune`: an app's old releases, then for the whole host the venvs, wheels, build
dirs and uv cache no release refers to, never what is current, a rollback target, staging or in
use; and the container images of the releases it removed that no remaining release (of any
app) names in its image.json. Shipped beside hostops.py (stdlib only, Python 3.9+).

Offers hostops.py the prune op; nothing to the other modules."""

from __future__ import annotations

import os
import re
import time

import hostlayout
from contenthash import NAME_RE
from hostops_fs import (
    APP_LOCK_WAIT_S,
    ENV_RE,
    Flock,
    OpError,
    app_dir_arg,
    app_lock,
    clean_trash,
    orch_path,
    read_json,
    rmtree_atomic,
    root_arg,
)
from hostops_image import ENGINE_RE, IMAGE_FILE, IMAGE_ID_RE
from hostops_pylock import PYLOCK_HASH_RE, is_pylock
from hostops_releases import (
    STAGING,
    committed_ids,
    current_id,
    load_state,
    previous_good,
    releases_dir,
    save_state,
)

LOCK_HASH_RE = re.compile(r"--hash=sha256:([0-9a-f]{64})")
PART_GRACE_S = 3600.0


# ---------------------------------------------------------------- prune


def _in_use(rel_dir):
    """Release ids some process has as its cwd or names on its command line (best effort:
    only the processes this user may inspect)."""
    found, prefix = set(), rel_dir + "/"
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not pid.isdigit():
            continue
        paths = []
        try:
            paths.append(os.readlink(f"/proc/{pid}/cwd"))
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                paths += fh.read().decode("utf-8", "replace").split("\0")
        except OSError:
            pass
        for item in paths:
            if item.startswith(prefix):
                found.add(item[len(prefix):].split("/")[0].replace(STAGING, ""))
    return found


def _all_release_dirs(root):
    for app in sorted(os.listdir(root)):
        if NAME_RE.match(app):
            rel = releases_dir(os.path.join(root, app))
            for name in sorted(os.listdir(rel)) if os.path.isdir(rel) else ():
                if not name.startswith("."):
                    yield os.path.join(rel, name)


def _referenced(root):
    """Env hashes and wheel hashes used by any release of any app, staging ones included."""
    envs: set[str] = set()
    wheels: set[str] = set()
    for path in _all_release_dirs(root):
        venv = hostlayout.release_venv(path)
        if os.path.islink(venv):
            envs.add(os.path.basename(os.readlink(venv).rstrip("/")))
        manifest = read_json(hostlayout.manifest(path), {})
        if isinstance(manifest, dict) and isinstance(manifest.get("env_hash"), str):
            envs.add(manifest["env_hash"])
        try:
            with open(hostlayout.lock_file(path)) as fh:
                text = fh.read()
        except OSError:
            continue
        hashes = PYLOCK_HASH_RE.findall(text) if is_pylock(text) else LOCK_HASH_RE.findall(text)
        wheels.update(h.lower() for h in hashes)
    return envs, wheels


def _image_of(release):
    """(image id, engine) of an image release (its image.json), or None."""
    info = read_json(os.path.join(release, IMAGE_FILE), None)
    if not isinstance(info, dict):
        return None
    image_id, engine = info.get("image_id"), info.get("engine")
    if not (isinstance(image_id, str) and IMAGE_ID_RE.match(image_id)
            and isinstance(engine, str) and ENGINE_RE.match(engine)):
        return None
    return image_id, engine


def _gc_images(root, candidates):
    """`engine rmi` of each image a removed release ran in that no release left on the host
    names; only images this program loaded are candidates, never another image of the
    engine's. An image a container still uses (rmi without -f refuses) is kept."""
    import subprocess

    used = {found[0] for found in map(_image_of, _all_release_dirs(root)) if found}
    removed = []
    for image_id, engine in sorted(candidates.items()):
        if image_id in used:
            continue
        try:
            done = subprocess.run([engine, "rmi", image_id], capture_output=True, timeout=120,
                                  check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            removed.append(image_id)
    return removed


def _gc_venvs(root):
    venvs, removed = orch_path(root, "venvs"), []
    names = os.listdir(venvs) if os.path.isdir(venvs) else []
    for name in sorted(n for n in names if ENV_RE.match(n)):
        try:
            with Flock(os.path.join(venvs, name + ".lock"), 0):
                # references re-read under the venv's lock: venv-ensure links before unlocking
                if name not in _referenced(root)[0]:
                    rmtree_atomic(os.path.join(venvs, name))
                    removed.append(name)
        except OpError:
            continue  # being built right now
    return removed


def _gc_wheels(root, grace_s):
    import shutil

    wheels, removed = orch_path(root, "wheels"), []
    names = os.listdir(wheels) if os.path.isdir(wheels) else []
    used, now = _referenced(root)[1], time.time()
    for name in sorted(names):
        path = os.path.join(wheels, name)
        sha, _, ext = name.partition(".")
        age = now - os.stat(path).st_mtime
        # <sha>.whl.part, and the transport's own <sha>.whl.part.part-<x> of a cut upload
        stale_part = ".part" in ext and age > PART_GRACE_S
        unused = ext == "whl" and sha not in used and age >= grace_s
        if stale_part or unused:
            os.unlink(path)
            removed.append(name)
    links = orch_path(root, "links")
    for sha in os.listdir(links) if os.path.isdir(links) else ():
        if not os.path.isfile(os.path.join(wheels, sha + ".whl")):
            shutil.rmtree(os.path.join(links, sha), ignore_errors=True)
    return removed


def _gc_tmp(root):
    """Build dirs of installers killed mid-run (a lost SSH session kills the process group, so
    the script's own cleanup never ran), and .pyc archives uploaded for a build that never
    came (a build deletes the one it unpacks); older than a day, so no live build is touched."""
    import shutil

    now = time.time()
    for name in ("tmp", "bytecode"):
        tmp = orch_path(root, name)
        for entry in os.listdir(tmp) if os.path.isdir(tmp) else ():
            path = os.path.join(tmp, entry)
            if now - os.lstat(path).st_mtime > 86400:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)


def _gc_uv_cache(root):
    """uv's cache keeps every unpacked wheel forever (`uv cache prune` keeps entries of local
    find-links files). Venvs hardlink (or copy) from it and never need it again, so once a
    venv is gone the whole cache is dropped, when no build holds it; the next new venv
    unpacks its wheels again."""
    cache = orch_path(root, "uv-cache")
    if not os.path.isdir(cache):
        return False
    try:
        with Flock(orch_path(root, "uv-cache.lock"), 0):
            rmtree_atomic(cache)
    except OpError:
        return False  # a build is using it
    return True


def op_prune(args):
    """Keep the newest "keep" committed releases; never remove the current one, the rollback
    target, a staging one, or one a process is using. Then, for the whole host: venvs no
    release of any app links to (or names in its manifest), skipping any being built, and
    wheels no remaining release's requirements.lock lists (either format; older than
    "grace_s", default 600 s, so wheels uploaded for a lock not yet staged survive)."""
    app_dir, root = app_dir_arg(args), root_arg(args)
    keep = args.get("keep", 5)
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise OpError("bad-args", f"keep must be an integer >= 1: {keep!r}")
    with app_lock(app_dir):
        state, current = load_state(app_dir), current_id(app_dir)
        protected = {current, previous_good(app_dir, state, current)}
        protected |= _in_use(releases_dir(app_dir))
        removed, images = [], {}
        for rid in sorted(committed_ids(app_dir), reverse=True)[keep:]:
            if rid not in protected:
                found = _image_of(os.path.join(releases_dir(app_dir), rid))
                if found:
                    images[found[0]] = found[1]
                rmtree_atomic(os.path.join(releases_dir(app_dir), rid))
                removed.append(rid)
        if removed:
            state["history"] = [h for h in state["history"] if h not in removed]
            state["bad"] = [b for b in state["bad"] if b not in removed]
            save_state(app_dir, state)
    os.makedirs(orch_path(root), exist_ok=True)
    with Flock(orch_path(root, "gc.lock"), APP_LOCK_WAIT_S):
        venvs = _gc_venvs(root)
        wheels = _gc_wheels(root, float(args.get("grace_s", 600)))
        _gc_tmp(root)
        clean_trash(orch_path(root))
        cleared = _gc_uv_cache(root) if venvs else False
        removed_images = _gc_images(root, images)
    return {"removed_releases": removed, "removed_venvs": venvs, "removed_wheels": wheels,
            "uv_cache_cleared": cleared, "kept": committed_ids(app_dir),
            "removed_images": removed_images}


#: The ops this module offers, by wire name: hostops.py gathers every hostops_* module's.
OPS = {"prune": op_prune}
