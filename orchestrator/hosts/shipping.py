"""Shipping the host-side scripts: every `orchestrator/hosts/remote/*.py` (and `*.sh`) plus the
pure-Python `pynvml.py` of the controller's own nvidia-ml-py, as one content-addressed bundle.

On the host the bundle lives in `<deploy_root>/.orchestrator/tools/<sha256-of-bundle>/`; its
`.complete` marker (holding the digest) is written last, so a directory with the marker is whole
and is never uploaded again; one without it is simply completed (each file is written atomically).
Checking costs one SFTP read; within `remembered(transport)` (a deployment on one host: the
deploy lock, the probe and the unlock each need the tools; over a 50 ms link the two repeated
reads were 0.1 s per host) only the first; and none when the host agent's hello already said
the bundle is incomplete (`ensure_tools(..., known_missing=True)`). Nothing else crosses the
network when the tools are already there.

The upload is one exec channel (a transport that can stream): a `python3 -c` one-liner that
reads remote/toolsreceive.py's source from its stdin and runs it, which reads the bundle's
files that follow, back to back (about 0.5 MB, held in memory anyway). The host checks that
the names and hashes make the digest before writing, hashes each file as it writes it under a
temporary name, renames them only when all match, and writes the marker last. It was 33 SFTP
puts, a round trip each (35 exchanges before a far host's first step, cold). A transport that
cannot stream (a test's fake) gets the puts: each file written atomically, the marker last.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from orchestrator.errors import FileTransferFailed
from orchestrator.hosts import layout
from orchestrator.hosts.opresults import parse_reply
from orchestrator.hosts.transport import FileStreamer, Transport

REMOTE_DIR = Path(__file__).parent / "remote"
MARKER = ".complete"
_MARKER_BYTES = 4096  # the marker holds one digest: anything bigger is not ours
#: What of remote/ is shipped: the host-side Python, and the shell wrappers beside it.
SHIPPED = ("*.py", "*.sh")


@dataclass(frozen=True)
class Bundle:
    digest: str
    files: tuple[tuple[str, bytes], ...]  # (file name, content), sorted by name


@dataclass(frozen=True)
class RemoteTools:
    """Where the bundle is on one host."""

    root: str
    digest: str

    def script(self, name: str) -> str:
        """The remote path of a shipped file, e.g. `script("probe.py")`."""
        return layout.tool(self.root, name)

    def argv(self, name: str, *args: str, python: str = "python3") -> list[str]:
        """The command that runs a shipped script (`python` may be a venv's interpreter).

        `-E` ignores the host's PYTHON* variables; the script's own directory stays first on
        sys.path, which is how it imports the shipped `pynvml`."""
        return [python, "-E", self.script(name), *args]


@lru_cache(maxsize=1)
def bundle() -> Bundle:
    """The scripts to ship, read once per process; the digest covers names and contents."""
    sources = {p.name: p for pattern in SHIPPED for p in REMOTE_DIR.glob(pattern)
               if p.name != "__init__.py"}
    sources["pynvml.py"] = _pynvml_file()
    files = tuple((name, sources[name].read_bytes()) for name in sorted(sources))
    digest = hashlib.sha256()
    for name, content in files:
        digest.update(f"{name}\0{hashlib.sha256(content).hexdigest()}\n".encode())
    return Bundle(digest.hexdigest(), files)


def _pynvml_file() -> Path:
    """The controller's nvidia-ml-py module file, located without importing it."""
    spec = importlib.util.find_spec("pynvml")
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise RuntimeError("nvidia-ml-py (pynvml.py) is not installed on the controller")
    return Path(spec.origin)


def tools_root(deploy_root: str, digest: str) -> str:
    return layout.tools_dir(deploy_root, digest)


# Per connection inside `remembered`: the tools roots already found complete on its host.
_seen: weakref.WeakKeyDictionary[Transport, set[str]] = weakref.WeakKeyDictionary()
_seen_guard = threading.Lock()


@contextlib.contextmanager
def remembered(transport: Transport) -> Iterator[None]:
    """Within the block, a bundle found complete on this connection is not read again (nothing
    on a host removes a tools directory; a deployment is minutes, not days). Within a
    `remember` of its own (a rollout's kept agents) it goes on with what that one knows."""
    started = remember(transport)
    try:
        yield
    finally:
        if started:
            forget(transport)


def remember(transport: Transport) -> bool:
    """Start remembering on this connection until `forget`; False when already remembering
    (then whoever started it ends it)."""
    with _seen_guard:
        if transport in _seen:
            return False
        _seen[transport] = set()
        return True


def forget(transport: Transport) -> None:
    with _seen_guard:
        _seen.pop(transport, None)


def ensure_tools(transport: Transport, deploy_root: str, *, known_missing: bool = False,
                 python: str = "python3") -> RemoteTools:
    """The bundle on this host, uploaded first unless it is already there and complete
    (`known_missing`: the host said it is not, as the agent's hello does: no read first)."""
    wanted = bundle()
    tools = RemoteTools(tools_root(deploy_root, wanted.digest), wanted.digest)
    with _seen_guard:
        if tools.root in _seen.get(transport, ()):
            return tools
    if known_missing or not _complete(transport, tools):
        _upload(transport, tools, wanted, python)
    with _seen_guard:
        if transport in _seen:
            _seen[transport].add(tools.root)
    return tools


def expected_tools(deploy_root: str) -> RemoteTools:
    """Where this controller's bundle is (or would be) on a host; nothing is checked."""
    digest = bundle().digest
    return RemoteTools(tools_root(deploy_root, digest), digest)


def note_complete(transport: Transport, tools: RemoteTools) -> None:
    """The host itself found the bundle complete (the host agent checks its own marker at
    start): within `remembered`, nobody reads the marker again."""
    with _seen_guard:
        if transport in _seen:
            _seen[transport].add(tools.root)


def _complete(transport: Transport, tools: RemoteTools) -> bool:
    try:
        marker = transport.get(tools.script(MARKER), max_bytes=_MARKER_BYTES)
        return marker.decode("ascii", "replace").strip() == tools.digest
    except FileTransferFailed:
        return False  # no marker yet: not (completely) uploaded


#: The receiver's source, sent as the `-c` of its command (the bundle it writes holds the rest).
RECEIVER = REMOTE_DIR / "toolsreceive.py"
_RECEIVE_TIMEOUT_S = 120.0


def _upload(transport: Transport, tools: RemoteTools, wanted: Bundle, python: str) -> None:
    if isinstance(transport, FileStreamer):
        _stream(transport, transport, tools, wanted, python)
        return
    for name, content in wanted.files:
        transport.put(content, tools.script(name), 0o644)
    transport.put(f"{tools.digest}\n".encode(), tools.script(MARKER), 0o644)


def _stream(transport: Transport, streamer: FileStreamer, tools: RemoteTools, wanted: Bundle,
            python: str) -> None:
    """The bundle on one channel, checked by the host (module docstring); HostOpFailed names
    the host and the file when it refused."""
    source = RECEIVER.read_bytes()
    head = json.dumps({"files": [{"name": name, "sha": hashlib.sha256(content).hexdigest(),
                                  "size": len(content)} for name, content in wanted.files]})
    data = b"".join([source, head.encode("utf-8"), b"\n",
                     *(content for _, content in wanted.files)])
    # The receiver's source comes first on stdin, not in argv: the command stays short in
    # `ps` and in every error message that quotes it.
    boot = (f"import sys;exec(compile(sys.stdin.buffer.read({len(source)}),"
            f"'toolsreceive.py','exec'))")
    argv = [python, "-E", "-S", "-c", boot, tools.root, tools.digest]
    result = streamer.run_with_files(argv, data, [], timeout=_RECEIVE_TIMEOUT_S, check=False)
    parse_reply(transport.host, "tools-receive", result.exit_code, result.stdout, result.stderr)
