"""The deploy playbook: which steps run on a host, in which order, with which budget.

`playbooks/deploy.yaml` is data, but not free-form: the engine knows each step by name, and the
order and failure policy follow from the one rule of DESIGN.md: a failure before `switch` leaves
the host exactly as it was (abort-stage), a failure at or after `switch` rolls it back. The loader
refuses anything else with the file, line and field, so a typo can never silently skip a step or
turn a rollback into a shrug.

    steps:
      - {name: probe, timeout_s: 60, on_failure: abort-stage}
      ...
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import SpecError

#: Every step the engine knows, in the only order they may run.
STEP_ORDER: tuple[str, ...] = (
    "probe", "preflight", "stage", "install", "verify", "switch", "check", "prune",
)
#: Steps a playbook may leave out; every other one is required.
OPTIONAL_STEPS = frozenset({"check", "prune"})
SWITCH = "switch"
MAX_TIMEOUT_S = 24 * 3600.0
DEFAULT_PLAYBOOK = Path(__file__).resolve().parent.parent / "playbooks" / "deploy.yaml"


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
        return STEP_ORDER.index(self.name) < STEP_ORDER.index(SWITCH)


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
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read playbook: {exc.strerror}", file=str(path)) from exc
    return parse_playbook(text, source=str(path))


def parse_playbook(text: str, *, source: str = "<memory>") -> Playbook:
    node = _compose(text, source)
    top = _mapping(node, source, "")
    _only_keys(top, {"apiVersion", "kind", "steps"}, source, "")
    _expect_scalar(top, "apiVersion", "orchestrator/v1", source)
    _expect_scalar(top, "kind", "Playbook", source)
    if "steps" not in top:
        raise SpecError("missing field", file=source, line=_line(node), field="steps")
    steps_node = top["steps"][1]
    if not isinstance(steps_node, yaml.SequenceNode) or not steps_node.value:
        raise SpecError("must be a non-empty list of steps", file=source,
                        line=_line(steps_node), field="steps")
    steps = [_step(item, i, source) for i, item in enumerate(steps_node.value)]
    _check_order(steps, steps_node, source)
    return Playbook(tuple(s for s, _ in steps), source)


def _compose(text: str, source: str) -> yaml.Node:
    # compose (not load): we need line numbers, and no constructor runs on untrusted tags.
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            # Anchors and aliases make one node appear in two places: refused, as in specs.
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                mark = event.start_mark
                raise SpecError("YAML anchors and aliases are not allowed", file=source,
                                line=mark.line + 1 if mark is not None else None)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise SpecError(f"not valid YAML: {getattr(exc, 'problem', exc)}", file=source,
                        line=line) from exc
    if node is None:
        raise SpecError("empty playbook", file=source)
    return node


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _mapping(
    node: yaml.Node, source: str, field: str,
) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise SpecError("must be a mapping", file=source, line=_line(node), field=field or None)
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key, value in node.value:
        name = str(key.value)
        where = f"{field}.{name}" if field else name
        if name in out:
            raise SpecError("duplicate key", file=source, line=_line(key), field=where)
        out[name] = (key, value)
    return out


def _only_keys(
    m: dict[str, tuple[yaml.Node, yaml.Node]], allowed: set[str], source: str, field: str,
) -> None:
    for name, (key, _) in m.items():
        if name not in allowed:
            where = f"{field}.{name}" if field else name
            raise SpecError(f"unknown field (allowed: {', '.join(sorted(allowed))})",
                            file=source, line=_line(key), field=where)


def _scalar(node: yaml.Node, source: str, field: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise SpecError("must be a scalar", file=source, line=_line(node), field=field)
    return str(node.value)


def _expect_scalar(
    m: dict[str, tuple[yaml.Node, yaml.Node]], name: str, want: str, source: str,
) -> None:
    if name not in m:
        raise SpecError(f"missing field (expected {want!r})", file=source, field=name)
    got = _scalar(m[name][1], source, name)
    if got != want:
        raise SpecError(f"is {got!r}, expected {want!r}", file=source,
                        line=_line(m[name][1]), field=name)


def _step(node: yaml.Node, index: int, source: str) -> tuple[PlaybookStep, yaml.Node]:
    field = f"steps[{index}]"
    m = _mapping(node, source, field)
    _only_keys(m, {"name", "timeout_s", "on_failure"}, source, field)
    for required in ("name", "timeout_s", "on_failure"):
        if required not in m:
            raise SpecError("missing field", file=source, line=_line(node),
                            field=f"{field}.{required}")
    name = _scalar(m["name"][1], source, f"{field}.name")
    if name not in STEP_ORDER:
        raise SpecError(f"unknown step {name!r} (known: {', '.join(STEP_ORDER)})", file=source,
                        line=_line(m["name"][1]), field=f"{field}.name")
    timeout = _timeout(m["timeout_s"][1], source, f"{field}.timeout_s")
    raw_policy = _scalar(m["on_failure"][1], source, f"{field}.on_failure")
    try:
        policy = OnFailure(raw_policy)
    except ValueError:
        raise SpecError(
            f"unknown policy {raw_policy!r} (known: {', '.join(p.value for p in OnFailure)})",
            file=source, line=_line(m["on_failure"][1]), field=f"{field}.on_failure",
        ) from None
    step = PlaybookStep(name, timeout, policy)
    _check_policy(step, m["on_failure"][1], source, field)
    return step, node


def _timeout(node: yaml.Node, source: str, field: str) -> float:
    raw = _scalar(node, source, field)
    if getattr(node, "style", None):  # quoted: a string, not a number
        raise SpecError(f"must be a number of seconds, not the string {raw!r}", file=source,
                        line=_line(node), field=field)
    try:
        value = float(raw)
    except ValueError:
        raise SpecError(f"must be a number of seconds, got {raw!r}", file=source,
                        line=_line(node), field=field) from None
    if not 0 < value <= MAX_TIMEOUT_S:  # also refuses nan
        raise SpecError(f"must be > 0 and <= {MAX_TIMEOUT_S:.0f}, got {raw}", file=source,
                        line=_line(node), field=field)
    return value


def _check_policy(step: PlaybookStep, node: yaml.Node, source: str, field: str) -> None:
    # Before the switch nothing serves the new release, so the only safe answer is to remove it;
    # continuing would switch to something that failed. The switch itself must be undone.
    if step.before_switch and step.on_failure is not OnFailure.ABORT_STAGE:
        problem = "a step before switch must use on_failure: abort-stage"
    elif step.name == SWITCH and step.on_failure is not OnFailure.ROLLBACK:
        problem = "switch must use on_failure: rollback"
    elif not step.before_switch and step.on_failure is OnFailure.ABORT_STAGE:
        problem = "after switch the release serves: use rollback or warn, not abort-stage"
    else:
        return
    raise SpecError(problem, file=source, line=_line(node), field=f"{field}.on_failure")


def _check_order(steps: list[tuple[PlaybookStep, yaml.Node]], node: yaml.Node, source: str) -> None:
    seen: dict[str, int] = {}
    for i, (step, item) in enumerate(steps):
        if step.name in seen:
            raise SpecError(f"step {step.name!r} listed twice", file=source, line=_line(item),
                            field=f"steps[{i}].name")
        if seen and STEP_ORDER.index(step.name) < max(STEP_ORDER.index(n) for n in seen):
            raise SpecError(f"step {step.name!r} out of order (order: {' -> '.join(STEP_ORDER)})",
                            file=source, line=_line(item), field=f"steps[{i}].name")
        seen[step.name] = i
    missing = [n for n in STEP_ORDER if n not in seen and n not in OPTIONAL_STEPS]
    if missing:
        raise SpecError(f"required steps missing: {', '.join(missing)}", file=source,
                        line=_line(node), field="steps")


def playbook_summary(pb: Playbook) -> list[dict[str, Any]]:
    """The playbook as plain data, for events and `plan`."""
    return [{"name": s.name, "timeout_s": s.timeout_s, "on_failure": s.on_failure.value}
            for s in pb.steps]
