"""Label selectors, Kubernetes style: a pure parser and matcher.

A selector is requirements joined by `,` (all must hold):

    key=value   key==value   key!=value   key in (a,b)   key notin (a,b)   key   !key

`key!=v` and `notin` also hold for a host without the label, as in Kubernetes. Keys and values
use the inventory's label alphabet (letters, digits, `_ . -`); a value may be empty (`key=`).
Whitespace is allowed around operators and inside the parentheses.

A bad selector is a `SelectorError` naming the column (1-based) where reading stopped and what
was expected there, so `zone in (a,b` says `column 12: expected ',' or ')'`. Which targets are
selectors rather than host or group names is `is_selector`'s call (a bare word is a name).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from orchestrator.core.hashing import NAME_PATTERN
from orchestrator.errors import SpecError

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_VALUE = re.compile(r"[A-Za-z0-9_.-]{0,63}")
_LISTED = re.compile(r"[A-Za-z0-9_.-]{1,63}")  # `in ()` and `in (a,)` are mistakes, not sets
_SPACE = re.compile(r"\s*")
_WORD_OP = re.compile(r"(notin|in)(?=[\s(])")
MAX_LENGTH = 1000  # a selector longer than this is a mistake, not a fleet


class Op(Enum):
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    NOT_EXISTS = "!exists"


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Op
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op is Op.EXISTS:
            return value is not None
        if self.op is Op.NOT_EXISTS:
            return value is None
        if self.op in (Op.EQUALS, Op.IN):
            return value is not None and value in self.values
        return value is None or value not in self.values  # != and notin


@dataclass(frozen=True)
class Selector:
    text: str
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


class SelectorError(SpecError):
    """A selector that does not parse: the column and what was expected there."""

    def __init__(self, text: str, column: int, expected: str, *, file: str | None = None,
                 field: str | None = "targets") -> None:
        self.text, self.column = text, column
        super().__init__(f"bad label selector {text!r}: column {column}: {expected}",
                         file=file, field=field)


def is_selector(target: str) -> bool:
    """A target with an operator, a `!` or a `,` is a selector; a bare word is a host or group
    name (so `gpu` alone never silently means "every host with a gpu label")."""
    return any(c in target for c in "=!,(") or _WORD_OP.search(target) is not None


def target_value(target: str) -> str:
    """A spec's target as pydantic checks it: a host or group name, or a selector that parses
    (a ValueError carries the column, which the spec loader places at the target's line)."""
    if is_selector(target):
        try:
            parse_selector(target, field=None)
        except SelectorError as exc:
            raise ValueError(exc.reason) from None
    elif not re.fullmatch(NAME_PATTERN, target):
        raise ValueError(f"{target!r} is not a host or group name (1-63 lowercase letters, "
                         "digits and '-') nor a label selector")
    return target


def parse_selector(text: str, *, file: str | None = None,
                   field: str | None = "targets") -> Selector:
    """Parse `text`; a `SelectorError` names the column where it stops making sense."""
    return _Parser(text, file, field).selector()


class _Parser:
    def __init__(self, text: str, file: str | None, field: str | None) -> None:
        self.text, self.pos, self.file, self.field = text, 0, file, field

    def fail(self, expected: str) -> SelectorError:
        return SelectorError(self.text, self.pos + 1, expected, file=self.file, field=self.field)

    def skip(self) -> None:
        match = _SPACE.match(self.text, self.pos)
        assert match is not None  # \s* always matches
        self.pos = match.end()

    def take(self, literal: str) -> bool:
        self.skip()
        if self.text.startswith(literal, self.pos):
            self.pos += len(literal)
            return True
        return False

    def token(self, pattern: re.Pattern[str], what: str) -> str:
        self.skip()
        match = pattern.match(self.text, self.pos)
        if match is None:
            raise self.fail(f"expected {what}")
        self.pos = match.end()
        return match.group()

    def selector(self) -> Selector:
        if len(self.text) > MAX_LENGTH:
            raise SelectorError(self.text[:40] + "...", MAX_LENGTH + 1,
                                f"longer than {MAX_LENGTH} characters", file=self.file,
                                field=self.field)
        requirements = [self.requirement()]
        while self.take(","):
            requirements.append(self.requirement())
        self.skip()
        if self.pos != len(self.text):
            raise self.fail("expected ',' or the end of the selector")
        return Selector(self.text, tuple(requirements))

    def requirement(self) -> Requirement:
        if self.take("!") and not self.text.startswith("=", self.pos):
            return Requirement(self.token(_KEY, "a label key"), Op.NOT_EXISTS)
        if self.text.startswith("=", self.pos):
            raise self.fail("expected a label key")
        key = self.token(_KEY, "a label key")
        self.skip()
        for literal, op in (("!=", Op.NOT_EQUALS), ("==", Op.EQUALS), ("=", Op.EQUALS)):
            if self.take(literal):
                return Requirement(key, op, frozenset({self._value()}))
        word = _WORD_OP.match(self.text, self.pos)
        if word is not None:
            self.pos = word.end()
            return Requirement(key, Op.IN if word.group(1) == "in" else Op.NOT_IN,
                               self._values())
        if self.pos == len(self.text) or self.text[self.pos] == ",":
            return Requirement(key, Op.EXISTS)
        raise self.fail("expected =, ==, !=, in, notin, ',' or the end")

    def _value(self) -> str:
        value = self.token(_VALUE, "a label value")
        if self.pos < len(self.text) and not self.text[self.pos].isspace() \
                and self.text[self.pos] != ",":
            raise self.fail("expected a label value (letters, digits, _ . -, at most 63)")
        return value

    def _values(self) -> frozenset[str]:
        if not self.take("("):
            raise self.fail("expected '(' and a list of values")
        values = [self.token(_LISTED, "a label value")]
        while self.take(","):
            values.append(self.token(_LISTED, "a label value"))
        if not self.take(")"):
            raise self.fail("expected ',' or ')'")
        return frozenset(values)
