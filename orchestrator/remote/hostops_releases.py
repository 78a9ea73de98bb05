"""hostops' view of an app: its state.json and releases/, the atomic switch and rollback of
`current` under a generation, and the `releases` and `state` ops. Shipped beside hostops.py
(stdlib only, Python 3.9+)."""

from __future__ import annotations

import os

from hostops_fs import (
    RELEASE_RE,
    OpError,
    _app_dir,
    _app_lock,
    _arg,
    _fsync_dir,
    _read_json,
    _write_json,
)

STAGING = ".staging"


# ---------------------------------------------------------------- app state


def _releases_dir(app_dir):
    return os.path.join(app_dir, "releases")


def _current_id(app_dir):
    try:
        target = os.readlink(os.path.join(app_dir, "current"))
    except OSError:
        return None
    return os.path.basename(target.rstrip("/"))


def _load_state(app_dir):
    state = _read_json(os.path.join(app_dir, "state.json"), {})
    state.setdefault("generation", 0)
    state.setdefault("history", [])
    state.setdefault("bad", [])
    state.setdefault("switching", None)
    return state


def _save_state(app_dir, state):
    _write_json(os.path.join(app_dir, "state.json"), state)


def _previous_good(app_dir, state, current):
    """The rollback target: the newest release that was current, is not bad and still exists."""
    for rid in reversed(state["history"]):
        if rid != current and rid not in state["bad"] and os.path.isdir(
            os.path.join(_releases_dir(app_dir), rid)
        ):
            return rid
    return None


def _staging_ids(app_dir):
    rel = _releases_dir(app_dir)
    names = os.listdir(rel) if os.path.isdir(rel) else []
    return sorted(n[: -len(STAGING)] for n in names if n.endswith(STAGING))


def _committed_ids(app_dir):
    rel = _releases_dir(app_dir)
    names = os.listdir(rel) if os.path.isdir(rel) else []
    return sorted(n for n in names if RELEASE_RE.match(n) and os.path.isdir(os.path.join(rel, n)))


def _release_path(app_dir, rid):
    """The committed dir if it exists, else the staging dir, else OpError(not-found)."""
    base = os.path.join(_releases_dir(app_dir), rid)
    for path in (base, base + STAGING):
        if os.path.isdir(path):
            return path
    raise OpError("not-found", f"release {rid} does not exist", release_id=rid)


def _replace_symlink(app_dir, name, target):
    """A new symlink renamed over the old: `name` always resolves, to the old or the new."""
    tmp = os.path.join(app_dir, f"{name}.tmp-{os.urandom(6).hex()}")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, os.path.join(app_dir, name))
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_dir(app_dir)


def _safe_relpath(value, key):
    if not isinstance(value, str) or not value or os.path.isabs(value):
        raise OpError("bad-args", f"{key} must be a relative path: {value!r}")
    if ".." in value.replace("\\", "/").split("/"):
        raise OpError("bad-args", f"{key} must stay inside the release: {value!r}")
    return value


# ---------------------------------------------------------------- switch and rollback


def _generation(args, state, required, for_release=None):
    value = args.get("generation")
    if value is None:
        if required:
            raise OpError("bad-args", "missing argument: generation")
        return state["generation"] + 1  # a manual action outranks any deployment in flight
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise OpError("bad-args", f"generation must be a positive integer: {value!r}")
    # A generation claims one switch: the same one again is a retry, another release under
    # the same number is a second deployment that read the same generation (switch only).
    claimed = state.get("generation_release")
    if state["generation"] > value or (
        for_release and state["generation"] == value and claimed not in (None, for_release)
    ):
        raise OpError("stale-generation", f"host generation {state['generation']} (release "
                      f"{claimed}) is not older than {value}: another deployment has switched "
                      "this app; refused", host_generation=state["generation"])
    return value


def _switch_locked(app_dir, state, rid, generation):
    before = _current_id(app_dir)
    if not os.path.isdir(os.path.join(_releases_dir(app_dir), rid)):
        raise OpError("not-found", f"release {rid} is not committed on this host")
    state["generation"], state["switching"] = generation, {"from": before, "to": rid}
    state["generation_release"] = rid
    _save_state(app_dir, state)  # intent first: `state` shows a switch cut short by a crash
    if before != rid:
        _replace_symlink(app_dir, "current", "releases/" + rid)
    history = [h for h in state["history"] if h not in (rid, before)]
    history += [before] if before else []
    state["history"], state["switching"] = [*history, rid], None
    _save_state(app_dir, state)
    return {"current": rid, "before": before, "changed": before != rid,
            "generation": generation, "previous_good": _previous_good(app_dir, state, rid)}


