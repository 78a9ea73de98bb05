"""The `health` op: health.py's check of a service (a URL or a shell command, polled within a
budget) run in the calling process, so a deployment's host agent answers it as one request
instead of a channel and an interpreter start of its own (orchestrator/hosts/serving.py).

    health  app, mode ("url"|"command"), target, budget -> healthy, attempts, error, status
"""

from __future__ import annotations

import health
from hostops_fs import OpError, app_dir_arg, checked_arg


def op_health(args):
    app_dir = app_dir_arg(args)
    mode, target = checked_arg(args, "mode"), checked_arg(args, "target")
    budget = checked_arg(args, "budget")
    if mode not in ("url", "command") or not isinstance(target, str) \
            or not isinstance(budget, (int, float)) or isinstance(budget, bool) or budget <= 0:
        raise OpError("bad-args", "health takes mode url|command, a target and a budget > 0")
    code, result = health.check(mode, target, float(budget), cwd=app_dir)
    return {"healthy": code == 0, "attempts": result.get("attempts", 0),
            "error": result.get("error"), "status": result.get("status")}


OPS = {"health": op_health}
