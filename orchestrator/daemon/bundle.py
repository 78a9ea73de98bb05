"""A submitted bundle: the spec and the files it names, as the daemon receives and keeps them.

The daemon never reads the caller's paths. The client packs a tar archive holding `spec.yaml`
and, at their paths relative to the spec, the model, lock file, golden file and wheelhouse the
spec names (`pack_bundle`); the daemon streams the upload to disk under a size limit and unpacks
it into `<state_dir>/bundles/<id>/` refusing anything but plain files and directories inside the
bundle (`unpack_bundle`: no absolute paths, no `..`, no links or devices). The spec is then
validated there, so every relative path in it resolves inside the bundle.

With a shared store (PostgreSQL, several daemons) the validated bundle also goes into the store
(`keep_in_store`: a tar, in chunks, its sha256 checked on the way out), and a daemon that runs a
deployment another one received unpacks it from there (`fetch_from_store`), through the same
`unpack_bundle` checks as an upload.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator.core.hashing import NAME_PATTERN, NAME_RE, tree_files
from orchestrator.core.spec import Spec, check_model_hash, load_spec
from orchestrator.core.yamlio import DEFAULT_MAX_BYTES, parse_yaml, read_limited
from orchestrator.daemon.statedir import private_dir
from orchestrator.daemon.store import Store
from orchestrator.errors import InvalidInput, NotFound, SpecError

SPEC_NAME = "spec.yaml"
APP_NAME = NAME_RE  # the one name pattern (orchestrator.core.hashing)
# Where a spec names files to ship (DESIGN.md "Spec"); all relative to the spec file.
FILE_FIELDS: tuple[tuple[str, ...], ...] = (
    ("model", "path"), ("environment", "requirements"), ("environment", "wheelhouse"),
    ("environment", "image", "archive"), ("environment", "image_base", "archive"),
    ("verify", "golden"),
)


@dataclass(frozen=True)
class Submission:
    """A validated spec inside its bundle: `data` is the plain YAML, `spec` what `load_spec`
    returned."""

    app: str
    targets: tuple[str, ...]
    data: dict[str, Any]
    spec: Spec
    bundle_dir: Path


def spec_files(spec_path: Path, data: bytes | None = None) -> list[PurePosixPath]:
    """The files a spec names, relative to its directory; refuses paths that leave it. `data`:
    the spec's bytes when the caller already read them (else read here, regular files only)."""
    if data is None:
        data = read_limited(spec_path, DEFAULT_MAX_BYTES)
    doc = parse_yaml(data, str(spec_path))
    data_ = doc.data if isinstance(doc.data, dict) else {}
    out: list[PurePosixPath] = []
    for field in FILE_FIELDS:
        value: object = data_
        for key in field:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and value:
            rel = PurePosixPath(value)
            if rel.is_absolute() or ".." in rel.parts:
                raise SpecError("must be a path inside the spec's directory", file=str(spec_path),
                                line=doc.line_of(field), field=".".join(field))
            out.append(rel)
    return out


def pack_bundle(spec_path: Path, out: io.BufferedIOBase | io.BytesIO) -> None:
    """Write the tar bundle of a spec and its files (client side).

    A symlinked spec is packed as the file it points to, with the files next to that target
    (as `load_spec` resolves them); a path the spec names may itself be a symlink to something
    inside the spec's folder (packed as its target, as `load_spec` and `hash` follow it), but
    inside a named directory only plain files and directories are packed (`_plain_only`)."""
    data = read_limited(spec_path, DEFAULT_MAX_BYTES)  # regular files only: a FIFO is refused
    base = spec_path.resolve().parent
    info = tarfile.TarInfo(SPEC_NAME)
    info.size, info.mode = len(data), 0o644
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.addfile(info, io.BytesIO(data))
        for rel in spec_files(spec_path, data):
            local = (base / rel).resolve()
            if not local.is_relative_to(base):
                raise InvalidInput(f"{spec_path}: {rel} resolves to {local}, outside the spec's "
                                   f"folder {base}")
            if not local.exists():
                raise InvalidInput(f"{spec_path}: {rel}: no such file or directory")
            if local.is_dir() and rel == _followed_model(spec_path, data):
                _add_followed(tar, local, rel)
                continue
            tar.add(local, arcname=str(rel), recursive=True, filter=_plain_only)


def _followed_model(spec_path: Path, data: bytes) -> PurePosixPath | None:
    """The model's path when the spec says `model.follow_symlinks: true`, else None."""
    doc = parse_yaml(data, str(spec_path))
    model = doc.data.get("model") if isinstance(doc.data, dict) else None
    if isinstance(model, dict) and model.get("follow_symlinks") is True and isinstance(
            model.get("path"), str):
        return PurePosixPath(model["path"])
    return None


def _add_followed(tar: tarfile.TarFile, local: Path, rel: PurePosixPath) -> None:
    """A model directory whose symlinks the spec follows: every file its tree hash covers,
    packed as a plain file with its target's content (what `hash --follow-symlinks` hashed)."""
    for inner in tree_files(local, follow=True):
        source = (local / inner).resolve()
        info = tar.gettarinfo(str(source), arcname=f"{rel}/{inner}")
        info.mode = 0o644
        with open(source, "rb") as handle:
            tar.addfile(info, handle)


