"""The inventory: which hosts exist, how to reach them, and how they are grouped.

```yaml
hosts:
  gpu-01: {address: 10.0.0.11, port: 22, user: deploy, deploy_root: /srv/models,
           labels: {zone: a}, peer_address: 10.1.0.11}   # peer_address: optional
groups:
  inference: [gpu-01, gpu-02]
ssh:                                   # optional; paths relative to this file
  known_hosts: known_hosts
  identity_file: id_ed25519
  legacy_algorithms: [aes256-cbc, hmac-sha1]   # only for hosts that cannot be upgraded
  config: ~/.ssh/config                # opt-in: HostName, Port, User, IdentityFile, ProxyJump
  agent: true                          # opt-in: offer the ssh-agent's keys ($SSH_AUTH_SOCK)
```

A host's `port` and `user` may be left out when `ssh.config` gives them (else 22 and the local
user); where both set one, the inventory wins (orchestrator/hosts/ssh/route.py).

`WEAK_SSH_ALGORITHMS` is what the SSH transport refuses by default (CBC ciphers, 3DES, SHA-1 and
MD5 MACs, SHA-1 signatures and key exchanges); `legacy_algorithms` names those to allow again,
each checked here against that table so a typo is an error at its line, not a silent no-op.

The YAML is read by `orchestrator.core.yamlio` (strict) and validated by pydantic models here (the
edge); the rest of the program gets plain frozen dataclasses: `Inventory`, `Host`, `SshConfig`.
Every value that will reach a shell or the ssh command line is constrained here (no leading `-`,
no whitespace or metacharacters), on top of the quoting done where commands are built.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from orchestrator.core.hashing import NAME_PATTERN as NAME_PATTERN  # re-exported: spec, cli
from orchestrator.core.selectors import is_selector, parse_selector
from orchestrator.core.yamlio import DEFAULT_MAX_BYTES, YamlDocument, load_yaml, validation_error
from orchestrator.errors import SpecError

_ADDRESS = r"^[A-Za-z0-9_.:][A-Za-z0-9_.:-]{0,252}$"
_USER = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$"
_LABEL_KEY = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_LABEL_VALUE = r"^[A-Za-z0-9_.-]{0,63}$"
_DEPLOY_ROOT = r"^/[A-Za-z0-9_./+@-]{0,4095}$"

PATTERN_HINTS = {
    NAME_PATTERN: "1-63 lowercase letters, digits and '-', starting with a letter or digit",
    _ADDRESS: "a host name or IP address (letters, digits, . : - _; not starting with -)",
    _USER: "a user name (letters, digits, _ . -; not starting with - or .)",
    _LABEL_KEY: "a label key (letters, digits, _ . -)",
    _LABEL_VALUE: "a label value (letters, digits, _ . -, at most 63)",
    _DEPLOY_ROOT: "an absolute path of letters, digits and _ . + @ / - (no spaces or shell "
                  "characters)",
}

#: By paramiko's `disabled_algorithms` category: refused unless `ssh.legacy_algorithms` names
#: them. CBC (padding-oracle and plaintext-recovery attacks), 3DES (64-bit blocks: Sweet32),
#: SHA-1/MD5 MACs, SHA-1 signatures (`ssh-rsa`, DSA) and SHA-1 key exchanges; OpenSSH's client
#: no longer offers any of them by default either.
WEAK_SSH_ALGORITHMS: Mapping[str, tuple[str, ...]] = {
    "ciphers": ("aes128-cbc", "aes192-cbc", "aes256-cbc", "3des-cbc"),
    "macs": ("hmac-sha1", "hmac-sha1-96", "hmac-md5", "hmac-md5-96"),
    "keys": ("ssh-rsa", "ssh-rsa-cert-v01@openssh.com", "ssh-dss"),
    "pubkeys": ("ssh-rsa", "ssh-rsa-cert-v01@openssh.com", "ssh-dss"),
    "kex": ("diffie-hellman-group1-sha1", "diffie-hellman-group14-sha1",
            "diffie-hellman-group-exchange-sha1"),
}

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
# A DNS name, IPv4 or IPv6 literal: never starting with "-" (it would become an ssh option).
Address = Annotated[str, StringConstraints(pattern=_ADDRESS)]
User = Annotated[str, StringConstraints(pattern=_USER)]
LabelKey = Annotated[str, StringConstraints(pattern=_LABEL_KEY)]
LabelValue = Annotated[str, StringConstraints(pattern=_LABEL_VALUE)]
DeployRoot = Annotated[str, StringConstraints(pattern=_DEPLOY_ROOT)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class HostModel(_Strict):
    address: Address
    port: int | None = Field(default=None, ge=1, le=65535)
    user: User | None = None
    deploy_root: DeployRoot
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    # Where the other hosts reach this one (environment.wheel_peers): an address this host
    # can bind, when `address` is an ssh_config alias, a bastion's view or a NAT'd name.
    peer_address: Address | None = None


class SshModel(_Strict):
    known_hosts: str | None = Field(default=None, min_length=1)
    identity_file: str | None = Field(default=None, min_length=1)
    legacy_algorithms: list[str] = Field(default_factory=list)
    config: str | None = Field(default=None, min_length=1)
    agent: bool = False


class InventoryModel(_Strict):
    hosts: dict[Name, HostModel] = Field(min_length=1)
    groups: dict[Name, list[Name]] = Field(default_factory=dict)
    ssh: SshModel = Field(default_factory=SshModel)


@dataclass(frozen=True)
class Host:
    """One host as the rest of the program sees it."""

    name: str
    address: str      # an ssh_config alias when `ssh.config` maps it (HostName)
    port: int | None  # None: from ssh_config, else 22
    user: str | None  # None: from ssh_config, else the local user
    deploy_root: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    peer_address: str | None = None  # None: `address` (what other hosts pull wheels from)


@dataclass(frozen=True)
class SshConfig:
    """Files for the SSH transport, absolute; None means the transport's default."""

    known_hosts: Path | None = None
    identity_file: Path | None = None
    legacy_algorithms: frozenset[str] = frozenset()  # names from WEAK_SSH_ALGORITHMS
    config: Path | None = None  # an ssh_config file to read (opt-in)
    agent: bool = False         # offer the ssh-agent's keys


