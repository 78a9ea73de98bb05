"""An image release through the real daemon: a spec with `environment.image_base` submitted over
the socket, its bundle carrying the base image archive; the daemon builds the image from the
lock onto that base (into its own, empty image cache, with a Podman storage of its own), saying
so in its events, and deploys it to a testbed host, where the serving release runs that very
image."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.core.hashing import hash_file
from orchestrator.core.ociimage import read_image
from orchestrator.testbed import Testbed, baseimage, podman
from tests.daemons import DEPLOY, Daemon, stored_events, write_config
from tests.specs import WHEEL_CACHE, image_base_spec

HOST = "tb-08"  # an h100 profile, shared with test_env_image (whose images stay apart)
APP = "img-daemon"


def test_the_daemon_builds_an_image_base_release_and_deploys_it(
        testbed: Testbed, tmp_path: Path, daemons: Callable[..., Daemon],
        models_dir: Path) -> None:
    why = baseimage.why_not()
    if why:
        pytest.skip(why)
    spec = image_base_spec(tmp_path / "spec", APP, models_dir / "model.joblib",
                           models_dir / "golden.npz", [HOST])
    images = tmp_path / "images"  # empty: the daemon must build, not find a cached image
    storage = tmp_path / "podman"
    env = {"ORCHESTRATOR_WHEEL_CACHE": str(WHEEL_CACHE), "ORCHESTRATOR_IMAGE_CACHE": str(images),
           **podman.configure(storage, tag="dimg")}
    config = write_config(tmp_path, f'inventory = "{testbed.inventory_path}"\n' + DEPLOY)
    host = next(h for h in testbed.hosts if h.name == HOST)
    try:
        daemon = daemons(config, env=env)
        done = daemon.cli("submit", str(spec), "--wait", "--json", timeout=1500)
        assert done.returncode == 0, done.stdout + done.stderr
        deployment = json.loads(done.stdout.splitlines()[0])["id"]

        # The bundle carried the base archive, byte for byte.
        bundled = daemon.state_dir / "bundles" / deployment / "base.tar"
        assert hash_file(bundled) == hash_file(baseimage.archive_path())
        # The daemon built one image from the lock onto it, and the host serves that image.
        built = sorted(images.glob("built-*.tar"))
        assert len(built) == 1, sorted(images.iterdir())
        info = read_image(built[0], hash_file(built[0]))
        assert info.labels["org.orchestrator.lock-sha256"] == hash_file(
            spec.parent / "requirements.lock")
        manifest = json.loads((host.deploy_root / APP / "current" / "manifest.json").read_text())
        assert manifest["image"]["image_id"] == info.image_id
        assert manifest["image"]["archive_sha256"] == hash_file(built[0])
        assert "scikit_learn==1.9.1" in manifest["pip_freeze"]
        # `releases` names an image release's environment (its manifest's env_hash: it has no
        # venv link to read it from).
        listed = daemon.cli("releases", APP, "--json")
        assert listed.returncode == 0, listed.stdout + listed.stderr
        rows = json.loads(listed.stdout)[HOST]["releases"]
        assert [r["env_hash"] for r in rows] == [manifest["env_hash"]] and manifest["env_hash"]
        events = stored_events(daemon, deployment)
        # The build is told before the rollout's first event (it takes a minute or more).
        built_events = [e for e in events if e["event"] == "image.build"]
        assert [e["status"] for e in built_events] == ["started", "finished"], built_events
        assert built_events[1]["sha256"] == hash_file(built[0])
        assert events.index(built_events[1]) < next(
            i for i, e in enumerate(events) if e["event"] == "rollout.preflight")
        verified = [e for e in events if e["step"] == "verify" and e["status"] == "ok"]
        assert [e["host"] for e in verified] == [HOST] and verified[0]["p99_ms"] > 0
    finally:
        # The shared host keeps nothing of this test: its app (test_reverify audits every app
        # there) and the image loaded into its Podman.
        shutil.rmtree(host.deploy_root / APP, ignore_errors=True)
        host_env = {"PATH": baseimage.PATH,  # the host's own Podman, as its sshd sets it
                    "CONTAINERS_CONF": str(host.containers_dir / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(host.containers_dir / "storage.conf")}
        for tar in images.glob("built-*.tar"):
            ident = read_image(tar, hash_file(tar)).image_id
            subprocess.run(["podman", "rmi", "-f", ident], env=host_env, capture_output=True,
                           timeout=120, check=False)
        subprocess.run(["podman", "rmi", "-a", "-f"], env={"PATH": baseimage.PATH, **env},
                       capture_output=True, timeout=120, check=False)
        podman.release(storage)
        shutil.rmtree(podman.runroot(storage, "dimg"), ignore_errors=True)
