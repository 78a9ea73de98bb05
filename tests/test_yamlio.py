"""The strict YAML loader: what it refuses, how fast, and the field -> line map."""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from orchestrator.core.yamlio import format_path, load_yaml, parse_yaml, validation_error
from orchestrator.errors import SpecError

DOC = """\
name: app          # line 1
verify:
  rtol: 1.0e-5
  latency_ms: {p50: 5,
               p95: 10}
targets:
  - gpu-01
  - gpu-02
"""


def test_line_map_of_every_field() -> None:
    doc = parse_yaml(DOC, "spec.yaml")
    assert doc.data == {"name": "app", "verify": {"rtol": 1e-5, "latency_ms": {"p50": 5,
                        "p95": 10}}, "targets": ["gpu-01", "gpu-02"]}
    assert doc.lines[("name",)] == 1
    assert doc.lines[("verify", "rtol")] == 3
    assert doc.lines[("verify", "latency_ms", "p95")] == 5
    assert doc.lines[("targets", 1)] == 8
    # a missing field is placed at its nearest written parent
    assert doc.line_of(("verify", "latency_ms", "p99")) == 4
    assert doc.line_of(("nothing",)) == 1


def test_validation_errors_are_placed_by_the_line_map() -> None:
    class Latency(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        p50: float
        p95: float

    class Verify(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        rtol: float
        latency_ms: Latency

    class Spec(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        name: str
        verify: Verify
        targets: list[int]

    doc = parse_yaml(DOC, "spec.yaml")
    with pytest.raises(ValidationError) as info:
        Spec.model_validate(doc.data)
    err = validation_error(doc, info.value)
    assert str(err).startswith("spec.yaml:7: targets[0]: Input should be a valid integer, got "
                               "str 'gpu-01' (and 1 more: targets[1])")
    assert (err.file, err.line, err.field) == ("spec.yaml", 7, "targets[0]")


def test_format_path() -> None:
    assert format_path(("verify", "latency_ms", "p50")) == "verify.latency_ms.p50"
    assert format_path(("targets", 3)) == "targets[3]"
    assert format_path(()) == ""


@pytest.mark.parametrize("text, line, needle", [
    ("a: 1\nb: 2\na: 3\n", 3, "duplicate key 'a' (first on line 1)"),
    ("a:\n  x: 1\n  x: 1\n", 3, "duplicate key 'x'"),
    ("a: &anchor 1\n", 1, "anchor &anchor is not allowed"),
    ("a: [1]\nb: *x\n", 2, "alias *x is not allowed"),
    ("a: !!python/object/apply:os.system [id]\n", 1, "tag !!python/object/apply:os.system"),
    ("a: !!binary aGk=\n", 1, "tag !!binary"),
    ("a: !env HOME\n", 1, "tag !env"),
    ("a: !!set {x, y}\n", 1, "tag !!set"),
    ("a: 2026-01-01\n", 1, "!!timestamp is not allowed (quote dates and times)"),
    ("<<: {a: 1}\n", 1, "merge keys (<<) are not allowed"),
    ("yes: 1\n", 1, "keys must be strings: quote 'yes'"),
    ("? [a]\n: 1\n", 1, "keys must be strings"),
    ("a: 1\n---\nb: 2\n", 2, "expected a single document in the stream but found another document"),
    ("", 1, "the document is empty"),
    ("a: 'unterminated\n", 2, "invalid YAML"),
])
def test_refusals_name_the_line(text: str, line: int, needle: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_yaml(text, "f.yaml")
    assert info.value.line == line, str(info.value)
    assert needle in str(info.value)
    assert str(info.value).startswith(f"f.yaml:{line}: ")


def test_non_utf8_is_refused() -> None:
    with pytest.raises(SpecError, match=r"not UTF-8 \(byte 3\)"):
        parse_yaml(b"a: \xff\n", "f.yaml")


def test_scalars_keep_their_json_types() -> None:
    data = parse_yaml("a: 1\nb: 1.5\nc: true\nd: null\ne: '3.10'\nf: .nan\n").data
    assert data["a"] == 1 and data["b"] == 1.5 and data["c"] is True and data["d"] is None
    assert data["e"] == "3.10" and data["f"] != data["f"]  # NaN loads; the models refuse it


def billion_laughs(levels: int = 10) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_yaml_bomb_refused_under_100ms_and_50mb() -> None:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(SpecError, match="anchor &a0 is not allowed"):
            parse_yaml(billion_laughs(), "bomb.yaml")
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.1 and peak < 50 * 2**20, (elapsed, peak)


def test_alias_only_bomb_is_refused_too() -> None:
    # Even without anchors in view first (a malformed document), an alias is refused at once.
    with pytest.raises(SpecError, match=r"alias \*a0"):
        parse_yaml("x: [" + ", ".join(["*a0"] * 100_000) + "]\n", max_bytes=10**7)


@pytest.mark.parametrize("text", [
    "[" * 10_000 + "]" * 10_000,
    "{a: " * 10_000 + "1" + "}" * 10_000,
    "- " * 10_000 + "x",
])
def test_deep_nesting_refused_at_the_limit_without_recursion_error(text: str) -> None:
    start = time.perf_counter()
    with pytest.raises(SpecError, match="nesting deeper than 32 levels"):
        parse_yaml(text)
    assert time.perf_counter() - start < 0.5  # refused by the scanner, in about a millisecond
    parse_yaml("[" * 31 + "]" * 31)  # within the limit
    with pytest.raises(SpecError, match="nesting deeper than 5 levels"):
        parse_yaml("[" * 6 + "]" * 6, max_depth=5)


def test_size_limit_is_checked_before_reading(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as fh:
        fh.truncate(100 * 2**20)  # sparse
    start = time.perf_counter()
    with pytest.raises(SpecError, match="file is 104857600 bytes, more than the limit of "
                                        "1048576"):
        load_yaml(huge)
    assert time.perf_counter() - start < 0.5
    small = tmp_path / "small.yaml"
    small.write_text("a: 1\n")
    with pytest.raises(SpecError, match="limit of 3"):
        load_yaml(small, max_bytes=3)
    assert load_yaml(small).data == {"a": 1}


def test_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="file not found"):
        load_yaml(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="is a directory"):
        load_yaml(tmp_path)


@pytest.mark.parametrize("text, line", [
    ("a: 1\n# a bell \x07 in a comment\n", 2),
    ("a: 1\nb: x\x1b[2J\n", 2),
    ("\x00", 1),
])
def test_a_raw_control_character_is_a_located_spec_error(text: str, line: int) -> None:
    with pytest.raises(SpecError) as info:
        parse_yaml(text.encode(), "spec.yaml")
    assert (info.value.file, info.value.line) == ("spec.yaml", line)
    assert "control character U+" in info.value.reason


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(SpecError, match=r"is a FIFO \(named pipe\), not a regular file"):
        load_yaml(fifo)  # opened non-blocking: no writer needed to get the refusal
    with pytest.raises(SpecError, match="is a character device, not a regular file"):
        load_yaml("/dev/zero")
    assert time.monotonic() - started < 5
    os.symlink("real.yaml", tmp_path / "link.yaml")
    (tmp_path / "real.yaml").write_text("a: 1\n")
    assert load_yaml(tmp_path / "link.yaml").data == {"a": 1}
