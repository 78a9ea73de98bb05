"""What shipping wheels costs the controller: CPU seconds per GB shipped, bytes sent per host,
peak RSS, for a synthetic lock of large random-content wheels (valid wheels: METADATA, WHEEL,
RECORD and one big stored data file, hashed in a lock), to 1 and to 4 testbed hosts at once.

    python -m orchestrator.bench ship
    ORCHESTRATOR_BENCH_SHIP_MB=1024 python -m orchestrator.bench ship   (the figures of record)
    ORCHESTRATOR_BENCH_SHIP_MB=3072 ORCHESTRATOR_BENCH_SHIP_HOSTS=8 \
        ORCHESTRATOR_BENCH_SHIP_METHODS=stream,mirror,peers python -m orchestrator.bench ship
                                                  (issue 15's case: a 3 GB lock to 8 hosts)

Each row ships the whole lock to hosts whose wheel cache is empty (emptied between rows) through
`HostOps.push_wheels` exactly as the stage step calls it, by each method:
- `sftp`: one SFTP put per wheel, then `wheels-verify` hashes them on the host (the path before
  issue 15);
- `stream`: one exec channel per host carrying every missing wheel back to back; the host
  hashes while it writes and renames only what matches (hosts/streaming.py);
- `mirror`: the hosts pull by hash from an HTTP directory (`environment.wheel_source`); the
  bench serves one with Python's http.server in a child process, so the server's CPU is not the
  controller's (a real mirror is another machine);
- `peers`: `environment.wheel_peers`, every host at once as one batch stages: the first to ask
  becomes the seed and the controller streams to it, the others pull from it while its wheels
  arrive (its peerserve.py started on its connection at the first pull, holding a request for
  a wheel until it lands), through `deploy.peers.deliver` as the stage step calls it. The
  row's `seeds` column counts the hosts the controller streamed to.

Controller CPU is this process's user + system time (paramiko's threads included) plus its
children's (none but the mirror server, which is excluded by running it before the clock
starts and reading its own rusage apart). Loopback counts twice against the controller: the
kernel work of the receiving side of each TCP segment is charged to the sender, so a real
network costs the controller less than these figures. The wheels are random bytes (nothing
compresses). Everything the bench creates is deleted at the end.
"""

from __future__ import annotations

import contextlib
import os
import resource
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.core.hashing import hash_file
from orchestrator.core.inventory import Host, load_inventory
from orchestrator.deploy.peers import WheelPeers, deliver
from orchestrator.hosts import layout
from orchestrator.hosts.hostops import VENV_TIMEOUT_S, HostOps
from orchestrator.hosts.pool import Pool, map_hosts
from orchestrator.hosts.ssh import SshOptions
from orchestrator.testbed import Testbed
from orchestrator.testbed.mirror import serve_directory, synthetic_wheel

WHEEL_MB = 64  # each synthetic wheel; the last one takes the remainder
METHODS = ("sftp", "stream", "mirror", "peers")
DEFAULT_METHODS = METHODS[:3]  # peers only by name: with 1 host it is the stream


@dataclass(frozen=True)
class Settings:
    total_mb: int
    host_counts: tuple[int, ...]  # one row per method and count; the testbed has the largest
    methods: tuple[str, ...]


def settings(environ: Mapping[str, str]) -> Settings:
    """From ORCHESTRATOR_BENCH_SHIP_MB (256), _HOSTS ("1,4"), _METHODS (sftp,stream,mirror;
    peers by name); a bad value is a SystemExit naming the variable. Pure."""
    def ints(name: str, default: str) -> tuple[int, ...]:
        text = environ.get(name, default)
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            values = ()
        if not values or min(values) < 1:
            raise SystemExit(f"ship: {name}={text!r}: positive integers, comma-separated")
        return values
    methods = tuple(environ.get("ORCHESTRATOR_BENCH_SHIP_METHODS",
                                ",".join(DEFAULT_METHODS)).split(","))
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"ship: ORCHESTRATOR_BENCH_SHIP_METHODS: unknown {', '.join(unknown)} "
                         f"(of {', '.join(METHODS)})")
    total = ints("ORCHESTRATOR_BENCH_SHIP_MB", "256")
    if len(total) != 1:
        raise SystemExit(f"ship: ORCHESTRATOR_BENCH_SHIP_MB: one size, not {total}")
    return Settings(total[0], ints("ORCHESTRATOR_BENCH_SHIP_HOSTS", "1,4"), methods)


def synthetic_lock(directory: Path, total_mb: int) -> tuple[Path, dict[str, Path]]:
    """A wheelhouse of random wheels adding up to `total_mb` and its hashed lock."""
    wheelhouse = directory / "wheelhouse"
    wheelhouse.mkdir(parents=True)
    wheels: dict[str, Path] = {}
    lines = []
    left, i = total_mb, 0
    while left > 0:
        mb = min(left, WHEEL_MB)
        path = synthetic_wheel(wheelhouse, f"bench-blob-{i:02d}", mb << 20)
        digest = hash_file(path)
        wheels[digest] = path
        lines.append(f"bench-blob-{i:02d}==1.0 --hash=sha256:{digest}\n")
        left, i = left - mb, i + 1
    lock = directory / "requirements.lock"
    lock.write_text("".join(lines))
    return lock, wheels


