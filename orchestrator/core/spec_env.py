"""The spec's `environment` section: what the model runs in, a venv built on each host from a
hashed lock, or an OCI image (given as an archive or layout directory, or built at deploy time
from the lock onto a base image), and where the hosts get the locked wheels from (the controller,
an operator's mirror, or each other). Its own module
so the spec model (orchestrator/core/spec.py) stays one screenful per section."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import StringConstraints, field_validator, model_validator

from orchestrator.core.specfields import _PYTHON, _URL, RelPath, Sha256, _d, _no_dotdot, _Strict


class ImageArchive(_Strict):
    """An OCI image shipped as an archive file and named by its sha256."""

    archive: RelPath = _d(..., "`docker save` / `podman save` output (docker-archive or "
                               "oci-archive), or for environment.image an OCI layout "
                               "directory; relative to the spec file.")
    sha256: Sha256 = _d(..., "sha256 of the archive file, or tree hash of the layout "
                             "directory (`orchestrator hash PATH`).")
    _check_path = field_validator("archive")(_no_dotdot)


class WheelSource(_Strict):
    """An operator's mirror the hosts pull the locked wheels from, each kept only if its sha256
    is the lock's: the controller sends names and hashes, not bytes."""

    url: Annotated[str, StringConstraints(pattern=_URL)] = _d(
        ..., "Base URL the hosts can reach: a PEP 503/691 simple index (pypiserver, devpi, "
             "Artifactory...) or a plain HTTP directory of the wheel files; no credentials in it.")
    layout: Literal["index", "directory"] = _d(
        "index", "index: <url>/<project>/ lists the files (PEP 503 or 691); directory: "
                 "<url>/<wheel filename>.")

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        parts = urlsplit(value)
        if not parts.hostname:
            raise ValueError("the URL names no host")
        if parts.username or parts.password:
            raise ValueError("the URL carries credentials; the hosts' mirror must be readable "
                             "without them (every wheel is checked against the lock's sha256)")
        return value


class Environment(_Strict):
    """What the model runs in: a venv built on each host from the lock file (`requirements`),
    or an OCI image run by the host's Docker or Podman (`image`); exactly one of the two."""

    python: Annotated[str, StringConstraints(pattern=_PYTHON)] | None = _d(
        None, 'Python major.minor, quoted: "3.11"; with requirements (required) the host\'s, '
              'with image (optional) the image\'s.')
    requirements: RelPath | None = _d(None, "Hash-pinned lock file (requirements.lock or "
                                            "pylock.toml), relative to the spec file.")
    wheelhouse: RelPath | None = _d(None, "Folder of the locked wheels, relative to the spec "
                                          "file; if absent, the daemon downloads them once.")
    image: ImageArchive | None = _d(None, "OCI image archive the model runs in (mounted "
                                          "read-only).")
    wheel_source: WheelSource | None = _d(
        None, "Mirror the hosts download the wheels they lack from (by hash), instead of "
              "the controller shipping them; with requirements.")
    wheel_peers: bool = _d(
        False, "With requirements: hosts that already hold the wheels (hash-verified) serve "
               "them to the later hosts of the rollout, which pull them by hash; the "
               "controller streams only to the first hosts and whatever a peer cannot give.")
    image_base: ImageArchive | None = _d(None, "With requirements: deploy an image built at "
                                               "deploy time from the lock onto this base "
                                               "image archive.")
    _check_paths = field_validator("requirements", "wheelhouse")(_no_dotdot)

    @model_validator(mode="after")
    def _one_kind(self) -> Environment:
        if (self.requirements is None) == (self.image is None):
            raise ValueError("give exactly one of requirements (a venv) and image (an OCI "
                             "image archive)")
        if self.image is not None and self.wheelhouse is not None:
            raise ValueError("wheelhouse goes with requirements, not with image")
        if self.image is not None and self.wheel_source is not None:
            raise ValueError("wheel_source goes with requirements, not with image")
        if self.requirements is not None and self.python is None:
            raise ValueError("python is required with requirements")
        if self.image_base is not None and self.requirements is None:
            raise ValueError("image_base goes with requirements (the lock built onto it)")
        if self.image_base is not None and self.wheel_source is not None:
            raise ValueError("wheel_source does not go with image_base (the image is built on "
                             "the controller, from its wheels)")
        if self.wheel_peers and self.requirements is None:
            raise ValueError("wheel_peers goes with requirements, not with image")
        if self.wheel_peers and self.wheel_source is not None:
            raise ValueError("wheel_peers and wheel_source are two ways to spare the "
                             "controller: give one (with a mirror, hosts need no peers)")
        if self.wheel_peers and self.image_base is not None:
            raise ValueError("wheel_peers does not go with image_base (the image is built on "
                             "the controller, from its wheels)")
        return self
