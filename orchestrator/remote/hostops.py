"""Host-side release operations: staging, wheel cache, venvs, atomic switch, rollback, prune.

Shipped to a host and run by its own `python3` (3.9+, stdlib only):

    python3 hostops.py <op> --json-args '<json object>'      (or --json-args - : read from stdin)

It prints exactly one JSON object on stdout: {"ok": true, ...} and exit 0, or
{"ok": false, "error": "<one line>", "kind": "<stable word>", ...} and exit 1 (2 for bad arguments).
Every op is idempotent: re-run after a crash it finds its own half-done work and finishes or
cleans it. Every op takes "root" (the host's deploy_root); app ops take "app".

Layout under root (DESIGN.md "Host layout"):
    <app>/releases/<id>.staging/   being staged: model/, requirements.lock, .owner, .verified
    <app>/releases/<id>/           committed: model/, requirements.lock, manifest.json, venv -> ...
    <app>/current -> releases/<id> replaced only by rename of a new symlink
    <app>/state.json               {"generation", "generation_release" (the switch that
                                   generation made), "history" (ids that were current, oldest
                                   first), "bad", "switching"}; `current` itself is the truth
    <app>/.lock                    flock held by every op that changes the app (briefly)
    .orchestrator/venvs/<env_hash>/  with .orchestrator-complete.json written last
    .orchestrator/venvs/<env_hash>.lock  flock: one builder at a time; a second one WAITS (up
                                   to "wait_s") and then reuses the finished venv
    .orchestrator/wheels/<sha256>.whl  uploads land in <sha256>.whl.part, then wheels-verify
    .orchestrator/links/<sha256>/<real filename>  -> the cached wheel: the installers' find-links
    .orchestrator/uv-cache/        uv's cache (venvs hardlink into it: no second copy on disk)

Ops (arguments besides "root"; what a success adds; failure kinds worth branching on):
    stage-begin         app, release_id, [deployment, force, lock_sha256] -> path, model_path,
                        state ("staging"|"committed"), resumed, free_bytes, lock_present (the
                        lock with that sha256 is in place, copied from a release that had
                        it: no upload needed);  busy
    stage-verify-model  app, release_id, sha256, [path="model"] -> hash_kind;  hash-mismatch
    stage-commit        app, release_id -> path, already;  not-verified
    write-file          app, release_id, path (relative), data (base64) -> path, written
                        (false for a committed release: never changed), bytes
    write-manifest      app, release_id, manifest (object) -> path
    abort-stage         app, release_id -> removed;  is-current, is-rollback-target
    wheels-missing      shas -> missing, present
    wheels-verify       shas -> verified;  wheel-hash-mismatch (bad), missing-wheel
    venv-ensure         env_hash, lock (abs path: a requirements lock, or a PEP 751 pylock
                        the installers get as a hash-pinned requirements file derived from
                        the wheels, each checked against it), wheels {sha: filename},
                        [installer="uv"|"pip",
                        uv, python, compile_bytecode=false, wait_s, timeout_s, app+release_id
                        (links <release>/venv), need_uv] -> path, reused, installer,
                        fallback_reason, freeze, durations, waited_s;  missing-wheel,
                        install-failed (the installer's own message, or the pylock check's:
                        package and both hashes), bad-lock (a pylock without packages),
                        check-failed, busy, uv-missing (need_uv: a build is needed
                        and the "uv" file is not there: upload it and call again)
    switch              app, release_id, generation -> current, before, changed, generation,
                        previous_good;  stale-generation, bad-release, not-found
    rollback            app, [to="previous"|id, from, generation, mark_bad] -> as switch, and
                        marked_bad;  no-rollback-target
    mark-bad            app, release_id -> bad
    releases            app -> releases [{release_id, state, path, created, env_hash,
                        manifest}], current, previous_good
    state               app -> current, current_resolves, generation, previous_good, bad,
                        history, switching, staging, committed
    prune               app, [keep=5, grace_s=600] -> removed_releases, removed_venvs,
                        removed_wheels, uv_cache_cleared, kept
    probe               -> facts (probe.py's object, from the same bundle)
    batch               ops [{op, args}] -> results (each op's reply), in order, stopping at
                        the first failure (then the batch fails with its kind, error,
                        failed_op and the results so far): one process for a step's calls
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import sys
import time

# hashlib, shutil, subprocess and tempfile are imported where they are used: most calls need
# none of them, and the interpreter's start is most of what a small op costs on a busy host.

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
RELEASE_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
ENV_RE = re.compile(r"^[0-9a-f]{16,64}$")
WHEEL_RE = re.compile(r"^[A-Za-z0-9_.+!-]+\.whl$")
LOCK_HASH_RE = re.compile(r"--hash=sha256:([0-9a-f]{64})")
# PEP 751 pylock.toml: read with tomllib where the host has it (3.11+), else (hosts may run
# 3.9) by a scan of its lines: the controller has linted the real TOML already, so the scan only
# has to find each package's name, version and wheel hashes, which writers put one key per line
# or in inline tables (tests hold both readers to the same answer).
PYLOCK_RE = re.compile(r"^\s*lock-version\s*=", re.MULTILINE)
PYLOCK_PACKAGE_RE = re.compile(r"^\s*\[\[\s*packages\s*\]\]\s*$", re.MULTILINE)
PYLOCK_NAME_RE = re.compile(r'^\s*name\s*=\s*"([^"]+)"', re.MULTILINE)
PYLOCK_VERSION_RE = re.compile(r'^\s*version\s*=\s*"([^"]+)"', re.MULTILINE)
PYLOCK_HASH_RE = re.compile(r'sha256\s*=\s*"([0-9a-fA-F]{64})"')
# where a package's own tables end: any header but [packages.x] / [[packages.x]]
PYLOCK_OTHER_TABLE_RE = re.compile(r"^\s*\[(?!\[?\s*packages\.)", re.MULTILINE)
# an sdist's hash is never a wheel's: `sdist = {...}` lines and [packages.sdist...] tables
PYLOCK_SDIST_RE = re.compile(r"^\s*sdist\s*=.*$|^\s*\[\s*packages\.sdist[^\n]*\n"
                             r"(?:(?!\s*\[)[^\n]*\n?)*", re.MULTILINE)
COMPLETE = ".orchestrator-complete.json"
STAGING = ".staging"
APP_LOCK_WAIT_S = 60.0
PART_GRACE_S = 3600.0


class OpError(Exception):
    """An expected failure: becomes {"ok": false, "error", "kind", **extra}."""

    def __init__(self, kind, message, **extra):
        super().__init__(message)
        self.kind, self.extra = kind, extra


# ---------------------------------------------------------------- small helpers


def _arg(args, key, pattern=None, default=None, required=True):
    value = args.get(key, default)
    if value is None and required:
        raise OpError("bad-args", f"missing argument: {key}")
    if value is not None and pattern is not None and not (
        isinstance(value, str) and pattern.match(value)
    ):
        raise OpError("bad-args", f"invalid {key}: {value!r}")
    return value


def _root(args):
    root = _arg(args, "root")
    if not isinstance(root, str) or not os.path.isabs(root):
        raise OpError("bad-args", f"root must be an absolute path: {root!r}")
    return os.path.normpath(root)


def _app_dir(args):
    return os.path.join(_root(args), _arg(args, "app", NAME_RE))


def _orch(root, *parts):
    return os.path.join(root, ".orchestrator", *parts)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path, data):
    """tmp + fsync + rename + fsync(dir): a reader sees the old file or the new one, whole."""
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".tmp-{os.urandom(8).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o644)  # mkstemp's 0600 would hide state from the service
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _write_json(path, obj):
    _write_atomic(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def _read_json(path, default):
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read().decode())
    except FileNotFoundError:
        return default


def _sha256_file(path):
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_hash(directory):
    """sha256 over the sorted lines "<sha256 of file>  <relative posix path>\n" of every
    regular file under directory. Identical to orchestrator/treehash.py on the controller
    (keep them in step; tests compare both): symlinks, special files and a directory without
    any regular file are refused, not skipped."""
    lines = []
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, directory).replace(os.sep, "/")
            if os.path.islink(full):
                raise OpError("bad-model", f"symlink inside the model directory: {rel}")
            if name in filenames:
                if not os.path.isfile(full):
                    raise OpError("bad-model", f"not a regular file in the model: {rel}")
                lines.append(f"{_sha256_file(full)}  {rel}\n")
    if not lines:
        raise OpError("bad-model", f"the model directory holds no regular file: {directory}")
    import hashlib

    return hashlib.sha256("".join(sorted(lines)).encode("utf-8")).hexdigest()


class _Flock:
    """An fcntl lock on a file (exclusive unless shared), waited for up to wait_s (None:
    forever, 0: try once)."""

    def __init__(self, path, wait_s, shared=False):
        self.path, self.wait_s, self.fd, self.waited_s = path, wait_s, None, 0.0
        self.mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(self.fd, self.mode | fcntl.LOCK_NB)
                self.waited_s = time.monotonic() - start
                return self
            except BlockingIOError:
                if self.wait_s is not None and time.monotonic() - start >= self.wait_s:
                    os.close(self.fd)
                    raise OpError("busy", f"{self.path} is held by another operation") from None
                time.sleep(0.05)

    def __exit__(self, *exc):
        os.close(self.fd)  # closing releases the lock
        return False


def _app_lock(app_dir):
    os.makedirs(app_dir, exist_ok=True)
    return _Flock(os.path.join(app_dir, ".lock"), APP_LOCK_WAIT_S)


def _rmtree_atomic(path):
    """Rename aside first, so a crash mid-delete leaves a .trash- dir, never a half release."""
    if not os.path.lexists(path):
        return
    import shutil
    import tempfile

    parent = os.path.dirname(path)
    trash = tempfile.mkdtemp(prefix=".trash-", dir=parent)
    os.rename(path, os.path.join(trash, "x"))
    _fsync_dir(parent)
    shutil.rmtree(trash, ignore_errors=True)


def _clean_trash(directory):
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        if name.startswith(".trash-"):
            import shutil

            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


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


# ---------------------------------------------------------------- wheel cache


def _shas(args):
    shas = _arg(args, "shas")
    if not isinstance(shas, list) or not all(isinstance(s, str) and HASH_RE.match(s) for s in shas):
        raise OpError("bad-args", "shas must be a list of sha256 hex digests")
    return shas


def op_wheels_missing(args):
    """Which of these wheels the host's cache lacks (creates the cache dir for the uploads)."""
    wheels = _orch(_root(args), "wheels")
    os.makedirs(wheels, exist_ok=True)
    shas = _shas(args)
    missing = [s for s in shas if not os.path.isfile(os.path.join(wheels, s + ".whl"))]
    return {"missing": missing, "present": [s for s in shas if s not in missing], "dir": wheels}


