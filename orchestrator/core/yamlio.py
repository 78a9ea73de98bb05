"""Strict YAML loading for specs and inventories, with a line for every field.

A spec is user input that decides what runs on production hosts, so the loader refuses anything
that YAML allows but a config file never needs, each with `file:line`:
- files over a size limit, checked with `stat` before a byte is read (a 100 MB file costs nothing);
- nesting deeper than a depth limit, counted while composing, so a 10,000-deep document is refused
  at depth `max_depth` instead of exhausting the stack (PyYAML's composer is recursive; its
  scanner and parser are not);
- anchors and aliases (this is also what makes "billion laughs" bombs impossible: the first
  anchor is refused before anything is expanded);
- duplicate keys (PyYAML silently keeps the last one), merge keys (`<<`), non-string keys;
- every tag outside the JSON-like core (null, bool, int, float, str, seq, map): no
  `!!python/...`, no `!!binary`, no implicit timestamps (quote dates).

`load_yaml` returns a `YamlDocument`: the plain data plus a map from field path (e.g.
`("verify", "rtol")`) to the line where it was written, which `validation_error` uses to report
pydantic errors as `spec.yaml:14: verify.rtol: <message>`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from orchestrator.errors import SpecError

DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_MAX_DEPTH = 32

FieldPath = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_TAG + t for t in ("null", "bool", "int", "float", "str"))
_SEQ_TAG = _TAG + "seq"
_MAP_TAG = _TAG + "map"


@dataclass(frozen=True)
class YamlDocument:
    """What a YAML file held, and where each field was written (1-based lines)."""

    file: str
    data: Any
    lines: dict[FieldPath, int] = field(default_factory=dict)

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """The line of `path`, or of its nearest written ancestor (a missing field's parent)."""
        key = tuple(path)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return self.lines.get(())

    def error(self, path: Sequence[str | int], message: str) -> SpecError:
        """A `SpecError` placed at `path` in this document."""
        return SpecError(message, file=self.file, line=self.line_of(path),
                         field=format_path(path) or None)


def format_path(path: Iterable[str | int]) -> str:
    """`("targets", 1)` -> `targets[1]`; `("verify", "rtol")` -> `verify.rtol`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses anchors, aliases and excessive depth as it goes."""

    def __init__(self, stream: str, file: str, max_depth: int) -> None:
        super().__init__(stream)
        self._file, self._max_depth, self._depth = file, max_depth, 0

    # The scanner sees nesting before the composer does; refusing there keeps a 10,000-deep
    # flow document from costing PyYAML's quadratic simple-key bookkeeping.
    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        if self.flow_level >= self._max_depth:
            self._too_deep()
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column: int) -> bool:
        if len(self.indents) >= self._max_depth:
            self._too_deep()
        added: bool = super().add_indent(column)
        return added

    def _too_deep(self, line: int | None = None) -> None:
        if line is None:
            line = self.get_mark().line + 1
        raise SpecError(f"nesting deeper than {self._max_depth} levels", file=self._file,
                        line=line)

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        line = event.start_mark.line + 1
        if isinstance(event, AliasEvent):
            raise SpecError(f"YAML alias *{event.anchor} is not allowed", file=self._file,
                            line=line)
        if getattr(event, "anchor", None) is not None:
            raise SpecError(f"YAML anchor &{event.anchor} is not allowed", file=self._file,
                            line=line)
        self._depth += 1
        try:
            if self._depth > self._max_depth:
                self._too_deep(line)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_limited(path: Path, max_bytes: int) -> bytes:
    """The bytes of `path`, refusing a file over `max_bytes` before reading it.

    Only a regular file is read (a symlink to one is followed), so a FIFO or a device named as
    a spec is refused with a message instead of blocking `validate`, `plan` or the daemon's
    specs_dir watcher forever: it is checked with stat (a device is never opened), then opened
    O_NONBLOCK and checked again with fstat on that descriptor (a file swapped for a FIFO in
    between is refused too, not waited on)."""
    name = str(path)
    try:
        _check_regular(os.stat(path).st_mode, name)  # a device is not even opened
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise SpecError("file not found", file=name) from exc
    except IsADirectoryError as exc:
        raise SpecError("is a directory, not a file", file=name) from exc
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", file=name) from exc
    try:
        st = os.fstat(fd)
        _check_regular(st.st_mode, name)  # again on what was opened: it may have been swapped
        if st.st_size > max_bytes:
            raise SpecError(f"file is {st.st_size} bytes, more than the limit of {max_bytes}",
                            file=name)
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(max_bytes + 1)  # a file that grows while read is still bounded
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", file=name) from exc
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise SpecError(f"file is more than the limit of {max_bytes} bytes", file=name)
    return data


def _check_regular(mode: int, name: str) -> None:
    if stat.S_ISDIR(mode):
        raise SpecError("is a directory, not a file", file=name)
    if not stat.S_ISREG(mode):
        raise SpecError(f"is a {_kind(mode)}, not a regular file: only regular files are read",
                        file=name)


def _kind(mode: int) -> str:
    """What a non-regular file is, in the words of a message."""
    for test, word in ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return word
    return "special file"


