"""Where a testbed keeps its files, and the pure renderings of what it writes for clients:
the inventory (DESIGN.md format plus the `ssh:` block), known_hosts, and state.json.

    DIR/state.json           what is running: ports, pids (with start times), profiles
    DIR/inventory.yaml       hosts tb-01.., group `testbed`, ssh: {known_hosts, identity_file}
    DIR/known_hosts          [127.0.0.N]:PORT ssh-ed25519 ...
    DIR/id_ed25519(.pub)     the client key (no passphrase, 0600); DIR/authorized_keys
    DIR/hosts/<name>/        sshd_config, sshd.log, sshd.pid, ssh_host_ed25519_key(.pub),
                             profile.json, lib/ (LD_LIBRARY_PATH), root/ (deploy_root),
                             home/ ($HOME of sessions there), containers/ (the host's own
                             Podman configuration and image storage)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

STATE_VERSION = 1
GROUP = "testbed"
MAX_HOSTS = 253  # 127.0.0.2 .. 127.0.0.254


@dataclass(frozen=True)
class TestbedHost:
    """One simulated GPU host. `pid`/`starttime` identify its running sshd."""

    __test__ = False  # not a pytest test class

    name: str
    address: str
    port: int
    user: str
    deploy_root: Path
    profile: str
    lib_dir: Path
    pid: int = 0
    starttime: int = 0
    # Far hosts (`up --rtt`): the network namespace and our veth end this host sits behind, the
    # round trip put on it, and the delay relay's process where the kernel has no netem.
    netns: str = ""
    veth: str = ""
    rtt_ms: float = 0.0
    relay_pid: int = 0
    relay_starttime: int = 0

    @property
    def host_dir(self) -> Path:
        return self.deploy_root.parent

    @property
    def home(self) -> Path:
        """$HOME of sessions on this host (sshd SetEnv), not the real user's home."""
        return self.host_dir / "home"

    @property
    def containers_dir(self) -> Path:
        """This host's Podman: containers.conf, storage.conf (sshd SetEnv) and the storage
        they name, so that hosts sharing this machine's podman do not see each other's
        images."""
        return self.host_dir / "containers"

    @property
    def profile_path(self) -> Path:
        return self.host_dir / "profile.json"

    @property
    def kernel_log_path(self) -> Path:
        """The host's simulated kernel log (NVRM Xid lines), read by the probe through
        $ORCHESTRATOR_KERNEL_LOG instead of journalctl -k or /dev/kmsg."""
        return self.host_dir / "kernel.log"

    @property
    def sshd_config(self) -> Path:
        return self.host_dir / "sshd_config"

    @property
    def sshd_log(self) -> Path:
        return self.host_dir / "sshd.log"

    @property
    def host_key(self) -> Path:
        return self.host_dir / "ssh_host_ed25519_key"


def host_name(index: int) -> str:
    return f"tb-{index + 1:02d}"


def host_address(index: int) -> str:
    return f"127.0.0.{index + 2}"


def new_host(root: Path, index: int, port: int, user: str, profile: str) -> TestbedHost:
    name = host_name(index)
    host_dir = root / "hosts" / name
    return TestbedHost(
        name=name, address=host_address(index), port=port, user=user,
        deploy_root=host_dir / "root", profile=profile, lib_dir=host_dir / "lib",
    )


def render_inventory(hosts: list[TestbedHost]) -> str:
    data: dict[str, Any] = {
        "ssh": {"known_hosts": "known_hosts", "identity_file": "id_ed25519"},
        "hosts": {
            h.name: {
                "address": h.address, "port": h.port, "user": h.user,
                "deploy_root": str(h.deploy_root), "labels": {"profile": h.profile},
            }
            for h in hosts
        },
        "groups": {GROUP: [h.name for h in hosts]},
    }
    header = "# Written by `orchestrator testbed up`: simulated GPU hosts on this machine.\n"
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def known_hosts_line(host: TestbedHost, public_key: str) -> str:
    """OpenSSH's form for a non-22 port, which paramiko reads too; the key comment is dropped."""
    key_type, key = public_key.split()[:2]
    return f"[{host.address}]:{host.port} {key_type} {key}\n"


def render_state(sshd: str, hosts: list[TestbedHost]) -> str:
    data = {
        "version": STATE_VERSION,
        "sshd": sshd,
        "hosts": [
            {"name": h.name, "address": h.address, "port": h.port, "user": h.user,
             "deploy_root": str(h.deploy_root), "profile": h.profile, "lib_dir": str(h.lib_dir),
             "pid": h.pid, "starttime": h.starttime,
             **({"netns": h.netns, "veth": h.veth, "rtt_ms": h.rtt_ms, "relay_pid": h.relay_pid,
                 "relay_starttime": h.relay_starttime} if h.netns else {})}
            for h in hosts
        ],
    }
    return json.dumps(data, indent=2) + "\n"


def parse_state(text: str) -> tuple[str, list[TestbedHost]]:
    data = json.loads(text)
    if data.get("version") != STATE_VERSION:
        raise ValueError(f"state version {data.get('version')!r}, expected {STATE_VERSION}")
    hosts = [
        TestbedHost(
            name=str(h["name"]), address=str(h["address"]), port=int(h["port"]),
            user=str(h["user"]), deploy_root=Path(h["deploy_root"]), profile=str(h["profile"]),
            lib_dir=Path(h["lib_dir"]), pid=int(h["pid"]), starttime=int(h["starttime"]),
            netns=str(h.get("netns", "")), veth=str(h.get("veth", "")),
            rtt_ms=float(h.get("rtt_ms", 0.0)), relay_pid=int(h.get("relay_pid", 0)),
            relay_starttime=int(h.get("relay_starttime", 0)),
        )
        for h in data["hosts"]
    ]
    return str(data["sshd"]), hosts


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Readers (a host's nvmlInit, a client loading the inventory) see the old file or the new."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
