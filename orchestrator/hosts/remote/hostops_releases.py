"""hostops' view of an app: its state.json and releases/, the atomic switch and rollback of
`current` under a generation, and the `releases` and `state` ops. Shipped beside hostops.py
(stdlib only, Python 3.9+).

Offers the others: STAGING, releases_dir, release_path, staging_ids, committed_ids, current_id,
load_state, save_state and previous_good (the rollback target); hostops.py: the switch,
rollback, mark-bad, unmark-bad, releases and state ops."""

from __future__ import annotations

import os

import hostlayout
from hostops_fs import (
    RELEASE_RE,
    OpError,
    app_dir_arg,
    app_lock,
    checked_arg,
    read_json,
    replace_symlink,
    write_json,
)

STAGING = ".staging"


# ---------------------------------------------------------------- app state


def releases_dir(app_dir):
    return hostlayout.releases_dir(app_dir)


def current_id(app_dir):
    try:
        target = os.readlink(hostlayout.current_link(app_dir))
    except OSError:
        return None
    return os.path.basename(target.rstrip("/"))


def load_state(app_dir):
    state = read_json(hostlayout.state_file(app_dir), {})
    state.setdefault("generation", 0)
    state.setdefault("history", [])
    state.setdefault("bad", [])
    state.setdefault("switching", None)
    return state


def save_state(app_dir, state):
    write_json(hostlayout.state_file(app_dir), state)


def previous_good(app_dir, state, current):
    """The rollback target: the newest release that was current, is not bad and still exists."""
    for rid in reversed(state["history"]):
        if rid != current and rid not in state["bad"] and os.path.isdir(
            os.path.join(releases_dir(app_dir), rid)
        ):
            return rid
    return None


def staging_ids(app_dir):
    rel = releases_dir(app_dir)
    names = os.listdir(rel) if os.path.isdir(rel) else []
    return sorted(n[: -len(STAGING)] for n in names if n.endswith(STAGING))


def committed_ids(app_dir):
    rel = releases_dir(app_dir)
    names = os.listdir(rel) if os.path.isdir(rel) else []
    return sorted(n for n in names if RELEASE_RE.match(n) and os.path.isdir(os.path.join(rel, n)))


def release_path(app_dir, rid):
    """The committed dir if it exists, else the staging dir, else OpError(not-found)."""
    base = os.path.join(releases_dir(app_dir), rid)
    for path in (base, base + STAGING):
        if os.path.isdir(path):
            return path
    raise OpError("not-found", f"release {rid} does not exist", release_id=rid)




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
    before = current_id(app_dir)
    if not os.path.isdir(os.path.join(releases_dir(app_dir), rid)):
        raise OpError("not-found", f"release {rid} is not committed on this host")
    state["generation"], state["switching"] = generation, {"from": before, "to": rid}
    state["generation_release"] = rid
    save_state(app_dir, state)  # intent first: `state` shows a switch cut short by a crash
    if before != rid:
        replace_symlink(app_dir, hostlayout.CURRENT, hostlayout.RELEASES + "/" + rid)
    history = [h for h in state["history"] if h not in (rid, before)]
    history += [before] if before else []
    state["history"], state["switching"] = [*history, rid], None
    save_state(app_dir, state)
    return {"current": rid, "before": before, "changed": before != rid,
            "generation": generation, "previous_good": previous_good(app_dir, state, rid)}


def op_switch(args):
    """Point `current` at a committed release, atomically; refuse a stale generation."""
    app_dir, rid = app_dir_arg(args), checked_arg(args, "release_id", RELEASE_RE)
    with app_lock(app_dir):
        state = load_state(app_dir)
        generation = _generation(args, state, required=True, for_release=rid)
        if rid in state["bad"] and not args.get("force"):
            raise OpError("bad-release", f"release {rid} is marked bad; refused")
        return _switch_locked(app_dir, state, rid, generation)


