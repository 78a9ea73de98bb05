"""`orchestrator trust HOST... --inventory FILE [--yes] [--replace]`: trusting a host is explicit.

For each host, and first for each ProxyJump bastion on the way to it (the inventory's
ssh.config): fetch the key it offers (key exchange only), print its SHA256 fingerprint, and
compare with the orchestrator's own known_hosts. A new key is appended only with --yes or after
a "y" on a terminal; a key different from the one recorded is refused unless --replace.
The decision is a pure function (`decide`); the command does the I/O around it.
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.cli import exits
from orchestrator.core.terminal import safe
from orchestrator.errors import (
    EXIT_DEPLOY_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNREACHABLE,
    HostError,
    worst,
)

if TYPE_CHECKING:
    from orchestrator.hosts.ssh import HostAddress, SshOptions
    from orchestrator.hosts.ssh.known_hosts import Opener

EXITS = exits.table(
    {EXIT_OK: "every host is trusted (it already was, or its key was added)",
     EXIT_INVALID: "invalid input (inventory, unknown host or group)",
     EXIT_DEPLOY_FAILED: "a key was not added (changed key without --replace, not confirmed)",
     EXIT_UNREACHABLE: "every key offered was handled, but a host is unreachable"})

HINT = """\
Compare the fingerprint with the host's own (on the host: ssh-keygen -lf /etc/ssh/ssh_host_*.pub)
before trusting it.

"""


class Action(enum.Enum):
    ALREADY = "already trusted"
    ADD = "added"
    REPLACE = "replaced"
    ASK = "ask"
    REFUSE_CHANGED = "refused: the host key CHANGED"
    NOT_CONFIRMED = "not trusted: re-run with --yes to trust it"


def decide(known: Sequence[tuple[str, str]], offered: tuple[str, str], *, yes: bool,
           replace: bool, interactive: bool) -> Action:
    """What to do with `offered` (key type, base64) given the keys `known` for that host."""
    if offered in known:
        return Action.ALREADY
    if known:
        return Action.REPLACE if replace else Action.REFUSE_CHANGED
    if yes:
        return Action.ADD
    return Action.ASK if interactive else Action.NOT_CONFIRMED


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "trust", help="show hosts' SSH key fingerprints and add them to the known_hosts",
        description="Fetch each host's SSH host key, print its SHA256 fingerprint and add it to\n"
                    "the orchestrator's own known_hosts (the inventory's ssh.known_hosts).",
        epilog=HINT + exits.epilog(EXITS), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hosts", nargs="+", metavar="HOST", help="host or group names")
    parser.add_argument("--inventory", type=Path, required=True, help="inventory YAML file")
    parser.add_argument("--yes", action="store_true", help="trust new keys without asking")
    parser.add_argument("--replace", action="store_true",
                        help="replace a host's recorded key by the one it offers now")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: {host: {address, key_type, fingerprint, "
                             "action, trusted[, via: bastions]} or {error, kind}}")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from orchestrator.core.inventory import load_inventory
    from orchestrator.hosts.ssh import SshOptions

    inventory = load_inventory(args.inventory)
    hosts = inventory.resolve(args.hosts)
    options = SshOptions.for_inventory(inventory)
    interactive = sys.stdin.isatty() and not args.yes and not args.json
    codes: list[int] = []
    report: dict[str, dict[str, Any]] = {}
    for host in hosts:
        try:
            result = trust_route(host, options, yes=args.yes, replace=args.replace,
                                 interactive=interactive, quiet=args.json)
        except HostError as exc:
            if not args.json:
                print(safe(f"error: {exc}"), file=sys.stderr)
            report[host.name] = {"error": exc.reason, "kind": type(exc).__name__}
            codes.append(exc.exit_code)
            continue
        report[host.name] = result
        codes.append(EXIT_OK if result["trusted"] else EXIT_DEPLOY_FAILED)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    return worst(codes)


def trust_route(host: HostAddress, options: SshOptions, *, yes: bool, replace: bool,
                interactive: bool, quiet: bool = False) -> dict[str, Any]:
    """Each hop to the host in turn, its ProxyJump bastions first (a hop's key is read through
    the hops before it, which must be trusted by then). The target's `trust_host` result, with
    `via`: the bastions' results, when there are any; stops at the first untrusted hop (then
    `trusted` is false and the target was not contacted)."""
    from orchestrator.hosts import ssh

    route = ssh.resolve(host, options)
    bastions: list[dict[str, Any]] = []
    for index, hop in enumerate(route.hops):
        label = host.name if hop is route.target else f"{host.name} via bastion {hop.name}"
        with ssh.path_to(host.name, route, index, options) as opener:
            result = trust_host(hop, options.known_hosts, yes=yes, replace=replace,
                                interactive=interactive, quiet=quiet, label=label, opener=opener,
                                disabled_algorithms=options.disabled_algorithms())
        if hop is not route.target:
            bastions.append({"bastion": hop.name, **result})
            if not result["trusted"]:
                return {"trusted": False, "via": bastions}
    return {**result, "via": bastions} if bastions else result


def trust_host(host: HostAddress, known_hosts: Path, *, yes: bool, replace: bool,
               interactive: bool, quiet: bool = False, label: str | None = None,
               opener: Opener | None = None,
               disabled_algorithms: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Print the host's fingerprint and act on it (nothing printed with `quiet`); what was
    done, `trusted` true when the host ends up trusted. The key is read with the algorithms
    connections use (`disabled_algorithms`: `SshOptions.disabled_algorithms()`)."""
    from orchestrator.hosts import ssh

    name = label or host.name

    def say(text: str, err: bool = False) -> None:
        if not quiet:
            print(safe(text), file=sys.stderr if err else sys.stdout)

    known = ssh.known_host_keys(known_hosts, host.address, host.port)
    offered = ssh.fetch_host_key(host, prefer=[k.key_type for k in known], opener=opener,
                                 disabled_algorithms=disabled_algorithms)
    where = ssh.known_hosts_name(host.address, host.port)
    say(f"{name} {where} {offered.key_type} {offered.fingerprint}")
    action = decide([(k.key_type, k.base64) for k in known], (offered.key_type, offered.base64),
                    yes=yes, replace=replace, interactive=interactive)
    if action is Action.ASK:
        action = Action.ADD if _confirm(name) else Action.NOT_CONFIRMED
    result = {"address": where, "key_type": offered.key_type,
              "fingerprint": offered.fingerprint, "action": action.name.lower(),
              "trusted": action in (Action.ALREADY, Action.ADD, Action.REPLACE)}
    if action is Action.REFUSE_CHANGED:
        recorded = ", ".join(f"{k.key_type} {k.fingerprint}" for k in known)
        say(f"  {action.value}: {known_hosts} has {recorded}; if the host was really "
            f"reinstalled, re-run with --replace", err=True)
        return result
    if action is Action.NOT_CONFIRMED:
        say(f"  {action.value}", err=True)
        return result
    if action is Action.REPLACE:
        ssh.remove_known_host(known_hosts, host.address, host.port)
    if action in (Action.ADD, Action.REPLACE):
        ssh.append_known_host(known_hosts, host.address, host.port, offered)
    where_to = {Action.ADD: f" to {known_hosts}", Action.REPLACE: f" in {known_hosts}"}
    say(f"  {action.value}{where_to.get(action, '')}")
    return result


def _confirm(name: str) -> bool:
    try:
        answer = input(safe(f"Trust this key for {name}? [y/N] "))
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")

