"""A TCP relay that holds every byte for a fixed one-way delay, each direction: the testbed's
`--rtt` where the kernel has no netem (sch_netem), as on the Firecracker VMs this project is
developed on. It runs inside the host's network namespace, listening where the host's sshd
would, and forwards to that sshd on the namespace's own loopback:

    python -m orchestrator.testbed.delay LISTEN_ADDR PORT TARGET_ADDR TARGET_PORT ONE_WAY_MS [STATS]

What it models: every message waits ONE_WAY_MS before it is passed on (a request and its answer
cost one round trip, as over a far link); the TCP handshake with the relay itself is not
delayed, bandwidth is not limited. What netem models beyond that (per-packet delay, the
handshake) does not change how many round trips an SSH exchange takes, which is what `--rtt`
is for. Order is kept per direction; an end-of-stream is passed on after the same delay.
Memory is bounded: at most QUEUE chunks of up to CHUNK bytes wait per direction (a fast sender
is slowed, not buffered without end). Stops on SIGTERM.

STATS (the anchors' bench, bench/_farharness.py): a file to which each connection, when it
ends, appends one JSON line: {"closed": epoch seconds, "turns": n, "up": bytes, "down": bytes}.
A turn is the client sending again after the server has sent (or first): each costs at least a
round trip when the client waits for the answer, so it counts the exchanges of a tool whose
round trips we cannot count inside it (Ansible, pyinfra, ssh), SSH's own handshake included.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CHUNK = 256 * 1024
QUEUE = 64  # chunks in flight per direction: 16 MiB at most


@dataclass
class _Traffic:
    """One connection's turns and bytes (both pumps run in one event loop: no lock)."""
    turns: int = 0
    up: int = 0
    down: int = 0
    last_up: bool = False


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                delay_s: float, traffic: _Traffic, up: bool) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE)

    async def receive() -> None:
        while True:
            data = await reader.read(CHUNK)
            if data and up:
                traffic.turns += 0 if traffic.last_up else 1
                traffic.up += len(data)
            elif data:
                traffic.down += len(data)
            if data:
                traffic.last_up = up
            await queue.put((loop.time() + delay_s, data))
            if not data:
                return

    async def send() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    await asyncio.gather(receive(), send())


async def _serve(listen: str, port: int, target: str, target_port: int,
                 delay_s: float, stats: Path | None) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(target, target_port)
        except OSError:
            client_w.close()
            return
        traffic = _Traffic()
        try:
            await asyncio.gather(_pump(client_r, up_w, delay_s, traffic, up=True),
                                 _pump(up_r, client_w, delay_s, traffic, up=False))
        except (OSError, asyncio.IncompleteReadError):
            pass  # a reset on either side ends the connection, as it would end the real one
        finally:
            for w in (up_w, client_w):
                w.close()
            if stats is not None:
                with stats.open("a") as out:  # one short line: appends do not interleave
                    out.write(json.dumps({"closed": time.time(), "turns": traffic.turns,
                                          "up": traffic.up, "down": traffic.down}) + "\n")

    server = await asyncio.start_server(handle, listen, port, reuse_address=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def command(listen: str, port: int, target: str, target_port: int, one_way_ms: float,
            stats: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run this relay from this package, wherever the caller's
    own PYTHONPATH points (a worktree's venv may belong to another checkout). Pure but for
    reading the environment."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [package_root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    return [sys.executable, "-m", "orchestrator.testbed.delay",
            listen, str(port), target, str(target_port), f"{one_way_ms:g}",
            *([str(stats)] if stats is not None else [])], env


def main(argv: list[str]) -> int:
    if len(argv) not in (5, 6):
        print("usage: python -m orchestrator.testbed.delay LISTEN_ADDR PORT TARGET_ADDR "
              "TARGET_PORT ONE_WAY_MS [STATS]", file=sys.stderr)
        return 2
    listen, port, target, target_port, one_way_ms = argv[:5]
    stats = Path(argv[5]) if len(argv) == 6 else None
    asyncio.run(_serve(listen, int(port), target, int(target_port), float(one_way_ms) / 1000,
                       stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