def op_switch(args):
    """Point `current` at a committed release, atomically; refuse a stale generation."""
    app_dir, rid = _app_dir(args), _arg(args, "release_id", RELEASE_RE)
    with _app_lock(app_dir):
        state = _load_state(app_dir)
        generation = _generation(args, state, required=True, for_release=rid)
        if rid in state["bad"] and not args.get("force"):
            raise OpError("bad-release", f"release {rid} is marked bad; refused")
        return _switch_locked(app_dir, state, rid, generation)


def op_rollback(args):
    """Switch back to "to" (a release id, or "previous": the newest good one that was current).

    With "from" (the release being rolled back), it is idempotent: when `current` is no longer
    "from", nothing moves. "mark_bad" marks "from" (or the current release) bad first."""
    app_dir = _app_dir(args)
    with _app_lock(app_dir):
        state, current = _load_state(app_dir), _current_id(app_dir)
        generation = _generation(args, state, required=False)
        source = _arg(args, "from", RELEASE_RE, required=False) or current
        if args.get("mark_bad") and source and source not in state["bad"]:
            state["bad"].append(source)
            _save_state(app_dir, state)
        if current != source:
            return {"current": current, "before": current, "changed": False,
                    "generation": state["generation"], "marked_bad": state["bad"],
                    "previous_good": _previous_good(app_dir, state, current)}
        to = args.get("to", "previous")
        target = _previous_good(app_dir, state, current) if to == "previous" else _arg(
            args, "to", RELEASE_RE)
        if target is None:
            raise OpError("no-rollback-target", "no previous good release to roll back to")
        if target in state["bad"]:
            raise OpError("bad-release", f"release {target} is marked bad; refused")
        result = _switch_locked(app_dir, state, target, generation)
        result["marked_bad"] = state["bad"]
        return result


def op_mark_bad(args):
    app_dir, rid = _app_dir(args), _arg(args, "release_id", RELEASE_RE)
    with _app_lock(app_dir):
        state = _load_state(app_dir)
        if rid not in state["bad"]:
            state["bad"].append(rid)
            _save_state(app_dir, state)
        return {"bad": state["bad"]}


# ---------------------------------------------------------------- views


def _release_state(rid, current, previous, state, staging):
    if staging:
        return "staging"
    if rid == current:
        return "current"
    if rid in state["bad"]:
        return "bad"
    if rid == previous:
        return "previous-good"
    return "old" if rid in state["history"] else "staged"


def _manifest_summary(path):
    try:
        manifest = _read_json(os.path.join(path, "manifest.json"), {})
    except ValueError:
        return {"error": "manifest.json is not JSON"}
    keys = ("spec_digest", "model_sha256", "lock_sha256", "env_hash", "deployment", "created")
    return {k: manifest[k] for k in keys if isinstance(manifest, dict) and k in manifest}


def op_releases(args):
    app_dir = _app_dir(args)
    state, current = _load_state(app_dir), _current_id(app_dir)
    previous = _previous_good(app_dir, state, current)
    rows = []
    for rid, staging in [(r, False) for r in _committed_ids(app_dir)] + [
        (r, True) for r in _staging_ids(app_dir)
    ]:
        path = os.path.join(_releases_dir(app_dir), rid + (STAGING if staging else ""))
        venv = os.path.join(path, "venv")
        rows.append({"release_id": rid, "path": path,
                     "state": _release_state(rid, current, previous, state, staging),
                     "created": os.stat(path).st_mtime,
                     "env_hash": os.path.basename(os.readlink(venv)) if os.path.islink(venv)
                     else None, "manifest": _manifest_summary(path)})
    rows.sort(key=lambda r: r["release_id"])
    return {"releases": rows, "current": current, "previous_good": previous}


def op_state(args):
    """What is really on the host, for crash recovery: `current` is read, not remembered."""
    app_dir = _app_dir(args)
    state, current = _load_state(app_dir), _current_id(app_dir)
    current_path = os.path.join(app_dir, "current")
    return {"current": current, "current_resolves": os.path.isdir(current_path),
            "generation": state["generation"], "previous_good": _previous_good(
                app_dir, state, current), "bad": state["bad"], "history": state["history"],
            "switching": state["switching"], "staging": _staging_ids(app_dir),
            "committed": _committed_ids(app_dir)}
