"""The host agent: one `hostops.py serve` process per host per deployment, on one SSH channel.

Without it every host op is an exec channel and a fresh `python3` on the host: over a far link
about three round trips (channel open, exec, exit) plus an interpreter start, per op. With it a
pipeline step's op (or batch) is one request line and one reply line: one round trip.

    with agent.serving(transport, host.deploy_root):   # deploy/batch.py: a host's pipeline
        HostOps(transport, root).run(call)             # through the agent (started lazily)

`HostOps.run` / `HostOps.batch` ask `current(transport, root, python)` for the agent and send
their payload to it; it answers `None` (they fall back to one exec per op) where there is none:
outside `serving`, on a transport that cannot hold a conversation (a test's fake), or once the
agent broke. The agent's replies are what the one-shot script prints (remote/hostops.py), so
the same parsers (`parse_reply`, `parse_batch_reply`) read them; a reply line is bounded like
a command's output, and late like a command is late: a timeout kills the agent's process group
and raises `CommandTimeout`, an overlong line `OutputTooLarge`, a line that is not
`<exit code> <JSON object>` `BadHostOutput`. After any of these (and after the host's end of the
channel closes) the agent is dropped and the host's later ops go the one-exec way: a broken
agent costs that one op, never a hang, never a deployment's later steps.

Starting it costs one round trip of its own, the channel's open: the exec request goes without
waiting for its reply (ssh/session.py `converse`), the first request right behind it, and the
agent's first line says whether the tools bundle it runs from is complete (its marker);
when it is not (a new host, a new controller version) the bundle is shipped
(shipping.ensure_tools: one streamed exec, no read of the marker first, the hello having said
it) and the agent started once more. When the deployment's pipeline on
the host ends, `serving` closes the agent's stdin: it exits on EOF and never outlives it.

A relaying op (`warmup-run`: the warmup runner, orchestrator/hosts/warmup.py `by_agent`) sends
lines of its own before its reply, `orchestrator-progress ...` (never a digit first); `call`
hands them to its `on_line` within the same timeout, and without one they are garbage.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from orchestrator.core import hostjson
from orchestrator.errors import BadHostOutput, HostError
from orchestrator.hosts import shipping
from orchestrator.hosts.shipping import RemoteTools
from orchestrator.hosts.transport import CommandResult, Conversation, Converser, Transport

#: A reply line's bound when the call names none (the one-shot run's default is the
#: transport's output cap, a few MiB).
DEFAULT_REPLY_BYTES = 8 << 20
_HELLO_BYTES = 4096
_CODES = {b"0": 0, b"1": 1, b"2": 2}
#: How a line a relaying op sends before its reply starts (the warmup runner's progress;
#: orchestrator/core/progress.py LINE_PREFIX, remote/hostops_warmup.py: the same bytes).
RELAYED = b"orchestrator-progress "


class HostAgent:
    """The agent of one host under one deploy root; one request at a time."""

    def __init__(self, transport: Transport, deploy_root: str, python: str = "python3") -> None:
        self.transport, self.python = transport, python
        self.root = posixpath.normpath(deploy_root)
        self.usable = isinstance(transport, Converser)
        self.kept = False  # opened by a `Kept` (the rollout's): `serving` leaves it running
        self.remembering = False  # its `Kept` started shipping.remember on its connection
        self.requests = 0
        self._conv: Conversation | None = None
        self._command = ""
        self._guard = threading.Lock()

    @property
    def host(self) -> str:
        return self.transport.host

    def call(self, payload: Mapping[str, Any], *, timeout: float,
             max_output: int | None = None,
             on_line: Callable[[bytes], None] | None = None) -> CommandResult | None:
        """Send one request ({"op", "args"}) and return the reply as a command's result (exit
        code, the reply's JSON text, the agent's recent stderr), or None: no agent here, the
        caller runs the op the one-exec way (nothing of this request ran on the host).
        `timeout` bounds the whole exchange. `on_line` gets each line a relaying op
        (`warmup-run`) sends before its reply, which starts with `RELAYED` (bounded like
        the reply); without it such a line is garbage. Should `on_line` raise, the agent is
        killed (nothing of the op is left running) and the exception propagates."""
        line = json.dumps(payload).encode("utf-8") + b"\n"
        with self._guard:
            if not self.usable:
                return None
            started = time.perf_counter()
            if self._conv is None:
                if not self._start(line, timeout):
                    return None
            else:
                self._talk(lambda conv: conv.send(line, timeout=timeout))
            self.requests += 1
            return self._reply(timeout, max_output or DEFAULT_REPLY_BYTES, started, on_line)

    def argv(self, tools: RemoteTools) -> list[str]:
        """The agent's command (-S: stdlib only, no `site`; -E: the host's PYTHON* ignored)."""
        return [self.python, "-E", "-S", tools.script("hostops.py"), "serve", tools.digest]

    def _start(self, first: bytes, timeout: float) -> bool:
        """Start the agent and send it `first`; False (and never again) when it will not run."""
        assert isinstance(self.transport, Converser)
        for attempt in (1, 2):
            tools = shipping.expected_tools(self.root)
            argv = self.argv(tools)
            conv = self.transport.converse(argv)
            self._conv, self._command = conv, " ".join(argv[:5])
            self._talk(lambda c: c.send(first, timeout=timeout))
            hello = self._talk(lambda c: c.read_line(timeout=timeout, limit=_HELLO_BYTES))
            if _hello_ok(hello):
                shipping.note_complete(self.transport, tools)
                return True
            self.discard()  # exited before reading `first`: nothing of it ran
            if attempt == 1:  # most likely the bundle is missing or partial: ship it (the
                # hello said so: no read of the marker first; one stream, toolsreceive.py)
                shipping.ensure_tools(self.transport, self.root, known_missing=True,
                                      python=self.python)
        self.usable = False
        return False

    def _talk(self, act: Any) -> Any:
        """`act(conversation)`; a failure of the wire drops the agent and propagates."""
        assert self._conv is not None
        try:
            return act(self._conv)
        except HostError:
            self.discard()
            raise

    def _reply(self, timeout: float, limit: int, started: float,
               on_line: Callable[[bytes], None] | None = None) -> CommandResult:
        conv = self._conv
        assert conv is not None
        left = timeout  # the first line as any reply; relayed lines do not extend it
        while True:
            raw = self._talk(lambda c, t=left: c.read_line(timeout=t, limit=limit))
            if on_line is None or not raw.startswith(RELAYED) or not raw.endswith(b"\n"):
                break
            try:
                on_line(raw)
            except BaseException:
                self.discard(kill=True)
                raise
            left = max(timeout - (time.perf_counter() - started), 0.001)
        elapsed = time.perf_counter() - started
        if not raw.endswith(b"\n"):  # stdout ended mid-request: the agent died in the op
            code, stderr = conv.exit_code(), conv.stderr_tail()
            self.discard()
            return CommandResult(self._command, -1 if code is None else code, "", stderr,
                                 elapsed)
        word, _, text = raw.rstrip(b"\n").partition(b" ")
        if word not in _CODES or not text.startswith(b"{"):
            self.discard(kill=True)
            raise BadHostOutput(self.host, f"host agent sent a line that is not '<exit code> "
                                           f"<JSON object>': {raw[:80]!r}")
        return CommandResult(self._command, _CODES[word], text.decode("utf-8", "replace"),
                             conv.stderr_tail(), elapsed)

    def discard(self, *, kill: bool = False) -> None:
        """Drop the agent: its later ops go the one-exec way (a desynchronised or dead agent
        is never asked again)."""
        conv, self._conv = self._conv, None
        if conv is not None:
            self.usable = False
            with contextlib.suppress(HostError):
                conv.kill() if kill else conv.close()

    def close(self) -> None:
        """The pipeline ended: EOF on the agent's stdin, and it exits."""
        conv, self._conv = self._conv, None
        if conv is not None:
            with contextlib.suppress(HostError):
                conv.close()


