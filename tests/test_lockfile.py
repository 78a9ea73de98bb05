"""The lock-file linter and the wheelhouse check: real locks, the bad-lock corpus through the
CLI, pylock.toml, and properties (valid locks round-trip; any one corruption is refused with its
line)."""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.cli.app import main
from orchestrator.core.lockfile import (
    check_wheelhouse,
    lint_requirements,
    load_lock,
    normalize_name,
    target_environment,
)
from orchestrator.errors import SpecError

TESTS = Path(__file__).resolve().parent
LOCKS = TESTS / "corpus" / "locks"
SPECS = TESTS / "corpus" / "specs"
FIXTURES = TESTS / "fixtures" / "locks"


def test_real_uv_locks_parse() -> None:
    gpu = load_lock(FIXTURES / "tensorflow-2.21-gpu.lock")
    tf = gpu.get("TensorFlow")
    assert tf is not None and tf.version == "2.21.0" and len(tf.hashes) > 5
    assert tf.line is not None
    assert (FIXTURES / "tensorflow-2.21-gpu.lock").read_text().splitlines()[tf.line - 1] \
        .startswith("tensorflow==2.21.0")
    assert any(p.name.startswith("nvidia-") and p.name.endswith("-cu12") for p in gpu.packages)
    cpu = load_lock(FIXTURES / "tensorflow-cpu-2.21.lock")
    assert cpu.get("tensorflow_cpu") is not None and cpu.get("tensorflow") is None
    assert len({p.name for p in gpu.packages}) == len(gpu.packages)