def op_wheels_verify(args):
    """After upload to wheels/<sha>.whl.part: hash it, rename into place, or delete it."""
    wheels = _orch(_root(args), "wheels")
    verified, bad, missing = [], [], []
    for sha in _shas(args):
        final = os.path.join(wheels, sha + ".whl")
        part = final + ".part"
        if os.path.isfile(part):
            actual = _sha256_file(part)
            if actual == sha:
                os.replace(part, final)
                verified.append(sha)
            else:
                os.unlink(part)
                bad.append({"expected": sha, "actual": actual})
        elif os.path.isfile(final):
            verified.append(sha)
        else:
            missing.append(sha)
    if bad or missing:
        _fsync_dir(wheels)
        what = ["{} arrived as {}".format(b["expected"], b["actual"]) for b in bad]
        what += [f"{m} never arrived" for m in missing]
        raise OpError("wheel-hash-mismatch" if bad else "missing-wheel",
                      "wheel upload failed verification: " + "; ".join(what),
                      verified=verified, bad=bad, missing=missing)
    if verified:
        _fsync_dir(wheels)
    return {"verified": verified}


# ---------------------------------------------------------------- venvs


def _run(argv, env, cwd, timeout, what):
    import subprocess

    try:
        return subprocess.run(argv, env=env, cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        raise OpError("timeout", f"{what} did not finish within {timeout}s") from None


def _check(proc, what, kind="install-failed"):
    if proc.returncode != 0:
        text = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-60:]
        one_line = " ".join(line.strip() for line in text if line.strip())[:4000]
        raise OpError(kind, f"{what} failed (exit {proc.returncode}): {one_line}",
                      output="\n".join(text))
    return proc


