"""The per-user directories of the XDG base directory spec, each overridable by one variable.

One place for the rule so the cache, config and state dirs of every module agree:
`$<override>` if set, else `$XDG_<KIND>_HOME/orchestrator/<name>`, else the spec's default under
the home directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

_DEFAULTS = {"CACHE": ".cache", "CONFIG": ".config", "STATE": ".local/state"}


def user_dir(kind: str, name: str, *, override: str | None = None,
             env: Mapping[str, str] | None = None) -> Path:
    """`user_dir("CACHE", "wheelcache", override="ORCHESTRATOR_WHEEL_CACHE")`; `env` is
    os.environ unless given (tests)."""
    env = os.environ if env is None else env
    explicit = env.get(override) if override else None
    if explicit:
        return Path(explicit).expanduser()
    base = env.get(f"XDG_{kind}_HOME") or str(Path.home() / _DEFAULTS[kind])
    return Path(base) / "orchestrator" / name
