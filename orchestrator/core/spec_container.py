"""The spec's `service.container` section: the serving container of an image release, replaced
at each switch without a gap (remote/hostops_container.py does it on the host).

The container runs the release's image on the host's network with the release mounted
read-only at its own path; its stable name (default: the app's name) is what operators and
monitoring see. A new release's container starts beside the old one as `<name>-next`, must
pass `ready_command` inside itself, and only then is the old one stopped and the new one
renamed. Two servers share the port only if they bind it with SO_REUSEPORT (gunicorn
`--reuse-port`); docs/spec.md says so. Its own module so that spec.py stays in bounds."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from orchestrator.core.specfields import Command, Name, _d, _f, _Strict

#: One argument of the container's command: printable (newlines and tabs too: a `python3 -c`
#: script), bounded; it reaches `engine run` as one argv element, never a shell.
Arg = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x08\x0b-\x1f\x7f]{0,4096}$")]


class Container(_Strict):
    """The serving container of an image release."""

    name: Name | None = _d(None, "The serving container's stable name (default: the app's "
                                 "name); the new one starts as `<name>-next`.")
    command: list[Arg] = Field(min_length=1, max_length=256, description=(
        "What the container runs (argv, no shell), e.g. [python3, -m, myapp.serve]; it finds "
        "its release in ORCHESTRATOR_RELEASE and the model in ORCHESTRATOR_MODEL."))
    ready_command: Command = Field(description=(
        "Shell command run inside the new container (`engine exec`) that must exit 0 before "
        "the old container is stopped, within ready_timeout_s."))
    ready_timeout_s: float = _f(60, 0, 3600, "How long the new container may take to be "
                                             "ready, s.", gt=True)
    stop_timeout_s: float = _f(10, 0, 600, "How long the old container may take to stop "
                                           "after SIGTERM before it is killed, s.")

    def stable_name(self, app: str) -> str:
        return self.name or app
