"""hostops' staging of a release: releases/<id>.staging/ begun (or resumed), its model verified
by hash on the host, small files and the manifest written, then committed by rename, or aborted.
Shipped beside hostops.py (stdlib only, Python 3.9+)."""

from __future__ import annotations

import os
import time

from hostops_fs import (
    HASH_RE,
    RELEASE_RE,
    OpError,
    _app_dir,
    _app_lock,
    _arg,
    _clean_trash,
    _fsync_dir,
    _rmtree_atomic,
    _sha256_file,
    _write_atomic,
    _write_json,
    tree_hash,
)
from hostops_releases import (
    STAGING,
    _committed_ids,
    _current_id,
    _load_state,
    _previous_good,
    _release_path,
    _releases_dir,
    _safe_relpath,
    _save_state,
    _staging_ids,
)

# ---------------------------------------------------------------- stage


def op_stage_begin(args):
    """Create (or resume) releases/<id>.staging/model/. Refuses ("busy") while another release
    of the app is being staged, unless "force": one deployment per app at a time."""
    app_dir, rid = _app_dir(args), _arg(args, "release_id", RELEASE_RE)
    with _app_lock(app_dir):
        rel = _releases_dir(app_dir)
        os.makedirs(rel, exist_ok=True)
        _clean_trash(rel)
        final = os.path.join(rel, rid)
        if os.path.isdir(final):
            return {"path": final, "model_path": os.path.join(final, "model"), "state": "committed",
                    "resumed": True, "lock_present": True}
        others = [s for s in _staging_ids(app_dir) if s != rid]
        if others and not args.get("force"):
            app = os.path.basename(app_dir)
            raise OpError("busy", f"{app}: release {others[0]} is already being staged; "
                          "abort it first", staging=others)
        staging = final + STAGING
        resumed = os.path.isdir(staging)
        os.makedirs(os.path.join(staging, "model"), exist_ok=True)
        if not resumed:
            _write_json(os.path.join(staging, ".owner"),
                        {"deployment": args.get("deployment"), "started": time.time()})
        lock_sha = _arg(args, "lock_sha256", HASH_RE, required=False)
        present = lock_sha is not None and _place_lock(app_dir, staging, lock_sha)
        st = os.statvfs(staging)
        return {"path": staging, "model_path": os.path.join(staging, "model"), "state": "staging",
                "resumed": resumed, "free_bytes": st.f_bavail * st.f_frsize,
                "lock_present": present}


def _place_lock(app_dir, staging, sha):
    """Put the lock file with this sha256 into the staging dir from a committed release of the
    app that has it (the current one first: a redeploy with the same lock), so it need not be
    uploaded again. Every candidate's bytes are hashed: the name proves nothing."""
    target = os.path.join(staging, "requirements.lock")
    current = _current_id(app_dir)
    others = sorted(_committed_ids(app_dir), reverse=True)
    for source in [target] + [os.path.join(_releases_dir(app_dir), r, "requirements.lock")
                              for r in ([current] if current else []) + others]:
        try:
            with open(source, "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        import hashlib

        if hashlib.sha256(data).hexdigest() == sha:
            if source != target:
                _write_atomic(target, data)
            return True
    return False


def op_stage_verify_model(args):
    """Recompute the model's hash on the host: a tree hash for a directory, sha256 for a file
    ("path" is relative to the release dir, default "model")."""
    app_dir, rid = _app_dir(args), _arg(args, "release_id", RELEASE_RE)
    expected = _arg(args, "sha256", HASH_RE)
    release = _release_path(app_dir, rid)
    target = os.path.join(release, _safe_relpath(args.get("path", "model"), "path"))
    if os.path.isdir(target):
        kind, actual = "tree", tree_hash(target)
    elif os.path.isfile(target):
        kind, actual = "file", _sha256_file(target)
    else:
        raise OpError("not-found", f"model not found on host: {target}")
    if actual != expected:
        raise OpError("hash-mismatch", f"model {kind} hash mismatch on host: expected "
                      f"{expected}, got {actual}", expected=expected, actual=actual)
    _write_json(os.path.join(release, ".verified"), {"sha256": actual, "kind": kind})
    return {"sha256": actual, "hash_kind": kind}


def op_stage_commit(args):
    """Rename releases/<id>.staging to releases/<id> (the model must have been verified)."""
    app_dir, rid = _app_dir(args), _arg(args, "release_id", RELEASE_RE)
    with _app_lock(app_dir):
        final = os.path.join(_releases_dir(app_dir), rid)
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
        _fsync_dir(_releases_dir(app_dir))
        return {"path": final, "already": False}


def op_write_file(args):
    """Write a small file into a release being staged ("path" relative to it, "data" base64):
    what an SFTP put does, in the same process as the ops around it (a batch stages a small
    model in one call). A committed release is never written to (a resumed deployment's,
    verified already): "written" is false."""
    app_dir, rid = _app_dir(args), _arg(args, "release_id", RELEASE_RE)
    rel = _safe_relpath(args.get("path"), "path")
    data = _arg(args, "data")
    import base64
    import binascii

    try:
        content = base64.b64decode(data, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise OpError("bad-args", "data must be base64") from None
    final = os.path.join(_releases_dir(app_dir), rid)
    if os.path.isdir(final):
        return {"path": os.path.join(final, rel), "written": False}
    if not os.path.isdir(final + STAGING):
        raise OpError("not-found", f"release {rid} is not being staged", release_id=rid)
    target = os.path.join(final + STAGING, rel)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    _write_atomic(target, content)
    return {"path": target, "written": True, "bytes": len(content)}


def op_write_manifest(args):
    app_dir, rid = _app_dir(args), _arg(args, "release_id", RELEASE_RE)
    manifest = _arg(args, "manifest")
    if not isinstance(manifest, dict):
        raise OpError("bad-args", "manifest must be a JSON object")
    path = os.path.join(_release_path(app_dir, rid), "manifest.json")
    _write_json(path, manifest)
    return {"path": path}


def op_abort_stage(args):
    """Remove a staged (or committed, never switched-to) release; never current or the
    rollback target."""
    app_dir, rid = _app_dir(args), _arg(args, "release_id", RELEASE_RE)
    with _app_lock(app_dir):
        state, current = _load_state(app_dir), _current_id(app_dir)
        if rid == current:
            raise OpError("is-current", f"release {rid} is current: not removed")
        if rid == _previous_good(app_dir, state, current):
            raise OpError("is-rollback-target", f"release {rid} is the rollback target")
        base = os.path.join(_releases_dir(app_dir), rid)
        removed = [p for p in (base + STAGING, base) if os.path.lexists(p)]
        for path in removed:
            _rmtree_atomic(path)
        if rid in state["history"]:
            state["history"].remove(rid)
            _save_state(app_dir, state)
        return {"removed": removed}
