"""The image environment on testbed hosts, with real Podman: a scikit-learn model deployed as
an image built by `build_image` from the spec's hashed lock onto a debootstrap base image
(orchestrator/testbed/baseimage.py), verified by the same warmup runner inside the image; the
archive shipped only to hosts whose engine lacks the image; a wrong-prediction image stopped on
the canary; a tampered upload never loaded; the serving container replaced at a switch with a
request loop against it seeing no failure, and started again by a rollback."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.hashing import hash_path
from orchestrator.core.inventory import Inventory
from orchestrator.core.spec import Service, load_spec
from orchestrator.deploy.batch import deploy, prepare
from orchestrator.deploy.deadline import Deadline
from orchestrator.deploy.imagebuild import deploy_time_image
from orchestrator.deploy.pipeline import HostStatus
from orchestrator.deploy.steps.recovery import roll_back_and_restart
from orchestrator.hosts import ops
from orchestrator.hosts.hostops import HostOpFailed, HostOps, OpKind
from orchestrator.hosts.pool import Pool
from orchestrator.hosts.ssh import SshOptions
from orchestrator.reverify.audit import reverify_host
from orchestrator.testbed import Testbed, baseimage, sshd
from tests import serving_app
from tests.podman import Podman
from tests.podman import available as podman_missing
from tests.specs import IMAGE_CACHE, VERIFY, WHEEL_CACHE, image_base_spec
from tests.test_deploy import Sink

HOSTS = ["tb-07", "tb-08"]  # h100 profiles; gpu.required false (the testbed has no toolkit)


@pytest.fixture(scope="module")
def pool(inventory: Inventory) -> Any:
    with Pool(SshOptions.for_inventory(inventory)) as p:
        yield p


@pytest.fixture(scope="module")
def sklearn_image(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    """The image the lock makes on the debootstrap base, built as a deploy does it for
    `environment.image_base` (deploy_time_image) into the tests' cache, kept between runs:
    the build takes minutes on a busy machine."""
    why = baseimage.why_not()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("build")
    spec = load_spec(image_base_spec(tmp / "spec", "builder", models_dir / "model.joblib",
                               models_dir / "golden.npz", ["tb-01"]))
    engine = Podman(tmp / "podman")
    built = deploy_time_image(spec, cache_dir=IMAGE_CACHE, wheel_cache=WHEEL_CACHE,
                              engine=["podman", "--root", str(engine.home / "root"),
                                      "--runroot", engine.runroot], env=engine.env)
    engine.run("rmi", "-a", "-f")
    assert built.paths.image is not None and built.environment.requirements is None
    return built.paths.image


def image_spec(folder: Path, app: str, model: Path, golden: Path, archive: Path, *,
               hosts: list[str] = HOSTS, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, folder / "model.joblib")
    shutil.copy(golden, folder / "golden.npz")
    os.link(archive, folder / "image.tar")  # inside the spec's folder, without a copy
    spec = folder / "spec.yaml"
    spec.write_text(
        f"apiVersion: orchestrator/v1\nkind: Deployment\nname: {app}\n"
        f"model: {{path: model.joblib, format: joblib, sha256: "
        f"{hash_path(folder / 'model.joblib')}}}\n"
        f'environment: {{python: "3.11", image: {{archive: image.tar, sha256: '
        f"{hashlib.sha256(archive.read_bytes()).hexdigest()}}}}}\n"
        f"targets: [{', '.join(hosts)}]\nrollout: {{canary: 1, batch_size: 2}}\n" + VERIFY
        + extra)
    return spec


def manifest(inventory: Inventory, host: str, app: str) -> dict[str, Any]:
    root = Path(inventory.hosts[host].deploy_root)
    return dict(json.loads((root / app / "current" / "manifest.json").read_text()))


def test_image_release_deploys_then_reuses_the_loaded_image(
        sklearn_image: Path, models_dir: Path, tmp_path: Path, inventory: Inventory,
        pool: Pool, testbed: Testbed) -> None:
    spec = load_spec(image_spec(tmp_path / "v1", "img-app", models_dir / "model.joblib",
                                models_dir / "golden.npz", sklearn_image))
    result = deploy(prepare(spec, wheel_cache=WHEEL_CACHE), inventory.resolve(HOSTS),
                    pool=pool, sink=Sink())
    assert result.ok, {n: r.error for n, r in result.hosts.items()}
    for host in HOSTS:
        m = manifest(inventory, host, "img-app")
        assert m["image"]["image_id"].startswith("sha256:") and m["image"]["engine"] == "podman"
        assert m["platform"] == "linux-amd64" and m["python_version"] == "3.11"
        assert "scikit_learn==1.9.1" in m["pip_freeze"], m["pip_freeze"]  # from its layers
        assert (Path(inventory.hosts[host].deploy_root) / "img-app" / "current"
                / "python").is_file()
    # v2 of the model in the same image: the engines have it, nothing is shipped again
    v2 = load_spec(image_spec(tmp_path / "v2", "img-app", models_dir / "changed.joblib",
                              models_dir / "golden-v2.npz", sklearn_image))
    again = deploy(prepare(v2, wheel_cache=WHEEL_CACHE), inventory.resolve(HOSTS),
                   pool=pool, sink=Sink())
    assert again.ok, {n: r.error for n, r in again.hosts.items()}
    uploads = Path(inventory.hosts[HOSTS[0]].deploy_root) / ".orchestrator" / "images"
    assert not any(p.suffix == ".part" for p in uploads.iterdir())  # deleted once loaded


def test_wrong_predictions_stop_the_rollout_on_the_canary(
        sklearn_image: Path, models_dir: Path, tmp_path: Path, inventory: Inventory,
        pool: Pool) -> None:
    # A spec asking for its image at deploy time: the image the fixture built (the cache has
    # it), deployed as an image release of that archive.
    spec = load_spec(image_base_spec(tmp_path / "bad", "img-bad", models_dir / "changed.joblib",
                               models_dir / "golden.npz", HOSTS))
    inputs = prepare(spec, wheel_cache=WHEEL_CACHE, image_cache=IMAGE_CACHE)
    assert inputs.spec.paths.image == sklearn_image and inputs.spec.digest == spec.digest
    result = deploy(inputs, inventory.resolve(HOSTS), pool=pool, sink=Sink())
    canary = result.hosts[HOSTS[0]]
    assert canary.status is HostStatus.FAILED and canary.failed_step == "verify"
    assert "golden" in (canary.error or "")
    assert result.hosts[HOSTS[1]].status is not HostStatus.SUCCEEDED  # never started


def test_three_hosts_health_failure_after_the_switch_rolls_back_to_the_previous_image(
        sklearn_image: Path, models_dir: Path, tmp_path: Path, inventory: Inventory,
        pool: Pool) -> None:
    hosts = ["tb-01", *HOSTS]  # a canary, then a batch of two
    v1 = load_spec(image_spec(tmp_path / "v1", "img-health", models_dir / "model.joblib",
                              models_dir / "golden.npz", sklearn_image, hosts=hosts))
    good = deploy(prepare(v1, wheel_cache=WHEEL_CACHE), inventory.resolve(hosts), pool=pool,
                  sink=Sink())
    assert good.ok, {n: r.error for n, r in good.hosts.items()}
    # v2 passes verify in the image but its service never becomes healthy after the switch
    unhealthy = "service: {health_command: 'test -e current/never', health_timeout_s: 2}\n"
    v2 = load_spec(image_spec(tmp_path / "v2", "img-health", models_dir / "changed.joblib",
                              models_dir / "golden-v2.npz", sklearn_image, hosts=hosts,
                              extra=unhealthy))
    bad = deploy(prepare(v2, wheel_cache=WHEEL_CACHE), inventory.resolve(hosts), pool=pool,
                 sink=Sink())
    canary = bad.hosts["tb-01"]
    assert canary.status is HostStatus.ROLLED_BACK and canary.failed_step == "check"
    assert all(bad.hosts[h].status is not HostStatus.SUCCEEDED for h in HOSTS)
    for host in hosts:  # every host serves v1's release, in v1's image
        root = Path(inventory.hosts[host].deploy_root) / "img-health"
        assert (root / "current").resolve().name == good.release_id
        assert manifest(inventory, host, "img-health")["image"]["image_id"].startswith("sha256:")


def test_a_tampered_upload_is_deleted_and_never_loaded(
        sklearn_image: Path, inventory: Inventory, pool: Pool) -> None:
    host = inventory.hosts[HOSTS[1]]
    sha = "0" * 64
    with pool.session(host) as t:
        hostops = HostOps(t, host.deploy_root)
        presence = hostops.run(ops.image_present("sha256:" + "1" * 64, sha,
                                                 engine="/usr/bin/podman"))
        assert not presence.present
        t.put(b"not the archive the spec names", presence.upload_path, 0o600)
        hostops.run(ops.stage_begin("img-tamper", "20260101T000000Z-0000abcd",
                                    deployment="d"))
        with pytest.raises(HostOpFailed) as info:
            hostops.run(ops.image_ensure("img-tamper", "20260101T000000Z-0000abcd",
                                         "sha256:" + "1" * 64, sha, engine="/usr/bin/podman",
                                         gpu_args=[], wait_s=10))
        assert info.value.kind is OpKind.HASH_MISMATCH
        assert not Path(presence.upload_path).exists()



class Requests(threading.Thread):
    """GET `url` in a loop until stopped: the release each answer names, and every failure."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.seen, self.errors = url, list[str](), list[str]()
        self.done = threading.Event()
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def run(self) -> None:
        while not self.done.is_set():
            try:
                with self.opener.open(self.url, timeout=10) as r:
                    self.seen.append(json.loads(r.read())["release"])
            except OSError as exc:
                self.errors.append(repr(exc))
            self.done.wait(0.02)  # 50 requests a second: enough to see a gap, not a CPU hog

    def __enter__(self) -> Requests:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join(30)


