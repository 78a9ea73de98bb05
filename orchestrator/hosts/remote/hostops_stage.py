"""hostops' staging of a release: releases/<id>.staging/ begun (or resumed), its model verified
by hash on the host, small files and the manifest written, then committed by rename, or aborted.
Shipped beside hostops.py (stdlib only, Python 3.9+).

Offers hostops.py the stage-begin, stage-verify-model, stage-commit, write-file, write-manifest
and abort-stage ops; nothing to the other modules."""

from __future__ import annotations

import os
import time

import hostlayout
from contenthash import sha256_file
from hostops_fs import (
    HASH_RE,
    RELEASE_RE,
    OpError,
    app_dir_arg,
    app_lock,
    checked_arg,
    clean_trash,
    fsync_dir,
    rmtree_atomic,
    tree_hash,
    write_atomic,
    write_json,
)
from hostops_releases import (
    STAGING,
    committed_ids,
    current_id,
    load_state,
    previous_good,
    release_path,
    releases_dir,
    save_state,
    staging_ids,
)

# ---------------------------------------------------------------- stage


def safe_relpath(value, key):
    """A path argument that stays inside the release (no absolute path, no "..")."""
    if not isinstance(value, str) or not value or os.path.isabs(value):
        raise OpError("bad-args", f"{key} must be a relative path: {value!r}")
    if ".." in value.replace("\\", "/").split("/"):
        raise OpError("bad-args", f"{key} must stay inside the release: {value!r}")
    return value


def op_stage_begin(args):
    """Create (or resume) releases/<id>.staging/model/. Refuses ("busy") while another release
    of the app is being staged, unless "force": one deployment per app at a time."""
    app_dir, rid = app_dir_arg(args), checked_arg(args, "release_id", RELEASE_RE)
    with app_lock(app_dir):
        rel = releases_dir(app_dir)
        os.makedirs(rel, exist_ok=True)
        clean_trash(rel)
        final = os.path.join(rel, rid)
        if os.path.isdir(final):
            return {"path": final, "model_path": hostlayout.model_dir(final), "state": "committed",
                    "resumed": True, "lock_present": True}
        others = [s for s in staging_ids(app_dir) if s != rid]
        if others and not args.get("force"):
            app = os.path.basename(app_dir)
            raise OpError("busy", f"{app}: release {others[0]} is already being staged; "
                          "abort it first", staging=others)
        staging = final + STAGING
        resumed = os.path.isdir(staging)
        os.makedirs(hostlayout.model_dir(staging), exist_ok=True)
        if not resumed:
            write_json(os.path.join(staging, ".owner"),
                        {"deployment": args.get("deployment"), "started": time.time()})
        lock_sha = checked_arg(args, "lock_sha256", HASH_RE, required=False)
        present = lock_sha is not None and _place_lock(app_dir, staging, lock_sha)
        st = os.statvfs(staging)
        return {"path": staging, "model_path": hostlayout.model_dir(staging), "state": "staging",
                "resumed": resumed, "free_bytes": st.f_bavail * st.f_frsize,
                "lock_present": present}


