"""Ansible inventories (INI and YAML) read into one plain shape, every item with its line.

Pure: text in, `AnsibleInventory` out; `orchestrator/core/ansible_inventory.py` converts it to
ours. What is read, as Ansible documents it ("How to build your inventory"):

- INI: hosts before any section (group `ungrouped`); `[group]` host lines `name [key=value
  ...]` (`name:port` too); `[group:vars]` `key=value` lines; `[group:children]` group names;
  `#` and `;` comments.
- YAML: top-level groups (usually `all`), each a mapping of `hosts` (name -> vars or null),
  `vars` and `children` (name -> group or null).
- Host ranges `www[01:03].example.com`, `db-[a:c]`, with an optional stride `[0:10:5]`.

Anything else (a malformed line, an unknown group key, a bad range) is a `SpecError` with
`file:line`. Values are kept as written (INI: strings; YAML: scalars or whatever it holds), for
the converter to judge.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.yamlio import YamlDocument
from orchestrator.errors import SpecError

MAX_RANGE = 10_000  # hosts one pattern may expand to
_SECTION = re.compile(r"^\[([^\]:\s]+)(?::(vars|children))?\]$")
_RANGE = re.compile(r"\[([0-9]+|[a-z]):([0-9]+|[a-z])(?::([0-9]+))?\]")
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_YAML_GROUP_KEYS = {"hosts", "vars", "children"}


@dataclass(frozen=True)
class Value:
    value: Any
    line: int | None


@dataclass
class Group:
    name: str
    line: int | None
    hosts: list[str] = field(default_factory=list)
    children: list[tuple[str, int | None]] = field(default_factory=list)
    vars: dict[str, Value] = field(default_factory=dict)


@dataclass
class HostEntry:
    name: str
    line: int | None
    vars: dict[str, Value] = field(default_factory=dict)


@dataclass
class AnsibleInventory:
    file: str
    groups: dict[str, Group] = field(default_factory=dict)
    hosts: dict[str, HostEntry] = field(default_factory=dict)  # in order of first mention

    def group(self, name: str, line: int | None) -> Group:
        return self.groups.setdefault(name, Group(name, line))

    def host(self, name: str, line: int | None, group: str) -> HostEntry:
        entry = self.hosts.setdefault(name, HostEntry(name, line))
        members = self.group(group, line).hosts
        if name not in members:
            members.append(name)
        return entry


def expand(pattern: str, file: str, line: int | None) -> list[str]:
    """`www[01:03].x` -> www01.x, www02.x, www03.x (leading zeros kept, as Ansible does)."""
    match = _RANGE.search(pattern)
    if match is None:
        if "[" in pattern or "]" in pattern:
            raise SpecError(f"bad host range in {pattern!r}: expected [START:END] or "
                            "[START:END:STEP] of numbers or letters", file=file, line=line)
        return [pattern]
    start, end, step_text = match.groups()
    step = int(step_text or 1)
    numeric = start.isdigit() and end.isdigit()
    if not numeric and (start.isdigit() or end.isdigit()):
        raise SpecError(f"bad host range in {pattern!r}: mixes numbers and letters",
                        file=file, line=line)
    low, high = (int(start), int(end)) if numeric else (ord(start), ord(end))
    if high < low or step < 1 or (high - low) // step + 1 > MAX_RANGE:
        raise SpecError(f"bad host range in {pattern!r}: empty, reversed or over {MAX_RANGE}",
                        file=file, line=line)
    width = len(start) if numeric and start.startswith("0") else 0
    names = []
    for i in range(low, high + 1, step):
        text = str(i).zfill(width) if numeric else chr(i)
        for rest in expand(pattern[match.end():], file, line):
            names.append(pattern[:match.start()] + text + rest)
    return names


# -- INI -------------------------------------------------------------------------------------


def parse_ini(text: str, file: str) -> AnsibleInventory:
    inv = AnsibleInventory(file)
    group, kind = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            match = _SECTION.match(line)
            if match is None:
                raise SpecError(f"bad section header {line!r}: expected [group], "
                                "[group:vars] or [group:children]", file=file, line=number)
            group, kind = match.group(1), match.group(2) or "hosts"
            inv.group(group, number)
        elif kind == "vars":
            key, sep, value = line.partition("=")
            key = key.strip()
            if not sep or not _VAR_NAME.match(key):
                raise SpecError(f"expected key=value in [{group}:vars], got {line!r}",
                                file=file, line=number)
            inv.group(group, number).vars[key] = Value(_unquote(value.strip(), file, number),
                                                       number)
        elif kind == "children":
            if not re.fullmatch(r"[^\s\[\]:=]+", line):
                raise SpecError(f"expected a group name in [{group}:children], got {line!r}",
                                file=file, line=number)
            inv.group(group, number).children.append((line, number))
        else:
            _ini_host(inv, group, line, number)
    return inv


def _ini_host(inv: AnsibleInventory, group: str, line: str, number: int) -> None:
    try:
        words = shlex.split(line, comments=True)
    except ValueError as exc:
        raise SpecError(f"cannot split the host line: {exc}", file=inv.file,
                        line=number) from None
    name, pairs = words[0], words[1:]
    port: str | None = None
    if name.count(":") == 1 and name.rsplit(":", 1)[1].isdigit():
        name, port = name.rsplit(":", 1)
    variables: dict[str, Value] = {}
    if port is not None:
        variables["ansible_port"] = Value(port, number)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _VAR_NAME.match(key):
            raise SpecError(f"expected key=value after the host name, got {pair!r}",
                            file=inv.file, line=number)
        variables[key] = Value(value, number)
    for host in expand(name, inv.file, number):
        inv.host(host, number, group).vars.update(variables)


def _unquote(value: str, file: str, line: int) -> str:
    if value[:1] in ("'", '"'):
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise SpecError(f"unbalanced quotes: {exc}", file=file, line=line) from None
        return " ".join(words)
    return value


# -- YAML ------------------------------------------------------------------------------------


def parse_yaml(doc: YamlDocument) -> AnsibleInventory:
    inv = AnsibleInventory(doc.file)
    if not isinstance(doc.data, dict):
        raise doc.error((), "an Ansible YAML inventory is a mapping of groups (e.g. `all:`)")
    for name, body in doc.data.items():
        _yaml_group(inv, doc, name, body, (name,))
    return inv


def _yaml_group(inv: AnsibleInventory, doc: YamlDocument, name: str, body: Any,
                path: tuple[str | int, ...]) -> None:
    group = inv.group(name, doc.line_of(path))
    if body is None:
        return
    if not isinstance(body, dict):
        raise doc.error(path, "a group is a mapping of hosts, vars and children")
    for key in body:
        if key not in _YAML_GROUP_KEYS:
            raise doc.error((*path, key), "unknown group key (expected hosts, vars or children)")
    hosts, variables, children = body.get("hosts"), body.get("vars"), body.get("children")
    for key, value in (("hosts", hosts), ("vars", variables), ("children", children)):
        if value is not None and not isinstance(value, dict):
            raise doc.error((*path, key), "must be a mapping")
    for host, host_vars in (hosts or {}).items():
        where = (*path, "hosts", host)
        if host_vars is not None and not isinstance(host_vars, dict):
            raise doc.error(where, "a host's value is a mapping of its vars, or empty")
        entry_vars = {k: Value(v, doc.line_of((*where, k))) for k, v in (host_vars or {}).items()}
        for expanded in expand(host, doc.file, doc.line_of(where)):
            inv.host(expanded, doc.line_of(where), name).vars.update(entry_vars)
    for key, value in (variables or {}).items():
        group.vars[key] = Value(value, doc.line_of((*path, "vars", key)))
    for child, child_body in (children or {}).items():
        group.children.append((child, doc.line_of((*path, "children", child))))
        _yaml_group(inv, doc, child, child_body, (*path, "children", child))