def test_the_serving_container_is_replaced_without_a_gap_and_restarted_by_a_rollback(
        sklearn_image: Path, models_dir: Path, tmp_path: Path, inventory: Inventory,
        pool: Pool) -> None:
    host = inventory.hosts[HOSTS[0]]
    port = sshd.free_port([host.address])
    command = json.dumps(["python3", "-c", Path(serving_app.__file__).read_text(),
                          host.address, str(port)])

    def spec(name: str, model: str, golden: str, health: str = "") -> Any:
        service = (f"service: {{container: {{command: {command}, ready_command: "
                   f"'test -e /tmp/ready', stop_timeout_s: 5}}, health_timeout_s: 2{health}}}\n")
        return load_spec(image_spec(tmp_path / name, "img-serve", models_dir / model,
                                    models_dir / golden, sklearn_image, hosts=[host.name],
                                    extra=service))

    def release() -> tuple[bool, str | None, str | None, str]:
        with pool.session(host) as t:
            s = HostOps(t, host.deploy_root).run(ops.container_status("img-serve", "img-serve"))
        return s.running, s.image_id, s.release_id, s.expected_image_id

    first = deploy(prepare(spec("v1", "model.joblib", "golden.npz"), wheel_cache=WHEEL_CACHE),
                   inventory.resolve(
        [host.name]), pool=pool, sink=Sink())
    assert first.ok, {n: r.error for n, r in first.hosts.items()}
    with Requests(f"http://{host.address}:{port}/") as loop:
        second = deploy(prepare(spec("v2", "changed.joblib", "golden-v2.npz"),
                                wheel_cache=WHEEL_CACHE),
                        inventory.resolve([host.name]), pool=pool, sink=Sink())
    assert second.ok, {n: r.error for n, r in second.hosts.items()}
    assert loop.errors == [] and loop.seen, loop.errors[:3]
    assert loop.seen[0] == first.release_id and loop.seen[-1] == second.release_id
    running, image, rid, expected = release()
    assert running and image == expected and rid == second.release_id
    # v3's service never passes its health check after the switch: rolled back, and v2's
    # container (replaced by v3's) started again, still without a refused request.
    with Requests(f"http://{host.address}:{port}/") as loop:
        third = deploy(prepare(spec("v3", "model.joblib", "golden.npz",
                                    ", health_command: 'test -e current/never'"),
                               wheel_cache=WHEEL_CACHE),
                       inventory.resolve([host.name]), pool=pool, sink=Sink())
    bad = third.hosts[host.name]
    assert bad.status is HostStatus.ROLLED_BACK and bad.failed_step == "check", bad.error
    assert loop.errors == [] and third.release_id in loop.seen, loop.errors[:3]
    assert loop.seen[-1] == second.release_id
    running, image, rid, expected = release()
    assert running and image == expected and rid == second.release_id
    # Replaced by hand with another image: re-verification reports it, naming both images.
    with pool.session(host) as t:
        other = t.run(["podman", "commit", "-q", "img-serve", "localhost/by-hand:1"],
                      timeout=300).stdout.strip()
        t.run(["podman", "rm", "-f", "img-serve"], timeout=120)
        t.run(["podman", "run", "-d", "--name", "img-serve", "--network=none",
               "localhost/by-hand:1", "sleep", "600"], timeout=120)
        try:
            checked = reverify_host(t, host, lambda d: None, Sink(), apps=["img-serve"])
        finally:
            t.run(["podman", "rm", "-f", "img-serve"], timeout=120)
            t.run(["podman", "rmi", "-f", "localhost/by-hand:1"], timeout=120)
    assert checked.status == "failed", checked.reasons
    assert any(f"runs image sha256:{other.removeprefix('sha256:')}" in r
               and expected in r for r in checked.reasons), checked.reasons



