"""Progress of long steps (issue 14, item 6): the throttle, the warmup runner's progress lines as
the controller parses them, the meters that turn both into events, and the follow view drawing
them. All pure, from data: tests/fixtures/follow/progress.jsonl is one host's events of a real
testbed rollout (tests/test_rollout.py checks the same events end to end).
"""

from __future__ import annotations

import importlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import follow
from orchestrator.cli.commands.deploy import PrintSink, render_event
from orchestrator.cli.render import bar, progress_text
from orchestrator.core.progress import (
    BYTES,
    ITERATIONS,
    LINE_PREFIX,
    MAX_LINE,
    PROGRESS,
    Iterations,
    ProgressLines,
    Throttle,
    strip_lines,
)
from orchestrator.deploy.progress import HostProgress

# The host-side runner, untyped (stdlib-only, checked by its own mypy profile): as test_formats.
runner: Any = importlib.import_module("orchestrator.hosts.remote.warmup")

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "follow" / "progress.jsonl"
SGR = re.compile(r"\x1b\[\d+m")


def events() -> list[dict[str, Any]]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines()]


class ListSink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- the throttle --------------------------------------------------------------------------------

def test_throttle_emits_the_first_then_one_a_second_past_5_percent_and_the_final_once() -> None:
    t = Throttle(1000)
    assert t.ready(10, 0.0)                                # the first
    assert not t.ready(500, 0.5)                           # too soon
    assert t.ready(500, 1.0)                               # a second later, far enough on
    assert not t.ready(520, 5.0)                           # late enough, but 2 % on
    assert t.ready(560, 5.0)
    assert not t.ready(400, 9.0)                           # never backwards
    assert t.ready(1000, 5.1)                              # the final, whatever the time
    assert not t.ready(1000, 9.0) and t.finished           # only once


def test_a_meter_is_monotonic_ends_at_the_total_and_maps_each_file_onto_the_transfer() -> None:
    sink, clock = ListSink(), Clock()
    meter = HostProgress(sink, "gpu-01").meter("stage", BYTES, "wheels", 300)
    meter.clock, meter.started = clock, clock()
    first, second = meter.file(0), meter.file(100)
    first(50, 100)
    clock.now += 2
    first(0, 100)             # a retried file starts again: the transfer does not go back
    first(100, 100)
    clock.now += 2
    second(200, 200)
    second(200, 200)          # paramiko's last callback may repeat: one final event
    assert [(e["done"], e["total"]) for e in sink.events] == [(50, 300), (100, 300), (300, 300)]
    assert sink.events[-1] == {"event": PROGRESS, "host": "gpu-01", "step": "stage",
                               "status": "running", "unit": BYTES, "item": "wheels",
                               "done": 300, "total": 300, "elapsed_ms": 4000.0}


def test_a_meter_without_a_sink_counts_and_emits_nothing() -> None:
    meter = HostProgress(None, "gpu-01").meter("verify", ITERATIONS, "warmup", 5)
    meter.update(9)
    assert meter.done == 5  # capped at the total


# -- the warmup runner's progress lines ----------------------------------------------------------

def line(**fields: Any) -> bytes:
    return LINE_PREFIX + json.dumps(fields).encode() + b"\n"


def test_the_runner_and_the_controller_agree_on_the_prefix() -> None:
    assert runner.PROGRESS_PREFIX.encode() == LINE_PREFIX


def test_lines_split_anywhere_are_parsed_and_other_stderr_is_skipped() -> None:
    stream = (b"login banner\n" + line(phase="warmup", done=1, total=2)
              + line(phase="warmup", done=2, total=2) + b"x" * (MAX_LINE * 3) + b"\n"
              + line(phase="latency", done=20, total=20) + b"tail without newline")
    reader, got = ProgressLines(), []
    for i in range(0, len(stream), 7):
        got += reader.feed(stream[i:i + 7])
    assert got == [Iterations("warmup", 1, 2), Iterations("warmup", 2, 2),
                   Iterations("latency", 20, 20)]
    assert reader.error is None


def test_the_runner_writes_throttled_lines_the_controller_reads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    r, w = os.pipe()
    channel = runner.Channel()
    channel.err_fd = w
    clock = iter([10.0, 10.1, 10.2, 10.6, 10.7])
    monkeypatch.setattr(runner.time, "monotonic", lambda: next(clock))
    report = channel.progress("warmup")
    for done in range(1, 6):
        report(done, 5)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = ProgressLines().feed(f.read())
    # the first, the one a quarter second later, and the last
    assert [g.done for g in got] == [1, 4, 5]