def op_rollback(args):
    """Switch back to "to" (a release id, or "previous": the newest good one that was current).

    With "from" (the release being rolled back), it is idempotent: when `current` is no longer
    "from", nothing moves. Every check comes first: a rollback with no target, or to a bad or
    missing release, is refused before anything is written. Then "mark_bad" marks "from" (or
    the current release) bad, or "forget" drops it from the history (a user's abort: not a
    verdict on the release, but not a rollback target either, since it never finished its
    rollout)."""
    app_dir = app_dir_arg(args)
    with app_lock(app_dir):
        state, current = load_state(app_dir), current_id(app_dir)
        generation = _generation(args, state, required=False)
        source = checked_arg(args, "from", RELEASE_RE, required=False) or current
        if current != source:
            # Already rolled back (a retry), or the switch never happened: nothing moves; the
            # release undone is still marked as asked, since it is not current.
            _settle_source(app_dir, state, source, args)
            return {"current": current, "before": current, "changed": False,
                    "generation": state["generation"], "marked_bad": state["bad"],
                    "previous_good": previous_good(app_dir, state, current),
                    "service": _deployed_service(app_dir, current),
                    "gpus": _deployed_gpus(app_dir, current)}
        target = _rollback_target(app_dir, state, current, args.get("to", "previous"))
        result = _switch_locked(app_dir, state, target, generation)
        # After the switch: a crash in between leaves `current` moved, and the retry (with
        # "from") settles the mark.
        _settle_source(app_dir, state, source, args)
        result["previous_good"] = previous_good(app_dir, state, target)
        result["marked_bad"] = state["bad"]
        result["service"] = _deployed_service(app_dir, target)
        result["gpus"] = _deployed_gpus(app_dir, target)
        return result


def _rollback_target(app_dir, state, current, to):
    """Where a rollback goes, checked before anything changes: OpError if nowhere."""
    if to == "previous":
        target = previous_good(app_dir, state, current)
        if target is None:
            raise OpError("no-rollback-target", "no previous good release to roll back to"
                          + (f" ({current} is the only release that served)" if current else ""),
                          current=current)
        return target
    target = checked_arg({"to": to}, "to", RELEASE_RE)
    if target == current:
        raise OpError("bad-args", f"release {target} is already current", current=current)
    if target in state["bad"]:
        raise OpError("bad-release", f"release {target} is marked bad; refused (clear it "
                      "with `orchestrator releases unmark-bad` first)")
    if not os.path.isdir(os.path.join(releases_dir(app_dir), target)):
        raise OpError("not-found", f"release {target} is not committed on this host",
                      release_id=target)
    return target


def _settle_source(app_dir, state, source, args):
    """Mark the release rolled back from bad ("mark_bad"), or forget it ("forget")."""
    if not source:
        return
    if args.get("mark_bad") and source not in state["bad"]:
        state["bad"].append(source)
        save_state(app_dir, state)
    elif args.get("forget") and not args.get("mark_bad") and source in state["history"]:
        state["history"].remove(source)
        save_state(app_dir, state)


def _deployed_service(app_dir, rid):
    """The `service` the release's manifest.json records (how to restart and check it), or
    None: no release, or a manifest from before it was recorded."""
    if rid is None:
        return None
    manifest = read_json(hostlayout.manifest(os.path.join(releases_dir(app_dir), rid)), {})
    service = manifest.get("service") if isinstance(manifest, dict) else None
    return service if isinstance(service, dict) else None


def _deployed_gpus(app_dir, rid):
    """The GPU UUIDs the release's manifest.json records (placement), or None: none recorded."""
    if rid is None:
        return None
    manifest = read_json(hostlayout.manifest(os.path.join(releases_dir(app_dir), rid)), {})
    gpus = manifest.get("gpus") if isinstance(manifest, dict) else None
    return gpus if isinstance(gpus, list) else None


