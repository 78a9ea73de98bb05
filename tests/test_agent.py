"""The host agent (orchestrator/hosts/agent.py, `hostops.py serve`): a deployment's host ops as
request lines on one channel, against the testbed's real sshd hosts.

What must hold: a deploy through it sends each step's ops as one request (counted per step by
hosts/counting.py, as the far-hosts bench counts them); without it (a transport that cannot hold
a conversation) the same deploy runs one exec per op; an agent that answers garbage or not at
all fails that host's op with a clear error within the op's timeout, the host's own recovery and
the rollout's undo still run (one exec per op), and no agent process outlives its deployment.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import paramiko
import pytest

from orchestrator.bench.farhosts import _Where
from orchestrator.core.inventory import Host, Inventory
from orchestrator.core.spec import load_spec
from orchestrator.deploy.batch import DeployResult, deploy, prepare
from orchestrator.deploy.pipeline import HostStatus
from orchestrator.deploy.playbook import load_playbook
from orchestrator.deploy.rollout import rollout
from orchestrator.errors import CommandFailed
from orchestrator.hosts import agent, shipping
from orchestrator.hosts.counting import Counting, Exchanges
from orchestrator.hosts.hostops import HostOpFailed, HostOps
from orchestrator.hosts.pool import Pool
from orchestrator.hosts.shipping import RemoteTools
from orchestrator.hosts.ssh import HostAddress, SshOptions, SshTransport, connect
from orchestrator.hosts.transport import CommandResult, Transport
from tests.specs import WHEEL_CACHE
from tests.test_deploy import app_state, v1_spec, v2_spec

HOSTS = ("tb-07", "tb-08")
REMOTE = Path(__file__).parent.parent / "orchestrator" / "hosts" / "remote"


# -- the host side alone: `hostops.py serve` as a local process -----------------------------

@pytest.fixture
def tools(tmp_path: Path) -> RemoteTools:
    bundle = shipping.bundle()
    root = tmp_path / "tools"
    root.mkdir()
    for name, content in bundle.files:
        (root / name).write_bytes(content)
    (root / shipping.MARKER).write_text(bundle.digest + "\n")
    return RemoteTools(str(root), bundle.digest)


def _serve(tools: RemoteTools, digest: str, lines: list[bytes]) -> tuple[list[str], int]:
    proc = subprocess.run([sys.executable, "-E", "-S", tools.script("hostops.py"), "serve",
                           digest], input=b"".join(lines), capture_output=True, timeout=60,
                          check=False)
    return proc.stdout.decode().splitlines(), proc.returncode


def test_serve_answers_each_request_line_with_the_one_shot_reply_and_ends_on_eof(
        tools: RemoteTools, tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    req = [json.dumps({"op": "free-bytes", "args": {"root": root, "path": "/"}}).encode(),
           b"not json", json.dumps({"op": "wheels-receive", "args": {}}).encode(),
           json.dumps({"op": "state", "args": {"root": root, "app": "../x"}}).encode()]
    out, code = _serve(tools, tools.digest, [r + b"\n" for r in req])
    assert code == 0 and len(out) == 1 + len(req)
    hello = json.loads(out[0].partition(" ")[2])
    assert out[0].startswith("0 ") and hello["ok"] and hello["agent"] == 1
    first = out[1].partition(" ")
    assert first[0] == "0" and json.loads(first[2])["free_bytes"] > 0
    # Bad requests are refused like bad arguments (exit 2), and the agent goes on.
    assert [line.split(" ", 1)[0] for line in out[2:]] == ["2", "2", "2"]
    assert json.loads(out[3].partition(" ")[2])["kind"] == "bad-args"  # streaming op


def test_serve_refuses_to_start_from_an_incomplete_bundle(tools: RemoteTools) -> None:
    out, code = _serve(tools, "0" * 64, [b'{"op": "probe", "args": {}}\n'])
    assert code == 1 and len(out) == 1
    assert json.loads(out[0].partition(" ")[2])["kind"] == "not-found"


def test_serve_children_cannot_read_requests_or_write_replies(tools: RemoteTools,
                                                               tmp_path: Path) -> None:
    """An op's child process (an installer) gets /dev/null and stderr, not the channel."""
    script = ("import os,sys; sys.path.insert(0, sys.argv[1]); import hostops;"
              "hostops.OPS['echo-child'] = lambda a: {'child': __import__('subprocess')"
              ".run(['sh', '-c', 'cat; echo noise'], capture_output=False).returncode};"
              "sys.exit(hostops.serve(sys.argv[2:]))")
    lines = [b'{"op": "echo-child", "args": {}}\n', b'{"op": "echo-child", "args": {}}\n']
    proc = subprocess.run([sys.executable, "-c", script, tools.root, tools.digest],
                          input=b"".join(lines), capture_output=True, timeout=60, check=False)
    out = proc.stdout.decode().splitlines()
    assert [line.split(" ", 1)[0] for line in out] == ["0", "0", "0"], out
    assert b"noise" in proc.stderr


