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
           budget_s: float, timeout: float, script: str | None = None) -> dict[str, Any]:
    """Poll the health URL or command until it passes, at most `budget_s` (and the step's
    remaining `timeout`). Raises HealthCheckFailed naming what it saw last.

    `script` is the shipped health.py on the host (a deployment's `check` has the tools): run
    from there like every other host script (so a hostile or broken host's reply comes from the
    same place as its other replies). Without it (a rollback outside a deployment) the same
    file's text is sent as `python3 -c`. Either way the reply is parsed as a typed result."""
    mode, target = ("url", url) if url else ("command", command)
    if target is None:
        return {"health": "none configured"}
    budget = health_budget(budget_s, timeout)
    run = ["python3", script] if script else ["python3", "-c", health_script()]
    argv = ["sh", "-c", 'cd -- "$1" && shift && exec "$@"', "sh", cwd,
            *run, mode, target, f"{budget:.3f}"]
    try:
        result = transport.run(argv, timeout=budget + 5.0, check=False)
    except CommandTimeout as exc:
        raise HealthCheckFailed(transport.host, f"{mode} {target}", str(exc)) from exc
    ok, attempts, error = parse_health(transport.host, result.stdout, result.stderr)
    return health_verdict(transport.host, mode, target, budget,
                          (ok, attempts, error), result.duration_s)


def health_budget(budget_s: float, timeout: float) -> float:
    """The seconds a check may poll: the spec's budget, within the step's remaining time
    (5 s kept for the reply), at least 1 s."""
    return max(1.0, min(budget_s, timeout - 5.0))


def health_verdict(host: str, mode: str, target: str, budget: float,
                   reply: tuple[bool, int, str | None], duration_s: float) -> dict[str, Any]:
    """A check's reply (ok, attempts, error) judged: its figures, or HealthCheckFailed naming
    what it saw last (health.py run as a script and the host agent's `health` op alike)."""
    ok, attempts, error = reply
    if not ok:
        raise HealthCheckFailed(host, f"{mode} {target}",
                                f"unhealthy after {budget:g} s ({attempts} attempts): {error}")
    return {"health": mode, "health_attempts": attempts, "health_s": round(duration_s, 3)}


def parse_health(host: str, stdout: str, stderr: str) -> tuple[bool, int, str | None]:
    """health.py's reply, typed: (ok, attempts, error). Anything else is the host's error."""
    def bad(why: str) -> BadHostOutput:
        return BadHostOutput(host, f"host sent an invalid reply to health: {why} (stdout "
                                   f"{stdout[:200]!r}, stderr {stderr[-300:]!r})")

    lines = stdout.strip().splitlines()
    if not lines:
        raise bad("no output")
    try:
        data = hostjson.loads(lines[-1])
    except ValueError as exc:
        raise bad(str(exc)) from None
    if not isinstance(data, dict):
        raise bad("not a JSON object")
    ok, attempts, error = data.get("ok"), data.get("attempts"), data.get("error")
    if not isinstance(ok, bool):
        raise bad("missing field 'ok'" if "ok" not in data else "field 'ok' is not a boolean")
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
        raise bad("field 'attempts' is not a count")
    if error is not None and not isinstance(error, str):
        raise bad("field 'error' is not text")
    return ok, attempts, None if error is None else error[:2000]
