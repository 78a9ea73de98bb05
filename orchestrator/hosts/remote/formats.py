"""The model-format registry: every format the orchestrator deploys, in one list.

Everything that depends on the format reads it from here: the spec (`model.format`'s allowed
values and description), `orchestrator validate` (the model's shape), `golden record` (its
`--format` choices and the loader), the environment fingerprint (which frameworks it records)
and the warmup runner on the host (request check, loader, GPU verdict).

Adding a format (PyTorch, say) touches: a new formats_<name>.py defining its `ModelFormat` and
loader (see formats_base.py; formats_joblib.py is the smallest example), its line in `FORMATS`
below, the `model.format` row of docs/spec.md, docs/spec.schema.json (regenerated:
`orchestrator schema > docs/spec.schema.json`), a tiny model in tests/models.py and its tests
in tests/test_formats.py.

Shipped flat to hosts (Python 3.9+, stdlib-only) and imported by the controller as
orchestrator.hosts.remote.formats: a leaf, it imports nothing but its formats_* siblings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING or __package__:
    from .formats_base import ModelFormat
    from .formats_joblib import JOBLIB
    from .formats_tensorflow import KERAS, SAVEDMODEL
else:  # on a host: shipped flat beside this file
    from formats_base import ModelFormat
    from formats_joblib import JOBLIB
    from formats_tensorflow import KERAS, SAVEDMODEL

#: The registry, in the order error messages and docs list the formats.
FORMATS: tuple[ModelFormat, ...] = (SAVEDMODEL, KERAS, JOBLIB)

NAMES: tuple[str, ...] = tuple(f.name for f in FORMATS)


def _unique(names: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


#: Distributions whose versions the environment fingerprint records: every format's frameworks,
#: and numpy (the golden file's arrays) whatever the format.
FRAMEWORKS: tuple[str, ...] = _unique([n for f in FORMATS for n in f.frameworks] + ["numpy"])


def get(name: str) -> ModelFormat:
    """The format called `name`; ValueError naming the known ones otherwise."""
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise ValueError("unknown model format {!r} (one of {})".format(name, ", ".join(NAMES)))


def summary() -> str:
    """All formats in words, for the spec's description: "a ..., a ..., or a ..."."""
    words = [f.summary for f in FORMATS]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + ", or " + words[-1]
