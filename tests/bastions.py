"""A host the controller cannot reach, behind a bastion: two real sshd servers in a network
namespace of their own, joined to ours by one veth pair.

    controller (our netns) --veth 10.213.K.1/30--> bastion sshd  10.213.K.2:PB  (in NS)
                                                   target sshd   127.0.0.1:PT   (in NS)

The target listens on NS's own loopback only: from our namespace, 127.0.0.1:PT and
10.213.K.2:PT are both refused, so the only way in is a `direct-tcpip` channel of the bastion
(which is in NS). A testbed host (our namespace) reaches the bastion over the veth too, so a
chain `tb-01 -> bastion -> target` is two real jumps. Creating namespaces and links needs root
(CAP_NET_ADMIN); `Hidden.up` refuses with the reason otherwise, and the tests skip saying so.
Everything created is named after our pid and removed by `down` (the namespace takes the veth
and its processes' sockets with it). The namespace plumbing is orchestrator/testbed/netns.py,
which the testbed's far hosts (`up --rtt`) use too.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from orchestrator.testbed import Testbed, netns, sshd


@dataclass
class Hidden:
    netns: str
    veth: str
    bastion_address: str   # 10.213.K.2, reachable from our namespace
    bastion_port: int
    target_port: int       # on 127.0.0.1 inside the namespace only
    bastion_key: Path
    target_key: Path
    procs: list[subprocess.Popen[bytes]]

    def public_key(self, key: Path) -> tuple[str, str]:
        key_type, blob = Path(f"{key}.pub").read_text().split()[:2]
        return key_type, blob

    def down(self) -> None:
        sshd.stop([p.pid for p in self.procs if p.poll() is None])
        for p in self.procs:
            p.wait(timeout=10)
        netns.remove(self.netns, self.veth)


why_not = netns.why_not  # why the hidden host cannot be set up here, or None


def up(testbed: Testbed, workdir: Path) -> Hidden:
    tag = f"{os.getpid() % 100000}"
    prefix = netns.free_prefix("10.213")
    link = netns.add(f"orch-hid-{tag}", f"ohid{tag}a", f"ohid{tag}b", f"{prefix}.1",
                     f"{prefix}.2")
    ns, veth, ours, theirs = link.netns, link.veth, link.ours, link.theirs
    bastion_port = sshd.free_port([ours])
    target_port = sshd.free_port(["127.0.0.1"], first=bastion_port + 1)
    hidden = Hidden(ns, veth, theirs, bastion_port, target_port,
                    workdir / "bastion_host_key", workdir / "target_host_key", [])
    sshd.keygen([hidden.bastion_key, hidden.target_key], comment="hidden@testbed")
    try:
        for name, address, port, key in (("bastion", theirs, bastion_port, hidden.bastion_key),
                                         ("target", "127.0.0.1", target_port, hidden.target_key)):
            home = workdir / name
            home.mkdir(exist_ok=True)
            spec = sshd.SshdSpec(
                address=address, port=port, user=testbed.hosts[0].user, host_key=key,
                config=workdir / f"{name}_sshd_config", log=workdir / f"{name}.log",
                pid_file=workdir / f"{name}.pid",
                authorized_keys=testbed.dir / "authorized_keys", env=(("HOME", str(home)),))
            spec.config.write_text(sshd.render_config(spec))
            hidden.procs.append(subprocess.Popen(
                netns.exec_argv(ns, sshd.argv(testbed.sshd_path, spec)),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for name in ("bastion", "target"):
            _wait_listening(ns, workdir / f"{name}.log", hidden)
    except BaseException:
        hidden.down()
        raise
    return hidden


def _wait_listening(ns: str, log: Path, hidden: Hidden) -> None:
    """sshd logs "Server listening" once bound (it runs inside the namespace, where our own
    connect could not see it)."""
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if log.exists() and "Server listening" in log.read_text(errors="replace"):
            return
        if any(p.poll() is not None for p in hidden.procs):
            break
        time.sleep(0.05)
    raise RuntimeError(f"sshd in {ns} did not start: {sshd.log_tail(log)}")
