"""The image archive reader (orchestrator/core/ociimage.py) and the spec's `environment.image`:
real `podman save` output in both formats, and hostile archives made by hand."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from orchestrator.core import ociimage
from orchestrator.core.envinputs import load_environment
from orchestrator.core.hashing import hash_path
from orchestrator.core.ociimage import ImageError, read_image
from orchestrator.core.spec import load_spec
from orchestrator.deploy.imagebuild import pack_layout
from orchestrator.errors import SpecError
from tests.podman import Podman, available

SITE = "usr/lib/python3.11/site-packages"


def rootfs(base: Path, *dists: str) -> Path:
    for dist in dists:
        d = base / SITE / f"{dist}.dist-info"
        d.mkdir(parents=True)
        (d / "METADATA").write_text("Metadata-Version: 2.1\n")
    (base / "usr/bin").mkdir(parents=True, exist_ok=True)
    return base


@pytest.fixture(scope="module")
def podman_archives(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    why = available()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("podman")
    engine = Podman(tmp / "podman")
    root = rootfs(tmp / "rootfs", "numpy-2.1.0", "nvidia_cuda_runtime_cu12-12.8.90")
    docker, oci = engine.archives(root, env={"NVIDIA_REQUIRE_CUDA": "cuda>=12.8",
                                             "CUDA_VERSION": "12.8.1"})
    image_id = engine.run("image", "inspect", "--format", "{{.Id}}", "localhost/t:1").strip()
    return docker, oci, image_id


@pytest.mark.parametrize("which", [0, 1], ids=["docker-archive", "oci-archive"])
def test_podman_save_output_is_read_in_both_formats(
        podman_archives: tuple[Path, Path, str], which: int) -> None:
    path, image_id = (podman_archives[0], podman_archives[1])[which], podman_archives[2]
    info = read_image(path, "0" * 64)
    assert info.format == ("docker-archive", "oci-archive")[which]
    assert info.image_id == f"sha256:{image_id}"  # what the engine calls the image
    assert info.env["NVIDIA_REQUIRE_CUDA"] == "cuda>=12.8"
    assert info.env["CUDA_VERSION"] == "12.8.1"
    assert info.python == "3.11"
    assert [(p.name, p.version) for p in info.packages] == [
        ("numpy", "2.1.0"), ("nvidia_cuda_runtime_cu12", "12.8.90")]


# --- hand-made archives: the shapes a hostile or broken archive can take ---------------------

def _add(tar: tarfile.TarFile, name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data) if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "elsewhere"
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def layer(*names: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for n in names:
            _add(tar, n, b"", tarfile.DIRTYPE if n.endswith("/") else tarfile.REGTYPE)
    return buf.getvalue()


def config(env: list[str] | object = ("PYTHON_VERSION=3.12.7",)) -> bytes:
    return json.dumps({"config": {"Env": list(env) if isinstance(env, tuple) else env}}).encode()


def docker_archive(path: Path, cfg: bytes, layers: list[bytes], *, cfg_name: str | None = None,
                   extra: tuple[tuple[str, bytes, bytes], ...] = ()) -> Path:
    names = [f"{hashlib.sha256(b).hexdigest()}.tar" for b in layers]
    cfg_name = cfg_name or f"{hashlib.sha256(cfg).hexdigest()}.json"
    with tarfile.open(path, "w") as tar:
        _add(tar, "manifest.json", json.dumps([{"Config": cfg_name, "Layers": names}]).encode())
        _add(tar, cfg_name, cfg)
        for n, b in zip(names, layers, strict=True):
            _add(tar, n, b)
        for name, data, kind in extra:
            _add(tar, name, data, kind)
    return path


def test_layers_give_packages_with_whiteouts_applied(tmp_path: Path) -> None:
    lower = layer(f"{SITE}/tensorflow-2.21.0.dist-info/METADATA",
                  f"{SITE}/numpy-1.26.4.dist-info/METADATA")
    upper = layer(f"{SITE}/.wh.numpy-1.26.4.dist-info", f"{SITE}/numpy-2.1.0.dist-info/")
    info = read_image(docker_archive(tmp_path / "a.tar", config(), [lower, upper]), "x")
    assert [(p.name, p.version) for p in info.packages] == [("numpy", "2.1.0"),
                                                            ("tensorflow", "2.21.0")]
    assert info.python == "3.12"  # PYTHON_VERSION wins over the lib/python3.11 directory
    assert info.pythons == ("3.11",)


def test_opaque_whiteout_hides_the_lower_layers_packages(tmp_path: Path) -> None:
    lower = layer(f"{SITE}/numpy-1.26.4.dist-info/METADATA")
    upper = layer(f"{SITE}/.wh..wh..opq", f"{SITE}/scipy-1.14.0.dist-info/METADATA")
    info = read_image(docker_archive(tmp_path / "a.tar", config(), [lower, upper]), "x")
    assert [p.name for p in info.packages] == ["scipy"]


@pytest.mark.parametrize(("case", "expect"), [
    ("config-altered", "does not hash to its name"),
    ("no-manifest", "not an image archive"),
    ("manifest-twice", "appears twice"),
    ("manifest-symlink", "not a regular file"),
    ("config-not-json", "is not JSON"),
    ("env-not-strings", "Env is not a list of strings"),
    ("layer-missing", "is not a regular file in the archive"),
    ("layer-not-tar", "is not a readable tar"),
    ("two-images", "exactly one image"),
    ("not-a-tar", "not a readable tar archive"),
])
def test_hostile_archives_are_refused_naming_the_problem(tmp_path: Path, case: str,
                                                         expect: str) -> None:
    path, good = tmp_path / "a.tar", layer(f"{SITE}/numpy-2.1.0.dist-info/METADATA")
    if case == "config-altered":
        cfg = config()
        docker_archive(path, config(["PYTHON_VERSION=3.9"]),
                       [good], cfg_name=f"{hashlib.sha256(cfg).hexdigest()}.json")
    elif case == "no-manifest":
        with tarfile.open(path, "w") as tar:
            _add(tar, "etc/passwd", b"root:x:0:0\n")
    elif case == "manifest-twice":
        docker_archive(path, config(), [good], extra=(("manifest.json", b"[]", tarfile.REGTYPE),))
    elif case == "manifest-symlink":
        with tarfile.open(path, "w") as tar:
            _add(tar, "manifest.json", b"", tarfile.SYMTYPE)
    elif case == "config-not-json":
        docker_archive(path, b"\xff{", [good], cfg_name="config.json")
    elif case == "env-not-strings":
        docker_archive(path, config([1, 2]), [good])
    elif case == "layer-missing":
        with tarfile.open(path, "w") as tar:
            cfg = config()
            _add(tar, "manifest.json", json.dumps([{"Config": "c.json",
                                                    "Layers": ["../../etc/shadow"]}]).encode())
            _add(tar, "c.json", cfg)
    elif case == "layer-not-tar":
        docker_archive(path, config(), [b"\x00" * 10 + b"garbage" * 100])
    elif case == "two-images":
        with tarfile.open(path, "w") as tar:
            _add(tar, "manifest.json", b'[{"Config": "a"}, {"Config": "b"}]')
    elif case == "not-a-tar":
        path.write_bytes(b"PK\x03\x04 a zip, not a tar" * 50)
    with pytest.raises(ImageError, match=expect):
        read_image(path, "x")


def test_oci_config_that_does_not_hash_to_its_digest_is_refused(tmp_path: Path) -> None:
    cfg, lay = config(), layer("usr/")
    manifest = json.dumps({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"digest": "sha256:" + hashlib.sha256(cfg).hexdigest()},
                           "layers": [{"digest": "sha256:"
                                       + hashlib.sha256(lay).hexdigest()}]}).encode()
    index = json.dumps({"manifests": [{"digest": "sha256:"
                                       + hashlib.sha256(manifest).hexdigest()}]}).encode()
    path = tmp_path / "o.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "index.json", index)
        _add(tar, f"blobs/sha256/{hashlib.sha256(manifest).hexdigest()}", manifest)
        _add(tar, f"blobs/sha256/{hashlib.sha256(cfg).hexdigest()}",
             config(["NVIDIA_REQUIRE_CUDA=cuda>=11.0"]))  # swapped after the digest was taken
        _add(tar, f"blobs/sha256/{hashlib.sha256(lay).hexdigest()}", lay)
    with pytest.raises(ImageError, match="does not hash to its digest"):
        read_image(path, "x")


def test_member_and_entry_counts_are_bounded(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = docker_archive(tmp_path / "a.tar", config(), [layer(*[f"f{i}" for i in range(50)])])
    monkeypatch.setattr(ociimage, "MAX_LAYER_ENTRIES", 10)
    with pytest.raises(ImageError, match="more than 10 entries"):
        read_image(path, "x")
    monkeypatch.setattr(ociimage, "MAX_MEMBERS", 2)
    with pytest.raises(ImageError, match="more than 2 members"):
        read_image(path, "x")


# --- the spec -----------------------------------------------------------------------------------

def image_spec(tmp_path: Path, environment: str, archive: bytes = b"") -> Path:
    (tmp_path / "model.joblib").write_bytes(b"m")
    (tmp_path / "image.tar").write_bytes(archive)
    (tmp_path / "requirements.lock").write_text("")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
apiVersion: orchestrator/v1
kind: Deployment
name: app
model: {{path: model.joblib, format: joblib, sha256: {hashlib.sha256(b"m").hexdigest()}}}
environment: {environment}
targets: [h1]
verify: {{golden: golden.npz}}
""")
    return spec


