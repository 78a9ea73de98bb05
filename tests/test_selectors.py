"""Set-based label selectors (core/selectors.py): the parser, its located errors, the matcher,
and the places that accept selectors (inventory targets, spec targets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.inventory import load_inventory
from orchestrator.core.selectors import (
    Op,
    Requirement,
    SelectorError,
    is_selector,
    parse_selector,
)
from orchestrator.core.spec import load_spec
from orchestrator.errors import SpecError
from tests.specs import stub_spec

HOSTS = {
    "a1": {"zone": "a", "gpu": "h100"},
    "a2": {"zone": "a", "gpu": "t4", "draining": "yes"},
    "b1": {"zone": "b", "gpu": "a100"},
    "c1": {"zone": "c"},
}


def selected(text: str) -> list[str]:
    selector = parse_selector(text)
    return [name for name, labels in HOSTS.items() if selector.matches(labels)]


@pytest.mark.parametrize("text, hosts", [
    ("zone=a", ["a1", "a2"]),
    ("zone==a", ["a1", "a2"]),
    ("zone = a , gpu = h100", ["a1"]),
    ("zone!=a", ["b1", "c1"]),
    ("gpu!=t4", ["a1", "b1", "c1"]),  # no label counts as "not t4", as in Kubernetes
    ("gpu in (h100,a100)", ["a1", "b1"]),
    ("gpu in ( h100 , a100 )", ["a1", "b1"]),
    ("gpu notin (h100,a100)", ["a2", "c1"]),
    ("gpu,zone in (a,c)", ["a1", "a2"]),
    ("!gpu", ["c1"]),
    ("!draining,zone=a", ["a1"]),
    ("gpu in (t4),draining", ["a2"]),
    ("zone=", []),
])
def test_selects(text: str, hosts: list[str]) -> None:
    assert selected(text) == hosts


def test_parsed_shape() -> None:
    selector = parse_selector("zone in (a,b),!draining,gpu!=t4")
    assert selector.requirements == (
        Requirement("zone", Op.IN, frozenset({"a", "b"})),
        Requirement("draining", Op.NOT_EXISTS),
        Requirement("gpu", Op.NOT_EQUALS, frozenset({"t4"})),
    )


@pytest.mark.parametrize("text, column, expected", [
    ("=a", 1, "expected a label key"),
    ("zone in (a,b", 13, "expected ',' or ')'"),
    ("zone in a,b", 9, "expected '(' and a list of values"),
    ("zone=a;b", 7, "expected a label value"),
    ("zone=a,", 8, "expected a label key"),
    ("zone>a", 5, "expected =, ==, !=, in, notin"),
    ("zone=a b", 8, "expected ',' or the end"),
    ("!", 2, "expected a label key"),
    ("zone in ()", 10, "expected a label value"),
    ("zone notin (a,$)", 15, "expected a label value"),
])
def test_errors_name_the_column(text: str, column: int, expected: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector(text, file="inv.yaml")
    assert info.value.column == column
    assert expected in str(info.value)
    assert str(info.value).startswith(f"inv.yaml: targets: bad label selector {text!r}: "
                                      f"column {column}")


def test_names_are_not_selectors() -> None:
    assert not is_selector("gpu-01")
    assert not is_selector("inference")
    for text in ("zone=a", "!draining", "gpu,zone=a", "zone in (a)", "zone notin (a)"):
        assert is_selector(text), text


def test_inventory_resolves_set_based_selectors(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(
        "hosts:\n"
        "  gpu-01: {address: 127.0.0.2, user: u, deploy_root: /d, labels: {zone: a, gpu: h100}}\n"
        "  gpu-02: {address: 127.0.0.3, user: u, deploy_root: /d, labels: {zone: b}}\n"
        "  gpu-03: {address: 127.0.0.4, user: u, deploy_root: /d,\n"
        "           labels: {zone: c, draining: 'yes'}}\n")
    inv = load_inventory(path)
    assert [h.name for h in inv.resolve(["zone in (b,c)"])] == ["gpu-02", "gpu-03"]
    assert [h.name for h in inv.resolve(["!draining"])] == ["gpu-01", "gpu-02"]
    assert [h.name for h in inv.resolve(["zone notin (a)", "gpu-01"])] == \
        ["gpu-02", "gpu-03", "gpu-01"]
    with pytest.raises(SpecError, match="matches no host"):
        inv.resolve(["zone in (z)"])
    with pytest.raises(SpecError, match=r"column 9: expected '\(' and a list"):
        inv.resolve(["zone in b"])


def test_spec_targets_accept_selectors_and_locate_bad_ones(tmp_path: Path) -> None:
    good = stub_spec(tmp_path / "good", ["'zone in (a,b)'", "'!draining'", "gpu-01"])
    assert load_spec(good).targets == ["zone in (a,b)", "!draining", "gpu-01"]
    bad = stub_spec(tmp_path / "bad", ["gpu-01", "'zone in (a'"])
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    assert info.value.field == "targets[1]"
    assert info.value.line is not None
    assert "column 11: expected ',' or ')'" in str(info.value)
    upper = stub_spec(tmp_path / "upper", ["GPU-01"])
    with pytest.raises(SpecError, match="'GPU-01' is not a host or group name"):
        load_spec(upper)