def _plain_only(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Refused, not skipped: a model silently missing a linked file would fail far from here.
    if not (info.isfile() or info.isdir()):
        raise InvalidInput(f"{info.name}: only plain files and directories can be submitted "
                           "(a symlink, device or fifo is in the spec's files)")
    return info


def unpack_bundle(archive: Path, dest: Path) -> None:
    """Unpack an uploaded tar into `dest`, refusing any member that is not a plain file or
    directory strictly inside it, and an archive whose members add up to more bytes than the
    archive itself: only a sparse member can, and `pack_bundle` never writes one, while a 40 KB
    sparse tar would otherwise unpack to 50 GB past the upload's `max_body_bytes`."""
    try:
        with tarfile.open(archive, mode="r:") as tar:
            members = list(_checked_members(tar, archive.stat().st_size))
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError) as exc:
        raise InvalidInput(f"the bundle is not a valid tar archive: {exc}") from None
    if not (dest / SPEC_NAME).is_file():
        raise InvalidInput(f"the bundle has no {SPEC_NAME}")


def _checked_members(tar: tarfile.TarFile, limit: int) -> Iterator[tarfile.TarInfo]:
    total = 0
    for info in tar:
        path = PurePosixPath(info.name)
        if path.is_absolute() or ".." in path.parts or not (info.isfile() or info.isdir()):
            raise InvalidInput(f"the bundle member {info.name!r} is not a plain relative file")
        total += info.size  # a sparse member's size is what it unpacks to
        if total > limit or info.issparse():
            raise InvalidInput(f"the bundle member {info.name!r} unpacks to more than the "
                               f"archive's own {limit} bytes (a sparse file): refused")
        yield info


def write_spec_only(text: str, dest: Path) -> None:
    """A JSON submission with the spec text alone (a spec whose files are all optional)."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / SPEC_NAME).write_text(text, encoding="utf-8")


def validate(bundle_dir: Path, display_name: str = SPEC_NAME, *,
             check_model: bool = False) -> Submission:
    """Validate the bundle's spec with `orchestrator.core.spec.load_spec` (strict YAML, the
    models, the files it names), then read its `name` and `targets`. With `check_model` (at
    submission: before anything is queued, let alone sent to a host) the model must also hash
    to `model.sha256` (`check_model_hash`). Errors name `display_name`, not the daemon's own
    path."""
    path = bundle_dir / SPEC_NAME
    spec = _load_spec(path, display_name)  # the full validation first, when it exists
    doc = parse_yaml(read_limited(path, DEFAULT_MAX_BYTES), display_name)
    data = doc.data
    if not isinstance(data, dict):
        raise SpecError("a spec must be a mapping", file=display_name, line=1)
    name = data.get("name")
    if not isinstance(name, str) or not APP_NAME.match(name):
        raise doc.error(("name",), "must match " + NAME_PATTERN)
    targets = data.get("targets")
    if not isinstance(targets, list) or not targets or \
            not all(isinstance(t, str) and t for t in targets):
        raise doc.error(("targets",), "must be a non-empty list of host or group names")
    if check_model:
        try:
            check_model_hash(spec)
        except SpecError as exc:
            raise _renamed(exc, bundle_dir, display_name) from None
    return Submission(app=name, targets=tuple(targets), data=data, spec=spec,
                      bundle_dir=bundle_dir)


def _renamed(exc: SpecError, bundle_dir: Path, display_name: str) -> SpecError:
    """`exc` naming the caller's spec, or a path relative to it, instead of the bundle dir."""
    file = exc.file
    if file is not None:
        try:
            rel = Path(file).resolve().relative_to(bundle_dir.resolve())
        except ValueError:
            rel = None
        if rel is not None:
            file = display_name if str(rel) == SPEC_NAME else str(rel)
    return SpecError(exc.reason, file=file, line=exc.line, field=exc.field)


def _load_spec(path: Path, display_name: str) -> Spec:
    try:
        return load_spec(path)
    except SpecError as exc:
        raise _renamed(exc, path.parent, display_name) from None


def keep_in_store(store: Store, deployment: str, bundle_dir: Path) -> str:
    """Put the unpacked bundle into the store as one tar (streamed through a temporary file
    beside it, never whole in memory); returns its sha256."""
    with tempfile.TemporaryFile(dir=bundle_dir.parent) as archive:
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for entry in sorted(bundle_dir.iterdir()):
                tar.add(entry, arcname=entry.name, recursive=True, filter=_plain_only)
        archive.seek(0)
        return store.put_bundle(deployment, archive)


def fetch_from_store(store: Store, deployment: str, dest: Path) -> None:
    """Unpack the bundle another daemon stored into `dest` (made whole, then renamed into
    place, so a reader never sees half of it). NotFound when the store has none."""
    if dest.is_dir():
        return  # fetched already (by another thread, or an earlier run)
    private_dir(dest.parent)
    work = Path(tempfile.mkdtemp(prefix=f".{deployment}.", dir=dest.parent))
    try:
        archive = work / "bundle.tar"
        with archive.open("wb") as out:
            if not store.get_bundle(deployment, out):
                raise NotFound(f"deployment {deployment}: its bundle is neither on this daemon "
                               "nor in the store")
        unpack_bundle(archive, work / "bundle")
        try:
            os.rename(work / "bundle", dest)
        except OSError:
            if not dest.is_dir():  # else another thread fetched it first: theirs is the same
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def local_copy(store: Store, path: Path, lock: threading.Lock) -> Path:
    """`path`, the deployment's bundle on this daemon's disk; with a shared store, fetched from
    it first when another daemon received the submission (one fetch at a time)."""
    if store.shared and not path.is_dir():
        with lock:
            fetch_from_store(store, path.name, path)
    return path
