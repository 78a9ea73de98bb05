"""GitOps: roll out a spec when it appears in, or changes in, the daemon's `specs_dir`.

Every `interval_s` the daemon scans `<specs_dir>/*.yaml` (and `*.yml`); a file whose digest
(the spec's bytes plus the bytes of every file it names) differs from the one last handled is
packed exactly like `orchestrator submit` packs it and submitted through the same path as the
API. What was handled is kept in the store, so a restart does not roll everything out again.

- A spec that is invalid is recorded with its error (logged once) and retried only when it
  changes again.
- A spec whose app is already being deployed is left for the next scan (not recorded), so the
  newest content rolls out once the running deployment ends.
- Only regular files are read (yamlio.read_limited for the spec, a non-blocking open checked
  with fstat for the files it names): a FIFO or device dropped into specs_dir, or named by a
  spec, is an invalid spec or skipped, and never blocks the scan (nor the daemon's stop).
- A symlinked spec digests (and is packed with) the files next to the file it points to.
- Nothing is re-read while it is unchanged: `Digests` remembers each spec's digest under the
  spec's bytes and the (size, mtime, ctime, inode) of every file it names, so a scan costs one
  stat per file; only a spec one of whose files changed is read and digested again (and it is
  then about to be packed and submitted whole anyway). The digest itself is unchanged, so the
  digests already in the store stay valid across an upgrade.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import structlog

from orchestrator.core.yamlio import DEFAULT_MAX_BYTES, read_limited
from orchestrator.daemon import bundle
from orchestrator.daemon.service import Service
from orchestrator.errors import Conflict, OrchestratorError

log = structlog.get_logger("orchestrator.daemon.watch")
PATTERNS = ("*.yaml", "*.yml")


@dataclass(frozen=True)
class Change:
    path: Path
    digest: str


#: What identifies a named file's content without reading it (None: not a regular file).
StatKey = tuple[int, int, int, int, int] | None


def named_files(spec: Path, data: bytes) -> list[Path]:
    """The files a spec names, as the digest covers them: every file under a named directory
    (sorted), or the named file; relative to the directory of the file the spec resolves to."""
    base = spec.resolve().parent
    out: list[Path] = []
    for rel in bundle.spec_files(spec, data):
        target = base / rel
        out.extend(sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir()
                   else [target] if target.is_file() else [])
    return out


def spec_digest(spec: Path) -> str:
    """sha256 over the spec and every file it names (a new model file is a change too)."""
    data = read_limited(spec, DEFAULT_MAX_BYTES)
    return _digest(spec.resolve().parent, data, named_files(spec, data))


def _digest(base: Path, data: bytes, files: list[Path]) -> str:
    digest = hashlib.sha256(data)
    for path in files:
        digest.update(str(path.relative_to(base)).encode() + b"\0")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue  # gone since it was listed: the next scan sees the change
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue  # swapped for a FIFO or device since it was listed: never read it
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def _stat_key(path: Path) -> StatKey:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class Digests:
    """`spec_digest`, remembered per spec path while the spec's bytes and the stat of every
    file it names stay the same (module docstring): a 300 MB model is hashed when it changes,
    not every scan."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[object, str]] = {}
        self.computed = 0  # digests actually computed (tests, debugging)

    def digest(self, spec: Path) -> str:
        data = read_limited(spec, DEFAULT_MAX_BYTES)  # small, and the list of files is in it
        files = named_files(spec, data)
        base = spec.resolve().parent
        key = (hashlib.sha256(data).digest(), str(base),
               tuple((str(p), _stat_key(p)) for p in files))
        seen = self._seen.get(str(spec))
        if seen is not None and seen[0] == key:
            return seen[1]
        self.computed += 1
        value = _digest(base, data, files)
        self._seen[str(spec)] = (key, value)
        return value

    def keep_only(self, specs: set[str]) -> None:
        """Forget specs no longer in specs_dir."""
        for gone in set(self._seen) - specs:
            del self._seen[gone]


def changes(specs_dir: Path, handled: dict[str, str],
            digests: Digests | None = None) -> list[Change]:
    """Spec files new or changed since they were last handled (a file that cannot be read or
    parsed is a change with an empty digest of its error, so it is reported)."""
    digests = digests or Digests()
    found, seen = [], set()
    for pattern in PATTERNS:
        for path in sorted(specs_dir.glob(pattern)):
            seen.add(str(path))
            try:
                digest = digests.digest(path)
            except (OSError, OrchestratorError) as exc:
                digest = "error:" + hashlib.sha256(str(exc).encode()).hexdigest()
            if handled.get(str(path)) != digest:
                found.append(Change(path, digest))
    digests.keep_only(seen)
    return found


class SpecWatcher:
    def __init__(self, service: Service, specs_dir: Path) -> None:
        self.service = service
        self.specs_dir = specs_dir
        self.digests = Digests()

    def scan(self) -> list[str]:
        """Submit every new or changed spec; returns the deployment ids created."""
        if not self.specs_dir.is_dir():
            return []
        created = []
        for change in changes(self.specs_dir, self.service.store.watched(), self.digests):
            deployment = self._submit(change)
            if deployment is not None:
                created.append(deployment)
        return created

    def _submit(self, change: Change) -> str | None:
        deployment, bundle_dir = self.service.new_bundle()
        try:
            with tempfile.TemporaryFile() as archive:
                bundle.pack_bundle(change.path, archive)
                archive.seek(0)
                tar = bundle_dir / ".upload.tar"
                tar.write_bytes(archive.read())
            bundle.unpack_bundle(tar, bundle_dir)
            tar.unlink()
            self.service.submit(deployment, change.path.name)
        except Conflict as exc:
            shutil.rmtree(bundle_dir, ignore_errors=True)
            log.info("spec waits for the running deployment", spec=str(change.path),
                     reason=str(exc))
            return None
        except OrchestratorError as exc:
            shutil.rmtree(bundle_dir, ignore_errors=True)
            log.error("spec refused", spec=str(change.path), error=str(exc))
            self.service.store.record_watched(str(change.path), change.digest, None, str(exc))
            return None
        log.info("spec submitted", spec=str(change.path), deployment=deployment)
        self.service.store.record_watched(str(change.path), change.digest, deployment, None)
        return deployment
