"""An Ansible inventory (INI or YAML) converted to ours (`orchestrator inventory import`).

Pure: the file's text in (read by core/ansible_parse.py), our inventory's data out, checked by
loading it exactly as `load_inventory` would. For each host:

| ours | from (first found) |
|---|---|
| name | the Ansible name, lowercased, any character outside `a-z 0-9 -` made `-` |
| `address` | `ansible_host`, `ansible_ssh_host`, else the Ansible name itself |
| `port` | `ansible_port`, `ansible_ssh_port`, `name:port` in INI, else 22 |
| `user` | `ansible_user`, `ansible_ssh_user`, else `--user` |
| `deploy_root` | `orchestrator_deploy_root`, else `--deploy-root` |
| `labels` | every other var that is not `ansible_*`: key and value as labels allow |

Vars resolve as Ansible resolves them: `all`'s, then each group's from the outermost to the
innermost (by depth, then name), then the host's own. Groups become ours with every host
under them (children included); `all` and `ungrouped` are not groups of ours.

What cannot be converted is located (`file:line`): a fatal `Problem` (no user, a bad port, two
hosts with one name, an unknown child group, a cycle) leaves no output; a var that cannot be a
label or an `ansible_*` setting with no equivalent (`ansible_become`, ...) is a warning: the
host is converted without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core.ansible_parse import AnsibleInventory, Value, parse_ini, parse_yaml
from orchestrator.core.inventory import inventory_from_document
from orchestrator.core.yamlio import YamlDocument
from orchestrator.core.yamlio import parse_yaml as parse_yaml_text
from orchestrator.errors import SpecError

ADDRESS_VARS = ("ansible_host", "ansible_ssh_host")
PORT_VARS = ("ansible_port", "ansible_ssh_port")
USER_VARS = ("ansible_user", "ansible_ssh_user")
DEPLOY_ROOT_VAR = "orchestrator_deploy_root"
_USED = {*ADDRESS_VARS, *PORT_VARS, *USER_VARS, DEPLOY_ROOT_VAR}
_IMPLICIT = ("all", "ungrouped")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    message: str
    fatal: bool

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {'error' if self.fatal else 'warning'}: {self.message}"


@dataclass
class Conversion:
    data: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.fatal for p in self.problems)


def read_ansible(text: str, file: str, kind: str | None = None) -> AnsibleInventory:
    """Parse either format: `kind` "ini" or "yaml", else by the file's suffix (.yml/.yaml is
    YAML; anything else, like Ansible's `hosts` file, INI)."""
    kind = kind or ("yaml" if Path(file).suffix.lower() in (".yml", ".yaml") else "ini")
    if kind == "yaml":
        return parse_yaml(parse_yaml_text(text, file))
    return parse_ini(text, file)


def our_name(name: str) -> str:
    """`GPU_01.example.com` -> `gpu-01-example-com`: our names' alphabet, at most 63."""
    return re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")[:63]


def convert(inv: AnsibleInventory, *, user: str | None = None,
            deploy_root: str | None = None) -> Conversion:
    out = Conversion()
    fatal = _Reporter(inv.file, out, fatal=True)
    warn = _Reporter(inv.file, out, fatal=False)
    members = _members(inv, fatal)
    order = _group_order(inv)
    hosts: dict[str, dict[str, Any]] = {}
    names: dict[str, str] = {}  # ours -> Ansible's
    for name, entry in inv.hosts.items():
        ours = our_name(name)
        if not ours:
            fatal(entry.line, f"host {name!r} has no letter or digit to name it by")
            continue
        if ours in names:
            fatal(entry.line, f"host {name!r} and host {names[ours]!r} would both be named "
                              f"{ours!r}")
            continue
        names[ours] = name
        resolved: dict[str, Value] = {}
        for group_name in order:
            if group_name in inv.groups and name in members.get(group_name, ()):
                resolved.update(inv.groups[group_name].vars)
        resolved.update(entry.vars)
        host = _host(name, entry.line, resolved, user, deploy_root, fatal, warn)
        if host is not None:
            hosts[ours] = host
    groups: dict[str, list[str]] = {}
    for group in inv.groups.values():
        if group.name in _IMPLICIT:
            continue
        ours = our_name(group.name)
        if ours in names:
            fatal(group.line, f"group {group.name!r} would have the name of host {ours!r}")
        elif ours in groups or not ours:
            fatal(group.line, f"group {group.name!r} cannot be named {ours!r}: taken or empty")
        else:
            groups[ours] = [our_name(h) for h in inv.hosts if h in members.get(group.name, ())]
            if not groups[ours]:
                del groups[ours]
                warn(group.line, f"group {group.name!r} has no hosts: left out")
    if not hosts and out.ok:
        fatal(None, "no hosts in the inventory")
    out.data = {"hosts": hosts, **({"groups": groups} if groups else {})}
    if out.ok:
        _check(out, inv.file, {ours: inv.hosts[name].line for ours, name in names.items()})
    return out