def controller_cpu() -> float:
    """User + system seconds of this process and its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: (shas delivered, of which the controller streamed)
Shipper = Callable[[HostOps, Host, dict[str, Path]], tuple[tuple[str, ...], tuple[str, ...]]]
#: The bench's hosts are alike: one platform.
_PLATFORM = ("bench", "x86_64", "")


def _shipper(method: str, mirror: str, peers: WheelPeers | None) -> Shipper:
    def ship(hops: HostOps, host: Host, wheels: dict[str, Path]
             ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if method == "mirror":
            return hops.fetch_wheels(mirror, "directory", {
                sha: (path.name, path.stat().st_size) for sha, path in wheels.items()}), ()
        if peers is not None:
            got = deliver(hops, peers, host, _PLATFORM, wheels, missing=None,
                          timeout=VENV_TIMEOUT_S)
            if got.peer_error:
                raise RuntimeError(f"{host.name}: the peer failed: {got.peer_error}")
            return got.pushed + got.fetched, got.pushed
        pushed = hops.push_wheels(wheels, method=method)
        return pushed, pushed
    return ship


def _round(pool: Pool, hosts: list[Host], wheels: dict[str, Path], method: str, mirror: str,
           total: int) -> tuple[float, float, float, int]:
    """(controller CPU s per GB delivered, wall s, bytes written per host, hosts the
    controller streamed every wheel to)."""
    def empty(host: Host) -> None:
        with pool.session(host) as t:
            t.run(["rm", "-rf", layout.wheels_dir(host.deploy_root)])
    map_hosts(empty, hosts, len(hosts))
    peers = WheelPeers() if method == "peers" else None
    ship = _shipper(method, mirror, peers)
    cpu0, wall0 = controller_cpu(), time.monotonic()

    def one(host: Host) -> tuple[tuple[str, ...], tuple[str, ...], int]:
        with pool.session(host) as t:
            before = _bytes_sent(t)
            shipped, streamed = ship(HostOps(t, host.deploy_root), host, wheels)
            return shipped, streamed, _bytes_sent(t) - before
    try:
        # All at once, as one batch stages (peers: the first to ask seeds, the rest pull)
        results = map_hosts(one, hosts, len(hosts))
    finally:
        if peers is not None:
            peers.close()
    cpu, wall = controller_cpu() - cpu0, time.monotonic() - wall0
    sent, seeds = 0, 0
    for name, result in results.items():
        if isinstance(result, BaseException) or len(result[0]) != len(wheels):
            raise RuntimeError(f"{name}: {result}")
        sent += result[2]
        seeds += len(result[1]) == len(wheels)
    delivered = total * len(hosts)
    return cpu / delivered * 1e9, wall, sent / len(hosts), seeds


def _bytes_sent(transport: object) -> int:
    counter = getattr(transport, "bytes_sent", None)
    return int(counter()) if callable(counter) else 0


def run() -> None:
    opts = settings(os.environ)
    with tempfile.TemporaryDirectory(prefix="bench-ship-") as tmp:
        work = Path(tmp)
        started = time.monotonic()
        _, wheels = synthetic_lock(work / "lock", opts.total_mb)
        total = sum(p.stat().st_size for p in wheels.values())
        print(f"ship: synthetic lock of {len(wheels)} wheels, {total / 1e6:.0f} MB of random "
              f"bytes (made in {time.monotonic() - started:.1f} s); controller RSS before: "
              f"{peak_rss_mb():.0f} MB")
        tb = Testbed.up(work / "testbed", max(opts.host_counts))
        exit_stack = contextlib.ExitStack()
        try:
            inv = load_inventory(tb.inventory_path)
            all_hosts = list(inv.hosts.values())
            mirror = exit_stack.enter_context(serve_directory(work / "lock" / "wheelhouse"))
            with Pool(SshOptions.for_inventory(inv), max_connections=16) as pool:
                print(f"  {'method':8} {'hosts':>5} {'CPU s/GB':>9} {'wall s':>7} "
                      f"{'MB/s':>7} {'bytes/host':>11} {'seeds':>5} {'peak RSS':>9}")
                for method in opts.methods:
                    for count in opts.host_counts:
                        hosts = all_hosts[:count]
                        per_gb, wall, per_host, seeds = _round(pool, hosts, wheels, method,
                                                               mirror, total)
                        print(f"  {method:8} {count:5d} {per_gb:9.2f} {wall:7.1f} "
                              f"{total * count / wall / 1e6:7.0f} {per_host / 1e6:9.3f}MB "
                              f"{seeds:5d} {peak_rss_mb():7.0f}MB", flush=True)
                for host in all_hosts:
                    with pool.session(host) as t:
                        t.run(["rm", "-rf", layout.wheels_dir(host.deploy_root)])
        finally:
            exit_stack.close()
            Testbed.down(work / "testbed")
        print("  (CPU s/GB: this process's user+system time per GB delivered to all hosts "
              "(hosts x lock), all hosts at once; target <= 0.5;\n   seeds: hosts the "
              "controller streamed the whole lock to;\n   bytes/host: what the controller's "
              "SSH connection to a host carried, TCP_INFO bytes_acked, encryption and "
              "framing included; target with the mirror <= 1 MB;\n   peak RSS: this "
              "process's, the whole run; target < 300 MB)")

