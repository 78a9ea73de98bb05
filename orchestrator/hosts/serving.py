"""The service around a release: restart it after a switch, and check its health with a deadline.

Both run on the host (a health URL like http://127.0.0.1:8501/healthz is only reachable there),
in the app's directory `<deploy_root>/<app>` (so `current/...` paths work), in one SSH command
each: the polling loop runs remotely, so a service that needs a few seconds to come up costs one
round trip, not one per attempt. The user's commands are shell on purpose (`sh -c`, as the spec
says); everything else reaches the host as quoted arguments of constant scripts.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.errors import BadHostOutput, CommandTimeout, HealthCheckFailed
from orchestrator.hosts import layout
from orchestrator.hosts.transport import Transport

#: Polls a URL (2xx) or a shell command (exit 0) until it passes or the budget is spent.
#: Python 3.9+, stdlib only; prints one JSON object.
HEALTH_SCRIPT = r"""
import json, os, signal, subprocess, sys, time
mode, target, budget = sys.argv[1], sys.argv[2], float(sys.argv[3])
end = time.monotonic() + budget

def descendants(pid):
    # Every process below pid, from /proc (none where there is no /proc): a command cut off by
    # the budget must not leave its children running, and they stay in the SSH command's
    # process group (so a dropped connection still kills them) rather than a group of their own.
    children = {}
    for entry in (os.listdir("/proc") if os.path.isdir("/proc") else ()):
        try:
            with open("/proc/%s/stat" % entry) as f:
                children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(
                    int(entry))
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found

def run_command(left):
    p = subprocess.Popen(["sh", "-c", target], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = p.communicate(timeout=left)[0]
    except subprocess.TimeoutExpired:
        for pid in descendants(p.pid) + [p.pid]:  # the whole tree first: then nothing escapes
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        p.communicate()
        raise
    return p.returncode, out

if mode == "url":  # urllib (http, email, ssl) costs more than the interpreter's own start
    import urllib.request
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
attempts, last = 0, None
while True:
    attempts += 1
    left = max(0.5, min(10.0, end - time.monotonic()))
    cut = None  # this attempt was stopped by what was left of the budget
    try:
        if mode == "url":
            with opener.open(target, timeout=left) as r:
                if 200 <= r.status < 300:
                    print(json.dumps({"ok": True, "attempts": attempts, "status": r.status}))
                    sys.exit(0)
                last = "HTTP %d" % r.status
        else:
            code, out = run_command(left)
            if code == 0:
                print(json.dumps({"ok": True, "attempts": attempts}))
                sys.exit(0)
            tail = out.decode("utf-8", "replace").strip().splitlines()[-3:]
            last = "exit %d%s" % (code, (": " + " | ".join(tail)) if tail else "")
    except subprocess.TimeoutExpired:
        cut = "timed out after %.1f s" % left
    except Exception as exc:
        last = "%s: %s" % (type(exc).__name__, exc)
    if time.monotonic() + 0.25 >= end:
        break
    time.sleep(0.25)
# A last attempt cut short by the budget says less than the whole failure before it.
error = "%s; the last attempt %s" % (last, cut) if last and cut else (last or cut)
print(json.dumps({"ok": False, "attempts": attempts, "error": error}))
sys.exit(1)
"""


#: Kept for the step modules that import it from here (layout.app_dir is the one definition).
app_dir = layout.app_dir


def restart(transport: Transport, command: str, cwd: str, timeout: float) -> dict[str, Any]:
    """Run the spec's service.restart; a non-zero exit is a CommandFailed (with its output)."""
    result = transport.run(["sh", "-c", 'cd -- "$1" && exec sh -c "$2"', "sh", cwd, command],
                           timeout=timeout)
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
            HEALTH_SCRIPT, mode, target, f"{budget:.3f}"]
    try:
        result = transport.run(argv, timeout=budget + 5.0, check=False)
    except CommandTimeout as exc:
        raise HealthCheckFailed(transport.host, f"{mode} {target}", str(exc)) from exc
    try:
        data = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BadHostOutput(transport.host, f"health check printed {result.stdout[:200]!r}, "
                                            f"stderr {result.stderr[-300:]!r}") from None
    if not data.get("ok"):
        raise HealthCheckFailed(transport.host, f"{mode} {target}",
                                f"unhealthy after {budget:g} s ({data.get('attempts')} "
                                f"attempts): {data.get('error')}")
    return {"health": mode, "health_attempts": data.get("attempts"),
            "health_s": round(result.duration_s, 3)}
