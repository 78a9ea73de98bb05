"""Probing all 8 hosts of a fresh testbed at once: total wall time (target under 3 s) and
per-host connect and probe times; a cold round (tools uploaded) then a warm one (tools there);
then where one probe's time goes: each section of the shipped probe.py timed on its own, on the
8-GPU host, over SSH (so with that host's environment)."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from orchestrator.core.facts import HostFacts
from orchestrator.core.inventory import Host, load_inventory
from orchestrator.hosts.pool import Pool, map_hosts
from orchestrator.hosts.probe import probe_host
from orchestrator.hosts.shipping import ensure_tools
from orchestrator.hosts.ssh import SshOptions
from orchestrator.testbed import Testbed

HOSTS = 8
TARGET_S = 3.0
# The last two carry the health facts: 8 GPUs with their counters, and a kernel log to read.
PROFILES = ("h100", "t4", "old-driver", "no-driver", "no-gpu", "mismatch", "multi-gpu", "xid-79")


def _timed_probe(pool: Pool, host: Host) -> tuple[float, float, HostFacts]:
    started = time.monotonic()
    with pool.session(host) as transport:
        connected = time.monotonic()
        facts = probe_host(transport, host)
    return connected - started, time.monotonic() - connected, facts


def _round(label: str, options: SshOptions, hosts: list[Host]) -> float:
    started = time.monotonic()
    with Pool(options, max_connections=HOSTS) as pool:
        results = map_hosts(lambda h: _timed_probe(pool, h), hosts, HOSTS)
    total = time.monotonic() - started
    verdict = "ok" if total < TARGET_S else f"OVER the {TARGET_S:g} s target"
    print(f"{label}: {len(hosts)} hosts probed at once in {total:.2f} s ({verdict})")
    for name, result in results.items():
        if isinstance(result, tuple):
            connect_s, probe_s, facts = result
            gpus = ", ".join(g.name for g in facts.gpus) or "no GPU"
            print(f"  {name}: connect {connect_s * 1000:6.0f} ms  probe {probe_s * 1000:6.0f} ms"
                  f"  ({gpus})")
        else:
            print(f"  {name}: FAILED {result}")
    return total


# Times each section of probe.py in a fresh interpreter on the host, one after the other (the
# probe itself runs "xid" and "engines" beside "nvml" and "libraries"). argv: tools dir, root.
_SECTIONS = """
import json, sys, time
started = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import probe, probe_engine, probe_gpu
out = {"interpreter+imports": time.perf_counter() - started}
root = sys.argv[2]
for name, call in (("nvml", probe.nvml_facts), ("libraries", probe.library_facts),
                   ("xid", lambda: probe_gpu.xid_facts(probe.XID_WINDOW_S)),
                   ("engines", probe_engine.engines),
                   ("os+disk+releases", lambda: (probe.os_facts(), probe.disk_facts(root),
                                                 probe.release_facts(root)))):
    began = time.perf_counter()
    call()
    out[name] = time.perf_counter() - began
print(json.dumps(out))
"""


def _sections(options: SshOptions, host: Host, runs: int = 3) -> None:
    """The median of `runs` per section, in ms; the interpreter's start is measured from inside
    it (its own start-up before the first line is not included)."""
    with Pool(options, max_connections=1) as pool, pool.session(host) as transport:
        tools = ensure_tools(transport, host.deploy_root)
        samples = [json.loads(transport.run(["python3", "-E", "-c", _SECTIONS, tools.root,
                                             host.deploy_root], timeout=60).stdout)
                   for _ in range(runs)]
    print(f"where one probe's time goes ({host.name}, median of {runs}, sections one after "
          "the other):")
    print("  " + "  ".join(f"{name} {statistics.median(s[name] for s in samples) * 1000:.0f} ms"
                           for name in samples[0]))


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
        started = time.monotonic()
        testbed = Testbed.up(Path(tmp), HOSTS, PROFILES)
        print(f"testbed up: {HOSTS} hosts in {time.monotonic() - started:.2f} s")
        try:
            inventory = load_inventory(testbed.inventory_path)
            options = SshOptions.for_inventory(inventory)
            hosts = list(inventory.hosts.values())
            _round("cold (tools uploaded)", options, hosts)
            _round("warm (tools already there)", options, hosts)
            _sections(options, inventory.hosts["tb-07"])  # multi-gpu: 8 GPUs' health
        finally:
            Testbed.down(Path(tmp))