@pytest.mark.parametrize(("environment", "expect"), [
    ('{python: "3.11", requirements: requirements.lock, image: {archive: image.tar, sha256: '
     + "a" * 64 + "}}", "exactly one of requirements"),
    ('{python: "3.11"}', "exactly one of requirements"),
    ("{requirements: requirements.lock}", "python is required with requirements"),
    ("{image: {archive: image.tar, sha256: " + "a" * 64 + "}, wheelhouse: w}",
     "wheelhouse goes with requirements"),
    ("{image: {archive: ../image.tar, sha256: " + "a" * 64 + "}}", "'..'"),
    ("{image: {archive: image.tar, sha256: ABC}}", "64 lowercase hex"),
    ("{image: {archive: image.tar, sha256: " + "a" * 64 + ", tag: x}}", "unknown field"),
])
def test_spec_environment_image_is_strict(tmp_path: Path, environment: str, expect: str) -> None:
    with pytest.raises(SpecError, match=expect) as info:
        load_spec(image_spec(tmp_path, environment))
    assert info.value.line == 5  # the environment line


def test_tampered_archive_is_refused_before_it_is_read(tmp_path: Path) -> None:
    good = docker_archive(tmp_path / "good.tar", config(), [layer("usr/")]).read_bytes()
    spec = load_spec(image_spec(tmp_path, "{image: {archive: image.tar, sha256: "
                                + hashlib.sha256(good).hexdigest() + "}}", good))
    assert load_environment(spec).image_id.startswith("sha256:")  # type: ignore[union-attr]
    (tmp_path / "image.tar").write_bytes(good[:-1] + b"\x01")
    with pytest.raises(SpecError, match=r"mismatch: the spec says .* refused before it is read"):
        load_environment(spec)


