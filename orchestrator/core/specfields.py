"""The building blocks of the spec's models (orchestrator/core/spec.py): the patterns its
strings must match and what each means in error messages, the constrained string types, the
bounded field helpers and the strict base model. Split from spec.py to keep each module
readable in one pass; spec.py is their one user."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from orchestrator.core.gpufacts import MIG_PROFILE
from orchestrator.core.inventory import NAME_PATTERN
from orchestrator.core.inventory import PATTERN_HINTS as INVENTORY_HINTS
from orchestrator.core.selectors import target_value

# Relative, no leading "-" or "/", no spaces or shell metacharacters; ".." is refused below.
_RELPATH = r"^[A-Za-z0-9_.+@][A-Za-z0-9_.+@/-]{0,1023}$"
_SHA256 = r"^[0-9a-f]{64}$"
# A name, or a label selector in its alphabet; the selector's grammar is checked by
# `target_value` (core/selectors.py), with the column where it breaks.
_TARGET = r"^(?:[a-z0-9][a-z0-9-]{0,62}|[A-Za-z0-9_.=!(), -]{1,1000})$"
# A command run by the host's shell, on purpose: one line, no control characters.
_COMMAND = r"^[^\x00-\x1f\x7f]{1,4096}$"
_DURATION = r"^[0-9]{1,6}[smhd]$"
_PYTHON = r"^3\.[0-9]{1,2}$"
_CC = r"^[0-9]{1,2}\.[0-9]$"
_SIGNATURE = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
#: A public method of the unpickled object, or `__call__` for a model that is a callable.
METHOD_PATTERN = r"^(__call__|[a-z][a-z0-9_]{0,63})$"
_URL = r"^https?://[^\s\x00-\x1f]{1,2000}$"
_MIG = MIG_PROFILE.pattern  # the one pattern the probe's MIG facts are parsed with too

# What each pattern means, in the words error messages use.
PATTERN_HINTS = {
    NAME_PATTERN: INVENTORY_HINTS[NAME_PATTERN],
    _RELPATH: "a relative path of letters, digits and _ . + @ / - (no spaces, no shell "
              "characters, not starting with / or -)",
    _SHA256: "64 lowercase hex digits (`orchestrator hash PATH`)",
    _TARGET: "a host or group name (lowercase letters, digits, '-') or a label selector "
             "(key=value, key!=value, key in (a,b), key notin (a,b), key, !key; joined by ',')",
    _COMMAND: "one line without control characters",
    _DURATION: "a number and a unit s, m, h or d (e.g. 6h)",
    _PYTHON: 'a Python major.minor such as "3.11"',
    _CC: 'a compute capability major.minor such as "7.0"',
    _SIGNATURE: "an identifier (letters, digits, _)",
    _URL: "an http:// or https:// URL",
    _MIG: 'a MIG profile name as nvidia-smi lists it, quoted: "1g.10gb", "3g.40gb", '
          '"1c.2g.20gb"',
}

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
#: gpu.mig_profile: a MIG profile name, "1g.10gb" (unset: whole GPUs are placed).
MigProfile = Annotated[str, StringConstraints(pattern=_MIG)]
RelPath = Annotated[str, StringConstraints(pattern=_RELPATH)]
Sha256 = Annotated[str, StringConstraints(pattern=_SHA256)]
Target = Annotated[str, StringConstraints(pattern=_TARGET), AfterValidator(target_value)]
Command = Annotated[str, StringConstraints(pattern=_COMMAND)]
Duration = Annotated[str, StringConstraints(pattern=_DURATION)]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _f(default: float | None, lo: float, hi: float, doc: str, *, gt: bool = False) -> Any:
    """A finite float field bounded to [lo, hi] (or (lo, hi] with gt)."""
    if gt:
        return Field(default, gt=lo, le=hi, allow_inf_nan=False, description=doc)
    return Field(default, ge=lo, le=hi, allow_inf_nan=False, description=doc)


def _d(default: object, doc: str) -> Any:
    return Field(default, description=doc)


def _i(default: int | None, lo: int, hi: int, doc: str) -> Any:
    return Field(default, ge=lo, le=hi, description=doc)


def _no_dotdot(value: str | None) -> str | None:
    if value is not None and ".." in value.split("/"):
        raise ValueError("must not contain '..'")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
