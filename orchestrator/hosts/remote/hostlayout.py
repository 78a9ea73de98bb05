"""The host layout, as the host-side scripts see it: every path they build under the deploy root.

Shipped in the flat tools bundle (stdlib only, Python 3.9+); the controller's own copy is
orchestrator/hosts/layout.py (a separate program, the same names; tests check they agree).

    <root>/<app>/releases/<id>[.staging]/  model/, requirements.lock, manifest.json, venv
    <root>/<app>/current -> releases/<id>
    <root>/<app>/state.json, .lock          the app's state and its per-op flock
    <root>/<app>/.deploy-lock/owner.json    one deployment per app (held for a whole pipeline)
    <root>/.orchestrator/{venvs,wheels,links,tools,bin,uv-cache,bytecode}/
"""

from __future__ import annotations

import os

RELEASES = "releases"
CURRENT = "current"
STATE = "state.json"
APP_LOCK = ".lock"
DEPLOY_LOCK = ".deploy-lock"
DEPLOY_LOCK_OWNER = "owner.json"
MODEL = "model"
LOCK_FILE = "requirements.lock"
MANIFEST = "manifest.json"
VENV = "venv"
ORCHESTRATOR = ".orchestrator"


def app_dir(root: str, app: str) -> str:
    return os.path.join(root, app)


def releases_dir(app_dir_: str) -> str:
    return os.path.join(app_dir_, RELEASES)


def current_link(app_dir_: str) -> str:
    return os.path.join(app_dir_, CURRENT)


def state_file(app_dir_: str) -> str:
    return os.path.join(app_dir_, STATE)


def app_lock_file(app_dir_: str) -> str:
    return os.path.join(app_dir_, APP_LOCK)


def deploy_lock(app_dir_: str) -> str:
    return os.path.join(app_dir_, DEPLOY_LOCK)


def deploy_lock_owner(app_dir_: str) -> str:
    return os.path.join(deploy_lock(app_dir_), DEPLOY_LOCK_OWNER)


def manifest(release: str) -> str:
    """A release dir's manifest.json."""
    return os.path.join(release, MANIFEST)


def release_venv(release: str) -> str:
    return os.path.join(release, VENV)


def orch_path(root: str, *parts: str) -> str:
    """Under <root>/.orchestrator/: what the apps share."""
    return os.path.join(root, ORCHESTRATOR, *parts)


def bytecode_archive(root: str, sha256: str) -> str:
    """The controller's .pyc archive for a venv build (hostops_bytecode), once verified."""
    return orch_path(root, "bytecode", sha256 + ".tar.gz")


def uv_binary(root: str, sha256: str) -> str:
    """The controller's uv binary, named by a prefix of its sha256 (file-receive "uv")."""
    return orch_path(root, "bin", "uv-" + sha256[:16])


def model_dir(release: str) -> str:
    return os.path.join(release, MODEL)


def lock_file(release: str) -> str:
    return os.path.join(release, LOCK_FILE)
