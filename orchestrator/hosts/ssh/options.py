"""What a connection needs: the host's address, the options, and where our known_hosts lives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from orchestrator.core.inventory import Inventory
from orchestrator.xdg import user_dir


class HostAddress(Protocol):
    """What the transport needs of an inventory host."""

    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def user(self) -> str: ...


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

    @classmethod
    def for_inventory(cls, inventory: Inventory, **overrides: Any) -> SshOptions:
        """The inventory's `ssh:` files (else the default known_hosts), plus any overrides."""
        fields: dict[str, Any] = {
            "known_hosts": inventory.ssh.known_hosts or default_known_hosts(),
            "identity_file": inventory.ssh.identity_file,
            "inventory_path": Path(inventory.file) if inventory.file != "<inventory>" else None,
        }
        return cls(**{**fields, **overrides})



def default_known_hosts() -> Path:
    """$ORCHESTRATOR_KNOWN_HOSTS, else ~/.config/orchestrator/known_hosts (never ~/.ssh's)."""
    return user_dir("CONFIG", "known_hosts", override="ORCHESTRATOR_KNOWN_HOSTS")


def trust_command(host: str, options: SshOptions) -> str:
    inventory = f" --inventory {options.inventory_path}" if options.inventory_path else ""
    return f"orchestrator trust {host}{inventory}"


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