@pytest.mark.parametrize(("environment", "service", "expect"), [
    ('{python: "3.11", requirements: requirements.lock}',
     "{container: {command: [serve], ready_command: 'true'}}", "needs environment.image"),
    ("{image: {archive: image.tar, sha256: " + "a" * 64 + "}}",
     "{restart: x, container: {command: [serve], ready_command: 'true'}}",
     "restart or container, not both"),
    ("{image: {archive: image.tar, sha256: " + "a" * 64 + "}}",
     "{container: {command: [], ready_command: 'true'}}", "at least 1 item"),
    ("{image: {archive: image.tar, sha256: " + "a" * 64 + "}}",
     "{container: {command: [serve], ready_command: 'true', name: Bad_Name}}", "name"),
])
def test_the_serving_container_is_strict(tmp_path: Path, environment: str, service: str,
                                         expect: str) -> None:
    path = image_spec(tmp_path, environment)
    path.write_text(path.read_text() + f"service: {service}\n")
    with pytest.raises(SpecError, match=expect):
        load_spec(path)
    good = "{container: {command: [python3, '-c', \"print(1)\\nprint(2)\"], ready_command: 'true'}}"
    path.write_text(image_spec(tmp_path, "{image: {archive: image.tar, sha256: " + "a" * 64
                               + "}}").read_text() + f"service: {good}\n")
    container = load_spec(path).service.container  # type: ignore[union-attr]
    assert container is not None and container.command[2] == "print(1)\nprint(2)"
    assert container.stable_name("app") == "app" and container.ready_timeout_s == 60


def test_an_oci_layout_directory_is_packed_into_the_same_archive_every_time(
        tmp_path: Path) -> None:
    """environment.image.archive naming an OCI layout directory: checked by tree hash, packed
    once (deterministically) into an archive the reader and the hosts take; a changed tree is
    refused before anything is packed; commands that do not pack say so."""
    cfg = config(["NVIDIA_REQUIRE_CUDA=cuda>=12.4"])
    lay = layer(f"{SITE}/numpy-2.1.0.dist-info/METADATA")
    manifest = json.dumps({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"digest": "sha256:" + hashlib.sha256(cfg).hexdigest()},
                           "layers": [{"digest": "sha256:"
                                       + hashlib.sha256(lay).hexdigest()}]}).encode()
    layout = tmp_path / "spec" / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps(
        {"manifests": [{"digest": "sha256:" + hashlib.sha256(manifest).hexdigest()}]}))
    for blob in (manifest, cfg, lay):
        (layout / "blobs" / "sha256" / hashlib.sha256(blob).hexdigest()).write_bytes(blob)
    spec_path = image_spec(tmp_path / "spec", "{image: {archive: layout, sha256: "
                           + hash_path(layout) + "}}")
    spec = load_spec(spec_path)
    with pytest.raises(SpecError, match="OCI layout directory: it is read once packed"):
        load_environment(spec)
    packed = pack_layout(spec, cache_dir=tmp_path / "cache")
    info = load_environment(packed)
    assert info.image_id == "sha256:" + hashlib.sha256(cfg).hexdigest()  # type: ignore[union-attr]
    assert info.env["NVIDIA_REQUIRE_CUDA"] == "cuda>=12.4"  # type: ignore[union-attr]
    assert packed.digest == spec.digest and packed.paths.image is not None
    first = packed.paths.image.read_bytes()
    packed.paths.image.unlink()
    again = pack_layout(load_spec(spec_path), cache_dir=tmp_path / "cache")
    assert again.paths.image is not None and again.paths.image.read_bytes() == first
    (layout / "index.json").write_text("{}")
    with pytest.raises(SpecError, match=r"the OCI layout layout hashes to .* \(a tree hash\)"):
        pack_layout(load_spec(spec_path), cache_dir=tmp_path / "cache2")
    assert not (tmp_path / "cache2").exists()