# -- the tools bundle by stream: remote/toolsreceive.py as a local process ------------------

class _LocalStreamer:
    """`run_with_files` as a local process (the receiver's command as shipping builds it), with
    `mangle` between the controller's bytes and its stdin."""

    host = "local"

    def __init__(self, mangle: Any = None) -> None:
        self.mangle, self.runs = mangle or (lambda data: data), 0

    def run_with_files(self, argv: list[str], header: bytes, files: Any,
                       **_: Any) -> CommandResult:
        assert files == []  # the bundle rides in the header: it is in memory anyway
        self.runs += 1
        proc = subprocess.run([sys.executable, *argv[1:]], input=self.mangle(header),
                              capture_output=True, timeout=60, check=False)
        return CommandResult(" ".join(argv), proc.returncode, proc.stdout.decode(),
                             proc.stderr.decode(), 0.0)


def _ship_locally(tmp_path: Path, mangle: Any = None) -> tuple[RemoteTools, _LocalStreamer]:
    streamer = _LocalStreamer(mangle)
    tools = shipping.expected_tools(str(tmp_path / "root"))
    shipping._stream(cast(Transport, streamer), cast(Any, streamer), tools, shipping.bundle(),
                     "python3")
    return tools, streamer


def test_the_bundle_streamed_to_a_fresh_host_is_whole_marked_last_and_serves(
        tmp_path: Path) -> None:
    tools, _ = _ship_locally(tmp_path)
    bundle = shipping.bundle()
    assert sorted(os.listdir(tools.root)) == sorted([shipping.MARKER,
                                                     *(n for n, _ in bundle.files)])
    for name, content in bundle.files:
        assert Path(tools.script(name)).read_bytes() == content
    out, code = _serve(tools, tools.digest, [])
    assert code == 0 and json.loads(out[0].partition(" ")[2])["agent"] == 1
    # Complete already: the receiver says so without reading the files.
    again, streamer = _ship_locally(tmp_path, lambda data: data[:-1000])
    assert again == tools and streamer.runs == 1


def _flip(content_of: str) -> Any:
    """A mangle flipping one byte inside a shipped file's content."""
    content = dict(shipping.bundle().files)[content_of]

    def mangle(data: bytes) -> bytes:
        at = data.rindex(content) + len(content) // 2
        return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]
    return mangle


@pytest.mark.parametrize(("mangle", "kind", "words"), [
    (_flip("hostops.py"), "hash-mismatch", "hostops.py arrived as sha256"),
    (lambda data: data[:-5], "missing-file", "never arrived whole"),
    (lambda data: data + b"trailing", "too-large", "goes on past"),
    (lambda data: data.replace(b'"name": "probe.py"', b'"name": "probe.sh"', 1),
     "hash-mismatch", "not " + shipping.bundle().digest),
])
def test_a_bundle_that_arrives_altered_short_or_long_leaves_nothing(
        tmp_path: Path, mangle: Any, kind: str, words: str) -> None:
    with pytest.raises(HostOpFailed) as failed:
        _ship_locally(tmp_path, mangle)
    assert failed.value.kind == kind and words in str(failed.value), str(failed.value)
    assert "local" in str(failed.value) and "tools-receive" in str(failed.value)
    tools = shipping.expected_tools(str(tmp_path / "root"))
    assert not Path(tools.root).exists() or os.listdir(tools.root) == []


