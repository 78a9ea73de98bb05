"""Run every benchmark module in this package (or those named on the command line).

    python -m orchestrator.bench                     # every module, default settings
    python -m orchestrator.bench probe anchors --quick

Options after a module's name (`--...`) go to that module's `run(argv)`; a module taking none
has `run()`.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import sys
from types import ModuleType

from orchestrator import bench


def modules() -> list[str]:
    """The benchmark modules of this package, by name: every module but this runner."""
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__)
                  if not m.name.startswith("_"))


def plan(argv: list[str]) -> list[tuple[str, list[str]]]:
    """`[a, --x, 1, b]` -> `[(a, [--x, 1]), (b, [])]`: each module with the options after it (an
    option's value is whatever follows it up to the next module name). Pure."""
    known = set(modules())
    runs: list[tuple[str, list[str]]] = []
    for arg in argv:
        if arg in known or not runs:
            runs.append((arg, []))
        else:
            runs[-1][1].append(arg)
    return runs or [(name, []) for name in modules()]


def takes_options(module: ModuleType) -> bool:
    """Whether the module's `run` takes an argv (a module without one is set by environment
    variables, named in its docstring)."""
    return bool(inspect.signature(module.run).parameters)


def main(argv: list[str]) -> int:
    for name, options in plan(argv):
        if name not in modules():
            print(f"no benchmark module {name!r}; there are: {', '.join(modules())}",
                  file=sys.stderr)
            return 2
        if options and not takes_options(importlib.import_module(f"{bench.__name__}.{name}")):
            print(f"orchestrator.bench {name} takes no options ({' '.join(options)}): its "
                  "settings are environment variables, see docs/benchmarks.md", file=sys.stderr)
            return 2
        # The figures move with whatever else runs on the machine: say how busy it was.
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"== {name} == (load average {load} on {os.cpu_count()} cores)", flush=True)
        module = importlib.import_module(f"{bench.__name__}.{name}")
        if options:
            module.run(options)
        else:
            module.run()
        print(flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