class _Reporter:
    def __init__(self, file: str, out: Conversion, *, fatal: bool) -> None:
        self.file, self.out, self.fatal = file, out, fatal
        self._seen: set[tuple[int | None, str]] = set()

    def __call__(self, line: int | None, message: str) -> None:
        if (line, message) not in self._seen:  # a group var reported once, not per host
            self._seen.add((line, message))
            self.out.problems.append(Problem(self.file, line, message, self.fatal))


def _host(name: str, line: int | None, values: dict[str, Value], user: str | None,
          deploy_root: str | None, fatal: _Reporter, warn: _Reporter) -> dict[str, Any] | None:
    def first(keys: tuple[str, ...]) -> Value | None:
        return next((values[k] for k in keys if k in values), None)

    address, port, login = first(ADDRESS_VARS), first(PORT_VARS), first(USER_VARS)
    root = values.get(DEPLOY_ROOT_VAR)
    host: dict[str, Any] = {"address": str(address.value) if address else name}
    if port is not None:
        text = str(port.value)
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            fatal(port.line, f"host {name!r}: port {text!r} is not 1-65535")
            return None
        host["port"] = int(text)
    if login is None and user is None:
        fatal(line, f"host {name!r} has no ansible_user: set it in the inventory, or pass "
                    "--user")
        return None
    host["user"] = str(login.value) if login else user
    if root is None and deploy_root is None:
        fatal(line, f"host {name!r} has no {DEPLOY_ROOT_VAR}: set it, or pass --deploy-root")
        return None
    host["deploy_root"] = str(root.value) if root else deploy_root
    labels: dict[str, str] = {}
    for key, value in values.items():
        if key in _USED:
            continue
        if key.startswith("ansible_"):
            warn(value.line, f"{key} has no equivalent in our inventory: ignored")
            continue
        label = _label_value(value.value)
        if not _LABEL_KEY.match(key) or label is None:
            warn(value.line, f"var {key} cannot be a label (a key and a value of at most 63 "
                             "letters, digits, _ . -): left out")
            continue
        labels[key] = label
    if labels:
        host["labels"] = labels
    return host


def _label_value(value: Any) -> str | None:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float | str):
        text = str(value)
    else:
        return None
    return text if _LABEL_VALUE.match(text) else None


def _members(inv: AnsibleInventory, fatal: _Reporter) -> dict[str, set[str]]:
    """Every group's hosts, its children's included; `all` holds every host."""
    out: dict[str, set[str]] = {}

    def visit(name: str, stack: tuple[str, ...]) -> set[str]:
        if name in out:
            return out[name]
        group = inv.groups[name]
        hosts = set(group.hosts)
        for child, line in group.children:
            if child in stack:
                fatal(line, f"group {child!r} is its own ancestor ({' > '.join(stack)})")
            elif child not in inv.groups:
                fatal(line, f"unknown child group {child!r} of {name!r}")
            else:
                hosts |= visit(child, (*stack, child))
        out[name] = hosts
        return hosts

    for name in list(inv.groups):
        visit(name, (name,))
    out["all"] = set(inv.hosts)
    return out


def _group_order(inv: AnsibleInventory) -> list[str]:
    """Groups by depth (all 0, its children 1, ...), then name: the order vars apply in."""
    depth: dict[str, int] = {name: 1 for name in inv.groups}
    depth["all"] = 0
    for _ in range(len(inv.groups)):  # children deeper than parents; a cycle stops at the bound
        for group in inv.groups.values():
            for child, _line in group.children:
                if child in depth and child != "all" and depth[child] <= depth[group.name]:
                    depth[child] = depth[group.name] + 1
    return sorted(depth, key=lambda n: (depth[n], n))


def _check(out: Conversion, file: str, lines: dict[str, int | None]) -> None:
    """The result must load as ours; what does not (an address or user our inventory refuses)
    is reported at the line of the Ansible host it came from."""
    try:
        inventory_from_document(YamlDocument(file, out.data), Path("."))
    except SpecError as exc:
        path = (exc.field or "").split(".")
        line = lines.get(path[1]) if len(path) > 1 and path[0] == "hosts" else None
        out.problems.append(Problem(file, line, f"{exc.field}: {exc.reason}", True))