def _hello_ok(line: bytes) -> bool:
    word, _, text = line.rstrip(b"\n").partition(b" ")
    try:
        hello = hostjson.loads(text)
    except ValueError:
        return False
    return word == b"0" and isinstance(hello, dict) and hello.get("ok") is True \
        and hello.get("agent") == 1


_agents: weakref.WeakKeyDictionary[Transport, HostAgent] = weakref.WeakKeyDictionary()
_agents_guard = threading.Lock()


@contextlib.contextmanager
def serving(transport: Transport, deploy_root: str,
            python: str = "python3") -> Iterator[HostAgent]:
    """Within the block, the host's ops under `deploy_root` go through one agent (started at
    the first op); it is stopped when the block ends, unless a `Kept` opened it before (the
    rollout's gate): then the block goes on with that one, and `Kept.close` stops it."""
    with _agents_guard:
        kept = _agents.get(transport)
        if kept is not None and not (kept.kept and kept.usable and kept.python == python
                                     and kept.root == posixpath.normpath(deploy_root)):
            kept = None
    if kept is not None:
        yield kept
        return
    agent = HostAgent(transport, deploy_root, python)
    with _agents_guard:
        _agents[transport] = agent
    try:
        yield agent
    finally:
        _forget(agent)
        agent.close()


def _forget(agent: HostAgent) -> None:
    with _agents_guard:
        if _agents.get(agent.transport) is agent:
            del _agents[agent.transport]


class Kept:
    """Agents a rollout keeps open across its phases: its gate probes each host through the
    agent `open` starts, and that host's pipeline (`serving`) goes on with the same one: one
    channel, interpreter start and tools check a host, not an exec for the gate's probe and an
    agent after it (a far host's round trips, eight hosts' interpreters on a busy controller's
    cores). `close` (the rollout's end, however it ends) stops them all; an agent whose
    connection the pool closed meanwhile dies with it, and the pipeline starts its own."""

    def __init__(self) -> None:
        self._agents: list[HostAgent] = []
        self._guard = threading.Lock()

    def open(self, transport: Transport, deploy_root: str, python: str = "python3") -> None:
        agent = HostAgent(transport, deploy_root, python)
        agent.kept = True
        # What the agent's start finds of the tools bundle holds for the pipeline after it.
        agent.remembering = shipping.remember(transport)
        with _agents_guard:
            _agents[transport] = agent
        with self._guard:
            self._agents.append(agent)

    def close(self) -> None:
        with self._guard:
            agents, self._agents = self._agents, []
        for agent in agents:
            _forget(agent)
            agent.close()
            if agent.remembering:
                shipping.forget(agent.transport)


def current(transport: Transport, deploy_root: str, python: str) -> HostAgent | None:
    """The open agent for these ops, if any (same deploy root, same interpreter)."""
    with _agents_guard:
        agent = _agents.get(transport)
    if agent is None or not agent.usable or agent.root != deploy_root \
            or agent.python != python:
        return None
    return agent


def running_from(transport: Transport, tools_root: str) -> HostAgent | None:
    """The open agent of this connection whose tools bundle is at `tools_root` (the ops it
    runs from its own directory, such as `warmup-run`, are then the very scripts meant)."""
    with _agents_guard:
        agent = _agents.get(transport)
    if agent is None or not agent.usable \
            or shipping.expected_tools(agent.root).root != posixpath.normpath(tools_root):
        return None
    return agent