def test_a_fresh_host_gets_the_bundle_in_one_stream_and_the_agent_starts_from_it(
        inventory: Inventory, tmp_path: Path) -> None:
    """Over the testbed's sshd, a deploy root with no bundle (under this test's own directory:
    nothing written onto a shared host's root): the agent's hello says so, the bundle goes by
    one exec, and the agent starts from it; no SFTP at all."""
    name, root = HOSTS[0], str(tmp_path / "fresh-root")
    exchanges = Exchanges()
    with _pool(inventory, exchanges, _Where()) as pool, \
            pool.session(inventory.hosts[name]) as t, agent.serving(t, root) as serving:
        assert HostOps(t, root).state("agent-fresh").current is None
        assert serving.requests == 1
    kinds = {kind: n for (_, _, kind), n in exchanges.count.items() if n}
    # The agent's start (its hello: no bundle; the request sent behind the exec is never
    # read), the bundle's stream, the agent's second start and the request again: no SFTP.
    assert kinds == {"run": 3, "req": 2}, kinds
    tools = shipping.expected_tools(root)
    assert Path(tools.script(shipping.MARKER)).read_text().strip() == tools.digest


# -- over SSH: a deploy through the agent, and without it -----------------------------------

def _pool(inventory: Inventory, exchanges: Exchanges, sink: _Where,
          wrap: type[Any] | None = None) -> Pool:
    options = SshOptions.for_inventory(inventory)

    def connector(host: HostAddress) -> Transport:
        inner: Transport = connect(host, options)
        if wrap is not None:
            inner = wrap(inner)
        return Counting(inner, exchanges, label=lambda: sink.of(host.name))
    return Pool(options, connector=connector)


class _NoConversation:
    """A transport that cannot hold a conversation (as a test's fake): only the interface."""

    def __init__(self, inner: Transport) -> None:
        self.inner, self.host = inner, inner.host

    @property
    def alive(self) -> bool:
        return self.inner.alive

    def run(self, argv: Any, **kw: Any) -> CommandResult:
        return self.inner.run(argv, **kw)

    def put(self, *args: Any) -> None:
        self.inner.put(*args)

    def get(self, remote_path: str, **kw: Any) -> bytes:
        return self.inner.get(remote_path, **kw)

    def close(self) -> None:
        self.inner.close()


def _deploy(spec: Path, inventory: Inventory, hosts: list[str], *,
            wrap: type[Any] | None = None) -> tuple[DeployResult, Exchanges]:
    exchanges, sink = Exchanges(), _Where()
    inputs = prepare(load_spec(spec), wheel_cache=WHEEL_CACHE)
    with _pool(inventory, exchanges, sink, wrap) as pool:
        result = deploy(inputs, inventory.resolve(hosts), pool=pool, sink=sink)
    return result, exchanges


def _per_step(exchanges: Exchanges, host: str) -> dict[str, dict[str, int]]:
    steps: dict[str, dict[str, int]] = {}
    for (h, label, kind), n in exchanges.count.items():
        if h == host and n:
            steps.setdefault(label, {})[kind] = n
    return steps


def _agents_left(host: Host) -> list[str]:
    """The `hostops.py serve` processes under this host's deploy root (the testbed's hosts are
    this machine)."""
    found = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    return [p for p in found if " serve " in p and host.deploy_root in p]


def _no_agent_left(host: Host) -> None:
    deadline = time.monotonic() + 10
    while _agents_left(host) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _agents_left(host) == []


def test_a_warm_redeploy_sends_each_step_as_one_request_to_the_agent(
        inventory: Inventory, models_dir: Path, tmp_path: Path) -> None:
    name, host = HOSTS[0], inventory.hosts[HOSTS[0]]
    first, _ = _deploy(v1_spec(models_dir, tmp_path / "v1", "agent-warm", targets=[name]),
                       inventory, [name])
    assert first.ok, first.hosts[name].error
    second, exchanges = _deploy(v2_spec(models_dir, tmp_path / "v2", "agent-warm",
                                        targets=[name]), inventory, [name])
    assert second.ok, second.hosts[name].error
    steps = _per_step(exchanges, name)
    # The agent's start (one exec) and one request: the deploy lock with the probe.
    assert steps.pop("lock") == {"run": 1, "req": 1}
    assert "probe" not in steps and "unlock" not in steps  # folded into lock and prune
    for step in ("stage", "install", "switch", "prune"):
        assert steps.pop(step) == {"req": 1}, step
    # The runner started by the agent (`warmup-run`: no channel of its own) with the golden
    # file and its request written first in the same request, then the manifest and the
    # commit in one: no SFTP, no exec.
    assert steps.pop("verify") == {"req": 2}
    assert set(steps) <= {"check"}, steps  # the spec has no service: check sends nothing
    assert app_state_current(inventory, name, "agent-warm") == second.release_id
    _no_agent_left(host)
    assert not Path(host.deploy_root, "agent-warm", ".deploy-lock").exists()


