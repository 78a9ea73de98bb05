"""JSON that a host sent: parsed with bounds, because a host is untrusted input.

Python's `json` accepts `NaN`, `Infinity` and `1e999` (an infinite float) and recurses once per
nesting level, so one broken or hostile host could put non-finite numbers into the store and
the gates (`"free_bytes": Infinity` crashed `probe --all`) or raise RecursionError out of a
parser (deeply nested arrays). `loads` refuses all of these with a `ValueError` the caller turns
into a `BadHostOutput` naming the host and what it was reading. Sizes are bounded before this,
where the text is read (the transport's output cap, the facts and warmup caps).
"""

from __future__ import annotations

import json
import math
from typing import Any

#: Deeper than any reply of ours (facts, manifests, warmup results are a few levels deep).
MAX_DEPTH = 32


class HostJsonError(ValueError):
    """The text is not JSON within our bounds; the message says which bound."""


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads` with finite numbers only and at most `max_depth` nested containers."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise HostJsonError("JSON nested too deeply") from None
    depth = _depth(value)
    if depth > max_depth:
        raise HostJsonError(f"JSON nested {depth} levels deep (at most {max_depth})")
    return value


def _refuse_constant(name: str) -> Any:
    raise HostJsonError(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise HostJsonError(f"non-finite number {text[:20]}")
    return value


def _depth(value: Any) -> int:
    """Nesting depth, without recursion (the value came from a host)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        todo.extend((child, level + 1) for child in children)
    return deepest