def test_prune_removes_the_images_of_removed_releases_that_nothing_else_runs_in(
        inventory: Inventory, pool: Pool, tmp_path: Path) -> None:
    """Three releases of an app on a host with Podman, each in an image of its own (tiny ones,
    imported here); the second's image is also named by another app's release. Keeping one
    removes the two older releases and the first one's image only."""
    why = podman_missing()
    if why:
        pytest.skip(why)
    host = inventory.hosts[HOSTS[1]]
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "rootfs" / "hello").write_text("hi\n")
    tar = shutil.make_archive(str(tmp_path / "rootfs"), "tar", tmp_path / "rootfs")
    root = Path(host.deploy_root)
    ids = [f"2026010{n}T000000Z-0000abcd" for n in (1, 2, 3)]
    with pool.session(host) as t:
        images = []
        for n in range(3):  # a label apiece: three configs, three image ids
            t.run(["podman", "import", "--change", f"LABEL n={n}", tar, f"localhost/tiny:{n}"],
                  timeout=300)
            images.append("sha256:" + t.run(["podman", "image", "inspect", "--format", "{{.Id}}",
                                             f"localhost/tiny:{n}"]).stdout.strip()
                          .removeprefix("sha256:"))
        named = [("img-prune", ids[0], images[0]), ("img-prune", ids[1], images[1]),
                 ("img-prune", ids[2], images[2]), ("img-prune-other", ids[0], images[1])]
        for app, rid, image in named:
            (root / app / "releases" / rid).mkdir(parents=True)
            (root / app / "releases" / rid / "image.json").write_text(json.dumps(
                {"image_id": image, "engine": "/usr/bin/podman", "gpu_args": []}))
        (root / "img-prune" / "current").symlink_to(f"releases/{ids[2]}")
        try:
            out = HostOps(t, host.deploy_root).prune("img-prune", 1)
            left = t.run(["podman", "images", "-q", "--no-trunc"]).stdout
        finally:
            t.run(["podman", "rmi", "-f", "localhost/tiny:1", "localhost/tiny:2"], timeout=120)
            # Hand-made releases without manifests: left on the shared testbed host, every
            # later re-verification of that host (test_reverify) would fail on their audit.
            for app in ("img-prune", "img-prune-other"):
                shutil.rmtree(root / app)
    assert sorted(out.removed_releases) == ids[:2] and out.removed_images == (images[0],)
    assert [i.removeprefix("sha256:") in left for i in images] == [False, True, True]


