"""What an OCI image archive says about itself, read without loading or extracting it.

`read_image(path)` opens a `docker save` / `podman save` archive (docker-archive: manifest.json
at the top; oci-archive: an OCI layout, index.json and blobs/sha256/, in a tar; `docker save`
of Docker 25+ writes both, the OCI index is preferred) and returns an `ImageInfo`:

- the image id (sha256 of its config blob, what `docker images --no-trunc` / `podman images`
  show as ID, so a host can tell whether it already has the image), the config's `Env` and
  `Labels` (where CUDA base images declare `NVIDIA_REQUIRE_CUDA` and `CUDA_VERSION`);
- from the layers' file names only (no content is read): the Python versions the image holds
  (`.../lib/python3.N/`) and the distributions installed in its site-packages (each
  `name-version.dist-info` directory), so the preflight judges the image's TensorFlow and CUDA
  wheels as it judges a lock.

The archive is untrusted input. Nothing is extracted or written; only regular members are read;
manifest, index and config are size-bounded and must be valid JSON of the expected shape; every
blob named by digest must hash to that digest (a config that does not is refused); member,
layer and entry counts are bounded, a layer may be gzip-compressed but is only streamed. Any
problem is an `ImageError` naming the archive and what is wrong. The archive's own sha256 (the
spec's `environment.image.sha256`) is checked by the caller before this reads it.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from orchestrator.errors import InvalidInput

MAX_JSON_BYTES = 4 << 20          # manifest.json, index.json, a manifest, a config
MAX_MEMBERS = 100_000             # members of the outer archive
MAX_LAYERS = 256
MAX_LAYER_ENTRIES = 2_000_000     # entries of all layers together
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_BLOB = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")
_PYDIR = re.compile(r"(?:^|/)lib/python(3\.[0-9]{1,2})/")
_DIST = re.compile(r"(?:^|/)(?:site|dist)-packages/([A-Za-z0-9][A-Za-z0-9._]*)-"
                   r"([0-9][A-Za-z0-9.+!_]*)\.dist-info(?:/|$)")
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_INDEXES = ("application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json")


class ImageError(InvalidInput):
    """An image archive that cannot be read as one image (exit 2)."""


@dataclass(frozen=True)
class ImagePackage:
    """A distribution installed in the image (`name-version.dist-info`)."""

    name: str
    version: str
    marker: None = None  # lock-like: an installed package applies unconditionally


@dataclass(frozen=True)
class ImageInfo:
    """What the preflight and the image kind read of an image archive."""

    archive: str                 # the path it was read from
    sha256: str                  # the archive file's sha256 (the spec's)
    format: str                  # "docker-archive" | "oci-archive"
    image_id: str                # "sha256:<hex of the config blob>"
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    pythons: tuple[str, ...] = ()            # "3.11", from lib/python3.N/ directories
    packages: tuple[ImagePackage, ...] = ()  # sorted by name
    layers: int = 0
    size_bytes: int = 0          # the layers' sizes in the archive
    platform: str = ""           # "linux-amd64": the config's os and architecture

    @property
    def python(self) -> str | None:
        """The image's Python (major.minor): its config's PYTHON_VERSION (python images set
        it) or, when the layers hold exactly one lib/python3.N, that one."""
        declared = self.env.get("PYTHON_VERSION", "")
        m = re.match(r"^(3\.[0-9]{1,2})(?:\.|$)", declared)
        if m:
            return m.group(1)
        return self.pythons[0] if len(self.pythons) == 1 else None


def read_image(path: Path, sha256: str) -> ImageInfo:
    """The `ImageInfo` of the archive at `path` (whose sha256 the caller checked)."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            members = _members(tar, path)
            if "index.json" in members:
                fmt, config, layers = "oci-archive", *_oci(tar, members, path)
            elif "manifest.json" in members:
                fmt, config, layers = "docker-archive", *_docker(tar, members, path)
            else:
                raise ImageError(f"{path}: neither index.json (OCI layout) nor manifest.json "
                                 "(docker save) in the archive: not an image archive")
            config_bytes, image_id = config
            cfg = _json(config_bytes, path, "the image config")
            pythons, packages = _scan_layers(tar, layers, path)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ImageError(f"{path}: not a readable tar archive ({exc})") from exc
    inner = cfg.get("config")
    if not isinstance(inner, dict):
        inner = {}
    return ImageInfo(
        archive=str(path), sha256=sha256, format=fmt, image_id=image_id,
        env=_env(inner.get("Env"), path), labels=_labels(inner.get("Labels"), path),
        pythons=pythons, packages=packages, layers=len(layers),
        size_bytes=sum(m.size for m in layers),
        platform="-".join(str(cfg.get(k) or "") for k in ("os", "architecture")).strip("-"))


