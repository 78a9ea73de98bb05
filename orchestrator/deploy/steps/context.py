"""`HostContext`: one host, one deployment, and what the steps learned there so far.

Every step is a function of (context, deadline): it reads what the steps before it learned (the
facts, the app's state on the host, the staged release, the environment, the warmup result) and
records what it learns for the steps after it and for the release's manifest.json. Typed, so a
step that reads a field no earlier step sets is a type error or a precise `StepFailed`, not an
AttributeError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.facts import HostFacts
from orchestrator.core.inventory import Host
from orchestrator.core.lockfile import Lock
from orchestrator.core.ociimage import ImageInfo
from orchestrator.core.preflight import HostVerdict, LockLike
from orchestrator.core.sink import EventSink
from orchestrator.core.spec import Service, Spec
from orchestrator.deploy.environments.base import BuiltEnvironment
from orchestrator.deploy.inputs import DeployInputs
from orchestrator.deploy.progress import HostProgress
from orchestrator.deploy.steps import StepFailed
from orchestrator.errors import HostError
from orchestrator.hosts.hostops import HostOps, StagedRelease
from orchestrator.hosts.ops import OpCall
from orchestrator.hosts.shipping import RemoteTools
from orchestrator.hosts.transport import Transport


@dataclass
class HostContext:
    """The state one host's steps share, in the order they learn it."""

    transport: Transport
    inv_host: Host
    inputs: DeployInputs
    ops: HostOps
    # The service of the release `current` points at: the spec's, until a rollback puts back a
    # release deployed with its own (`recovery.service_of`).
    service: Service | None
    # Progress events of the long steps (stage's bytes, verify's iterations); none by default.
    progress: HostProgress = field(default_factory=lambda: HostProgress(None, ""))
    # -- learned by the steps --
    tools: RemoteTools | None = None                     # probe: the shipped host tools
    facts: HostFacts | None = None                       # probe
    app: dict[str, Any] = field(default_factory=dict)    # probe: the app's state before us
    staged: StagedRelease | None = None                  # stage
    release_path: str | None = None                      # stage, then verify (committed)
    environment: BuiltEnvironment | None = None          # install
    warmup: dict[str, Any] | None = None                 # verify: the manifest's baseline
    gpus: tuple[str, ...] = ()                           # verify: the placed GPUs' UUIDs
    switched: bool = False                               # switch
    # -- set by the host's driver (deploy/batch.py), to save round trips on far hosts --
    # The probe's replies (or its error), taken in the same host call as the deploy lock.
    prefetched: list[dict[str, Any]] | HostError | None = None
    # The deploy lock's release, sent with the last step's ops (prune); `unlocked` once done.
    unlock: OpCall[bool] | None = None
    unlocked: bool = False

    @classmethod
    def open(cls, transport: Transport, host: Host, inputs: DeployInputs,
             sink: EventSink | None = None) -> HostContext:
        """A fresh context: nothing learned yet; progress events go to `sink` when given."""
        fence = None if inputs.fence is None else {"deployment": inputs.deployment,
                                                   "token": inputs.fence}
        return cls(transport, host, inputs, HostOps(transport, host.deploy_root, fence=fence),
                   inputs.spec.service, HostProgress(sink, host.name))

    @property
    def spec(self) -> Spec:
        return self.inputs.spec

    @property
    def lock(self) -> Lock | ImageInfo:
        return self.inputs.lock

    @property
    def host(self) -> str:
        return self.inv_host.name

    @property
    def root(self) -> str:
        return self.inv_host.deploy_root

    @property
    def app_name(self) -> str:
        return str(self.inputs.spec.name)

    @property
    def release_id(self) -> str:
        return self.inputs.release_id

    def has_previous(self) -> bool:
        """Whether the host had a release to roll back to before this deployment."""
        return bool(self.app.get("current") or self.app.get("previous_good"))

    def known_facts(self) -> HostFacts:
        if self.facts is None:
            raise StepFailed(self.host, "no host facts: the probe step did not run")
        return self.facts

    def known_environment(self) -> BuiltEnvironment:
        if self.environment is None:
            raise StepFailed(self.host, "no environment: the install step did not run")
        return self.environment

    def known_staged(self) -> StagedRelease:
        if self.staged is None:
            raise StepFailed(self.host, "nothing staged: the stage step did not run")
        return self.staged


@dataclass(frozen=True)
class Target:
    """What a step's `describe` may know besides the spec and the facts, for `orchestrator plan`:
    the inventory host, the lock, and the preflight's verdict. Nothing here touches a host."""

    host: Host
    lock: LockLike
    verdict: HostVerdict
