"""The host layout, as the controller sees it: every path on a host is built here, and only here.

DESIGN.md "Host layout", under the host's `deploy_root`:

    <root>/<app>/                          app_dir
    <root>/<app>/releases/                 releases_dir
    <root>/<app>/releases/<id>/            release_dir: model/, requirements.lock,
                                           manifest.json, golden.npz, venv -> ...
    <root>/<app>/current -> releases/<id>  current_link (replaced only by rename, on the host)
    <root>/<app>/.deploy-lock/owner.json   deploy_lock (one deployment per app and host)
    <root>/.orchestrator/venvs/<env_hash>/ venv_dir (content-addressed, shared by apps)
    <root>/.orchestrator/wheels/<sha>.whl  wheel (content-addressed wheel cache)
    <root>/.orchestrator/tools/<digest>/   tools_dir (the shipped host scripts)
    <root>/.orchestrator/bin/uv-<digest>   uv_binary
    <root>/.orchestrator/uv-cache/         uv_cache

Why one module: a path spelled in several files drifts (the layout was built in about ten), and a
second kind of release or environment must be able to change it in one place. The host side keeps
its own copy (it is a separate program, run by the hosts' python3) in
`orchestrator/hosts/remote/hostlayout.py`; tests check that the two agree. Everything here is a
pure function of strings; `deploy_root` is absolute (the inventory checks it) and a trailing '/'
is ignored. Release-relative names (`MODEL`, `LOCK_FILE`, ...) are what ops take as `path`.
"""

from __future__ import annotations

import posixpath

#: Names inside an app dir, a release dir, and under the root.
RELEASES = "releases"
CURRENT = "current"
DEPLOY_LOCK = ".deploy-lock"
DEPLOY_LOCK_OWNER = "owner.json"
MODEL = "model"
LOCK_FILE = "requirements.lock"
MANIFEST = "manifest.json"
GOLDEN = "golden.npz"
VENV = "venv"
ORCHESTRATOR = ".orchestrator"


def _join(*parts: str) -> str:
    return posixpath.join(*parts)


def root_dir(deploy_root: str) -> str:
    """The deploy root, normalized (no trailing '/', no '.' segments)."""
    return posixpath.normpath(deploy_root)


def app_dir(deploy_root: str, app: str) -> str:
    return _join(root_dir(deploy_root), app)


def releases_dir(deploy_root: str, app: str) -> str:
    return _join(app_dir(deploy_root, app), RELEASES)


def release_dir(deploy_root: str, app: str, release_id: str) -> str:
    return _join(releases_dir(deploy_root, app), release_id)


def current_link(deploy_root: str, app: str) -> str:
    return _join(app_dir(deploy_root, app), CURRENT)


def current_manifest(deploy_root: str, app: str) -> str:
    """The manifest of whatever release `current` points at (read through the link)."""
    return _join(current_link(deploy_root, app), MANIFEST)


def deploy_lock(deploy_root: str, app: str) -> str:
    """The deployment lock directory of an app (held for a whole pipeline)."""
    return _join(app_dir(deploy_root, app), DEPLOY_LOCK)


def in_release(release_path: str, *parts: str) -> str:
    """A path inside a release dir given by its path (e.g. a StagedRelease's or an audit's)."""
    return _join(release_path, *parts)


def release_manifest(release_path: str) -> str:
    return in_release(release_path, MANIFEST)


def release_golden(release_path: str) -> str:
    """Where the golden file travels with the release (so it carries what it was checked by)."""
    return in_release(release_path, GOLDEN)


def release_python(release_path: str) -> str:
    """The interpreter of the release's venv (through the release's `venv` link)."""
    return venv_python(in_release(release_path, VENV))


def venv_python(venv_path: str) -> str:
    """The interpreter of a venv given by its path (e.g. a `venv-ensure` reply's `path`)."""
    return _join(venv_path, "bin", "python")


def model_rel(local_model_name: str, is_dir: bool) -> str:
    """The staged model, relative to the release dir: model/ for a directory model,
    model/<file name> for a file model (what verify-model takes as `path`)."""
    return MODEL if is_dir else _join(MODEL, local_model_name)


def release_of(release_path: str) -> tuple[str, str, str]:
    """(deploy_root, app, release_id) of `<root>/<app>/releases/<id>`."""
    rest, release_id = posixpath.split(posixpath.normpath(release_path))
    rest, releases = posixpath.split(rest)
    root, app = posixpath.split(rest)
    if releases != RELEASES or not root or not app:
        raise ValueError(f"not a release dir: {release_path!r}")
    return root, app, release_id


def orchestrator_dir(deploy_root: str, *parts: str) -> str:
    """Under `<root>/.orchestrator/`: what the apps share."""
    return _join(root_dir(deploy_root), ORCHESTRATOR, *parts)


def venvs_dir(deploy_root: str) -> str:
    return orchestrator_dir(deploy_root, "venvs")


def venv_dir(deploy_root: str, env_hash: str) -> str:
    return _join(venvs_dir(deploy_root), env_hash)


def wheels_dir(deploy_root: str) -> str:
    return orchestrator_dir(deploy_root, "wheels")


def wheel(deploy_root: str, sha256: str) -> str:
    return _join(wheels_dir(deploy_root), f"{sha256}.whl")


def wheel_upload(deploy_root: str, sha256: str) -> str:
    """Where a wheel is uploaded to, before `wheels-verify` checks and renames it."""
    return f"{wheel(deploy_root, sha256)}.part"


def tools_dir(deploy_root: str, digest: str) -> str:
    """The shipped tools bundle with this digest."""
    return orchestrator_dir(deploy_root, "tools", digest)


def bytecode_archive(deploy_root: str, sha256: str) -> str:
    """Where the controller's .pyc archive for a venv build is uploaded (hostops_bytecode)."""
    return orchestrator_dir(deploy_root, "bytecode", f"{sha256}.tar.gz")


def uv_binary(deploy_root: str, digest: str) -> str:
    """The controller's uv binary on the host, named by (a prefix of) its sha256."""
    return orchestrator_dir(deploy_root, "bin", f"uv-{digest[:16]}")


def uv_cache(deploy_root: str) -> str:
    return orchestrator_dir(deploy_root, "uv-cache")


def tool(tools_root: str, name: str) -> str:
    """A file of a tools bundle (`tools_dir(...)`), e.g. `tool(root, "probe.py")`."""
    return _join(tools_root, name)