def _members(tar: tarfile.TarFile, path: Path) -> dict[str, tarfile.TarInfo]:
    """name -> member, bounded; a name given twice is refused (which one counts is ambiguous)."""
    out: dict[str, tarfile.TarInfo] = {}
    for n, member in enumerate(tar):
        if n >= MAX_MEMBERS:
            raise ImageError(f"{path}: more than {MAX_MEMBERS} members")
        name = member.name.removeprefix("./")
        if name in out and not member.isdir():
            raise ImageError(f"{path}: member {name!r} appears twice")
        out[name] = member
    return out


def _read(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str,
          path: Path) -> bytes:
    member = members.get(name)
    if member is None:
        raise ImageError(f"{path}: {name!r} is named but not in the archive")
    if not member.isreg():
        raise ImageError(f"{path}: {name!r} is not a regular file in the archive")
    if member.size > MAX_JSON_BYTES:
        raise ImageError(f"{path}: {name!r} is {member.size} bytes, more than {MAX_JSON_BYTES}")
    fh = tar.extractfile(member)
    assert fh is not None  # a regular member always has a file object
    return fh.read()


def _json(data: bytes, path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageError(f"{path}: {what} is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ImageError(f"{path}: {what} is not a JSON object")
    return value


def _blob(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], digest: object,
          path: Path, what: str) -> bytes:
    """A small blob of an OCI layout by its digest, checked against it."""
    m = _DIGEST.match(digest) if isinstance(digest, str) else None
    if m is None:
        raise ImageError(f"{path}: {what} has digest {digest!r}, not sha256:<64 hex>")
    data = _read(tar, members, f"blobs/sha256/{m.group(1)}", path)
    if hashlib.sha256(data).hexdigest() != m.group(1):
        raise ImageError(f"{path}: {what} does not hash to its digest {digest}: the archive "
                         "was altered")
    return data


def _oci(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo],
         path: Path) -> tuple[tuple[bytes, str], list[tarfile.TarInfo]]:
    index = _json(_read(tar, members, "index.json", path), path, "index.json")
    for _ in range(4):  # an index may name a nested index (docker save does): follow a few
        manifests = index.get("manifests")
        if not isinstance(manifests, list) or len(manifests) != 1 or \
                not isinstance(manifests[0], dict):
            raise ImageError(f"{path}: the OCI index must name exactly one image manifest, "
                             f"not {len(manifests) if isinstance(manifests, list) else 0}")
        desc = manifests[0]
        doc = _json(_blob(tar, members, desc.get("digest"), path, "the image manifest"), path,
                    "the image manifest")
        if desc.get("mediaType") in _INDEXES or doc.get("mediaType") in _INDEXES:
            index = doc
            continue
        return _from_manifest(tar, members, doc, path)
    raise ImageError(f"{path}: OCI indexes nested too deep")


def _from_manifest(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo],
                   manifest: dict[str, Any],
                   path: Path) -> tuple[tuple[bytes, str], list[tarfile.TarInfo]]:
    if manifest.get("mediaType", _OCI_MANIFEST) not in (_OCI_MANIFEST, _DOCKER_MANIFEST):
        raise ImageError(f"{path}: unsupported manifest media type {manifest.get('mediaType')!r}")
    config = manifest.get("config")
    layers = manifest.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise ImageError(f"{path}: the image manifest lacks config or layers")
    data = _blob(tar, members, config.get("digest"), path, "the image config")
    names = []
    for layer in layers:
        m = _DIGEST.match(layer.get("digest", "")) if isinstance(layer, dict) else None
        if m is None:
            raise ImageError(f"{path}: a layer descriptor without a sha256 digest: {layer!r:.200}")
        names.append(f"blobs/sha256/{m.group(1)}")
    return (data, str(config["digest"])), _layer_members(members, names, path)


