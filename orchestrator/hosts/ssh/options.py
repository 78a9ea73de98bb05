"""What a connection needs: the host's address, the options, and where our known_hosts lives."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from orchestrator.core.inventory import WEAK_SSH_ALGORITHMS, Inventory
from orchestrator.core.retry import RetryPolicy
from orchestrator.errors import InvalidInput
from orchestrator.xdg import user_dir


class HostAddress(Protocol):
    """What the transport needs of an inventory host."""

    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int | None: ...  # None: ssh_config's Port, else 22
    @property
    def user(self) -> str | None: ...  # None: ssh_config's User, else the local user


@dataclass(frozen=True)
class SshOptions:
    known_hosts: Path
    identity_file: Path | None = None
    allow_agent: bool = False
    look_for_keys: bool = False
    connect_timeout: float = 10.0
    banner_timeout: float = 10.0
    auth_timeout: float = 10.0
    command_timeout: float = 300.0
    keepalive_s: int = 15
    max_output_bytes: int = 4 << 20
    max_file_bytes: int = 4 << 20  # a file read back (`get`) when its caller names no cap
    inventory_path: Path | None = None  # only to print the exact `orchestrator trust` command
    # Names from WEAK_SSH_ALGORITHMS to allow again (the inventory's `ssh.legacy_algorithms`).
    legacy_algorithms: frozenset[str] = frozenset()
    ssh_config: Path | None = None  # the inventory's `ssh.config` (route.py); None: none read
    # A refused, reset or timed-out connect is tried again (never an auth or host-key refusal),
    # within `connect_budget_s` or the caller's step deadline, whichever ends first.
    connect_retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(attempts=4, base_s=0.5, cap_s=4.0))
    connect_budget_s: float = 60.0

    def disabled_algorithms(self) -> dict[str, list[str]]:
        """paramiko's `disabled_algorithms`: every weak algorithm but those allowed again. Our
        side never offers them, so a host that offers nothing else is refused at the key
        exchange instead of being talked to with 3des-cbc and hmac-md5."""
        return {kind: [n for n in names if n not in self.legacy_algorithms]
                for kind, names in WEAK_SSH_ALGORITHMS.items()}

    @classmethod
    def for_inventory(cls, inventory: Inventory, **overrides: Any) -> SshOptions:
        """The inventory's `ssh:` settings (else the default known_hosts), plus overrides."""
        fields: dict[str, Any] = {
            "known_hosts": inventory.ssh.known_hosts or default_known_hosts(),
            "identity_file": inventory.ssh.identity_file,
            "inventory_path": Path(inventory.file) if inventory.file != "<inventory>" else None,
            "legacy_algorithms": inventory.ssh.legacy_algorithms,
            "ssh_config": inventory.ssh.config,
            "allow_agent": inventory.ssh.agent,
        }
        return cls(**{**fields, **overrides})



def check_identity_file(path: Path) -> None:
    """Refuse a private key as OpenSSH does (`sshkey_perm_ok`): one that is ours and that group
    or others may read or write is not used, since anyone of them may have copied it. A key
    owned by another user (root:orchestrator 0640 under systemd) is theirs to protect, as in
    OpenSSH. `InvalidInput`: exit 2, before any host is contacted."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InvalidInput(f"SSH identity file {path} does not exist") from None
    except OSError as exc:
        raise InvalidInput(f"SSH identity file {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInput(f"SSH identity file {path} is not a regular file")
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        raise InvalidInput(
            f"SSH identity file {path} has mode {stat.S_IMODE(info.st_mode):04o}: a private key"
            f" must not be accessible by group or others (OpenSSH refuses it too); run"
            f" `chmod 600 {path}` if it was not exposed, else replace the key"
        )


def default_known_hosts() -> Path:
    """$ORCHESTRATOR_KNOWN_HOSTS, else ~/.config/orchestrator/known_hosts (never ~/.ssh's)."""
    return user_dir("CONFIG", "known_hosts", override="ORCHESTRATOR_KNOWN_HOSTS")


def trust_command(host: str, options: SshOptions) -> str:
    inventory = f" --inventory {options.inventory_path}" if options.inventory_path else ""
    return f"orchestrator trust {host}{inventory}"


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
