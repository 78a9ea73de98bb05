"""GitOps: roll out a spec when it appears in, or changes in, the daemon's `specs_dir`.

Every `interval_s` the daemon scans `<specs_dir>/*.yaml` (and `*.yml`); a file whose digest
(the spec's bytes plus the bytes of every file it names) differs from the one last handled is
packed exactly like `orchestrator submit` packs it and submitted through the same path as the
API. What was handled is kept in the store, so a restart does not roll everything out again.

- A spec that is invalid is recorded with its error (logged once) and retried only when it
  changes again.
- A spec whose app is already being deployed is left for the next scan (not recorded), so the
  newest content rolls out once the running deployment ends.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import structlog

from orchestrator.daemon import bundle
from orchestrator.daemon.service import Service
from orchestrator.errors import Conflict, OrchestratorError

log = structlog.get_logger("orchestrator.daemon.watch")
PATTERNS = ("*.yaml", "*.yml")


@dataclass(frozen=True)
class Change:
    path: Path
    digest: str


def spec_digest(spec: Path) -> str:
    """sha256 over the spec and every file it names (a new model file is a change too)."""
    digest = hashlib.sha256(spec.read_bytes())
    base = spec.parent
    for rel in bundle.spec_files(spec):
        target = base / rel
        files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() \
            else [target] if target.is_file() else []
        for path in files:
            digest.update(str(path.relative_to(base)).encode() + b"\0")
            with path.open("rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
    return digest.hexdigest()


def changes(specs_dir: Path, handled: dict[str, str]) -> list[Change]:
    """Spec files new or changed since they were last handled (a file that cannot be read or
    parsed is a change with an empty digest of its error, so it is reported)."""
    found = []
    for pattern in PATTERNS:
        for path in sorted(specs_dir.glob(pattern)):
            try:
                digest = spec_digest(path)
            except (OSError, OrchestratorError) as exc:
                digest = "error:" + hashlib.sha256(str(exc).encode()).hexdigest()
            if handled.get(str(path)) != digest:
                found.append(Change(path, digest))
    return found


class SpecWatcher:
    def __init__(self, service: Service, specs_dir: Path) -> None:
        self.service = service
        self.specs_dir = specs_dir

    def scan(self) -> list[str]:
        """Submit every new or changed spec; returns the deployment ids created."""
        if not self.specs_dir.is_dir():
            return []
        created = []
        for change in changes(self.specs_dir, self.service.store.watched()):
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
