"""Run every benchmark module in this package (or those named on the command line)."""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

from orchestrator import bench


def modules() -> list[str]:
    """The benchmark modules of this package, by name: every module but this runner."""
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__)
                  if not m.name.startswith("_"))


def main(names: list[str]) -> int:
    for name in names or modules():
        # The figures move with whatever else runs on the machine: say how busy it was.
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"== {name} == (load average {load} on {os.cpu_count()} cores)", flush=True)
        importlib.import_module(f"{bench.__name__}.{name}").run()
        print(flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