def _docker(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo],
            path: Path) -> tuple[tuple[bytes, str], list[tarfile.TarInfo]]:
    data = _read(tar, members, "manifest.json", path)
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageError(f"{path}: manifest.json is not JSON ({exc})") from exc
    if not isinstance(doc, list) or len(doc) != 1 or not isinstance(doc[0], dict):
        raise ImageError(f"{path}: manifest.json must describe exactly one image")
    entry = doc[0]
    config_name, layers = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layers, list) or \
            not all(isinstance(x, str) for x in layers):
        raise ImageError(f"{path}: manifest.json lacks Config or Layers")
    config = _read(tar, members, config_name, path)
    digest = hashlib.sha256(config).hexdigest()
    named = re.search(r"([0-9a-f]{64})(?:\.json)?$", config_name)
    if named is not None and named.group(1) != digest:
        raise ImageError(f"{path}: the image config {config_name!r} does not hash to its name: "
                         "the archive was altered")
    return (config, f"sha256:{digest}"), _layer_members(members, layers, path)


def _layer_members(members: dict[str, tarfile.TarInfo], names: list[str],
                   path: Path) -> list[tarfile.TarInfo]:
    if len(names) > MAX_LAYERS:
        raise ImageError(f"{path}: {len(names)} layers, more than {MAX_LAYERS}")
    out = []
    for name in names:
        member = members.get(name.removeprefix("./"))
        if member is None or not member.isreg():
            raise ImageError(f"{path}: layer {name!r} is not a regular file in the archive")
        out.append(member)
    return out


def _scan_layers(tar: tarfile.TarFile, layers: list[tarfile.TarInfo],
                 path: Path) -> tuple[tuple[str, ...], tuple[ImagePackage, ...]]:
    """Python versions and installed distributions, from the layers' entry names, lower layers
    first; a whiteout (`.wh.NAME`) in an upper layer removes what it names below."""
    pythons: dict[str, str] = {}       # entry prefix -> python minor
    dists: dict[str, ImagePackage] = {}  # dist-info dir -> package
    budget = MAX_LAYER_ENTRIES
    for member in layers:
        fh = tar.extractfile(member)
        assert fh is not None
        budget = _scan_one(fh, pythons, dists, budget, path, member.name)
    packages = sorted(dists.values(), key=lambda p: (p.name.lower(), p.version))
    return tuple(sorted(set(pythons.values()))), tuple(packages)


def _scan_one(fh: IO[bytes], pythons: dict[str, str], dists: dict[str, ImagePackage],
              budget: int, path: Path, layer: str) -> int:
    try:
        with tarfile.open(fileobj=fh, mode="r|*") as inner:
            for entry in inner:
                budget -= 1
                if budget < 0:
                    raise ImageError(f"{path}: more than {MAX_LAYER_ENTRIES} entries in its "
                                     "layers")
                name = entry.name.removeprefix("./").removeprefix("/")
                base = name.rsplit("/", 1)[-1]
                if base.startswith(".wh."):
                    parent = name[: len(name) - len(base)]
                    # `.wh..wh..opq`: the directory hides everything below it in lower layers
                    gone = parent.rstrip("/") if base == ".wh..wh..opq" else \
                        parent + base[len(".wh."):]
                    for table in (pythons, dists):
                        for key in [k for k in table if k == gone or k.startswith(gone + "/")]:
                            del table[key]
                    continue
                py = _PYDIR.search(name + "/")
                if py:
                    pythons[name[: py.end() - 1]] = py.group(1)
                d = _DIST.search(name)
                if d:
                    dists[name[: d.end()].rstrip("/")] = ImagePackage(d.group(1), d.group(2))
    except tarfile.TarError as exc:
        raise ImageError(f"{path}: layer {layer} is not a readable tar ({exc})") from exc
    return budget


def _env(value: object, path: Path) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise ImageError(f"{path}: the image config's Env is not a list of strings")
    out = {}
    for item in value:
        key, sep, val = item.partition("=")
        if sep:
            out[key] = val
    return out


def _labels(value: object, path: Path) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in value.items()):
        raise ImageError(f"{path}: the image config's Labels is not a map of strings")
    return dict(value)


__all__ = ["ImageError", "ImageInfo", "ImagePackage", "read_image"]