def app_state_current(inventory: Inventory, name: str, app: str) -> str | None:
    with Pool(SshOptions.for_inventory(inventory)) as pool:
        current: str | None = app_state(pool, inventory.hosts[name], app).current
    return current


def test_without_a_conversation_the_same_deploy_runs_one_exec_per_op(
        inventory: Inventory, models_dir: Path, tmp_path: Path) -> None:
    name = HOSTS[1]
    result, exchanges = _deploy(v1_spec(models_dir, tmp_path / "v1", "agent-none",
                                        targets=[name]), inventory, [name],
                                wrap=_NoConversation)
    assert result.ok, result.hosts[name].error
    steps = _per_step(exchanges, name)
    assert all("req" not in kinds for kinds in steps.values()), steps
    assert steps["lock"]["run"] == 1 and steps["stage"]["run"] >= 1
    assert app_state_current(inventory, name, "agent-none") == result.release_id


def test_hostops_outside_a_deployment_uses_no_agent(inventory: Inventory) -> None:
    name = HOSTS[0]
    exchanges, host = Exchanges(), inventory.hosts[name]
    with _pool(inventory, exchanges, _Where()) as pool, pool.session(host) as t:
        shipping.ensure_tools(t, host.deploy_root)  # a fresh testbed host has none yet
        exchanges.count.clear()
        HostOps(t, host.deploy_root).state("agent-nothing")
        with agent.serving(t, host.deploy_root):
            HostOps(t, host.deploy_root).state("agent-nothing")
            HostOps(t, host.deploy_root).state("agent-nothing")
            HostOps(t, host.deploy_root, python="python3.11").state("agent-nothing")
    kinds = {kind: n for (_, _, kind), n in exchanges.count.items()}
    # One exec (and its tools-marker read) before; within: the agent's start (it checks the
    # marker itself) and two requests, and one exec (and read) for the other interpreter: an
    # agent serves one deploy root and one python.
    assert kinds == {"run": 3, "req": 2, "get": 2}, kinds


# -- a hostile agent --------------------------------------------------------------------------

# Stands between the controller and the real agent: passes every line on (a request's relayed
# lines and its reply), but answers the request naming `trigger` with garbage, or not at all.
_PROXY = """
import subprocess, sys, time
mode, trigger = sys.argv[1], sys.argv[2].encode()
real = subprocess.Popen(sys.argv[3:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
sys.stdout.buffer.write(real.stdout.readline()); sys.stdout.flush()
for line in sys.stdin.buffer:
    if trigger in line:
        if mode == "hang":
            time.sleep(3600)
        sys.stdout.buffer.write(b"garbage, not a reply\\n"); sys.stdout.flush()
        continue
    real.stdin.write(line); real.stdin.flush()
    while True:  # relayed lines (the warmup runner's progress), then the reply
        out = real.stdout.readline()
        sys.stdout.buffer.write(out); sys.stdout.flush()
        if not out or out[:1].isdigit():
            break
"""


