"""hostops' environments: the host's content-addressed wheel cache (uploads verified into
place) and the venvs built from it, offline and hash-checked, with uv or pip, at their final
path, marker last; one builder per env_hash. Shipped beside hostops.py (stdlib only, 3.9+).

Offers hostops.py the wheels-missing, wheels-verify and venv-ensure ops; nothing to the other
modules."""

from __future__ import annotations

import os
import re
import time

import hostlayout
from contenthash import sha256_file
from hostops_bytecode import bytecode_missing, unpack_bytecode
from hostops_fs import (
    ENV_RE,
    HASH_RE,
    RELEASE_RE,
    Flock,
    OpError,
    app_dir_arg,
    checked_arg,
    clean_trash,
    fsync_dir,
    orch_path,
    read_json,
    replace_symlink,
    rmtree_atomic,
    root_arg,
    write_json,
)
from hostops_pylock import is_pylock, pinned_requirements, pylock_packages
from hostops_releases import release_path

WHEEL_RE = re.compile(r"^[A-Za-z0-9_.+!-]+\.whl$")
COMPLETE = ".orchestrator-complete.json"


# ---------------------------------------------------------------- wheel cache


def _shas(args):
    shas = checked_arg(args, "shas")
    if not isinstance(shas, list) or not all(isinstance(s, str) and HASH_RE.match(s) for s in shas):
        raise OpError("bad-args", "shas must be a list of sha256 hex digests")
    return shas


def op_wheels_missing(args):
    """Which of these wheels the host's cache lacks (creates the cache dir for the uploads)."""
    wheels = orch_path(root_arg(args), "wheels")
    os.makedirs(wheels, exist_ok=True)
    shas = _shas(args)
    missing = [s for s in shas if not os.path.isfile(os.path.join(wheels, s + ".whl"))]
    return {"missing": missing, "present": [s for s in shas if s not in missing], "dir": wheels}


def op_wheels_verify(args):
    """After upload to wheels/<sha>.whl.part: hash it, rename into place, or delete it."""
    wheels = orch_path(root_arg(args), "wheels")
    verified, bad, missing = [], [], []
    for sha in _shas(args):
        final = os.path.join(wheels, sha + ".whl")
        part = final + ".part"
        if os.path.isfile(part):
            actual = sha256_file(part)
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
        fsync_dir(wheels)
        what = ["{} arrived as {}".format(b["expected"], b["actual"]) for b in bad]
        what += [f"{m} never arrived" for m in missing]
        raise OpError("wheel-hash-mismatch" if bad else "missing-wheel",
                      "wheel upload failed verification: " + "; ".join(what),
                      verified=verified, bad=bad, missing=missing)
    if verified:
        fsync_dir(wheels)
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
        "UV_NO_PROGRESS": "1", "UV_CACHE_DIR": orch_path(root, "uv-cache"),
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
        source = orch_path(root, "wheels", sha + ".whl")
        if not os.path.isfile(source):
            raise OpError("missing-wheel", f"wheel {filename} (sha256 {sha}) is not in the "
                          "host's cache", sha256=sha, filename=filename)
        directory = orch_path(root, "links", sha)
        os.makedirs(directory, exist_ok=True)
        if not os.path.exists(os.path.join(directory, filename)):
            replace_symlink(directory, filename, source)  # atomic: builders may race here
        dirs.append(directory)
    return dirs


