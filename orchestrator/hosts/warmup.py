"""Run the warmup runner on a host, over a transport, and make sure it ends by the deadline.

    put REQUEST.json ─> timeout -s KILL <deadline+grace> <venv python> -E <tools>/warmup.py REQ
                        (then REQ and REQ.pid removed in the same command)
                     ─> parse the one JSON line ─> WarmupResult (orchestrator.core.gates)

Three layers of deadline, innermost first, so a model that hangs never outlives the step:
1. the runner's own watchdog at `deadline_s` reports DeadlineExceeded (with what it measured so
   far) and SIGKILLs its process group (the runner leads its own group; REQ.pid holds its id);
2. coreutils `timeout -s KILL` a few seconds later, should the watchdog itself be stuck;
3. the transport's command timeout after that; then, and whenever the runner did not report,
   the host op `kill-group` (SIGKILL to the group in REQ.pid) takes down whatever the model
   left behind.
A run that was killed without reporting comes back as a failed WarmupResult (error
DeadlineExceeded), not as an exception: it is the model's failure, the gates report it.

While the iterations run the runner writes progress lines to its stderr; `run` hands each piece
of stderr to `ProgressLines` (orchestrator/core/progress.py: bounded, parsed as host JSON) as it
arrives, and each line to `on_progress`.

Within a deployment (`agent.serving`) the host agent runs it instead (`by_agent`: the
`warmup-run` op, remote/hostops_warmup.py): no exec channel of its own (three round trips a
host over a far link), the progress lines relayed on the agent's channel into the same
`ProgressLines`, the same three deadlines (the agent's SIGKILL where `timeout` would be), the
clean-up and the group kill on the host in the same request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import posixpath
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.core.gates import (
    SCHEMA,
    WarmupRequest,
    WarmupResult,
    parse_result,
    result_from_raw,
)
from orchestrator.core.progress import Iterations, ProgressLines, strip_lines
from orchestrator.errors import BadHostOutput, CommandTimeout, HostError
from orchestrator.hosts import agent, layout, ops
from orchestrator.hosts.hostops import HostOps
from orchestrator.hosts.opresults import parse_reply
from orchestrator.hosts.ops import OpCall
from orchestrator.hosts.shipping import RemoteTools
from orchestrator.hosts.transport import CommandResult, Transport

SCRIPT = "warmup.py"
KILL_GRACE_S = 5.0  # watchdog -> `timeout -s KILL`
TRANSPORT_GRACE_S = 10.0  # `timeout -s KILL` -> the transport gives up on the command
MIN_DEADLINE_S = 1.0
MAX_OUTPUT = 8 << 20
#: The host agent's op that runs the runner (remote/hostops_warmup.py).
RUN_OP = str(ops.Op.WARMUP_RUN)
#: Host ops to run before the runner, and the HostOps (root, fence) they are calls of.
Before = tuple[HostOps, Sequence[OpCall[Any]]]


def _tools_root(tools_dir: RemoteTools | str) -> str:
    return tools_dir.root if isinstance(tools_dir, RemoteTools) else tools_dir


def _script(tools_dir: RemoteTools | str, name: str = SCRIPT) -> str:
    if isinstance(tools_dir, RemoteTools):
        return tools_dir.script(name)
    return layout.tool(tools_dir, name)


#: Runs the runner under coreutils `timeout`, then removes the request and pid files in the same
#: command, keeping the runner's exit status (shipped beside warmup.py).
RUN_AND_CLEAN = "warmup_run.sh"


def warmup_argv(python: str, script: str, request_path: str, deadline_s: float,
                visible_devices: str | None = None) -> list[str]:
    """The remote command (quoted by the transport): coreutils timeout as the second layer;
    `visible_devices` (GPU UUIDs, placement's) becomes the runner's CUDA_VISIBLE_DEVICES."""
    kill_after = f"{deadline_s + KILL_GRACE_S:.0f}"
    wrapper = posixpath.join(posixpath.dirname(script), RUN_AND_CLEAN)
    gpus = [] if visible_devices is None else [f"CUDA_VISIBLE_DEVICES={visible_devices}"]
    return ["env", f"REQ={request_path}", *gpus, "sh", wrapper,
            "timeout", "-s", "KILL", kill_after, python, "-E", script, request_path]


def killed_result(host: str, deadline_s: float, how: str) -> WarmupResult:
    """A result for a runner that never reported: it was killed at the deadline."""
    raw: dict[str, Any] = {
        "schema": SCHEMA, "ok": False, "phase": "unknown", "findings": [],
        "error": {"type": "DeadlineExceeded", "phase": "unknown",
                  "message": f"deadline of {deadline_s:g}s exceeded; {how}"},
    }
    return result_from_raw(host, raw)


def capped(request: WarmupRequest, timeout: float) -> WarmupRequest:
    """The request as the runner gets it: its deadline capped so that every layer above ends
    inside `timeout`."""
    deadline = max(MIN_DEADLINE_S,
                   min(request.deadline_s, timeout - KILL_GRACE_S - TRANSPORT_GRACE_S))
    return dataclasses.replace(request, deadline_s=deadline)


def request_path(workdir: str) -> str:
    """A fresh name for a request file in `workdir` (removed by the runner's wrapper)."""
    return f"{workdir.rstrip('/')}/orchestrator-warmup-{uuid.uuid4().hex}.json"


def run_warmup(transport: Transport, python: str, tools_dir: RemoteTools | str,
               request: WarmupRequest, timeout: float, workdir: str = "/tmp",
               visible_devices: str | None = None,
               on_progress: Callable[[Iterations], None] | None = None,
               written: str | None = None, before: Before | None = None) -> WarmupResult:
    """Run `request` with the venv's `python` on the transport's host, within `timeout` seconds.

    The runner's deadline is `request.deadline_s`, capped so that every layer above ends
    inside `timeout`. Raises HostError subclasses for transport failures and BadHostOutput when
    the runner printed something that is not its result, or a progress line that is not one
    (raised once the runner has ended). `on_progress` gets each progress line as it comes.
    `written`: where the caller already wrote `capped(request, timeout)` (a name from
    `request_path`), or will by `before`: then it is not uploaded here. `before`: host ops
    (HostOps, calls) run first, in the host agent's request that starts the runner (one round
    trip less), else as one batch before the runner's command."""
    host = transport.host
    request = capped(request, timeout)
    deadline = request.deadline_s
    if written is None:
        req_path = request_path(workdir)
        transport.put(request.to_json().encode(), req_path, 0o600)
    else:  # the caller put `capped(request, timeout)` there, with other files in one call
        req_path = written
    argv = warmup_argv(python, _script(tools_dir), req_path, deadline, visible_devices)
    lines = ProgressLines()

    def progress(data: bytes) -> None:
        for record in lines.feed(data):
            if on_progress is not None:
                on_progress(record)

    serving = agent.running_from(transport, _tools_root(tools_dir))
    if serving is not None:
        relayed = by_agent(serving, tools_dir, python, req_path, deadline, visible_devices,
                           progress, before)
        if relayed is not None:
            return _judged(host, relayed, lines, deadline)
    if before is not None:
        before[0].batch(before[1], timeout=deadline + KILL_GRACE_S)
    try:
        out = transport.run(argv, timeout=deadline + KILL_GRACE_S + TRANSPORT_GRACE_S,
                            check=False, max_output=MAX_OUTPUT, on_stderr=progress)
    except CommandTimeout:
        _kill_group(transport, tools_dir, req_path)
        return killed_result(host, deadline, "the transport gave up on the runner")
    except HostError:
        _kill_group(transport, tools_dir, req_path)
        raise
    if lines.error is not None:
        _kill_group(transport, tools_dir, req_path)
        raise BadHostOutput(host, lines.error)
    if not out.stdout.strip() or out.exit_code not in (0, 1, 2):
        _kill_group(transport, tools_dir, req_path)
    return _judged(host, out, lines, deadline)


def _judged(host: str, out: CommandResult, lines: ProgressLines,
            deadline: float) -> WarmupResult:
    """The runner's end as a result: killed before it reported, garbage, or its JSON line."""
    if lines.error is not None:
        raise BadHostOutput(host, lines.error)
    if not out.stdout.strip() and out.exit_code in (124, 137, -9):
        return killed_result(host, deadline, "killed by `timeout` before it could report")
    return _parse(host, out)


def by_agent(serving: agent.HostAgent, tools_dir: RemoteTools | str, python: str,
             req_path: str, deadline: float, visible_devices: str | None,
             progress: Callable[[bytes], None],
             before: Before | None = None) -> CommandResult | None:
    """The runner started by the host's agent (`warmup-run`, remote/hostops_warmup.py): its
    progress lines relayed to `progress` as they come, its end (the runner's exit code,
    stdout and stderr's tail) as a command's result, its request and pid files removed and,
    when it did not report, its process group killed, all on the host in that one request.
    None when the agent cannot take it (then the caller execs the runner: nothing ran).
    The agent's own SIGKILL comes where `timeout -s KILL` would; a reply later than the
    transport's grace after that kills the agent, then the group (by its pid file), and the
    run is a killed result, as on the exec path. `before`'s ops run first in the same request
    (a failure of one fails it, with that op's kind, and the runner does not start)."""
    host = serving.host
    args: dict[str, Any] = {
        "python": python, "request": req_path, "kill_after_s": deadline + KILL_GRACE_S,
        **({"visible_devices": visible_devices} if visible_devices is not None else {})}
    if before is not None:
        args.update(before[0].common, before=[call.wire() for call in before[1]])
    try:
        out = serving.call({"op": RUN_OP, "args": args},
                           timeout=deadline + KILL_GRACE_S + TRANSPORT_GRACE_S,
                           max_output=MAX_OUTPUT * 2, on_line=progress)
    except CommandTimeout:  # the agent is killed; the runner leads a group of its own
        _kill_group(serving.transport, tools_dir, req_path)
        return CommandResult(RUN_OP, -9, "", "", 0.0)
    except BaseException:  # the wire, garbage, or `progress` raised: the agent is gone too
        _kill_group(serving.transport, tools_dir, req_path)
        raise
    if out is None:
        return None
    reply = parse_reply(host, RUN_OP, out.exit_code, out.stdout, out.stderr)
    code, stdout, stderr = reply.get("exit_code"), reply.get("stdout"), reply.get("stderr")
    done = reply.get("before") if before is not None else []
    if type(code) is not int or not isinstance(stdout, str) or not isinstance(stderr, str) \
            or not isinstance(done, list) or len(done) != len(before[1] if before else ()):
        serving.discard(kill=True)
        raise BadHostOutput(host, f"host sent an invalid reply to {RUN_OP}: exit_code, stdout, "
                                  "stderr (and a reply per op sent before) wanted")
    if before is not None:
        for call, one in zip(before[1], done, strict=True):
            before[0].parsed(call, one)
    return CommandResult(RUN_OP, code, stdout, stderr, out.duration_s)


def _parse(host: str, out: CommandResult) -> WarmupResult:
    try:
        return parse_result(host, out.stdout)
    except BadHostOutput as exc:
        tail = " | ".join(strip_lines(out.stderr).strip().splitlines()[-5:])
        raise BadHostOutput(host, f"{exc.reason} (exit {out.exit_code}; stderr: "
                                  f"{tail or 'empty'})") from exc


def _kill_group(transport: Transport, tools_dir: RemoteTools | str, req_path: str) -> None:
    """Kill the runner's group (it may have left processes), and remove the request: the
    `kill-group` op, which needs no deploy root (the system python3, not the venv's)."""
    call = ops.kill_group(f"{req_path}.pid", req_path)  # the runner writes its pid there
    argv = ["python3", "-E", "-S", _script(tools_dir, "hostops.py"), str(call.op),
            "--json-args", "-"]
    # Best effort: the run's outcome matters more than a leftover temp file.
    with contextlib.suppress(HostError):
        transport.run(argv, timeout=30, check=False, stdin=json.dumps(dict(call.args)).encode())
