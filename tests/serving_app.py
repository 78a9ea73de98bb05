"""A model server for the serving-container tests, run inside the image as `python3 -c` (its
source is the spec's `service.container.command`): it answers GET with its release id and the
model's prediction, and hands over without a refused connection.

How it hands over (what docs/spec.md recommends to a real server): it binds its port with
SO_REUSEPORT beside the old container's server; on SIGTERM the old one first steers every new
connection to the other socket of the group (a one-instruction classic BPF program: "socket
1"), keeps accepting what was already queued for half a second, then closes. A new server
drops any such program once it listens, so the two share the port until the old one stops.
Readiness is a file in the container's own /tmp (`ready_command: test -e /tmp/ready`).

Standard library plus joblib/numpy (the image's); Python 3.9+."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler

SO_ATTACH_REUSEPORT_CBPF, SO_DETACH_REUSEPORT_BPF = 51, 68
RET_K = 0x06  # BPF_RET | BPF_K: return the constant


def main(address: str, port: int) -> None:
    import joblib
    import numpy as np

    model_dir = os.environ["ORCHESTRATOR_MODEL"]
    model = joblib.load(os.path.join(model_dir, sorted(os.listdir(model_dir))[0]))
    release = os.path.basename(os.environ["ORCHESTRATOR_RELEASE"])
    width = int(getattr(model, "n_features_in_", 4))
    prediction = model.predict(np.zeros((1, width))).tolist()
    body = json.dumps({"release": release, "prediction": prediction}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((address, port))
    sock.listen(128)
    with contextlib.suppress(OSError):  # ENOENT: no program attached
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
    stopping: list[float] = []

    def term(*_: object) -> None:
        program = ctypes.create_string_buffer(struct.pack("HBBI", RET_K, 0, 0, 1))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
                        struct.pack("HL", 1, ctypes.addressof(program)))
        stopping.append(time.monotonic() + 0.5)

    signal.signal(signal.SIGTERM, term)
    with open("/tmp/ready", "w"):
        pass
    while not stopping or time.monotonic() < stopping[0]:
        if not select.select([sock], [], [], 0.05)[0]:
            continue
        conn, peer = sock.accept()
        conn.settimeout(5)
        Handler(conn, peer, None)  # type: ignore[arg-type]  # handles one request
        conn.close()
    sock.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