@pytest.mark.parametrize(("data", "why"), [
    (LINE_PREFIX + b"{not json\n", "not JSON"),
    (LINE_PREFIX + b'{"phase": "warmup", "done": NaN, "total": 2}\n', "not JSON"),
    (LINE_PREFIX + b"[1, 2]\n", "not a JSON object"),
    (LINE_PREFIX + b'{"phase": "warmup", "done": {"a": 1}, "total": 2}\n', "not JSON"),
    (line(phase="install", done=1, total=2), "unknown phase"),
    (line(phase="warmup", done=3, total=2), "0 <= done <= total"),
    (line(phase="warmup", done=True, total=2), "0 <= done <= total"),
    (line(phase="warmup", done=-1, total=2), "0 <= done <= total"),
    (LINE_PREFIX + b"{" + b" " * MAX_LINE + b"}\n", f"longer than {MAX_LINE} bytes"),
    (LINE_PREFIX + b"{" + b" " * MAX_LINE * 2, f"longer than {MAX_LINE} bytes"),
])
def test_a_bad_progress_line_is_the_hosts_error_and_yields_nothing(data: bytes,
                                                                   why: str) -> None:
    reader = ProgressLines()
    assert reader.feed(data) == []
    assert reader.error is not None and why in reader.error, reader.error
    reader.feed(line(phase="warmup", done=1, total=2))
    assert why in reader.error  # the first error is the one reported


def test_an_error_tail_leaves_the_progress_lines_out() -> None:
    text = (line(phase="warmup", done=1, total=2) + b"Traceback: boom\n").decode()
    assert strip_lines(text) == "Traceback: boom"


# -- the follow view, from a real rollout's events -----------------------------------------------

def test_the_fixture_is_a_real_hosts_progress() -> None:
    got = events()
    kinds = {(e["step"], e["item"]) for e in got if e["event"] == PROGRESS}
    assert kinds == {("stage", "wheels"), ("verify", "warmup"), ("verify", "latency")}


def test_progress_is_drawn_in_the_block_never_printed_as_a_line() -> None:
    view = follow.FollowView()
    seen: dict[int, list[str]] = {}
    for event in events():
        lines = view.apply(event)
        if event["event"] == PROGRESS:
            assert lines == []
        seen[event["seq"]] = view.block(now=event["ts"] + 1.0)
    stage = [e for e in events() if e["event"] == PROGRESS and e["item"] == "wheels"][1]
    row = seen[stage["seq"]][0]
    assert row.startswith("  tb-01  stage        running 2.8 s")  # the step's own clock
    assert "wheels" in row and "3.6 MB/62.4 MB 3.3 MB/s" in row  # done/total, average rate
    warm = next(e for e in events() if e.get("item") == "warmup" and e["done"] == e["total"])
    assert seen[warm["seq"]][0].endswith(" 2/2") and "warmup" in seen[warm["seq"]][0]
    verified = next(e for e in events() if e["event"] == "step" and e["step"] == "verify"
                    and e["status"] == "ok")
    assert "latency" not in seen[verified["seq"]][0]  # the bar goes with its step


def test_a_bar_of_a_step_that_is_over_is_not_drawn() -> None:
    view = follow.FollowView()
    late = next(e for e in events() if e["event"] == PROGRESS and e["step"] == "stage")
    for event in events():
        view.apply(event)
        if event["event"] == "step" and event["step"] == "install":
            break
    view.apply(late)  # a stage progress line arriving while install runs
    assert "wheels" not in view.block(now=late["ts"])[0]


def test_the_bar_is_rich_s_coloured_on_a_terminal_and_padded_plain_otherwise() -> None:
    plain = bar(5, 20, colour=False)
    assert len(plain) == 20 and plain.startswith("━━━━━") and plain.strip() == "━━━━━"
    coloured = bar(5, 20, colour=True)
    assert SGR.sub("", coloured).count("━") >= 19 and SGR.search(coloured)  # done and to do
    assert SGR.sub("", progress_text({"unit": ITERATIONS, "item": "latency", "done": 7,
                                      "total": 20}, colour=True)).endswith(" 7/20")
    assert progress_text({"unit": BYTES, "item": "model", "done": 0, "total": 10,
                          "elapsed_ms": 0}, colour=False).endswith(" 0 bytes/10 bytes")


def test_piped_deploy_shows_progress_as_a_plain_line_and_json_exactly() -> None:
    event = next(e for e in events() if e["event"] == PROGRESS)
    shown = render_event(event)
    assert shown.endswith("tb-01 stage running item=wheels done=32768 total=62445038")
    out = io.StringIO()
    PrintSink(out, True, "d-1").emit(PROGRESS, host="tb-01", step="stage", status="running",
                                      unit=BYTES, item="wheels", done=1, total=2)
    assert {k: v for k, v in json.loads(out.getvalue()).items() if k != "ts"} == {
        "level": "info", "event": PROGRESS, "deployment": "d-1", "host": "tb-01",
        "step": "stage", "status": "running", "duration_ms": None, "unit": BYTES,
        "item": "wheels", "done": 1, "total": 2}


def test_deploy_on_a_terminal_draws_the_live_view_instead_of_lines() -> None:
    out = io.StringIO()
    sink = PrintSink(out, False, "d-1", follow.LiveFollow(out, colour=False, tick=60))
    for event in events():
        sink.emit(**{k: v for k, v in event.items()
                     if k not in ("seq", "ts", "deployment")})
        if event["event"] == PROGRESS and event["item"] == "latency":
            break
    shown = out.getvalue()
    assert sink.live is not None
    assert sink.live.close().hosts["tb-01"].step == "verify"
    assert " tb-01 stage ok " in shown and "item=" not in shown  # step lines, no event lines
    assert "latency" in shown.splitlines()[-1] and shown.rstrip().endswith(" 1/20")
