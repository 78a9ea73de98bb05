"""`make bench` finds its modules (the figures themselves are printed, never asserted)."""

from __future__ import annotations

import pytest

from orchestrator.bench import ship
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


def test_ship_settings_default_to_the_figures_of_record_and_name_a_bad_variable() -> None:
    assert ship.settings({}) == ship.Settings(256, (1, 4), ("sftp", "stream", "mirror"))
    assert ship.settings({"ORCHESTRATOR_BENCH_SHIP_MB": "3072",
                          "ORCHESTRATOR_BENCH_SHIP_HOSTS": "8",
                          "ORCHESTRATOR_BENCH_SHIP_METHODS": "stream,mirror"}) == ship.Settings(
        3072, (8,), ("stream", "mirror"))
    for env, says in [({"ORCHESTRATOR_BENCH_SHIP_HOSTS": "0"}, "ORCHESTRATOR_BENCH_SHIP_HOSTS"),
                      ({"ORCHESTRATOR_BENCH_SHIP_MB": "1,2"}, "one size"),
                      ({"ORCHESTRATOR_BENCH_SHIP_MB": "lots"}, "ORCHESTRATOR_BENCH_SHIP_MB"),
                      ({"ORCHESTRATOR_BENCH_SHIP_METHODS": "scp"}, "unknown scp")]:
        with pytest.raises(SystemExit, match=says):
            ship.settings(env)
