"""Releases: their ids, the key of their environment, and the manifest each one carries.

A release id is `<UTC timestamp>-<first 8 hex of a content hash>`, e.g. `20261122T013000Z-9f2c1a7b`:
sortable by time as plain strings (prune keeps the newest by sorting ids), and telling two
deployments in the same second apart by what they deploy.

A venv environment is keyed by what determines its contents: the host's Python (major.minor),
its platform and the lock file's sha256 (`env_hash`, the venv kind's key in
orchestrator/deploy/environments/venv.py). Two apps whose locks are byte-identical share one venv.

`Manifest` is what `<release>/manifest.json` records (DESIGN.md "Host layout"); it is read back from
hosts, so it is validated at that edge (pydantic) and kept strict about its own keys while
leaving `facts` and `warmup` as the free-form objects their producers define.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.errors import BadHostOutput, InvalidInput

RELEASE_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
#: Hex digits of an env hash: 96 bits are plenty, and the venv path stays short, because every
#: console script's shebang holds the venv's absolute path and Linux cuts shebangs at 127 bytes.
ENV_HASH_LEN = 24
MANIFEST_SCHEMA = 1


def new_release_id(now: datetime, content_hash: str) -> str:
    """`20261122T013000Z-<8 hex>` from an aware datetime (any zone: converted to UTC)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("new_release_id needs an aware datetime, not a naive one")
    digest = content_hash.lower()
    if not re.fullmatch(r"[0-9a-f]{8,}", digest):
        raise ValueError(f"content hash must be hex, at least 8 digits: {content_hash!r}")
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{digest[:8]}"


def release_time(release_id: str) -> datetime:
    """When a release was created, from its id."""
    check_release_id(release_id)
    return datetime.strptime(release_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def check_release_id(release_id: str) -> str:
    if not RELEASE_ID_RE.fullmatch(release_id):
        raise InvalidInput(f"not a release id (YYYYMMDDTHHMMSSZ-<8 hex>): {release_id!r}")
    return release_id


def content_hash(*parts: str) -> str:
    """sha256 of the parts that make a release what it is (model hash, lock hash, spec digest)."""
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def env_hash(python_version: str, platform: str, lock_sha256: str) -> str:
    """The content address of a venv: (Python major.minor, platform, lock sha256)."""
    minor = ".".join(python_version.split(".")[:2])
    if not re.fullmatch(r"[0-9]+\.[0-9]+", minor):
        raise ValueError(f"python version must look like 3.11: {python_version!r}")
    if not HEX64_RE.fullmatch(lock_sha256):
        raise ValueError(f"lock sha256 must be 64 lowercase hex digits: {lock_sha256!r}")
    key = f"python={minor}\nplatform={platform}\nlock={lock_sha256}\n"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:ENV_HASH_LEN]


class Manifest(BaseModel):
    """`manifest.json`: what a release is, and the baseline re-verification compares against.
    The environment's fields (env_hash, python_version, platform, installer, pip_freeze) are
    filled by the release's environment kind (`BuiltEnvironment.manifest`); their keys stay."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = Field(default=MANIFEST_SCHEMA, alias="schema")
    app: str
    release_id: str = Field(pattern=RELEASE_ID_RE.pattern)
    deployment: str | None = None
    created: datetime
    spec_digest: str
    model_sha256: str = Field(pattern=HEX64_RE.pattern)
    lock_sha256: str = Field(pattern=HEX64_RE.pattern)
    # The golden file's sha256: with the spec, model and lock, what makes a release the same
    # (a re-submission with another golden file is not a no-op). None: an older manifest.
    golden_sha256: str | None = Field(default=None, pattern=HEX64_RE.pattern)
    env_hash: str = Field(pattern=r"^[0-9a-f]{16,64}$")
    python_version: str
    platform: str
    installer: str | None = None
    facts: dict[str, Any] = Field(default_factory=dict)
    pip_freeze: list[str] = Field(default_factory=list)
    warmup: dict[str, Any] | None = None
    # The UUIDs of the GPUs placement gave the release (gpu.count; its CUDA_VISIBLE_DEVICES).
    # None: a CPU deployment, or a manifest written before placement existed.
    gpus: list[str] | None = None
    # The spec's `service:` this release was deployed with ({} for none): a rollback to it
    # restarts and checks it with these, as they were when it last passed. None: a manifest
    # written before this was recorded (the rolling-back deployment's own are used).
    service: dict[str, Any] | None = None
    # An image release's image (image_id, archive_sha256, engine, engine_version): what
    # re-verification and a rollback start again. None for a venv release.
    image: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object written on the host (hostops `write-manifest`)."""
        data: dict[str, Any] = json.loads(self.model_dump_json(by_alias=True))
        return data

    @classmethod
    def from_host(cls, host: str, data: object) -> Manifest:
        """Parse a manifest read back from a host; malformed is `BadHostOutput` naming it."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise BadHostOutput(host, f"manifest.json: {where}: {first['msg']}") from exc