def op_mark_bad(args):
    app_dir, rid = app_dir_arg(args), checked_arg(args, "release_id", RELEASE_RE)
    with app_lock(app_dir):
        state = load_state(app_dir)
        if rid not in state["bad"]:
            state["bad"].append(rid)
            save_state(app_dir, state)
        return {"bad": state["bad"]}


def op_unmark_bad(args):
    """Clear a release's `bad` mark: it may be switched to and be a rollback target again.
    A release that is not marked changes nothing (and writes nothing: hosts without the app
    stay without it)."""
    app_dir, rid = app_dir_arg(args), checked_arg(args, "release_id", RELEASE_RE)
    if not os.path.isdir(app_dir):
        return {"bad": [], "changed": False}
    with app_lock(app_dir):
        state = load_state(app_dir)
        was = rid in state["bad"]
        if was:
            state["bad"].remove(rid)
            save_state(app_dir, state)
        return {"bad": state["bad"], "changed": was}


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
        manifest = read_json(hostlayout.manifest(path), {})
    except ValueError:
        return {"error": "manifest.json is not JSON"}
    if not isinstance(manifest, dict):
        return {}
    keys = ("spec_digest", "model_sha256", "lock_sha256", "golden_sha256", "env_hash", "deployment",
            "created", "gpus")
    summary = {k: manifest[k] for k in keys if k in manifest and manifest[k] is not None}
    facts = _facts_summary(manifest.get("facts"))
    if facts:
        summary["facts"] = facts
    return summary


def _facts_summary(facts):
    """The host facts a release was deployed on, in brief (the whole probe stays in
    manifest.json): what a person compares with the host's facts today."""
    if not isinstance(facts, dict):
        return {}

    def get(*keys):
        value = facts  # type: object
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    listed = facts.get("gpus")
    gpus = listed if isinstance(listed, list) else []
    brief = {"hostname": get("hostname"), "os": get("os", "pretty_name"),
             "python": get("python", "version"), "driver": get("nvml", "driver_version"),
             "cuda": get("nvml", "cuda_driver_version"),
             "gpus": [g.get("name") for g in gpus if isinstance(g, dict)] or None}
    return {k: v for k, v in brief.items() if v is not None}


def op_releases(args):
    app_dir = app_dir_arg(args)
    state, current = load_state(app_dir), current_id(app_dir)
    previous = previous_good(app_dir, state, current)
    rows = []
    for rid, staging in [(r, False) for r in committed_ids(app_dir)] + [
        (r, True) for r in staging_ids(app_dir)
    ]:
        path = os.path.join(releases_dir(app_dir), rid + (STAGING if staging else ""))
        venv, summary = hostlayout.release_venv(path), _manifest_summary(path)
        # A venv release links its environment; an image release has no link, and its
        # manifest names the environment (the image archive's sha256).
        env_hash = os.path.basename(os.readlink(venv)) if os.path.islink(venv) \
            else summary.get("env_hash")
        rows.append({"release_id": rid, "path": path,
                     "state": _release_state(rid, current, previous, state, staging),
                     "created": os.stat(path).st_mtime, "env_hash": env_hash,
                     "manifest": summary})
    rows.sort(key=lambda r: r["release_id"])
    return {"releases": rows, "current": current, "previous_good": previous}


def op_state(args):
    """What is really on the host, for crash recovery: `current` is read, not remembered."""
    app_dir = app_dir_arg(args)
    state, current = load_state(app_dir), current_id(app_dir)
    current_path = hostlayout.current_link(app_dir)
    return {"current": current, "current_resolves": os.path.isdir(current_path),
            "generation": state["generation"], "previous_good": previous_good(
                app_dir, state, current), "bad": state["bad"], "history": state["history"],
            "switching": state["switching"], "staging": staging_ids(app_dir),
            "committed": committed_ids(app_dir)}


#: The ops this module offers, by wire name: hostops.py gathers every hostops_* module's.
OPS = {"switch": op_switch, "rollback": op_rollback, "mark-bad": op_mark_bad,
       "unmark-bad": op_unmark_bad, "releases": op_releases, "state": op_state}
