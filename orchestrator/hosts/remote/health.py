"""Host-side health check of a service after a switch: poll a URL (2xx) or a shell command (exit 0)
until it passes or the budget is spent; print one JSON object, exit 0 (healthy) or 1.

    python3 -c "<this file>" url|command TARGET BUDGET_S      (cwd: the app's directory)

Python 3.9+, stdlib only. The controller (orchestrator/hosts/serving.py) sends this file's text
as `-c`: the check then needs no shipped tools, and a service that takes a few seconds to come
up costs one SSH round trip, not one per attempt. In a deployment with a host agent,
hostops_health.py runs `check` in the agent's process instead (one request).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time


def descendants(pid):
    """Every process below pid, from /proc (none where there is no /proc): a command cut off by
    the budget must not leave its children running, and they stay in the SSH command's process
    group (so a dropped connection still kills them) rather than a group of their own."""
    children: dict[int, list[int]] = {}
    for entry in (os.listdir("/proc") if os.path.isdir("/proc") else ()):
        try:
            with open(f"/proc/{entry}/stat") as f:
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


def run_command(target, left, cwd=None):
    p = subprocess.Popen(["sh", "-c", target], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         cwd=cwd)
    try:
        out = p.communicate(timeout=left)[0]
    except subprocess.TimeoutExpired:
        for pid in [*descendants(p.pid), p.pid]:  # the whole tree first: nothing escapes
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        p.communicate()
        raise
    return p.returncode, out


def check(mode, target, budget, cwd=None):
    """Poll until healthy or out of budget; (exit code, the JSON object to print). `cwd`: the
    command's directory (the host agent's `health` op; the script is run from there)."""
    end = time.monotonic() + budget
    opener = None
    if mode == "url":  # urllib (http, email, ssl) costs more than the interpreter's own start
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    attempts, last = 0, None
    while True:
        attempts += 1
        left = max(0.5, min(10.0, end - time.monotonic()))
        cut = None  # this attempt was stopped by what was left of the budget
        try:
            if opener is not None:
                with opener.open(target, timeout=left) as r:
                    if 200 <= r.status < 300:
                        return 0, {"ok": True, "attempts": attempts, "status": r.status}
                    last = f"HTTP {r.status}"
            else:
                code, out = run_command(target, left, cwd)
                if code == 0:
                    return 0, {"ok": True, "attempts": attempts}
                tail = out.decode("utf-8", "replace").strip().splitlines()[-3:]
                last = f"exit {code}" + (": " + " | ".join(tail) if tail else "")
        except subprocess.TimeoutExpired:
            cut = f"timed out after {left:.1f} s"
        except Exception as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() + 0.25 >= end:
            break
        time.sleep(0.25)
    # A last attempt cut short by the budget says less than the whole failure before it.
    error = f"{last}; the last attempt {cut}" if last and cut else (last or cut)
    return 1, {"ok": False, "attempts": attempts, "error": error}


def main(argv):
    code, result = check(argv[0], argv[1], float(argv[2]))
    print(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