def _find_links(dirs):
    return [arg for d in dirs for arg in ("--find-links", d)]


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
    lock = checked_arg(args, "lock")
    if not isinstance(lock, str) or not os.path.isabs(lock) or not os.path.isfile(lock):
        raise OpError("not-found", f"lock file not found on host: {lock!r}")
    timeout = float(args.get("timeout_s", 1800))
    import shutil
    import tempfile

    os.makedirs(orch_path(root, "tmp"), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="build-", dir=orch_path(root, "tmp"))
    # shared: builders run side by side; prune clears uv's cache only when none is running
    cache_use = Flock(orch_path(root, "uv-cache.lock"), None, shared=True)
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
        # after the install (its .py files are what the .pyc must sit beside), before the marker
        bytecode = unpack_bytecode(root, path, args)
        if bytecode and bytecode.get("shipped"):
            durations["bytecode"] = bytecode["unpack_s"]
        freeze = _check(_run(cmds["freeze"], env, tmp, 120, "freeze"), "freeze").stdout
        return {"installer": installer, "fallback_reason": fallback, "python": python,
                "lock_sha256": sha256_file(lock), "lock_format": lock_format,
                "created": time.time(),
                "freeze": [line for line in freeze.splitlines() if line.strip()],
                "durations": durations, "bytecode": bytecode}
    finally:
        if cache_use.fd is not None:
            cache_use.__exit__()
        shutil.rmtree(tmp, ignore_errors=True)


def _complete_marker(path):
    """The marker, if the venv is complete and its interpreter still runs from it."""
    marker = read_json(os.path.join(path, COMPLETE), None)
    if marker is None or not os.path.exists(os.path.join(path, "bin", "python")):
        return None
    return marker


def _link_venv(args, path):
    if args.get("app") is None:
        return None
    release = release_path(app_dir_arg(args), checked_arg(args, "release_id", RELEASE_RE))
    replace_symlink(release, "venv", path)
    return hostlayout.release_venv(release)


def _need_uploads(root, args):
    """With "need_uv", a build refuses to start without the uv binary at "uv", so the caller
    uploads it only when a venv is really built (a reused venv never needs it); likewise with
    "want_bytecode" and the controller's bytecode archive (hostops_bytecode). Both at once:
    uv-missing says `bytecode_missing`, so one upload round serves both."""
    uv = args.get("uv")
    bytecode = bytecode_missing(root, args)
    if args.get("need_uv") and args.get("installer", "uv") == "uv" and uv:
        if not isinstance(uv, str) or not os.path.isabs(uv):
            raise OpError("bad-args", f"uv must be an absolute path: {uv!r}")
        if not os.path.isfile(uv):
            raise OpError("uv-missing", f"uv is not on the host yet: {uv}", uv=uv,
                          bytecode_missing=bytecode)
    if bytecode:
        raise OpError("bytecode-missing", "the bytecode archive is not on the host yet",
                      bytecode_missing=True)


def op_venv_ensure(args):
    """Reuse venvs/<env_hash> when complete, else (re)build it at its final path, marker last.

    A second builder of the same env_hash waits for the lock (up to "wait_s", then "busy")
    and then reuses what the first one built: two apps may share an environment. With "app"
    and "release_id", the release's `venv` symlink is made under the same lock, so a
    concurrent prune never sees the new venv unreferenced."""
    root, env_hash = root_arg(args), checked_arg(args, "env_hash", ENV_RE)
    venvs = orch_path(root, "venvs")
    os.makedirs(venvs, exist_ok=True)
    path = os.path.join(venvs, env_hash)
    with Flock(path + ".lock", float(args.get("wait_s", 1800))) as lock:
        clean_trash(venvs)
        marker, reused = _complete_marker(path), True
        if marker is None:
            _need_uploads(root, args)
            reused = False
            rmtree_atomic(path)  # an incomplete venv from a crashed build: never reused
            try:
                marker = _build_venv(root, path, args)
                write_json(os.path.join(path, COMPLETE), marker)
            except BaseException:
                rmtree_atomic(path)
                raise
        link = _link_venv(args, path)
        return {"env_hash": env_hash, "path": path, "reused": reused, "link": link,
                "waited_s": round(lock.waited_s, 3), "installer": marker.get("installer"),
                "fallback_reason": marker.get("fallback_reason"),
                "freeze": marker.get("freeze", []),
                "durations": {} if reused else marker.get("durations", {}),
                "bytecode": None if reused else marker.get("bytecode")}


#: The ops this module offers, by wire name: hostops.py gathers every hostops_* module's.
OPS = {"wheels-missing": op_wheels_missing, "wheels-verify": op_wheels_verify,
       "venv-ensure": op_venv_ensure}
