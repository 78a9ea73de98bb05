"""The compatibility data and its queries, against the facts in ../shared/compat/FACTS.md."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.core.compat import load_compat, major_minor, parse_version
from orchestrator.errors import InvalidInput


def test_every_table_and_row_names_its_source() -> None:
    source = resources.files("orchestrator.core").joinpath("data", "compat.json")
    raw = json.loads(source.read_text())
    assert raw["cuda"]["source_table3"] and raw["cuda"]["source_table2"] and raw["disk"]["source"]
    assert all(row["source"] for row in raw["tensorflow"]["builds"])
    assert all(p["source"] for p in raw["tensorflow"]["packages"].values())
    data = load_compat()
    assert all(r.source for r in data.toolkit_drivers)
    assert all(r.source for r in data.minor_compat) and all(r.source for r in data.tf_builds)


def test_tensorflow_2_21_build() -> None:
    b = load_compat().tf_build("2.21.0")
    assert b is not None
    assert (b.python_min, b.python_max, b.cuda, b.cudnn) == ("3.10", "3.13", "12.5.1", "9.3")
    assert b.sass == ("6.0", "7.0", "8.0", "8.9", "9.0") and b.ptx == ("9.0",)
    assert b.min_cc == "6.0"
    assert {lib.soname for lib in b.libraries} == {"libcudnn.so.9", "libcudart.so.12"}
    assert dict(b.and_cuda)["nvidia-cudnn-cu12"] == ">=9.3.0.75,<10.0"
    assert b.supports_python("3.11.2") and not b.supports_python("3.9.18")


def test_build_history_min_cc() -> None:
    data = load_compat()
    mins = {v: data.tf_build(v).min_cc for v in ("2.14.0", "2.15.0", "2.17.0")}  # type: ignore[union-attr]
    assert mins == {"2.14.0": "3.5", "2.15.0": "5.0", "2.17.0": "6.0"}


def test_patch_release_uses_its_minor_row_and_unknown_is_none() -> None:
    data = load_compat()
    assert data.tf_build("2.16.2").version == "2.16.1"  # type: ignore[union-attr]
    assert data.tf_build("2.99.0") is None
    assert data.tf_build("2.22.0.dev20260301") is None


def test_cpu_package_is_never_a_cuda_build() -> None:
    data = load_compat()
    assert data.tf_package("tensorflow-cpu").cuda_build is False  # type: ignore[union-attr]
    assert data.tf_package("tensorflow").cuda_build is True  # type: ignore[union-attr]


@pytest.mark.parametrize(("cuda", "compat", "own"), [
    ("12.5", "525.60.13", "555.42.02"),
    ("12.5.1", "525.60.13", "555.42.06"),
    ("12.9", "525.60.13", "575.51.03"),
    ("11.8", "450.80.02", "520.61.05"),
    ("11.0", "450.51.05", "450.51.05"),  # built with 11.0 itself: its own driver is older
    ("10.2", "440.33", "440.33"),  # no minor-version compatibility before CUDA 11
    ("13.0", "580.65.06", "580.65.06"),
])
def test_min_driver_for_cuda(cuda: str, compat: str, own: str) -> None:
    data = load_compat()
    assert data.min_driver_for_cuda(cuda) == compat
    assert data.min_driver_for_cuda(cuda, minor_compat=False) == own


def test_unknown_cuda_falls_back_to_the_family_floor() -> None:
    data = load_compat()
    assert data.min_driver_for_cuda("12.7") == "525.60.13"  # 12.7 was never released
    assert data.min_driver_for_cuda("12.7", minor_compat=False) is None
    assert data.min_driver_for_cuda("9.0") is None


@pytest.mark.parametrize(("driver", "cuda"), [
    ("470.82.01", "11.4"), ("550.54.15", "12.4"), ("525.60.13", "12.0"), ("535.104.05", "12.2"),
    ("580.95.05", "13.0"), ("400.1", None),
])
def test_max_cuda_for_driver(driver: str, cuda: str | None) -> None:
    assert load_compat().max_cuda_for_driver(driver) == cuda


def test_cuda_of_wheel() -> None:
    data = load_compat()
    assert data.cuda_of_wheel("nvidia-cuda-runtime-cu12", "12.9.79") == (12, "12.9")
    assert data.cuda_of_wheel("nvidia-cudnn-cu12", "9.28.0.42") == (12, None)
    assert data.cuda_of_wheel("numpy", "2.4.6") is None


def test_version_helpers() -> None:
    assert parse_version("550.54.15") == (550, 54, 15)
    assert parse_version("2.22.0.dev20260301") == (2, 22, 0)
    assert parse_version("2.16.0rc0") == (2, 16, 0)
    assert parse_version("470.82.01") > parse_version("470.9.1")  # numeric, not string order
    assert major_minor("12.5.1") == "12.5"


def test_malformed_data_is_invalid_input_not_a_crash() -> None:
    with pytest.raises(InvalidInput, match="malformed compatibility data"):
        load_compat('{"tensorflow": {}}')


def test_data_is_extensible_by_adding_a_row() -> None:
    source = resources.files("orchestrator.core").joinpath("data", "compat.json")
    raw = json.loads(source.read_text())
    row = dict(raw["tensorflow"]["builds"][-1], version="2.22.0", python_max="3.14")
    raw["tensorflow"]["builds"].append(row)
    assert load_compat(json.dumps(raw)).tf_build("2.22.0").python_max == "3.14"  # type: ignore[union-attr]


drivers = st.tuples(st.integers(300, 700), st.integers(0, 200), st.integers(0, 99)).map(
    lambda t: f"{t[0]}.{t[1]}.{t[2]:02d}")


@given(drivers)
def test_a_driver_runs_the_newest_cuda_it_is_said_to_support(driver: str) -> None:
    data = load_compat()
    cuda = data.max_cuda_for_driver(driver)
    if cuda is None:
        assert parse_version(driver) < parse_version("410.48")  # CUDA 10.0, the oldest row
        return
    floor = data.min_driver_for_cuda(cuda, minor_compat=False)
    assert floor is not None and parse_version(floor) <= parse_version(driver)


@given(drivers, drivers)
def test_max_cuda_for_driver_is_monotonic(a: str, b: str) -> None:
    data = load_compat()
    lo, hi = sorted((a, b), key=parse_version)
    cuda_lo, cuda_hi = data.max_cuda_for_driver(lo), data.max_cuda_for_driver(hi)
    if cuda_lo is not None:
        assert cuda_hi is not None and parse_version(cuda_lo) <= parse_version(cuda_hi)


def test_minor_compat_floor_never_exceeds_the_toolkit_driver() -> None:
    data = load_compat()
    for row in data.toolkit_drivers:
        compat = data.min_driver_for_cuda(row.cuda)
        own = data.min_driver_for_cuda(row.cuda, minor_compat=False)
        assert compat is not None and own is not None
        assert parse_version(compat) <= parse_version(own)