def _resolve_python(python):
    import shutil

    found = python if os.path.isabs(python) else shutil.which(python)
    if not found or not os.access(found, os.X_OK):
        raise OpError("venv-failed", f"python not found on host: {python}")
    return found


def _scrubbed_env(root, tmp, python):
    """env -i style: no user config, no index, no proxies, HOME in a throwaway dir."""
    home = os.path.join(tmp, "home")
    os.makedirs(home, exist_ok=True)
    return {
        "PATH": os.path.dirname(python) + ":/usr/local/bin:/usr/bin:/bin",
        "HOME": home, "TMPDIR": tmp, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "NO_COLOR": "1",
        "UV_NO_CONFIG": "1", "UV_PYTHON_DOWNLOADS": "never", "UV_OFFLINE": "1",
        "UV_NO_PROGRESS": "1", "UV_CACHE_DIR": _orch(root, "uv-cache"),
        "PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1", "PYTHONNOUSERSITE": "1",
    }


def _link_wheels(root, wheel_map):
    """One find-links dir per wheel, .orchestrator/links/<sha256>/<real filename> -> the cached
    <sha256>.whl: pip and uv read name, version and tags from the filename, so <sha>.whl cannot
    be installed as is; and the path is stable and content-addressed, because uv keys its cache
    of unpacked local wheels by path: a new venv for a cached lock then only links files."""
    if not isinstance(wheel_map, dict):
        raise OpError("bad-args", "wheels must be an object {sha256: filename}")
    dirs = []
    for sha, filename in sorted(wheel_map.items()):
        if not HASH_RE.match(sha) or not isinstance(filename, str) or not WHEEL_RE.match(filename):
            raise OpError("bad-args", f"bad wheel entry: {sha!r}: {filename!r}")
        source = _orch(root, "wheels", sha + ".whl")
        if not os.path.isfile(source):
            raise OpError("missing-wheel", f"wheel {filename} (sha256 {sha}) is not in the "
                          "host's cache", sha256=sha, filename=filename)
        directory = _orch(root, "links", sha)
        os.makedirs(directory, exist_ok=True)
        if not os.path.exists(os.path.join(directory, filename)):
            _replace_symlink(directory, filename, source)  # atomic: builders may race here
        dirs.append(directory)
    return dirs