def load_yaml(path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES,
              max_depth: int = DEFAULT_MAX_DEPTH) -> YamlDocument:
    """Load one YAML document strictly from a file (see the module docstring)."""
    p = Path(path)
    return parse_yaml(read_limited(p, max_bytes), str(p), max_bytes=max_bytes,
                      max_depth=max_depth)


def parse_yaml(data: bytes | str, file: str = "<string>", *,
               max_bytes: int = DEFAULT_MAX_BYTES,
               max_depth: int = DEFAULT_MAX_DEPTH) -> YamlDocument:
    """Parse YAML text strictly; `file` is only used in error messages."""
    if len(data) > max_bytes:
        raise SpecError(f"document is more than the limit of {max_bytes} bytes", file=file)
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError(f"not UTF-8 (byte {exc.start})", file=file) from exc
    _check_printable(data, file)
    loader = _StrictLoader(data, file, max_depth)
    try:
        root = loader.get_single_node()
        if root is None:
            raise SpecError("the document is empty", file=file, line=1)
        lines: dict[FieldPath, int] = {(): root.start_mark.line + 1}
        value = _Builder(loader, file, lines).build(root, ())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or "syntax error"
        raise SpecError(f"invalid YAML: {problem}", file=file, line=line) from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", file=file) from exc
    finally:
        loader.dispose()
    return YamlDocument(file=file, data=value, lines=lines)


@dataclass
class _Builder:
    """Turns composed nodes into plain data, recording the line of every field path."""

    loader: _StrictLoader
    file: str
    lines: dict[FieldPath, int]

    def build(self, node: Node, path: FieldPath) -> Any:
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            self._check_tag(node, {_SEQ_TAG})
            items = []
            for i, item in enumerate(node.value):
                self.lines[(*path, i)] = item.start_mark.line + 1
                items.append(self.build(item, (*path, i)))
            return items
        assert isinstance(node, ScalarNode)
        self._check_tag(node, _SCALAR_TAGS)
        return self.loader.construct_object(node, deep=True)

    def _mapping(self, node: MappingNode, path: FieldPath) -> dict[str, Any]:
        self._check_tag(node, {_MAP_TAG})
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _TAG + "merge":
                raise self._err("merge keys (<<) are not allowed", line, path)
            key = self.build(key_node, path) if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, str):
                raise self._err(f"keys must be strings: quote {_snippet(key_node)!r}", line, path)
            if key in out:
                first = self.lines.get((*path, key))
                raise self._err(f"duplicate key {key!r} (first on line {first})", line,
                                (*path, key))
            self.lines[(*path, key)] = line
            out[key] = self.build(value_node, (*path, key))
        return out

    def _check_tag(self, node: Node, allowed: set[str] | frozenset[str]) -> None:
        if node.tag not in allowed:
            tag = node.tag.replace(_TAG, "!!")
            hint = " (quote dates and times)" if tag == "!!timestamp" else ""
            raise self._err(f"YAML tag {tag} is not allowed{hint}", node.start_mark.line + 1,
                            ())

    def _err(self, message: str, line: int, path: FieldPath) -> SpecError:
        return SpecError(message, file=self.file, line=line, field=format_path(path) or None)


def _check_printable(text: str, file: str) -> None:
    """Refuse what PyYAML's reader refuses (control characters, even in a comment) as a located
    SpecError: the reader raises from the loader's constructor, with an offset and no line, which
    would otherwise reach the user as an internal error."""
    match = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if match is None:
        return
    pos = match.start()
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    raise SpecError(f"control character U+{ord(match.group()):04X} at column {column} is not "
                    "allowed in YAML (not even in a comment)", file=file, line=line)


def _snippet(node: Node) -> str:
    value = getattr(node, "value", "")
    return str(value)[:40] if isinstance(value, str) else type(value).__name__


def validation_error(doc: YamlDocument, exc: ValidationError,
                     hints: Mapping[str, str] | None = None) -> SpecError:
    """The first pydantic error as `file:line: field: message`, counting the rest.

    `hints` maps a regex pattern to what it means in words ("lowercase letters, digits and
    '-'"), so users read that rather than the regex."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = _clean_loc(first["loc"])
    message = _message(first, hints or {})
    if len(errors) > 1:
        more = ", ".join(format_path(_clean_loc(e["loc"])) or "(top)" for e in errors[1:4])
        message += f" (and {len(errors) - 1} more: {more}{', ...' if len(errors) > 4 else ''})"
    return doc.error(loc, message)


def _clean_loc(loc: Sequence[Any]) -> FieldPath:
    # pydantic adds validator names (e.g. "function-after[...]") to some locations: not fields.
    return tuple(p for p in loc if isinstance(p, int) or not (
        isinstance(p, str) and ("[" in p and "]" in p and p.endswith("]"))))


def _message(error: Mapping[str, Any], hints: Mapping[str, str]) -> str:
    msg = str(error["msg"])
    kind = error["type"]
    got = error.get("input")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "string_pattern_mismatch":
        pattern = str(error.get("ctx", {}).get("pattern", ""))
        return f"must be {hints[pattern]}, got {_short(got)}" if pattern in hints else msg
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind in {"string_type", "float_type", "int_type", "bool_type"}:
        msg += f", got {type(got).__name__} {_short(got)}"
        if kind == "string_type" and isinstance(got, int | float):
            msg += " (quote it)"
    return msg


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
