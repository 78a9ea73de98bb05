"""The controller sends a model only when it is what `model.sha256` says and holds nothing but
regular files and directories: a symlink (`notes.txt -> ~/secret`) or a FIFO inside the model
directory is refused, naming it, at `orchestrator deploy` (before any connection), in the
upload itself, at packing for `submit`, and at submission to the daemon (HTTP 400)."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.cli.app import main
from orchestrator.core.hashing import hash_path
from orchestrator.core.spec import load_spec
from orchestrator.daemon.api import create_app
from orchestrator.daemon.bundle import pack_bundle, unpack_bundle
from orchestrator.daemon.config import DaemonConfig
from orchestrator.daemon.events import EventHub
from orchestrator.daemon.runners.base import EchoRunner
from orchestrator.daemon.service import Service
from orchestrator.daemon.store import open_store
from orchestrator.deploy.batch import prepare
from orchestrator.errors import InvalidInput, SpecError
from orchestrator.hosts.hostops import HostOps
from orchestrator.hosts.modelfiles import small_model
from orchestrator.hosts.opresults import StagedRelease
from tests.specs import LOCK, stub_spec
from tests.test_hostops import LocalTransport

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # starlette asks for `httpx2`
    from starlette.testclient import TestClient

TOKEN = "s3cret-token-0123456789"


def dir_spec(folder: Path, *, link: str | None = "notes.txt") -> Path:
    """A SavedModel-shaped directory model whose sha256 is right for its regular files; with
    `link`, a symlink of that name inside it points at a secret outside the folder."""
    spec = stub_spec(folder, ["tb-01"], name="fraud", lock=LOCK, gpu=None)
    model = folder / "model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"graph")
    (model / "variables" / "v.index").write_bytes(b"weights")
    text = spec.read_text().replace(
        spec.read_text().split("\n")[3],
        f"model: {{path: model, format: tensorflow-savedmodel, sha256: {hash_path(model)}}}")
    spec.write_text(text)
    if link is not None:
        (folder.parent / "secret").write_text("do not ship me")
        os.symlink(folder.parent / "secret", model / link)
    return spec


def test_deploy_refuses_a_symlink_in_the_model_before_connecting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = dir_spec(tmp_path / "app")
    inventory = tmp_path / "inventory.yaml"
    # port 1: nothing listens there; the refusal must come before any connection is tried
    inventory.write_text("hosts:\n  tb-01: {address: 127.0.0.1, port: 1, user: nobody, "
                         "deploy_root: /srv/models}\n")
    code = main(["deploy", str(spec), "--inventory", str(inventory),
                 "--state-dir", str(tmp_path / "state")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "notes.txt" in err and "symlinks are refused" in err
    assert "127.0.0.1" not in err


def test_prepare_checks_the_model_hash_when_asked(tmp_path: Path) -> None:
    spec_path = dir_spec(tmp_path / "app", link=None)
    (tmp_path / "app" / "model" / "saved_model.pb").write_bytes(b"another graph")
    spec = load_spec(spec_path)
    with pytest.raises(SpecError) as info:
        prepare(spec, check_model=True)
    assert info.value.field == "model.sha256" and info.value.line == 4
    assert "mismatch" in info.value.reason
    prepare(spec)  # rollback, reconcile and re-verification do not hash the model


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_the_upload_ships_only_what_the_tree_hash_covers(tmp_path: Path, kind: str) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"graph")
    (tmp_path / "secret").write_text("do not ship me")
    if kind == "symlink":
        os.symlink(tmp_path / "secret", model / "notes.txt")
    else:
        os.mkfifo(model / "notes.txt")
    ops = HostOps(LocalTransport(), str(tmp_path / "host"))
    staged = StagedRelease("fraud", "r1", str(tmp_path / "host" / "r1.staging"), "staging",
                           False, None)
    with pytest.raises(SpecError, match=r"notes\.txt"):
        ops.upload_model(model, staged)
    with pytest.raises(SpecError, match=r"notes\.txt"):
        small_model(model)
    assert not (tmp_path / "host").exists()  # nothing was sent, not even the regular file


def test_pack_refuses_a_symlink_inside_the_model_naming_it(tmp_path: Path) -> None:
    spec = dir_spec(tmp_path / "app")
    with pytest.raises(InvalidInput, match=r"model/notes\.txt: only plain files"):
        pack_bundle(spec, io.BytesIO())


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    config = DaemonConfig(state_dir=tmp_path / "state", socket=tmp_path / "o.sock",
                          runner="orchestrator.daemon.runners.base:EchoRunner")
    store = open_store(config.store_path)
    hub = EventHub(store, config.logs_dir)
    service = Service(config, store, hub, EchoRunner(config))
    service.start()
    try:
        with TestClient(create_app(service, token=TOKEN), base_url="http://localhost",
                        headers={"authorization": f"Bearer {TOKEN}"}) as client:
            yield client
    finally:
        service.stop(10)
        hub.close()
        store.close()


def test_submission_checks_model_sha256(api: TestClient, tmp_path: Path) -> None:
    spec = stub_spec(tmp_path / "app", ["tb-01"], name="fraud", lock=LOCK, gpu=None)
    out = io.BytesIO()
    pack_bundle(spec, out)
    good = out.getvalue()
    # The same bundle with other model bytes: what a client that skips the check would send.
    bad = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(good)) as src, tarfile.open(fileobj=bad, mode="w") as tar:
        for info in src:
            data = src.extractfile(info)
            if info.name == "model.joblib":
                info.size = len(b"tampered")
                data = io.BytesIO(b"tampered")
            tar.addfile(info, data)
    response = api.post("/v1/deployments", content=bad.getvalue(),
                        headers={"content-type": "application/x-tar"})
    assert response.status_code == 400, response.text
    text = response.text
    assert "spec.yaml:4: model.sha256: mismatch" in text and "/state/" not in text
    response = api.post("/v1/deployments", content=good,
                        headers={"content-type": "application/x-tar"})
    assert response.status_code == 201, response.text


def test_a_sparse_bundle_is_refused_before_it_is_unpacked(tmp_path: Path) -> None:
    src = tmp_path / "src"
    stub_spec(src, ["tb-01"], name="fraud", lock=LOCK, gpu=None)
    with open(src / "model.joblib", "r+b") as fh:
        fh.truncate(1 << 30)  # 1 GiB of holes
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", "--format=gnu", "-cf", str(archive), "-C", str(src),
                    "spec.yaml", "model.joblib"], check=True)
    assert archive.stat().st_size < 1 << 20
    dest = tmp_path / "bundle"
    dest.mkdir()
    with pytest.raises(InvalidInput, match=r"model\.joblib' unpacks to more than"):
        unpack_bundle(archive, dest)
    assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) < 1 << 20


def test_follow_symlinks_hashes_ships_and_packs_the_targets_content(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`model.follow_symlinks: true`: a link inside counts as its target, at the link's path,
    for the hash, the upload and the bundle alike; the host and the daemon receive plain files
    that hash the same. Dangling links and directory loops are still refused."""
    spec = dir_spec(tmp_path / "app")  # model/notes.txt -> ../secret
    model = tmp_path / "app" / "model"
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "vocab.txt").write_text("a b c")
    os.symlink(shared, model / "assets")  # a directory link too
    followed = hash_path(model, follow=True)
    plain = tmp_path / "plain"
    (plain / "variables").mkdir(parents=True)
    (plain / "assets").mkdir()
    (plain / "saved_model.pb").write_bytes(b"graph")
    (plain / "variables" / "v.index").write_bytes(b"weights")
    (plain / "notes.txt").write_text("do not ship me")
    (plain / "assets" / "vocab.txt").write_text("a b c")
    assert followed == hash_path(plain)  # exactly the hash of a copy of the targets
    with pytest.raises(SpecError, match="follow_symlinks"):
        hash_path(model)  # the default still refuses, and says how to opt in
    assert main(["hash", "--follow-symlinks", str(model)]) == 0
    assert capsys.readouterr().out.strip() == followed
    text = spec.read_text()
    line = next(x for x in text.splitlines() if x.startswith("model:"))
    spec.write_text(text.replace(line, "model: {path: model, format: tensorflow-savedmodel, "
                                       f"sha256: {followed}, follow_symlinks: true}}"))
    loaded = load_spec(spec)
    assert loaded.model.follow_symlinks
    prepare(loaded, check_model=True)

    ops = HostOps(LocalTransport(), str(tmp_path / "host"))
    staged = StagedRelease("fraud", "r1", str(tmp_path / "host" / "r1.staging"), "staging",
                           False, None)
    ops.upload_model(model, staged, follow=True)
    shipped = Path(staged.model_path)
    assert not any(p.is_symlink() for p in shipped.rglob("*"))
    assert (shipped / "notes.txt").read_text() == "do not ship me"
    assert hash_path(shipped) == followed  # what the host's own check computes
    small = small_model(model, follow=True)
    assert small is not None and len(small.files) == 4

    out = io.BytesIO()
    pack_bundle(spec, out)
    archive = tmp_path / "bundle.tar"
    archive.write_bytes(out.getvalue())
    unpack_bundle(archive, tmp_path / "unpacked")
    assert hash_path(tmp_path / "unpacked" / "model") == followed

    os.symlink(tmp_path / "nowhere", model / "dangling")
    with pytest.raises(SpecError, match="symlink to nothing"):
        hash_path(model, follow=True)
    os.unlink(model / "dangling")
    os.symlink(model, model / "variables" / "loop")
    with pytest.raises(SpecError, match="symlink loop"):
        hash_path(model, follow=True)
