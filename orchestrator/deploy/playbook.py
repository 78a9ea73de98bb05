"""The deploy playbook: which steps run on a host, in which order, with which budget.

orchestrator/deploy/playbooks/deploy.yaml (package data: a wheel install carries it) is data,
but not free-form: its names and their order are checked against the step registry
(orchestrator.deploy.steps.registry), and the failure policy follows from the one rule of
DESIGN.md: a failure before `switch` leaves the host exactly as it was (abort-stage), a failure
at or after `switch` rolls it back. The loader refuses anything else with the file, line and
field, so a typo can never silently skip a step or turn a rollback into a shrug.

    steps:
      - {name: probe, timeout_s: 60, on_failure: abort-stage}
      ...
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.yamlio import FieldPath, YamlDocument, load_yaml, parse_yaml
from orchestrator.deploy.steps.registry import OPTIONAL_STEPS, STEP_ORDER, SWITCH, before_switch

# The step names, their order, which are optional and where the switch is: the registry's
# (re-exported here for the playbook's readers); this module only validates a file against them.
__all__ = ["OPTIONAL_STEPS", "STEP_ORDER", "SWITCH", "OnFailure", "Playbook", "PlaybookStep",
           "load_playbook", "parse_playbook", "playbook_summary"]

MAX_TIMEOUT_S = 24 * 3600.0
# Package data (pyproject's package-data), so a wheel install deploys as an editable one does.
DEFAULT_PLAYBOOK = Path(__file__).resolve().parent / "playbooks" / "deploy.yaml"


class OnFailure(enum.StrEnum):
    ABORT_STAGE = "abort-stage"
    ROLLBACK = "rollback"
    WARN = "warn"


@dataclass(frozen=True)
class PlaybookStep:
    name: str
    timeout_s: float
    on_failure: OnFailure

    @property
    def before_switch(self) -> bool:
        return before_switch(self.name)


@dataclass(frozen=True)
class Playbook:
    steps: tuple[PlaybookStep, ...]
    source: str = "<memory>"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)

    def step(self, name: str) -> PlaybookStep:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def with_timeout(self, name: str, timeout_s: float) -> Playbook:
        """A copy with one step's budget replaced (the spec's verify.timeout_s widens verify)."""
        steps = tuple(
            PlaybookStep(s.name, timeout_s, s.on_failure) if s.name == name else s
            for s in self.steps
        )
        return Playbook(steps, self.source)


def load_playbook(path: Path = DEFAULT_PLAYBOOK) -> Playbook:
    """Read and validate a playbook file; every problem is a SpecError with file and line."""
    return _playbook(load_yaml(path))


def parse_playbook(text: str, *, source: str = "<memory>") -> Playbook:
    return _playbook(parse_yaml(text, source))


def _playbook(doc: YamlDocument) -> Playbook:
    # orchestrator.core.yamlio already refused duplicate keys, anchors, aliases and odd tags.
    top = _mapping(doc, (), {"apiVersion", "kind", "steps"})
    for name, want in (("apiVersion", "orchestrator/v1"), ("kind", "Playbook")):
        if top.get(name) != want:
            raise doc.error((name,), f"is {top.get(name)!r}, expected {want!r}")
    steps_raw = top.get("steps")
    if not isinstance(steps_raw, list) or not steps_raw:
        raise doc.error(("steps",), "must be a non-empty list of steps")
    steps = [_step(doc, i) for i in range(len(steps_raw))]
    _check_order(doc, steps)
    return Playbook(tuple(steps), doc.file)


def _mapping(doc: YamlDocument, path: FieldPath, allowed: set[str]) -> dict[str, Any]:
    value: Any = doc.data
    for part in path:
        value = value[part]
    if not isinstance(value, dict):
        raise doc.error(path, "must be a mapping")
    for key in value:
        if key not in allowed:
            raise doc.error((*path, key), f"unknown field (allowed: {', '.join(sorted(allowed))})")
    return value


def _step(doc: YamlDocument, index: int) -> PlaybookStep:
    at: FieldPath = ("steps", index)
    m = _mapping(doc, at, {"name", "timeout_s", "on_failure"})
    for required in ("name", "timeout_s", "on_failure"):
        if required not in m:
            raise doc.error((*at, required), "missing field")
    name = m["name"]
    if name not in STEP_ORDER:
        raise doc.error((*at, "name"), f"unknown step {name!r} (known: {', '.join(STEP_ORDER)})")
    timeout = m["timeout_s"]
    if isinstance(timeout, str):
        raise doc.error((*at, "timeout_s"), f"must be a number of seconds, not the string "
                                            f"{timeout!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise doc.error((*at, "timeout_s"), f"must be a number of seconds, got {timeout!r}")
    if not 0 < timeout <= MAX_TIMEOUT_S:  # also refuses nan
        raise doc.error((*at, "timeout_s"), f"must be > 0 and <= {MAX_TIMEOUT_S:.0f}, "
                                            f"got {timeout}")
    try:
        policy = OnFailure(m["on_failure"])
    except ValueError:
        raise doc.error((*at, "on_failure"), f"unknown policy {m['on_failure']!r} (known: "
                        f"{', '.join(p.value for p in OnFailure)})") from None
    step = PlaybookStep(str(name), float(timeout), policy)
    problem = _policy_problem(step)
    if problem:
        raise doc.error((*at, "on_failure"), problem)
    return step


def _policy_problem(step: PlaybookStep) -> str | None:
    # Before the switch nothing serves the new release, so the only safe answer is to remove it;
    # continuing would switch to something that failed. The switch itself must be undone.
    if step.before_switch and step.on_failure is not OnFailure.ABORT_STAGE:
        return "a step before switch must use on_failure: abort-stage"
    if step.name == SWITCH and step.on_failure is not OnFailure.ROLLBACK:
        return "switch must use on_failure: rollback"
    if not step.before_switch and step.on_failure is OnFailure.ABORT_STAGE:
        return "after switch the release serves: use rollback or warn, not abort-stage"
    return None


def _check_order(doc: YamlDocument, steps: list[PlaybookStep]) -> None:
    seen: dict[str, int] = {}
    for i, step in enumerate(steps):
        if step.name in seen:
            raise doc.error(("steps", i, "name"), f"step {step.name!r} listed twice")
        if seen and STEP_ORDER.index(step.name) < max(STEP_ORDER.index(n) for n in seen):
            raise doc.error(("steps", i, "name"), f"step {step.name!r} out of order (order: "
                            f"{' -> '.join(STEP_ORDER)})")
        seen[step.name] = i
    missing = [n for n in STEP_ORDER if n not in seen and n not in OPTIONAL_STEPS]
    if missing:
        raise doc.error(("steps",), f"required steps missing: {', '.join(missing)}")


def playbook_summary(pb: Playbook) -> list[dict[str, Any]]:
    """The playbook as plain data, for events and `plan`."""
    return [{"name": s.name, "timeout_s": s.timeout_s, "on_failure": s.on_failure.value}
            for s in pb.steps]