def _find_links(dirs):
    return [arg for d in dirs for arg in ("--find-links", d)]


def is_pylock(text):
    """A PEP 751 lock has a top-level lock-version key; the linter refuses that line in a
    requirements lock, so the content tells the two apart (both are kept as
    requirements.lock on the host)."""
    return PYLOCK_RE.search(text) is not None


def _normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def pylock_packages(text):
    """{normalized name: (version, [wheel sha256, ...])} of a pylock's [[packages]]."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        return pylock_packages_scanned(text)
    try:
        doc = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError
        raise OpError("bad-lock", f"the pylock is not valid TOML: {exc}") from None
    found = {}
    for entry in doc.get("packages") or []:
        if not isinstance(entry, dict):
            raise OpError("bad-lock", "a [[packages]] entry of the pylock is not a table")
        wheels = entry.get("wheels") or []
        hashes = [w["hashes"]["sha256"] for w in wheels if isinstance(w, dict)
                  and isinstance(w.get("hashes"), dict)
                  and isinstance(w["hashes"].get("sha256"), str)]
        _add_locked(found, entry.get("name"), entry.get("version"), hashes)
    return _some_locked(found)


def pylock_packages_scanned(text):
    """pylock_packages without a TOML parser (see PYLOCK_RE)."""
    found = {}
    for block in PYLOCK_PACKAGE_RE.split(text)[1:]:
        other = PYLOCK_OTHER_TABLE_RE.search(block)
        block = block[: other.start()] if other else block
        name, version = PYLOCK_NAME_RE.search(block), PYLOCK_VERSION_RE.search(block)
        _add_locked(found, name and name.group(1), version and version.group(1),
                    PYLOCK_HASH_RE.findall(PYLOCK_SDIST_RE.sub("", block)))
    return _some_locked(found)


def _add_locked(found, name, version, hashes):
    if not isinstance(name, str) or not isinstance(version, str):
        raise OpError("bad-lock", "a [[packages]] entry of the pylock has no name or version")
    entry = found.setdefault(_normalize(name), (version, []))
    entry[1].extend(h.lower() for h in hashes if h.lower() not in entry[1])


def _some_locked(found):
    if not found:
        raise OpError("bad-lock", "the pylock has no [[packages]]")
    return found


def _wheel_name_version(filename):
    parts = filename[: -len(".whl")].split("-")
    if len(parts) not in (5, 6):
        raise OpError("bad-args", f"not a wheel filename: {filename!r}")
    return _normalize(parts[0]), parts[1]


def pinned_requirements(wheel_map, locked):
    """The requirements file an installer gets for a pylock: one `name==version --hash` line
    per package, hashed with exactly the wheels the controller chose for this host, each of
    which must be one the lock names (same name, version and sha256)."""
    lines = {}
    for sha, filename in sorted(wheel_map.items(), key=lambda item: item[1]):
        name, version = _wheel_name_version(filename)
        if name not in locked:
            raise OpError("install-failed", f"{filename} (sha256 {sha}): {name} is not in the "
                          "lock", package=name, actual=sha)
        # the sha256 is what matters: a locked wheel's bytes are the version the lock names
        want_version, hashes = locked[name]
        if sha not in hashes:
            raise OpError("install-failed", f"hash mismatch for {name}=={want_version}: the lock "
                          f"has sha256 {', '.join(hashes) or 'none'}, the wheel {filename} has "
                          f"{sha}", package=name, expected=hashes, actual=sha)
        lines.setdefault(f"{name}=={version}", []).append(sha)
    return "".join(f"{pin} " + " ".join(f"--hash=sha256:{h}" for h in shas) + "\n"
                   for pin, shas in lines.items())


def _installer_requirements(lock, wheel_map, tmp):
    """(path the installer reads, lock format): the lock itself, or for a pylock the
    requirements file derived in the build's temp dir (removed with it)."""
    with open(lock, encoding="utf-8") as fh:
        text = fh.read()
    if not is_pylock(text):
        return lock, "requirements"
    derived = os.path.join(tmp, "pylock-requirements.txt")
    with open(derived, "w", encoding="utf-8") as fh:
        fh.write(pinned_requirements(wheel_map, pylock_packages(text)))
    return derived, "pylock"