@dataclass(frozen=True)
class Inventory:
    hosts: dict[str, Host]
    groups: dict[str, tuple[str, ...]]
    ssh: SshConfig = field(default_factory=SshConfig)
    file: str = "<inventory>"

    def resolve(self, targets: Sequence[str]) -> list[Host]:
        """Hosts named by `targets`: host names, group names or label selectors (`zone=a`,
        `zone=a,gpu=h100` for both, `zone in (a,b)`, `gpu!=t4`, `!draining`: core/selectors.py),
        in the order given, each host once."""
        if not targets:
            raise SpecError("no targets given", file=self.file, field="targets")
        seen: dict[str, Host] = {}
        for target in targets:
            for name in self._names(target):
                seen.setdefault(name, self.hosts[name])
        return list(seen.values())

    def _names(self, target: str) -> list[str]:
        if is_selector(target):
            selector = parse_selector(target, file=self.file)
            names = [h.name for h in self.hosts.values() if selector.matches(h.labels)]
            if not names:
                raise SpecError(f"selector {target!r} matches no host", file=self.file,
                                field="targets")
            return names
        if target in self.hosts:
            return [target]
        if target in self.groups:
            return list(self.groups[target])
        raise SpecError(f"unknown host or group {target!r}", file=self.file, field="targets")


def load_inventory(path: str | os.PathLike[str], *,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> Inventory:
    """Read, validate and resolve an inventory file; any problem is a `SpecError` with a line."""
    doc = load_yaml(path, max_bytes=max_bytes)
    return inventory_from_document(doc, Path(path).absolute().parent)


def inventory_from_document(doc: YamlDocument, base_dir: Path) -> Inventory:
    """Validate a loaded document; relative `ssh` paths are resolved against `base_dir`."""
    if not isinstance(doc.data, dict):
        raise doc.error((), "an inventory must be a mapping with `hosts:`")
    try:
        model = InventoryModel.model_validate(doc.data)
    except ValidationError as exc:
        raise validation_error(doc, exc, PATTERN_HINTS) from exc
    _check_groups(doc, model)
    _check_legacy(doc, model.ssh.legacy_algorithms)
    hosts = {
        name: Host(name=name, address=h.address, port=h.port, user=h.user,
                   deploy_root=_deploy_root(doc, name, h.deploy_root), labels=dict(h.labels),
                   peer_address=h.peer_address)
        for name, h in model.hosts.items()
    }
    ssh = SshConfig(known_hosts=_abs(base_dir, model.ssh.known_hosts),
                    identity_file=_abs(base_dir, model.ssh.identity_file),
                    legacy_algorithms=frozenset(model.ssh.legacy_algorithms),
                    config=_abs(base_dir, model.ssh.config), agent=model.ssh.agent)
    groups = {name: tuple(dict.fromkeys(members)) for name, members in model.groups.items()}
    return Inventory(hosts=hosts, groups=groups, ssh=ssh, file=doc.file)


def _check_groups(doc: YamlDocument, model: InventoryModel) -> None:
    for group, members in model.groups.items():
        if group in model.hosts:
            raise doc.error(("groups", group), f"group {group!r} has the name of a host")
        for i, member in enumerate(members):
            if member not in model.hosts:
                raise doc.error(("groups", group, i), f"unknown host {member!r}")


def _check_legacy(doc: YamlDocument, names: list[str]) -> None:
    weak = {n for group in WEAK_SSH_ALGORITHMS.values() for n in group}
    for i, name in enumerate(names):
        if name not in weak:
            raise doc.error(("ssh", "legacy_algorithms", i),
                            f"{name!r} is not an algorithm disabled by default; only these can"
                            f" be allowed again: {', '.join(sorted(weak))}")


def _deploy_root(doc: YamlDocument, host: str, root: str) -> str:
    parts = PurePosixPath(root).parts
    if ".." in parts or "." in root.split("/"):
        raise doc.error(("hosts", host, "deploy_root"), "must not contain '.' or '..'")
    if root.rstrip("/") == "":
        raise doc.error(("hosts", host, "deploy_root"), "must not be /")
    return str(PurePosixPath(root))


def _abs(base_dir: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    return (base_dir / Path(value).expanduser()).absolute()
