"""Run every benchmark module in this package (or those named on the command line)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

from orchestrator import bench


def main(names: list[str]) -> int:
    modules = sorted(m.name for m in pkgutil.iter_modules(bench.__path__))
    for name in names or modules:
        print(f"== {name} ==", flush=True)
        importlib.import_module(f"{bench.__name__}.{name}").run()
        print(flush=True)
    return 0


raise SystemExit(main(sys.argv[1:]))
