"""`DeployInputs`: what one deployment resolved on the controller, once, for all its hosts.

Its own small module so that the rollout, the batch runner, `plan`, recovery and re-verification
can name a deployment's inputs without importing any step: they only read it, the steps use it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.core import release as rel
from orchestrator.core.compat import CompatData
from orchestrator.core.facts import HostFacts
from orchestrator.core.lockfile import Lock
from orchestrator.core.ociimage import ImageInfo
from orchestrator.core.spec import Spec
from orchestrator.deploy.peers import WheelPeers
from orchestrator.deploy.wheelcache import Wheel

#: Which wheels a host gets, by its facts (`orchestrator.deploy.steps.wheels.wheel_resolver`),
#: within what the asking step has left (`Deadline.remaining`: bounds a cache fill's retries).
WheelResolver = Callable[[HostFacts, Callable[[], float]], Mapping[str, Wheel]]


@dataclass(frozen=True)
class DeployInputs:
    """Everything one deployment needs, resolved once on the controller for all its hosts."""

    deployment: str
    spec: Spec
    lock: Lock | ImageInfo  # the lock of a venv, or what the image archive says (envinputs)
    release_id: str
    wheels_for: WheelResolver
    compat: CompatData
    installer: str = "uv"  # or "pip"
    # Off by default: compiling every module of the lock costs more than the first import
    # compiling only what the model uses, and that import happens in `verify`, before the
    # switch, writing the .pyc files the service then finds (measured in bench/deploy.py).
    compile_bytecode: bool = False
    # Where the lock's .pyc archives are cached (deploy/bytecode.py: compiled once on the
    # controller, shipped to a host that builds the venv); None: not shipped, the first
    # import on each host compiles.
    bytecode_cache: Path | None = None
    # The daemon's lease fencing token for this deployment (issue 16), recorded in each host's
    # deploy lock: a daemon that lost the deployment to another is refused there. None: no
    # lease (`orchestrator deploy`).
    fence: int | None = None
    # environment.wheel_peers: which hosts of this rollout hold the wheels and serve them
    # (orchestrator/deploy/peers.py); the rollout stops its servers when it ends.
    peers: WheelPeers | None = field(default=None, compare=False)


def new_inputs_release_id(spec: Spec, lock_sha256: str, now: datetime | None = None) -> str:
    """The deployment's release id: UTC time + hash of what it deploys."""
    content = rel.content_hash(spec.digest, spec.model.sha256, lock_sha256)
    return rel.new_release_id(now or datetime.now(UTC), content)
