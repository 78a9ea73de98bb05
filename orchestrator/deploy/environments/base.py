"""The interface of an environment kind, and what a kind reports once built on a host.

The steps never reach a kind's specifics: `install` asks the spec's kind to `ensure` its
environment and records the `BuiltEnvironment` in the host's context; `verify` runs the warmup
with that environment's `interpreter`, and writes its `manifest` fields into manifest.json;
re-verification, which only has the release on the host, asks the kind for the release's
interpreter (`interpreter`) and whether the host's audit found the environment (`audited`);
`plan` prints the kind's `describe`. So the venv assumption lives in `venv.py` alone, and an OCI
image or a conda-pack archive is a sibling module, not edits across the steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the context names this module's types: import it for annotations only
    from orchestrator.core.facts import HostFacts
    from orchestrator.core.spec import Spec
    from orchestrator.deploy.deadline import Deadline
    from orchestrator.deploy.steps.context import HostContext, Target
    from orchestrator.deploy.wheelcache import Wheel


@dataclass(frozen=True)
class BuiltEnvironment:
    """One environment as `ensure` left it on a host: enough for the steps after `install`.

    `details` are the install step's event details and `manifest` the fields manifest.json
    records about the environment (for a venv: env_hash, python_version, platform, installer,
    pip_freeze); both are the kind's to define, so the keys users and re-verification read stay
    the kind's contract, not the steps'."""

    kind: str             # the registered kind's name: "venv"
    key: str              # its content address on the host (the manifest's env_hash)
    path: str             # where it is on the host
    # The program that runs Python in it, argv-compatible with `python` (`-E script args`):
    # verify's warmup runs with it, before the release is committed.
    interpreter: str
    details: Mapping[str, Any] = field(default_factory=dict)
    manifest: Mapping[str, Any] = field(default_factory=dict)


class EnvironmentKind(Protocol):
    """What every environment kind offers the steps, `plan` and re-verification."""

    @property
    def name(self) -> str:
        """The kind's registered name (`BuiltEnvironment.kind`)."""
        ...

    @property
    def ships_wheels(self) -> bool:
        """Whether building it installs the lock's wheels on the host, so that `stage` pushes
        the ones the host's wheel cache lacks (`steps.wheels.wheel_resolver`). A kind that
        brings its packages otherwise (an image archive, shipped by its own `ensure`) says no,
        and no wheel is resolved, downloaded or pushed for it."""
        ...

    @property
    def needs_engines(self) -> bool:
        """Whether its preflight needs the host's container engines (the probe's "engines"):
        the pipeline's probe asks for them only then, since asking podman or docker costs the
        host ~50 ms of CPU on every deploy."""
        ...

    def selects(self, spec: Spec) -> bool:
        """Whether the spec's `environment:` asks for this kind (`registry.environment_for`
        asks each kind in order; the first that says yes builds the environment)."""
        ...

    def key(self, spec: Spec, facts: HostFacts, lock_sha256: str) -> str:
        """The environment's content address for this host: equal keys, equal contents, so a
        host reuses what it already has. ValueError when the inputs cannot make a key."""
        ...

    def prepare(self, ctx: HostContext, wheels: Mapping[str, Wheel]) -> None:
        """`stage` found the host lacking some of these wheels, so `ensure` will build: start
        now, on the controller, what that build needs and can start early (the venv kind: its
        .pyc archive). Nothing may depend on it having run or finished."""
        ...

    def ensure(self, ctx: HostContext, deadline: Deadline) -> BuiltEnvironment:
        """Reuse the environment on the host when it is there and complete, else build it at
        its final place (offline: from the wheels `stage` pushed, or from what it ships
        itself), and tie it to the staged release so that prune sees it in use. Raises
        HostError subclasses as host ops do."""
        ...

    def describe(self, spec: Spec, facts: HostFacts, target: Target) -> str:
        """What `ensure` would do on this host, for `orchestrator plan` (touches nothing)."""
        ...

    def interpreter(self, release_path: str) -> str:
        """The program that runs Python inside the environment of the release at
        `release_path` on the host: what re-verification runs the warmup with. A kind whose
        Python does not live on the host's file system (an image) leaves a launcher there."""
        ...

    def audited(self, audit: Mapping[str, Any]) -> bool:
        """Whether the host's audit of a release (hosts/remote/audit.py's reply) found this
        kind's environment, so the warmup can be run in it again."""
        ...
