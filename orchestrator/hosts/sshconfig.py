"""What an SSH connection needs: the address of a host (`HostAddress`, which an inventory host
fits) and the options of the connection (`SshOptions`, from the inventory's `ssh:` section).

Apart from orchestrator.hosts.ssh (the connection itself) so that the modules which only name a
host or carry options (probe, pool, the CLI) need not read the paramiko module to find them;
ssh.py re-exports both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from orchestrator.core.inventory import Inventory
from orchestrator.hosts.known_hosts import default_known_hosts


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