def _uv_usable(uv, env, cwd):
    if not uv:
        return "no uv binary given"
    import subprocess

    try:
        proc = subprocess.run([uv, "--version"], env=env, cwd=cwd, timeout=30,
                              capture_output=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"uv cannot run: {exc}"
    return None if proc.returncode == 0 else f"uv --version exited {proc.returncode}"


def _uv_commands(uv, python, path, links, lock, compile_bytecode):
    vpy = os.path.join(path, "bin", "python")
    install = [uv, "pip", "install", "--python", vpy, "--require-hashes", "--no-index",
               "--offline", "--no-build", *_find_links(links), "-r", lock]
    if compile_bytecode:
        install.append("--compile-bytecode")
    return {
        "venv": [uv, "venv", "--no-project", "--python", python, path],
        "install": install,
        "check": [uv, "pip", "check", "--python", vpy],
        "freeze": [uv, "pip", "freeze", "--python", vpy],
    }


def _pip_commands(python, path, links, lock, compile_bytecode):
    vpy = os.path.join(path, "bin", "python")
    install = [vpy, "-m", "pip", "install", "--require-hashes", "--no-index",
               "--only-binary=:all:", *_find_links(links), "-r", lock]
    if not compile_bytecode:
        install.append("--no-compile")
    return {
        "venv": [python, "-m", "venv", path],
        "install": install,
        "check": [vpy, "-m", "pip", "check"],
        "freeze": [vpy, "-m", "pip", "freeze"],
    }


def _build_venv(root, path, args):
    python = _resolve_python(args.get("python") or "python3")
    lock = _arg(args, "lock")
    if not isinstance(lock, str) or not os.path.isabs(lock) or not os.path.isfile(lock):
        raise OpError("not-found", f"lock file not found on host: {lock!r}")
    timeout = float(args.get("timeout_s", 1800))
    import shutil
    import tempfile

    os.makedirs(_orch(root, "tmp"), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="build-", dir=_orch(root, "tmp"))
    # shared: builders run side by side; prune clears uv's cache only when none is running
    cache_use = _Flock(_orch(root, "uv-cache.lock"), None, shared=True)
    try:
        cache_use.__enter__()
        links = _link_wheels(root, args.get("wheels") or {})
        requirements, lock_format = _installer_requirements(lock, args.get("wheels") or {}, tmp)
        env = _scrubbed_env(root, tmp, python)
        installer, fallback = args.get("installer", "uv"), None
        if installer not in ("uv", "pip"):
            raise OpError("bad-args", f"installer must be uv or pip: {installer!r}")
        if installer == "uv":
            fallback = _uv_usable(args.get("uv"), env, tmp)
            installer = "pip" if fallback else "uv"
        # Off by default: the warmup's first import compiles what is really imported, once,
        # into the venv; compiling all of TensorFlow up front costs more than it saves there
        # and would make a new venv for an already-cached lock take seconds, not < 1 s.
        compile_bc = bool(args.get("compile_bytecode", False))
        cmds = (_uv_commands(args.get("uv"), python, path, links, requirements, compile_bc)
                if installer == "uv"
                else _pip_commands(python, path, links, requirements, compile_bc))
        durations = {}
        for step in ("venv", "install", "check"):
            start = time.monotonic()
            what = f"{installer} {step}"
            _check(_run(cmds[step], env, tmp, timeout, what), what,
                   {"venv": "venv-failed", "check": "check-failed"}.get(step, "install-failed"))
            durations[step] = round(time.monotonic() - start, 3)
        freeze = _check(_run(cmds["freeze"], env, tmp, 120, "freeze"), "freeze").stdout
        return {"installer": installer, "fallback_reason": fallback, "python": python,
                "lock_sha256": _sha256_file(lock), "lock_format": lock_format,
                "created": time.time(),
                "freeze": [line for line in freeze.splitlines() if line.strip()],
                "durations": durations}
    finally:
        if cache_use.fd is not None:
            cache_use.__exit__()
        shutil.rmtree(tmp, ignore_errors=True)


def _complete_marker(path):
    """The marker, if the venv is complete and its interpreter still runs from it."""
    marker = _read_json(os.path.join(path, COMPLETE), None)
    if marker is None or not os.path.exists(os.path.join(path, "bin", "python")):
        return None
    return marker


def _link_venv(args, path):
    if args.get("app") is None:
        return None
    release = _release_path(_app_dir(args), _arg(args, "release_id", RELEASE_RE))
    _replace_symlink(release, "venv", path)
    return os.path.join(release, "venv")


def _need_uv(args):
    """With "need_uv", a build refuses to start without the uv binary at "uv", so the caller
    uploads it only when a venv is really built (a reused venv never needs it)."""
    uv = args.get("uv")
    if args.get("need_uv") and args.get("installer", "uv") == "uv" and uv:
        if not isinstance(uv, str) or not os.path.isabs(uv):
            raise OpError("bad-args", f"uv must be an absolute path: {uv!r}")
        if not os.path.isfile(uv):
            raise OpError("uv-missing", f"uv is not on the host yet: {uv}", uv=uv)


def op_venv_ensure(args):
    """Reuse venvs/<env_hash> when complete, else (re)build it at its final path, marker last.

    A second builder of the same env_hash waits for the lock (up to "wait_s", then "busy")
    and then reuses what the first one built: two apps may share an environment. With "app"
    and "release_id", the release's `venv` symlink is made under the same lock, so a
    concurrent prune never sees the new venv unreferenced."""
    root, env_hash = _root(args), _arg(args, "env_hash", ENV_RE)
    venvs = _orch(root, "venvs")
    os.makedirs(venvs, exist_ok=True)
    path = os.path.join(venvs, env_hash)
    with _Flock(path + ".lock", float(args.get("wait_s", 1800))) as lock:
        _clean_trash(venvs)
        marker, reused = _complete_marker(path), True
        if marker is None:
            _need_uv(args)
            reused = False
            _rmtree_atomic(path)  # an incomplete venv from a crashed build: never reused
            try:
                marker = _build_venv(root, path, args)
                _write_json(os.path.join(path, COMPLETE), marker)
            except BaseException:
                _rmtree_atomic(path)
                raise
        link = _link_venv(args, path)
        return {"env_hash": env_hash, "path": path, "reused": reused, "link": link,
                "waited_s": round(lock.waited_s, 3), "installer": marker.get("installer"),
                "fallback_reason": marker.get("fallback_reason"),
                "freeze": marker.get("freeze", []),
                "durations": {} if reused else marker.get("durations", {})}


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


# ---------------------------------------------------------------- prune


def _in_use(releases_dir):
    """Release ids some process has as its cwd or names on its command line (best effort:
    only the processes this user may inspect)."""
    found, prefix = set(), releases_dir + "/"
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
            rel = _releases_dir(os.path.join(root, app))
            for name in sorted(os.listdir(rel)) if os.path.isdir(rel) else ():
                if not name.startswith("."):
                    yield os.path.join(rel, name)


def _referenced(root):
    """Env hashes and wheel hashes used by any release of any app, staging ones included."""
    envs, wheels = set(), set()
    for path in _all_release_dirs(root):
        venv = os.path.join(path, "venv")
        if os.path.islink(venv):
            envs.add(os.path.basename(os.readlink(venv).rstrip("/")))
        manifest = _read_json(os.path.join(path, "manifest.json"), {})
        if isinstance(manifest, dict) and isinstance(manifest.get("env_hash"), str):
            envs.add(manifest["env_hash"])
        try:
            with open(os.path.join(path, "requirements.lock")) as fh:
                text = fh.read()
        except OSError:
            continue
        hashes = PYLOCK_HASH_RE.findall(text) if is_pylock(text) else LOCK_HASH_RE.findall(text)
        wheels.update(h.lower() for h in hashes)
    return envs, wheels


def _gc_venvs(root):
    venvs, removed = _orch(root, "venvs"), []
    names = os.listdir(venvs) if os.path.isdir(venvs) else []
    for name in sorted(n for n in names if ENV_RE.match(n)):
        try:
            with _Flock(os.path.join(venvs, name + ".lock"), 0):
                # references re-read under the venv's lock: venv-ensure links before unlocking
                if name not in _referenced(root)[0]:
                    _rmtree_atomic(os.path.join(venvs, name))
                    removed.append(name)
        except OpError:
            continue  # being built right now
    return removed


def _gc_wheels(root, grace_s):
    import shutil

    wheels, removed = _orch(root, "wheels"), []
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
    links = _orch(root, "links")
    for sha in os.listdir(links) if os.path.isdir(links) else ():
        if not os.path.isfile(os.path.join(wheels, sha + ".whl")):
            shutil.rmtree(os.path.join(links, sha), ignore_errors=True)
    return removed


def _gc_tmp(root):
    """Build dirs of installers killed mid-run (a lost SSH session kills the process group, so
    the script's own cleanup never ran); older than a day, so no live build is touched."""
    import shutil

    tmp, now = _orch(root, "tmp"), time.time()
    for name in os.listdir(tmp) if os.path.isdir(tmp) else ():
        path = os.path.join(tmp, name)
        if now - os.lstat(path).st_mtime > 86400:
            shutil.rmtree(path, ignore_errors=True)


def _gc_uv_cache(root):
    """uv's cache keeps every unpacked wheel forever (`uv cache prune` keeps entries of local
    find-links files). Venvs hardlink (or copy) from it and never need it again, so once a
    venv is gone the whole cache is dropped, when no build holds it; the next new venv
    unpacks its wheels again."""
    cache = _orch(root, "uv-cache")
    if not os.path.isdir(cache):
        return False
    try:
        with _Flock(_orch(root, "uv-cache.lock"), 0):
            _rmtree_atomic(cache)
    except OpError:
        return False  # a build is using it
    return True


def op_prune(args):
    """Keep the newest "keep" committed releases; never remove the current one, the rollback
    target, a staging one, or one a process is using. Then, for the whole host: venvs no
    release of any app links to (or names in its manifest), skipping any being built, and
    wheels no remaining release's requirements.lock lists (either format; older than
    "grace_s", default 600 s, so wheels uploaded for a lock not yet staged survive)."""
    app_dir, root = _app_dir(args), _root(args)
    keep = args.get("keep", 5)
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise OpError("bad-args", f"keep must be an integer >= 1: {keep!r}")
    with _app_lock(app_dir):
        state, current = _load_state(app_dir), _current_id(app_dir)
        protected = {current, _previous_good(app_dir, state, current)}
        protected |= _in_use(_releases_dir(app_dir))
        removed = []
        for rid in sorted(_committed_ids(app_dir), reverse=True)[keep:]:
            if rid not in protected:
                _rmtree_atomic(os.path.join(_releases_dir(app_dir), rid))
                removed.append(rid)
        if removed:
            state["history"] = [h for h in state["history"] if h not in removed]
            state["bad"] = [b for b in state["bad"] if b not in removed]
            _save_state(app_dir, state)
    os.makedirs(_orch(root), exist_ok=True)
    with _Flock(_orch(root, "gc.lock"), APP_LOCK_WAIT_S):
        venvs = _gc_venvs(root)
        wheels = _gc_wheels(root, float(args.get("grace_s", 600)))
        _gc_tmp(root)
        _clean_trash(_orch(root))
        cleared = _gc_uv_cache(root) if venvs else False
    return {"removed_releases": removed, "removed_venvs": venvs, "removed_wheels": wheels,
            "uv_cache_cleared": cleared, "kept": _committed_ids(app_dir)}


# ---------------------------------------------------------------- probe and batch


def op_probe(args):
    """The host's facts (`probe.py`, shipped in the same bundle, run in this process): the
    probe step then costs one interpreter start with `state` in the same batch, not two."""
    root = _root(args)
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe.py")
    if not os.path.isfile(path):
        raise OpError("not-found", f"probe.py is not beside hostops.py: {path}")
    spec = importlib.util.spec_from_file_location("orchestrator_probe", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)  # its own directory is sys.path[0]: it finds pynvml there
    return {"facts": probe.collect(root)}


#: A batch may not nest (one level keeps the reply's shape, and its failure, obvious).
MAX_BATCH = 32


def op_batch(args):
    """Run several ops in order in this one process; stop at the first that fails.

    "ops" is a list of {"op": name, "args": {...}} ("root" is inherited). The reply's "results"
    holds each op's reply, as the op alone would give it (with "ok"), up to and including a
    failed one; the batch itself is ok only when all were, and then carries the failed op's
    "error" and "kind" and its name as "failed_op"."""
    root = _root(args)
    calls = _arg(args, "ops")
    if not isinstance(calls, list) or not 0 < len(calls) <= MAX_BATCH:
        raise OpError("bad-args", f"ops must be a list of 1 to {MAX_BATCH} calls")
    for call in calls:
        if not (isinstance(call, dict) and call.get("op") in OPS and call["op"] != "batch"
                and isinstance(call.get("args", {}), dict)):
            raise OpError("bad-args", f"bad batch entry: {call!r}")
    results = []
    for call in calls:
        reply, _code = _run_op(call["op"], dict({"root": root}, **call.get("args", {})))
        results.append(reply)
        if not reply["ok"]:
            raise OpError(reply["kind"], reply["error"], results=results, failed_op=call["op"])
    return {"results": results}


# ---------------------------------------------------------------- main

OPS = {
    "stage-begin": op_stage_begin, "stage-verify-model": op_stage_verify_model,
    "stage-commit": op_stage_commit, "write-manifest": op_write_manifest,
    "write-file": op_write_file,
    "abort-stage": op_abort_stage, "wheels-missing": op_wheels_missing,
    "wheels-verify": op_wheels_verify, "venv-ensure": op_venv_ensure, "switch": op_switch,
    "rollback": op_rollback, "mark-bad": op_mark_bad, "releases": op_releases,
    "state": op_state, "prune": op_prune, "probe": op_probe, "batch": op_batch,
}


def _parse(argv):
    """<op> [--json-args JSON|-] (argparse costs more to import than most ops take to run)."""
    if not argv or argv[0] not in OPS:
        raise OpError("bad-args", f"usage: hostops.py <op> [--json-args JSON|-]; op is one of "
                      f"{', '.join(sorted(OPS))}; got {argv[:1]!r}")
    rest, raw = argv[1:], "{}"
    if len(rest) == 2 and rest[0] == "--json-args":
        raw = rest[1]
    elif len(rest) == 1 and rest[0].startswith("--json-args="):
        raw = rest[0].partition("=")[2]
    elif rest:
        raise OpError("bad-args", f"unrecognized arguments: {' '.join(rest)}")
    try:
        args = json.loads(sys.stdin.read() if raw == "-" else raw)
    except ValueError as exc:
        raise OpError("bad-args", f"--json-args is not JSON: {exc}") from None
    if not isinstance(args, dict):
        raise OpError("bad-args", "--json-args must be a JSON object")
    return argv[0], args


def _run_op(op, args):
    """One op's reply (with "ok") and exit code: 0, 1 for a failure, 2 for bad arguments."""
    try:
        return dict(OPS[op](args), ok=True), 0
    except OpError as exc:
        result = dict(exc.extra, ok=False, error=str(exc), kind=exc.kind)
        return result, 2 if exc.kind == "bad-args" else 1
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, "OSError")
        return {"ok": False, "error": f"{name}: {exc}", "kind": "os-error", "errno": name}, 1
    except Exception as exc:  # a bug in this script: still one JSON object, traceback on stderr
        import traceback

        traceback.print_exc()
        return {"ok": False, "error": repr(exc), "kind": "internal"}, 1


def main(argv=None):
    try:
        op, args = _parse(sys.argv[1:] if argv is None else argv)
        result, code = _run_op(op, args)
    except OpError as exc:
        result, code = dict(exc.extra, ok=False, error=str(exc), kind=exc.kind), 2
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
