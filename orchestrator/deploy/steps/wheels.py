"""Which wheels a host gets: the spec's wheelhouse, or else the controller's wheel cache.

`wheel_resolver(spec, lock, cache_dir, index)` returns `wheels_for(facts, remaining) -> {sha256:
Wheel}` (a cache fill from `index` retried within the step's `remaining()`), memoised
per (Python major.minor, machine, libc): every host of a fleet with the same platform shares one
answer, and the wheelhouse is hashed (or the cache filled, downloading at most once) once per
platform, not once per host. Thread-safe: the pool's workers call it at once. A spec whose
environment kind installs no wheels on the host (`EnvironmentKind.ships_wheels`) gets none.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from orchestrator.core.envinputs import lock_path
from orchestrator.core.facts import HostFacts
from orchestrator.core.lockfile import Lock
from orchestrator.core.ociimage import ImageInfo
from orchestrator.core.spec import Spec
from orchestrator.deploy.environments.registry import environment_for
from orchestrator.deploy.inputs import WheelResolver
from orchestrator.deploy.peers import platform_key
from orchestrator.deploy.pkgindex import PackageIndex
from orchestrator.deploy.wheelcache import Wheel, WheelCache, from_wheelhouse, platform_tags
from orchestrator.xdg import user_dir

__all__ = ["WheelResolver", "default_cache_dir", "wheel_resolver"]


def default_cache_dir() -> Path:
    """$ORCHESTRATOR_WHEEL_CACHE, else $XDG_CACHE_HOME/orchestrator/wheelcache."""
    return user_dir("CACHE", "wheelcache", override="ORCHESTRATOR_WHEEL_CACHE")


def wheel_resolver(spec: Spec, lock: Lock | ImageInfo, cache_dir: Path | None = None,
                   index: PackageIndex | None = None) -> WheelResolver:
    wheelhouse: Path | None = spec.paths.wheelhouse
    memo: dict[tuple[str, str, str], Mapping[str, Wheel]] = {}
    guard = threading.Lock()
    if not environment_for(spec).ships_wheels:
        return lambda facts, remaining: {}
    requirements: Path = lock_path(spec)

    def resolve(facts: HostFacts, remaining: Callable[[], float]) -> Mapping[str, Wheel]:
        key = platform_key(facts)  # the same key says which peers hold a host's wheels
        libc = key[2]
        with guard:  # one fill per platform; the others wait for its answer
            if key not in memo:
                if wheelhouse is not None:
                    memo[key] = from_wheelhouse(requirements, wheelhouse,
                                                python_version=facts.python_minor,
                                                machine=facts.machine)
                else:
                    cache = WheelCache(cache_dir or default_cache_dir(), index=index)
                    memo[key] = cache.fill(requirements, facts.python_minor,
                                           platform_tags(facts.machine, libc),
                                           machine=facts.machine, remaining=remaining)
            return memo[key]

    return resolve
