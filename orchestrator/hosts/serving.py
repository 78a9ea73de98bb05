"""The service around a release: restart it after a switch, and check its health with a deadline.

Both run on the host (a health URL like http://127.0.0.1:8501/healthz is only reachable there),
in the app's directory `<deploy_root>/<app>` (so `current/...` paths work), in one SSH command
each: the polling loop runs remotely, so a service that needs a few seconds to come up costs one
round trip, not one per attempt. The user's commands are shell on purpose (`sh -c`, as the spec
says); everything else reaches the host as quoted arguments of constant scripts.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from orchestrator.core import hostjson
from orchestrator.errors import BadHostOutput, CommandTimeout, HealthCheckFailed
from orchestrator.hosts import layout
from orchestrator.hosts.transport import Transport

#: Polls a URL (2xx) or a shell command (exit 0) until it passes or the budget is spent
#: (remote/health.py: Python 3.9+, stdlib only; prints one JSON object).
HEALTH_SCRIPT_FILE = Path(__file__).parent / "remote" / "health.py"


@lru_cache(maxsize=1)
def health_script() -> str:
    """The host-side health check's source (sent as `python3 -c`), read once per process."""
    return HEALTH_SCRIPT_FILE.read_text(encoding="utf-8")



#: Kept for the step modules that import it from here (layout.app_dir is the one definition).
app_dir = layout.app_dir


def restart(transport: Transport, command: str, cwd: str, timeout: float,
            visible_devices: str | None = None) -> dict[str, Any]:
    """Run the spec's service.restart; a non-zero exit is a CommandFailed (with its output).
    `visible_devices` (the placed GPUs' UUIDs) is the command's CUDA_VISIBLE_DEVICES."""
    gpus = [] if visible_devices is None else ["env", f"CUDA_VISIBLE_DEVICES={visible_devices}"]
    result = transport.run([*gpus, "sh", "-c", 'cd -- "$1" && exec sh -c "$2"', "sh", cwd,
                            command], timeout=timeout)
    return {"restart_s": round(result.duration_s, 3)}


def health(transport: Transport, *, url: str | None, command: str | None, cwd: str,
           budget_s: float, timeout: float) -> dict[str, Any]:
    """Poll the health URL or command until it passes, at most `budget_s` (and the step's
    remaining `timeout`). Raises HealthCheckFailed naming what it saw last."""
    mode, target = ("url", url) if url else ("command", command)
    if target is None:
        return {"health": "none configured"}
    budget = max(1.0, min(budget_s, timeout - 5.0))
    argv = ["sh", "-c", 'cd -- "$1" && shift && exec python3 -c "$@"', "sh", cwd,
            health_script(), mode, target, f"{budget:.3f}"]
    try:
        result = transport.run(argv, timeout=budget + 5.0, check=False)
    except CommandTimeout as exc:
        raise HealthCheckFailed(transport.host, f"{mode} {target}", str(exc)) from exc
    try:
        data = hostjson.loads(result.stdout.strip().splitlines()[-1])
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (ValueError, IndexError):
        raise BadHostOutput(transport.host, f"health check printed {result.stdout[:200]!r}, "
                                            f"stderr {result.stderr[-300:]!r}") from None
    if not data.get("ok"):
        raise HealthCheckFailed(transport.host, f"{mode} {target}",
                                f"unhealthy after {budget:g} s ({data.get('attempts')} "
                                f"attempts): {data.get('error')}")
    return {"health": mode, "health_attempts": data.get("attempts"),
            "health_s": round(result.duration_s, 3)}
