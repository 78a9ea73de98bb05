"""The `warmup-run` op: the warmup runner (warmup.py, beside this file) started by the host
agent, its progress lines relayed on the agent's channel as they come, its result returned as
the op's reply. verify then needs no exec channel of its own (three round trips a host over a
far link: open, exec, exit), and the clean-up the exec path does in warmup_run.sh and, after
a runner that never reported, in a second command (`kill-group`), is done here, in the same
request.

    warmup-run  python (the environment's interpreter), request (absolute path of the request
                file), kill_after_s (> 0), [visible_devices] -> exit_code, stdout (the
                runner's JSON line), stderr (its last bytes, progress lines left out),
                killed (it was still running at kill_after_s);  output-too-large

The same deadlines as the exec path, innermost first: the runner's own watchdog at its
request's deadline_s; this op's SIGKILL to the runner's process group at `kill_after_s` (the
exec path's `timeout -s KILL`); the controller's timeout on the reply, which kills the agent
and then the group by its pid file. What the runner writes is bounded here as the transport
bounds a command's output: stdout beyond MAX_STDOUT kills the group and fails the op; of
stderr only the last STDERR_TAIL bytes are kept; a progress line is relayed only up to
MAX_PROGRESS_LINE bytes (the controller refuses a longer one as garbage).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from hostops_fs import OpError, checked_arg

_HERE = os.path.dirname(os.path.abspath(__file__))
#: warmup.py's progress prefix (orchestrator/core/progress.py LINE_PREFIX: the same bytes).
PROGRESS_PREFIX = b"orchestrator-progress "
MAX_STDOUT = 8 << 20
STDERR_TAIL = 16 << 10
MAX_PROGRESS_LINE = 1024
#: After the runner exited, how long its pipes may stay open (a child it left holds them).
PIPE_GRACE_S = 2.0
_CHUNK = 1 << 16


def _args(args):
    python = checked_arg(args, "python")
    request = checked_arg(args, "request")
    kill_after = checked_arg(args, "kill_after_s")
    devices = checked_arg(args, "visible_devices", required=False)
    if not (isinstance(python, str) and python and isinstance(request, str)
            and os.path.isabs(request)):
        raise OpError("bad-args", "warmup-run takes python and an absolute request path")
    if isinstance(kill_after, bool) or not isinstance(kill_after, (int, float)) \
            or not 0 < kill_after <= 7 * 86400:
        raise OpError("bad-args", f"invalid kill_after_s: {kill_after!r}")
    if devices is not None and not isinstance(devices, str):
        raise OpError("bad-args", f"invalid visible_devices: {devices!r}")
    return python, request, float(kill_after), devices


def op_warmup_run(args, relay=None):
    """Run the runner to its end (or its kill); `relay(line)` gets each progress line (with its
    newline) while it runs: the agent writes it on its channel."""
    import selectors
    import subprocess

    python, request, kill_after, devices = _args(args)
    env = dict(os.environ)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    # Its own session (so its own process group, as `timeout` gives it on the exec path): what
    # kills it never touches the agent; the runner writes the group's id to REQUEST.pid too.
    proc = subprocess.Popen([python, "-E", os.path.join(_HERE, "warmup.py"), request],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None and stderr is not None  # both are pipes
    out = _Streams(relay)
    killed = too_large = False
    deadline = time.monotonic() + kill_after
    exited_at = None
    with selectors.DefaultSelector() as sel:
        sel.register(stdout, selectors.EVENT_READ, "out")
        sel.register(stderr, selectors.EVENT_READ, "err")
        while sel.get_map():
            now = time.monotonic()
            if proc.poll() is not None and exited_at is None:
                exited_at = now
            if now >= deadline and exited_at is None:
                killed = True
                _kill(proc.pid)
            if exited_at is not None and now - exited_at > PIPE_GRACE_S:
                break  # what the runner left behind holds its pipes: killed below
            for key, _ in sel.select(timeout=0.2):
                data = os.read(key.fd, _CHUNK)
                if not data:
                    sel.unregister(key.fileobj)
                elif key.data == "out":
                    too_large = out.stdout(data) or too_large
                else:
                    out.stderr(data)
            if too_large:
                _kill(proc.pid)
                break
    code = proc.wait()
    stdout.close()
    stderr.close()
    # Whatever the model left running dies with the run, whatever its outcome (the exec
    # path's `kill-group` after a runner that did not report; here always, at no cost).
    _kill(_pgid(request, proc.pid))
    _kill(proc.pid)
    for path in (request, request + ".pid"):
        with contextlib.suppress(OSError):
            os.unlink(path)
    if too_large:
        raise OpError("output-too-large", f"the warmup runner wrote more than {MAX_STDOUT} "
                                          "bytes on stdout; it was stopped")
    return {"exit_code": code, "stdout": out.out.decode("utf-8", "replace"),
            "stderr": out.err_tail().decode("utf-8", "replace"), "killed": killed}


class _Streams:
    """The runner's stdout (bounded) and stderr: progress lines relayed, the rest a tail."""

    def __init__(self, relay):
        self.relay = relay
        self.out = b""
        self._line = b""
        self._skipping = False
        self._tail = b""

    def stdout(self, data):
        """True once stdout is over its bound."""
        self.out += data
        return len(self.out) > MAX_STDOUT

    def stderr(self, data):
        self._line += data
        while True:
            cut = self._line.find(b"\n")
            if cut < 0:
                if len(self._line) > MAX_PROGRESS_LINE:  # no line of ours is this long
                    if not self._skipping:
                        self._take(self._line)
                    self._line, self._skipping = b"", True
                return
            line, self._line = self._line[:cut + 1], self._line[cut + 1:]
            if self._skipping:  # the end of an over-long line, already passed on
                self._skipping = False
                self._tail = (self._tail + line)[-STDERR_TAIL:]
                continue
            self._take(line)

    def _take(self, line):
        """A progress line goes to `relay` (cut to its bound: the controller then refuses it),
        anything else to the tail."""
        if line.startswith(PROGRESS_PREFIX) and self.relay is not None:
            if len(line) > MAX_PROGRESS_LINE or not line.endswith(b"\n"):
                line = line[:MAX_PROGRESS_LINE - 1].rstrip(b"\n") + b"\n"
            self.relay(line)
            return
        self._tail = (self._tail + line)[-STDERR_TAIL:]

    def err_tail(self):
        return (self._tail + self._line)[-STDERR_TAIL:]


def _pgid(request, fallback):
    try:
        with open(request + ".pid") as fh:
            pgid = int(fh.read().strip())
    except (OSError, ValueError):
        return fallback
    return pgid if pgid > 1 else fallback


def _kill(pgid):
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)


OPS = {"warmup-run": op_warmup_run}
#: Ops that take a `relay` for lines they send while running (the agent's channel).
RELAYING = {"warmup-run"}
