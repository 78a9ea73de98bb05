"""`make bench` finds its modules (the figures themselves are printed, never asserted)."""

from __future__ import annotations

from orchestrator.bench.__main__ import modules, plan


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