@pytest.fixture
def hostile(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """{host name: mode}: that host's agent runs behind the proxy above."""
    chosen: dict[str, str] = {}
    real = agent.HostAgent.argv

    def argv(self: agent.HostAgent, tools: RemoteTools) -> list[str]:
        mode = chosen.get(self.host)
        inner = real(self, tools)
        return inner if mode is None else ["python3", "-c", _PROXY, mode, '"op": "switch"',
                                           *inner]
    monkeypatch.setattr(agent.HostAgent, "argv", argv)
    yield chosen


@pytest.mark.parametrize("mode", ["garbage", "hang"])
def test_an_agent_failing_at_switch_fails_its_host_and_the_rollout_undoes_the_canary(
        mode: str, hostile: dict[str, str], inventory: Inventory, models_dir: Path,
        tmp_path: Path) -> None:
    app = f"agent-{mode}"
    extra = "rollout: {canary: 1, batch_size: 1, max_failed_hosts: 0}\n"
    good, _ = _deploy(v1_spec(models_dir, tmp_path / "v1", app, targets=list(HOSTS),
                              extra=extra), inventory, list(HOSTS))
    assert good.ok, {n: r.error for n, r in good.hosts.items()}
    hostile[HOSTS[1]] = mode
    inputs = prepare(load_spec(v2_spec(models_dir, tmp_path / "v2", app, targets=list(HOSTS),
                                       extra=extra)), wheel_cache=WHEEL_CACHE)
    playbook = load_playbook().with_timeout("switch", 4.0)
    exchanges, sink = Exchanges(), _Where()
    started = time.monotonic()
    with _pool(inventory, exchanges, sink) as pool:
        out = rollout(inputs, inventory.resolve(list(HOSTS)), pool=pool, sink=sink,
                      playbook=playbook)
    elapsed = time.monotonic() - started
    bad = out.deploy.hosts[HOSTS[1]]
    assert bad.failed_step == "switch" and bad.status is not HostStatus.SUCCEEDED
    words = "did not answer within 4 s" if mode == "hang" else "host agent sent a line"
    assert words in (bad.error or ""), bad.error
    assert elapsed < 120, elapsed  # the hang cost its 4 s, not the rollout
    # Both hosts serve v1 again: the canary undone by the rollout, the other never switched.
    for name in HOSTS:
        assert app_state_current(inventory, name, app) == good.release_id, name
        _no_agent_left(inventory.hosts[name])
        assert not Path(inventory.hosts[name].deploy_root, app, ".deploy-lock").exists()
    assert os.path.isdir(inventory.hosts[HOSTS[1]].deploy_root)


# -- the agent's exec, sent without waiting for its reply ------------------------------------

class _RefusesExec(paramiko.ServerInterface):
    """An SSH server (paramiko's, in this process) that opens sessions but refuses every exec."""

    def get_allowed_auths(self, username: str) -> str:
        return "none"

    def check_auth_none(self, username: str) -> int:
        return int(paramiko.common.AUTH_SUCCESSFUL)

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return int(paramiko.common.OPEN_SUCCEEDED)

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        return False


class _Client:
    """What SshTransport uses of an SSHClient: the connection, and closing it."""

    def __init__(self, transport: paramiko.Transport) -> None:
        self._transport = transport

    def get_transport(self) -> paramiko.Transport:
        return self._transport

    def close(self) -> None:
        self._transport.close()


def test_a_refused_exec_of_the_agent_fails_its_op_clearly(tmp_path: Path) -> None:
    """The exec request goes out unconfirmed (one round trip less), so a host refusing it is
    only heard of later: the op still fails at once, saying the host refused to run it."""
    ours, theirs = socket.socketpair()
    server = paramiko.Transport(theirs)
    server.add_server_key(paramiko.Ed25519Key.from_private_key_file(_ed25519_key(tmp_path)))
    server.start_server(event=threading.Event(), server=_RefusesExec())  # not waiting
    client = paramiko.Transport(ours)
    try:
        client.start_client(timeout=10)
        client.auth_none("deploy")
        transport = SshTransport("refuser", cast(paramiko.SSHClient, _Client(client)),
                                 SshOptions(known_hosts=tmp_path / "known_hosts"))
        started = time.monotonic()
        with agent.serving(transport, "/srv/models"), pytest.raises(CommandFailed) as caught:
            HostOps(transport, "/srv/models").state("app")
        assert time.monotonic() - started < 5
        assert "the host refused to run it (its SSH exec request failed)" in str(caught.value)
        assert "hostops.py serve" in str(caught.value)
    finally:
        client.close()
        server.close()


def _ed25519_key(tmp_path: Path) -> str:
    path = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return str(path)
