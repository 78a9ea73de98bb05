"""The environment kinds the orchestrator knows, and the one function that picks a spec's.

`KINDS` is asked in order and the first kind that `selects` the spec builds its environment, so
a more specific kind (an image built from the lock onto a base image also has a lock) comes
before the venv, which takes any spec with `environment.requirements` and so stays last.
A new kind is one module in this package and one line in `KINDS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from orchestrator.core.spec import Spec
from orchestrator.deploy.environments.base import EnvironmentKind
from orchestrator.deploy.environments.image import ImageKind
from orchestrator.deploy.environments.venv import VenvKind
from orchestrator.errors import InvalidInput

#: In the order `environment_for` asks them; spelled out so mypy checks each against the
#: protocol.
KINDS: tuple[EnvironmentKind, ...] = (
    ImageKind(),
    VenvKind(),
)
#: name -> kind (`BuiltEnvironment.kind` names one).
ENVIRONMENTS: Mapping[str, EnvironmentKind] = MappingProxyType({k.name: k for k in KINDS})


def environment_for(spec: Spec) -> EnvironmentKind:
    """The kind of environment the spec asks for: the one place a spec chooses its kind.
    InvalidInput (nothing was touched) when no known kind takes the spec."""
    for kind in KINDS:
        if kind.selects(spec):
            return kind
    raise InvalidInput(f"{spec.name}: environment: no environment kind takes it (known: "
                       f"{', '.join(k.name for k in KINDS)})")