def test_a_rollback_to_a_release_without_a_container_removes_the_undone_container(
        inventory: Inventory, pool: Pool, tmp_path: Path) -> None:
    """v1 served by its own restart (no container), v2 in a serving container: rolling v2
    back leaves no container of v2 serving beside v1 (release dirs written by hand; the
    container only created, a tiny image imported here)."""
    why = podman_missing()
    if why:
        pytest.skip(why)
    host, app = inventory.hosts[HOSTS[1]], "img-mixed"
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "rootfs" / "hello").write_text("hi\n")
    tar = shutil.make_archive(str(tmp_path / "rootfs"), "tar", tmp_path / "rootfs")
    svc = Service.model_validate({"container": {"command": ["/hello"], "ready_command": "true",
                                                "stop_timeout_s": 1}})
    v1, v2 = "20260101T000000Z-0000abcd", "20260102T000000Z-0000abcd"
    releases = Path(host.deploy_root) / app / "releases"
    with pool.session(host) as t:
        t.run(["podman", "import", tar, "localhost/tiny-mixed:1"], timeout=300)
        image = "sha256:" + t.run(["podman", "image", "inspect", "--format", "{{.Id}}",
                                   "localhost/tiny-mixed:1"]).stdout.strip().removeprefix(
                                       "sha256:")
        for rid, service in ((v1, {}), (v2, svc.model_dump(mode="json"))):
            (releases / rid).mkdir(parents=True)
            (releases / rid / "manifest.json").write_text(json.dumps({"service": service}))
        (releases / v2 / "image.json").write_text(json.dumps(
            {"image_id": image, "engine": "/usr/bin/podman", "gpu_args": []}))
        hostops = HostOps(t, host.deploy_root)
        hostops.run(ops.switch(app, v1, 1))
        hostops.run(ops.switch(app, v2, 2))
        t.run(["podman", "create", "--name", app, "localhost/tiny-mixed:1", "/hello"],
              timeout=120)
        try:
            out = roll_back_and_restart(t, host, app, v2, svc,
                                        Deadline(host.name, "rollback", 120))
            left = t.run(["podman", "ps", "-a", "--format", "{{.Names}}"]).stdout.split()
        finally:
            t.run(["podman", "rm", "-f", app], timeout=120)
            t.run(["podman", "rmi", "-f", "localhost/tiny-mixed:1"], timeout=120)
            # Its hand-made releases have no model hash: left on the shared testbed host, every
            # later re-verification of that host (test_reverify) would fail on their audit.
            shutil.rmtree(Path(host.deploy_root) / app)
    assert out.current == v1 and out.restarted == {"container_removed": True}
    assert app not in left
