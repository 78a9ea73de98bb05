"""A wheel mirror for the testbed's hosts: Python's own http.server over a directory, in a child
process on a free loopback port (the testbed's hosts are this machine's sshd processes: they
reach 127.0.0.1), and a static PEP 503 simple index written from a set of wheel files (real
ones, or `synthetic_wheel`s of random bytes as large as a benchmark wants), as
`environment.wheel_source` names one (docs/spec.md, "A wheel mirror").

    with serve_directory(write_simple_index(wheels, tmp / "mirror")) as base:
        url = base + "simple/"          # layout: index
        url = base + "files/"           # layout: directory
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import quote

from orchestrator.core.hashing import hash_file


def write_simple_index(wheels: Mapping[str, Path], directory: Path) -> Path:
    """`directory/files/<wheel>` and `directory/simple/<project>/index.html` (PEP 503: one
    anchor per file, its sha256 in the URL fragment) from {real wheel filename: local file}
    (a wheel cache stores by hash); returns `directory`."""
    files, simple = directory / "files", directory / "simple"
    files.mkdir(parents=True, exist_ok=True)
    projects: dict[str, list[str]] = {}
    for name, wheel in wheels.items():
        shutil.copyfile(wheel, files / name)
        digest = hash_file(wheel)
        project = re.sub(r"[-_.]+", "-", name.split("-")[0]).lower()
        href = f"../../files/{quote(name)}#sha256={digest}"
        projects.setdefault(project, []).append(
            f'<a href="{html.escape(href)}">{html.escape(name)}</a><br>')
    for project, anchors in projects.items():
        (simple / project).mkdir(parents=True, exist_ok=True)
        (simple / project / "index.html").write_text(
            "<!DOCTYPE html><html><body>\n" + "\n".join(anchors) + "\n</body></html>\n")
    return directory


def synthetic_wheel(directory: Path, name: str, size: int) -> Path:
    """A valid wheel of about `size` bytes: metadata plus one stored (uncompressed) data file
    of random bytes, written in 1 MiB pieces (never the whole file in memory)."""
    dist = f"{re.sub(r'[-_.]+', '_', name)}-1.0"  # a wheel filename escapes the name
    path = directory / f"{dist}-py3-none-any.whl"
    meta = {f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
            f"{dist}.dist-info/WHEEL":
            "Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        with zf.open(f"{name}/data.bin", "w", force_zip64=True) as out:
            left = size
            while left > 0:
                piece = min(left, 1 << 20)
                out.write(os.urandom(piece))
                left -= piece
        for member, text in meta.items():
            zf.writestr(member, text)
        zf.writestr(f"{dist}.dist-info/RECORD", "".join(f"{m},,\n" for m in [*meta, "x"]))
    return path


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """`python -m http.server` over `directory` on a free loopback port, in a child process
    (its CPU is not the caller's: a real mirror is another machine); yields its base URL
    (ending in "/") once it accepts connections, stops it on exit."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "--directory", str(directory)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the mirror's http.server on port {port} did not "
                                       "start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(10)
