"""`make bench` finds its modules (the figures themselves are printed, never asserted)."""

from __future__ import annotations

import pytest

from orchestrator.bench.__main__ import main, modules, plan


def test_make_bench_runs_every_benchmark_module_and_not_itself() -> None:
    found = modules()
    assert "__main__" not in found  # it once imported itself and stopped at the first module
    assert {"deploy", "install", "rollout", "probe", "preflight"} <= set(found)


def test_options_after_a_module_name_go_to_that_module() -> None:
    assert plan(["probe", "anchors", "--reps", "2", "--tools", "ssh-uv,project", "deploy"]) == [
        ("probe", []), ("anchors", ["--reps", "2", "--tools", "ssh-uv,project"]),
        ("deploy", [])]
    assert plan([]) == [(name, []) for name in modules()]
    assert "anchors" in modules()


def test_options_to_a_module_without_any_or_an_unknown_module_exit_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    # Checked before any module runs: `daemons --help` once crashed with a TypeError.
    assert main(["daemons", "--help"]) == 2
    assert "takes no options (--help)" in capsys.readouterr().err
    assert main(["nosuch"]) == 2
    assert "no benchmark module 'nosuch'" in capsys.readouterr().err
