"""How a host is reached: the inventory's values, completed from an ssh_config file read with
paramiko's own `SSHConfig`, as a `Route` of hops (the ProxyJump bastions, then the host).

Precedence, per value (docs/operations.md "SSH setups"):
- the inventory's `address` is what ssh_config's `Host` patterns match (as `ssh ADDRESS` would),
  and its `HostName` replaces it;
- the inventory's `port` and `user`, where set, win over ssh_config's `Port` and `User`; else
  ssh_config's; else 22 and the local user name, as OpenSSH;
- the inventory's `ssh.identity_file`, where set, is the only key; else ssh_config's
  `IdentityFile` lines (missing default-looking files skipped, as OpenSSH does);
- `ProxyJump` (a comma-separated chain, `[user@]host[:port]` each, `none` for none) comes from
  ssh_config only; each jump host is itself looked up there for its `HostName`, `Port`, `User`
  and `IdentityFile` (not for its own ProxyJump: the chain is written out in the target's).
  `IdentitiesOnly yes` turns the ssh-agent off for that hop.

The ssh_config file is opt-in (`ssh.config` in the inventory, `~/.ssh/config` for the usual one):
a daemon runs as another user than the operator who wrote the inventory, and a deployment must
reach the same machines whichever of them resolves it. Keywords that would change where or how
we connect and that we do not implement (`ProxyCommand`) are refused, never silently ignored;
`StrictHostKeyChecking` and `UserKnownHostsFile` are ignored on purpose: host keys are always
checked against the orchestrator's own known_hosts, for every hop.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path

import paramiko

from orchestrator.errors import InvalidInput
from orchestrator.hosts.ssh.options import HostAddress, SshOptions

_UNSUPPORTED = ("proxycommand",)
_MAX_JUMPS = 8


@dataclass(frozen=True)
class Hop:
    """One SSH server on the way, with everything resolved (an `HostAddress` too)."""

    name: str                 # what the operator wrote: inventory host name or jump spec
    address: str              # what TCP (or the previous hop's direct-tcpip) connects to
    port: int
    user: str
    identity_files: tuple[Path, ...] = ()
    identities_only: bool = False


@dataclass(frozen=True)
class Route:
    jumps: tuple[Hop, ...]
    target: Hop

    @property
    def hops(self) -> tuple[Hop, ...]:
        return (*self.jumps, self.target)

    def describe(self) -> str:
        return " -> ".join(f"{h.user}@{h.address}:{h.port}" for h in self.hops)


def load_ssh_config(path: Path | None) -> paramiko.SSHConfig:
    """The parsed file, or an empty config when the inventory names none."""
    if path is None:
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(str(path))
    except FileNotFoundError:
        raise InvalidInput(f"ssh config {path} (the inventory's ssh.config) does not exist"
                           ) from None
    except (OSError, UnicodeDecodeError, ValueError, paramiko.ConfigParseError) as exc:
        raise InvalidInput(f"ssh config {path} cannot be read: {exc}") from None


def resolve(host: HostAddress, options: SshOptions,
            config: paramiko.SSHConfig | None = None) -> Route:
    """The hops to `host`, from its inventory values and the ssh_config (module docstring)."""
    cfg = config if config is not None else load_ssh_config(options.ssh_config)
    entry = _lookup(cfg, host.address, options, host.name)
    target = _hop(host.name, entry, host.port, host.user, options)
    jumps: list[Hop] = []
    chain = str(entry.get("proxyjump", "none"))
    if chain.lower() != "none":
        specs = [s.strip() for s in chain.split(",") if s.strip()]
        if len(specs) > _MAX_JUMPS:
            raise InvalidInput(f"{host.name}: ProxyJump {chain!r} has more than {_MAX_JUMPS} hops")
        for spec in specs:
            user, address, port = parse_jump(spec, host.name)
            jump_entry = _lookup(cfg, address, options, host.name)
            jumps.append(_hop(spec, jump_entry, port, user, options))
    return Route(tuple(jumps), target)


def parse_jump(spec: str, host: str) -> tuple[str | None, str, int | None]:
    """`[user@]host[:port]` (or `[v6addr]:port`) -> (user, host, port)."""
    user, _, rest = spec.rpartition("@")
    port: int | None = None
    if rest.startswith("["):
        address, _, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    elif rest.count(":") == 1:
        address, _, port_text = rest.partition(":")
    else:
        address, port_text = rest, ""
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise InvalidInput(f"{host}: ProxyJump {spec!r}: bad port {port_text!r}")
        port = int(port_text)
    if not address or address.startswith("-") or any(c.isspace() for c in spec):
        raise InvalidInput(f"{host}: ProxyJump {spec!r}: expected [user@]host[:port]")
    return user or None, address, port


def _lookup(cfg: paramiko.SSHConfig, alias: str, options: SshOptions,
            host: str) -> paramiko.SSHConfigDict:
    try:
        entry = cfg.lookup(alias)
    except (paramiko.ConfigParseError, ValueError, ImportError) as exc:
        raise InvalidInput(f"{host}: ssh config {options.ssh_config}: {alias}: {exc}") from None
    for key in _UNSUPPORTED:
        if key in entry:
            raise InvalidInput(
                f"{host}: ssh config {options.ssh_config} sets {key} for {alias}, which the"
                " orchestrator does not run; use ProxyJump for a bastion")
    return entry


def _hop(name: str, entry: paramiko.SSHConfigDict, port: int | None, user: str | None,
         options: SshOptions) -> Hop:
    address = str(entry.get("hostname", ""))
    if not address or address.startswith("-"):
        raise InvalidInput(f"{name}: ssh config HostName {address!r} is not a host name")
    return Hop(
        name=name,
        address=address,
        port=port if port is not None else _port(entry, name),
        user=user if user is not None else str(entry.get("user") or getpass.getuser()),
        identity_files=_identities(entry, options),
        identities_only=str(entry.get("identitiesonly", "no")).lower() == "yes",
    )


def _port(entry: paramiko.SSHConfigDict, name: str) -> int:
    text = str(entry.get("port", "22"))
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InvalidInput(f"{name}: ssh config Port {text!r} is not a port number")
    return int(text)


def _identities(entry: paramiko.SSHConfigDict, options: SshOptions) -> tuple[Path, ...]:
    if options.identity_file is not None:
        return (options.identity_file,)
    files = [Path(p).expanduser() for p in entry.get("identityfile", [])]
    # OpenSSH skips a listed key file that does not exist (a shared config names several).
    return tuple(p for p in files if p.exists())