def test_lock_digest_is_of_the_file_bytes() -> None:
    path = FIXTURES / "small" / "requirements.lock"
    assert load_lock(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_good_pylock_parses_like_the_requirements_lock() -> None:
    pylock = load_lock(LOCKS / "pylock.good.toml")
    reqs = load_lock(SPECS / "requirements.lock")
    assert pylock.format == "pylock"
    assert [(p.name, p.version, p.hashes) for p in pylock.packages] == \
        [(p.name, p.version, p.hashes) for p in reqs.packages]


def expectations(path: Path) -> list[tuple[int | None, str | None, str]]:
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("# expect: "):
            where, _, needle = line[len("# expect: "):].partition(" | ")
            number, field = where.split()
            out.append((None if number == "-" else int(number),
                        None if field == "-" else field, needle))
    return out


BAD_LOCKS = sorted(LOCKS.glob("bad-*.lock")) + sorted(LOCKS.glob("pylock.bad-*.toml"))


@pytest.mark.parametrize("lock", BAD_LOCKS, ids=lambda p: p.name)
def test_corpus_bad_lock_exits_2_naming_the_line(
    lock: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("model.joblib", "golden.npz"):
        shutil.copy(SPECS / name, tmp_path / name)
    shutil.copy(lock, tmp_path / lock.name)
    spec = tmp_path / "spec.yaml"
    spec.write_text((SPECS / "good.yaml").read_text().replace(
        "requirements: requirements.lock", f"requirements: {lock.name}"))
    code = main(["validate", str(spec)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    expected = expectations(lock)
    assert len(errors) == len(expected), err
    for line, (number, field, needle) in zip(errors, expected, strict=True):
        where = f"error: {tmp_path / lock.name}" + (f":{number}" if number else "") + ": "
        assert line.startswith(where), line
        if field:
            assert line.startswith(f"{where}{field}: "), line
        assert needle in line, line


def test_good_pylock_validates_through_the_cli(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("model.joblib", "golden.npz"):
        shutil.copy(SPECS / name, tmp_path / name)
    shutil.copy(LOCKS / "pylock.good.toml", tmp_path / "pylock.toml")
    spec = tmp_path / "spec.yaml"
    spec.write_text((SPECS / "good.yaml").read_text().replace(
        "requirements: requirements.lock", "requirements: pylock.toml"))
    assert main(["validate", str(spec)]) == 0, capsys.readouterr().err


def test_load_lock_raises_the_first_problem_and_counts_the_rest() -> None:
    with pytest.raises(SpecError) as info:
        load_lock(LOCKS / "bad-many.lock")
    assert info.value.line == 6 and "(and 3 more problems)" in str(info.value)


# --- the wheelhouse ------------------------------------------------------------------------------

def test_wheelhouse_with_exactly_the_locked_wheels_passes(tmp_path: Path) -> None:
    lock = load_lock(FIXTURES / "small" / "requirements.lock")
    assert check_wheelhouse(lock, FIXTURES / "small" / "wheelhouse") == []


def test_wheelhouse_with_an_altered_wheel_fails_naming_file_and_package(tmp_path: Path) -> None:
    lock = load_lock(FIXTURES / "small" / "requirements.lock")
    wheels = tmp_path / "wheels"
    shutil.copytree(FIXTURES / "small" / "wheelhouse", wheels)
    six = wheels / "six-1.16.0-py2.py3-none-any.whl"
    six.write_bytes(six.read_bytes() + b"\0")
    (wheels / "notes.txt").write_text("hi")
    errors = [str(e) for e in check_wheelhouse(lock, wheels)]
    assert f"{wheels / 'notes.txt'}: not a wheel file; the wheelhouse holds only locked wheels" \
        in errors
    assert f"{six}: six: wheel not named by the lock (no package has its sha256)" in errors
    assert any(e.startswith(f"{lock.file}:4: six: no wheel in {wheels}") for e in errors)
    assert len(errors) == 3


def test_wheelhouse_skips_packages_whose_marker_does_not_apply(tmp_path: Path) -> None:
    h = "a" * 64
    result = lint_requirements(
        f'pywin32==306 ; sys_platform == "win32" --hash=sha256:{h}\n'
        f'tomli==2.0.1 ; python_version < "3.11" --hash=sha256:{"b" * 64}\n'.encode(), "l")
    assert result.lock is not None
    (tmp_path / "w").mkdir()
    assert check_wheelhouse(result.lock, tmp_path / "w",
                            environment=target_environment("3.11")) == []
    missing = check_wheelhouse(result.lock, tmp_path / "w",
                               environment=target_environment("3.10"))
    assert [e.field for e in missing] == ["tomli"]


def test_wheelhouse_needs_a_wheel_for_the_hosts_python_and_platform(tmp_path: Path) -> None:
    # uv locks list the hashes of every platform's wheels: a wheelhouse filled on a Mac passes
    # the hash check, and must still be refused for a Linux host.
    mac = b"demo wheel for macOS"
    linux = b"demo wheel for manylinux"
    text = (f"demo==1.0 --hash=sha256:{hashlib.sha256(mac).hexdigest()} "
            f"--hash=sha256:{hashlib.sha256(linux).hexdigest()}\n")
    result = lint_requirements(text.encode(), "req.lock")
    assert result.lock is not None
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "demo-1.0-cp311-cp311-macosx_14_0_arm64.whl").write_bytes(mac)
    errors = check_wheelhouse(result.lock, wheels, python="3.11")
    assert [str(e) for e in errors] == [
        f"req.lock:1: demo: no wheel in {wheels} installable on Linux x86_64 with Python 3.11 "
        "has one of the locked sha256 hashes of demo==1.0 (only for other platforms: "
        "demo-1.0-cp311-cp311-macosx_14_0_arm64.whl)"]
    assert check_wheelhouse(result.lock, wheels) == []  # without a target Python: hashes only
    (wheels / "demo-1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl") \
        .write_bytes(linux)
    assert check_wheelhouse(result.lock, wheels, python="3.11") == []
    assert len(check_wheelhouse(result.lock, wheels, python="3.12")) == 1


def test_same_package_with_different_markers_is_not_a_duplicate() -> None:
    text = (f'numpy==1.26.4 ; python_version < "3.12" --hash=sha256:{"a" * 64}\n'
            f'numpy==2.1.0 ; python_version >= "3.12" --hash=sha256:{"b" * 64}\n')
    result = lint_requirements(text.encode(), "l")
    assert result.errors == [] and result.lock is not None
    old = result.lock.get("numpy", target_environment("3.11"))
    new = result.lock.get("numpy", target_environment("3.12"))
    assert old is not None and old.version == "1.26.4"
    assert new is not None and new.version == "2.1.0"


# --- properties ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pkg:
    name: str
    version: str
    marker: str | None
    hashes: tuple[str, ...]
    continued: bool  # hashes on backslash continuation lines, as pip-compile writes them
    comment: bool    # a "# via" comment block after it


names = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,6}([-_.][A-Za-z0-9]{1,4})?", fullmatch=True)
versions = st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){0,3}(\.post[0-9]|rc[0-9])?", fullmatch=True)
markers = st.sampled_from([None, 'python_version < "3.12"', 'sys_platform == "linux"',
                           'platform_machine == "x86_64" and python_version >= "3.9"'])
digests = st.text("0123456789abcdef", min_size=64, max_size=64)
packages = st.builds(Pkg, names, versions, markers,
                     st.lists(digests, min_size=1, max_size=3, unique=True).map(tuple),
                     st.booleans(), st.booleans())
locks = st.lists(packages, min_size=1, max_size=8,
                 unique_by=lambda p: normalize_name(p.name))


def render(pkgs: list[Pkg], header: bool = True) -> tuple[str, list[int]]:
    """The lock text and the first line of each package."""
    lines = ["# This file was autogenerated by uv", ""] if header else []
    starts = []
    for p in pkgs:
        starts.append(len(lines) + 1)
        req = f"{p.name}=={p.version}" + (f" ; {p.marker}" if p.marker else "")
        opts = [f"--hash=sha256:{h}" for h in p.hashes]
        if p.continued:
            lines.append(req + " \\")
            lines += [f"    {o} \\" for o in opts[:-1]] + [f"    {opts[-1]}"]
        else:
            lines.append(" ".join([req, *opts]))
        if p.comment:
            lines += ["    # via", "    #   something"]
    return "\n".join(lines) + "\n", starts


@settings(max_examples=100, deadline=None)
@given(locks)
def test_valid_locks_round_trip(pkgs: list[Pkg]) -> None:
    text, starts = render(pkgs)
    result = lint_requirements(text.encode(), "gen.lock")
    assert result.errors == []
    assert result.lock is not None
    got = [(p.name, p.version, p.marker is not None, p.hashes, p.line)
           for p in result.lock.packages]
    want = [(normalize_name(p.name), p.version, p.marker is not None, p.hashes, start)
            for p, start in zip(pkgs, starts, strict=True)]
    assert got == want


CORRUPTIONS: dict[str, Callable[[str], str]] = {
    "drop hashes": lambda line: line.split(" --hash")[0].rstrip(" \\"),
    "loose pin": lambda line: line.replace("==", ">=", 1),
    "wildcard": lambda line: re.sub(r"==\S+", "==1.*", line, count=1),
    "url": lambda line: line.split("==")[0] + " @ https://example.com/x.whl --hash=sha256:"
    + "0" * 64,
    "md5": lambda line: line.replace("sha256:", "md5:", 1),
    "short hash": lambda line: line.replace("sha256:", "sha256:0", 1)[:-2],
    "env var": lambda line: line.replace("==", "==${V}", 1),
    "option": lambda line: "--extra-index-url https://mirror.example.com/simple",
    "editable": lambda line: "-e ./src",
}


@settings(max_examples=100, deadline=None)
@given(locks, st.data(), st.sampled_from(sorted(CORRUPTIONS)))
def test_any_single_corruption_is_refused_with_its_line(
    pkgs: list[Pkg], data: st.DataObject, kind: str
) -> None:
    pkgs = [Pkg(p.name, p.version, p.marker, p.hashes, False, p.comment) for p in pkgs]
    text, starts = render(pkgs)
    lines = text.splitlines()
    victim = data.draw(st.integers(0, len(pkgs) - 1))
    line_no = starts[victim]
    lines[line_no - 1] = CORRUPTIONS[kind](lines[line_no - 1])
    result = lint_requirements(("\n".join(lines) + "\n").encode(), "gen.lock")
    assert result.lock is None
    assert [e.line for e in result.errors] == [line_no], (kind, [str(e) for e in result.errors])


@settings(max_examples=50, deadline=None)
@given(locks, st.data())
def test_a_duplicated_package_is_refused_at_the_copy(pkgs: list[Pkg], data: st.DataObject
                                                      ) -> None:
    victim = pkgs[data.draw(st.integers(0, len(pkgs) - 1))]
    text, starts = render([*pkgs, victim])
    result = lint_requirements(text.encode(), "gen.lock")
    assert [(e.line, e.field) for e in result.errors] == [(starts[-1], normalize_name(
        victim.name))]
    assert "duplicate package" in str(result.errors[0])