def _place_lock(app_dir, staging, sha):
    """Put the lock file with this sha256 into the staging dir from a committed release of the
    app that has it (the current one first: a redeploy with the same lock), so it need not be
    uploaded again. Every candidate's bytes are hashed: the name proves nothing."""
    target = hostlayout.lock_file(staging)
    current = current_id(app_dir)
    others = sorted(committed_ids(app_dir), reverse=True)
    for source in [target] + [hostlayout.lock_file(os.path.join(releases_dir(app_dir), r))
                              for r in ([current] if current else []) + others]:
        try:
            with open(source, "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        import hashlib

        if hashlib.sha256(data).hexdigest() == sha:
            if source != target:
                write_atomic(target, data)
            return True
    return False


def op_stage_verify_model(args):
    """Recompute the model's hash on the host: a tree hash for a directory, sha256 for a file
    ("path" is relative to the release dir, default "model")."""
    app_dir, rid = app_dir_arg(args), checked_arg(args, "release_id", RELEASE_RE)
    expected = checked_arg(args, "sha256", HASH_RE)
    release = release_path(app_dir, rid)
    target = os.path.join(release, safe_relpath(args.get("path", "model"), "path"))
    if os.path.isdir(target):
        kind, actual = "tree", tree_hash(target)
    elif os.path.isfile(target):
        kind, actual = "file", sha256_file(target)
    else:
        raise OpError("not-found", f"model not found on host: {target}")
    if actual != expected:
        raise OpError("hash-mismatch", f"model {kind} hash mismatch on host: expected "
                      f"{expected}, got {actual}", expected=expected, actual=actual)
    write_json(os.path.join(release, ".verified"), {"sha256": actual, "kind": kind})
    return {"sha256": actual, "hash_kind": kind}


def op_stage_commit(args):
    """Rename releases/<id>.staging to releases/<id> (the model must have been verified)."""
    app_dir, rid = app_dir_arg(args), checked_arg(args, "release_id", RELEASE_RE)
    with app_lock(app_dir):
        final = os.path.join(releases_dir(app_dir), rid)
        staging = final + STAGING
        if os.path.isdir(final) and not os.path.exists(staging):
            return {"path": final, "already": True}
        if not os.path.isdir(staging):
            raise OpError("not-found", f"release {rid} is not staged", release_id=rid)
        if args.get("require_verified", True) and not os.path.exists(
            os.path.join(staging, ".verified")
        ):
            raise OpError("not-verified", f"release {rid}: model not verified on host")
        os.rename(staging, final)
        fsync_dir(releases_dir(app_dir))
        return {"path": final, "already": False}


def op_write_file(args):
    """Write a small file into a release being staged ("path" relative to it, "data" base64):
    what an SFTP put does, in the same process as the ops around it (a batch stages a small
    model in one call). A committed release is never written to (a resumed deployment's,
    verified already): "written" is false."""
    app_dir, rid = app_dir_arg(args), checked_arg(args, "release_id", RELEASE_RE)
    rel = safe_relpath(args.get("path"), "path")
    data = checked_arg(args, "data")
    import base64
    import binascii

    try:
        content = base64.b64decode(data, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise OpError("bad-args", "data must be base64") from None
    final = os.path.join(releases_dir(app_dir), rid)
    if os.path.isdir(final):
        return {"path": os.path.join(final, rel), "written": False}
    if not os.path.isdir(final + STAGING):
        raise OpError("not-found", f"release {rid} is not being staged", release_id=rid)
    target = os.path.join(final + STAGING, rel)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    write_atomic(target, content)
    return {"path": target, "written": True, "bytes": len(content)}


def op_write_manifest(args):
    app_dir, rid = app_dir_arg(args), checked_arg(args, "release_id", RELEASE_RE)
    manifest = checked_arg(args, "manifest")
    if not isinstance(manifest, dict):
        raise OpError("bad-args", "manifest must be a JSON object")
    path = hostlayout.manifest(release_path(app_dir, rid))
    write_json(path, manifest)
    return {"path": path}


def op_abort_stage(args):
    """Remove a staged (or committed, never switched-to) release; never current or the
    rollback target."""
    app_dir, rid = app_dir_arg(args), checked_arg(args, "release_id", RELEASE_RE)
    with app_lock(app_dir):
        state, current = load_state(app_dir), current_id(app_dir)
        if rid == current:
            raise OpError("is-current", f"release {rid} is current: not removed")
        if rid == previous_good(app_dir, state, current):
            raise OpError("is-rollback-target", f"release {rid} is the rollback target")
        base = os.path.join(releases_dir(app_dir), rid)
        removed = [p for p in (base + STAGING, base) if os.path.lexists(p)]
        for path in removed:
            rmtree_atomic(path)
        if rid in state["history"]:
            state["history"].remove(rid)
            save_state(app_dir, state)
        return {"removed": removed}


#: The ops this module offers, by wire name: hostops.py gathers every hostops_* module's.
OPS = {"stage-begin": op_stage_begin, "stage-verify-model": op_stage_verify_model,
       "stage-commit": op_stage_commit, "write-file": op_write_file,
       "write-manifest": op_write_manifest, "abort-stage": op_abort_stage}
