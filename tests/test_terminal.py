"""Issue 13, terminal escapes: text a host (or a user) wrote reaches the terminal through one
sanitiser, `orchestrator.core.terminal.safe`: stored raw, shown escaped, `--json` exact.

Three layers: the sanitiser itself; every renderer of the CLI fed hostile text (recorded probe
facts, events and host records with escapes in them); the real daemon serving a store that
holds hostile text to `hosts`, `status` and `logs`; and a source rule that the CLI prints
nothing that did not come through `safe`, JSON, or one of the renderers tested here.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import follow, render
from orchestrator.cli.commands import deploy, probe, releases
from orchestrator.core.terminal import safe
from orchestrator.errors import HostError
from orchestrator.testbed import Testbed, TestbedHost
from tests.daemons import Daemon, write_config

PACKAGE = Path(__file__).resolve().parents[1] / "orchestrator"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

#: What a hostile host writes: a window title (OSC ... BEL), a screen clear (CSI 2J), a C1 CSI
#: (0x9b) and a carriage return that would overwrite the line shown so far.
TITLE, CLEAR, C1_CSI, CR = "\x1b]0;pwned\x07", "\x1b[2J", "\x9b31m", "\rok"
HOSTILE = f"x{TITLE}{CLEAR}{C1_CSI}{CR}"
SHOWN = "x\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\x0dok"

#: Control characters a terminal obeys: C0 but newline and tab, DEL, C1.
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: Our own escapes: the state colours (SGR) and LiveFollow's cursor-up-and-clear.
OURS = re.compile(r"\x1b\[(?:\d+m|\d+F\x1b\[J)")


def assert_shown_safe(text: str) -> None:
    """No control character but ours, and the hostile text visible, escaped."""
    assert not RAW_CONTROL.search(OURS.sub("", text)), repr(text)
    assert SHOWN in text, text


# -- the sanitiser ------------------------------------------------------------------------------


def test_safe_escapes_c0_c1_and_del_and_keeps_newline_and_tab() -> None:
    assert safe(HOSTILE) == SHOWN
    assert safe("a\nb\tc\x00\x7f\x85\x9f") == "a\nb\tc\\x00\\x7f\\x85\\x9f"
    assert safe("GPU \u00e9\u4e2d 80GB") == "GPU \u00e9\u4e2d 80GB"  # printable text untouched
    assert safe(42) == "42"


def test_safe_on_one_line_escapes_newline_and_tab_too() -> None:
    assert safe("a\nb\tc", line=True) == "a\\x0ab\\x09c"


def test_safe_leaves_no_control_character_whatever_the_input() -> None:
    every = "".join(chr(c) for c in range(0x00, 0x100))
    assert not RAW_CONTROL.search(safe(every))
    assert not re.search("[\x00-\x1f\x7f-\x9f]", safe(every, line=True))
    assert safe(safe(every)) == safe(every)  # shown text holds nothing left to escape


# -- every renderer, fed hostile text -----------------------------------------------------------


def hostile_facts() -> Any:
    """The recorded h100 probe, its GPU name written by a hostile host."""
    from orchestrator.core.facts import parse_facts

    raw = json.loads((FIXTURES / "facts" / "h100.json").read_text())
    for gpu in raw["gpus"]:
        gpu["name"] = HOSTILE
    return parse_facts("gpu-01", json.dumps(raw))


def hostile_event() -> dict[str, Any]:
    """An event as the store returns it, with host-written text in its details."""
    return {"seq": 3, "ts": 1_700_000_000.0, "level": "error", "event": "step",
            "deployment": "d-1", "host": "gpu-01", "step": "check", "status": "failed",
            "duration_ms": 12.0, "reason": HOSTILE, "error": HOSTILE}


def host_record() -> dict[str, Any]:
    return {"host": "gpu-01", "ts": 1_700_000_000.0, "status": "degraded",
            "reasons": [HOSTILE],
            "facts": {"nvml": {"driver_version": HOSTILE, "cuda_driver_version": "12.4"},
                      "gpus": [{"name": HOSTILE}]}}


def deployment_record() -> dict[str, Any]:
    return {"id": "d-1", "app": "fraud", "state": "failed", "created": 1.0, "updated": 2.0,
            "targets": ["gpu-01"], "result": {"reason": HOSTILE},
            "hosts": {"gpu-01": {"steps": [{"step": "check", "state": "failed", "finished": 2.0,
                                            "detail": {"reason": HOSTILE}}]}}}


def _releases_table() -> str:
    release = {"release_id": HOSTILE, "state": "current", "created": 1.0, "env_hash": "e",
               "model_sha256": "m"}
    return releases.render_table({"gpu-01": {"releases": [release]}, "gpu-02": {"error": HOSTILE}})


def _hostile_view() -> follow.FollowView:
    view = follow.FollowView(colour=True)
    view.apply({**hostile_event(), "event": "host.finished", "step": None, "release_id": HOSTILE,
                "p50_ms": 1.0})
    return view


def _host_line() -> str:
    from orchestrator.deploy.batch import DeployResult
    from orchestrator.deploy.pipeline import HostResult, HostStatus
    from orchestrator.deploy.rollout import RolloutResult

    result = DeployResult("d-1", "r1")
    result.hosts = {"gpu-01": HostResult("gpu-01", HostStatus.FAILED, reason=HOSTILE,
                                         error=HOSTILE)}
    return deploy.host_line("gpu-01", RolloutResult(result, None, {}), "r1")


#: Every function the CLI prints without wrapping it in `safe` (its result is display-safe by
#: construction), each with a hostile case. The source rule below allows exactly these names.
RENDERERS: dict[str, Callable[[], str]] = {
    "deployments_table": lambda: render.deployments_table(
        [{**deployment_record(), "app": HOSTILE}], colour=True),
    "deployment_detail": lambda: render.deployment_detail(deployment_record(), colour=True),
    "hosts_table": lambda: render.hosts_table([host_record()], colour=True),
    "event_line": lambda: render.event_line(hostile_event(), colour=True),
    "render_table": lambda: probe.render_table(
        {"gpu-01": hostile_facts(), "gpu-02": HostError("gpu-02", HOSTILE)}),
    "render_table (releases)": _releases_table,
    "render_event": lambda: deploy.render_event(hostile_event()),
    "render_event (progress)": lambda: deploy.render_event(
        {**hostile_event(), "event": "progress", "item": HOSTILE, "done": 1, "total": 2}),
    "host_line": _host_line,
    "ending": lambda: follow.ending(_hostile_view(), "d-1", "failed", HOSTILE, 3),
}


@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_each_renderer_shows_host_text_escaped(name: str) -> None:
    assert_shown_safe(RENDERERS[name]())


def test_the_live_follow_view_shows_host_text_escaped() -> None:
    out = io.StringIO()
    live = follow.LiveFollow(out, colour=True, tick=60)
    for event in (hostile_event(), {**hostile_event(), "host": HOSTILE, "status": "running"},
                  {**hostile_event(), "event": "progress", "host": HOSTILE, "status": "running",
                   "unit": "bytes", "item": HOSTILE, "done": 5, "total": 10,
                   "elapsed_ms": 1000.0},  # drawn as a bar (rich's) beside the host's text
                  {**hostile_event(), "event": "deployment", "host": None, "step": None,
                   "status": HOSTILE, "reason": HOSTILE}):
        live.show(event)
    view = live.close()
    assert_shown_safe(out.getvalue())
    assert_shown_safe(follow.ending(view, "d-1", HOSTILE, HOSTILE, 3))
    many = follow.FollowView(colour=True, max_rows=20)
    for i in range(30):
        many.apply({**hostile_event(), "host": f"h{i}{HOSTILE}", "status": "running"})
    assert_shown_safe("\n".join(many.block(now=1_700_000_010.0)))


def test_a_table_cell_cannot_forge_a_row() -> None:
    text = render.table(["host", "status"], [["gpu-01", "failed\ngpu-01  healthy"]])
    assert text.count("\n") == 1 and "failed\\x0agpu-01  healthy" in text


def test_json_output_keeps_host_text_exact() -> None:
    assert json.loads(probe.render_json({"gpu-01": hostile_facts()}))["facts"]["gpu-01"]["gpus"][0][
        "name"] == HOSTILE
    out = io.StringIO()
    deploy.PrintSink(out, True, "d-1").emit("step", host="gpu-01", step="check", status="failed",
                                     error=HOSTILE)
    assert json.loads(out.getvalue())["error"] == HOSTILE


def test_an_error_message_quoting_a_host_is_shown_escaped(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from orchestrator.cli.app import main

    missing = tmp_path / f"model{HOSTILE}"
    assert main(["hash", str(missing)]) == 2
    err = capsys.readouterr().err
    assert not RAW_CONTROL.search(err) and "\\x1b]0;pwned\\x07" in err


def test_a_usage_error_quoting_an_argument_is_shown_escaped(
        capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli.app import main

    with pytest.raises(SystemExit) as exited:
        main(["testbed", "profile", "--dir", "/nonexistent", "tb-01", HOSTILE])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert not RAW_CONTROL.search(err) and "invalid choice" in err and "\\x1b[2J" in err


# -- the real daemon: stored raw, shown safe ----------------------------------------------------


def _hostile_store(config: Path) -> None:
    """A state dir whose store holds what a hostile host sent: its facts and a failed
    deployment whose events and step quote it."""
    from orchestrator.core.states import DeploymentState, HostStepState
    from orchestrator.daemon.config import load_config
    from orchestrator.daemon.store import open_store

    path = load_config(config).store_path
    path.parent.mkdir(parents=True, exist_ok=True)
    store = open_store(path)
    try:
        record = host_record()
        store.record_host("gpu-01", "degraded", record["reasons"], record["facts"])
        store.create_deployment("d-1", "fraud", {})
        store.transition_deployment("d-1", DeploymentState.RUNNING)
        store.transition_step("d-1", "gpu-01", "check", HostStepState.RUNNING)
        store.transition_step("d-1", "gpu-01", "check", HostStepState.FAILED,
                              detail={"reason": HOSTILE})
        store.transition_deployment("d-1", DeploymentState.FAILED, result={"reason": HOSTILE})
        store.append_event({**hostile_event(), "ts": time.time()})
    finally:
        store.close()


def test_the_cli_shows_stored_host_text_escaped_and_json_exact(
        tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    config = write_config(tmp_path)
    _hostile_store(config)
    daemon = daemons(config)
    for args in (["hosts"], ["status", "d-1"], ["logs", "d-1"], ["status"]):
        done = daemon.cli(*args)
        assert done.returncode == 0, done.stderr
        assert not RAW_CONTROL.search(done.stdout + done.stderr), (args, done.stdout)
        assert args == ["status"] or "\\x1b]0;pwned\\x07" in done.stdout, (args, done.stdout)
    hosts = json.loads(daemon.cli("hosts", "--json").stdout)
    assert hosts[0]["reasons"] == [HOSTILE] and hosts[0]["facts"]["gpus"][0]["name"] == HOSTILE
    events = [json.loads(line) for line in daemon.cli("logs", "d-1", "--json").stdout.split("\n")
              if line]
    assert [e["error"] for e in events if "error" in e] == [HOSTILE]
    assert json.loads(daemon.cli("status", "d-1", "--json").stdout)["result"]["reason"] == HOSTILE


@contextlib.contextmanager
def hostile_gpu(testbed: Testbed) -> Iterator[TestbedHost]:
    """A testbed h100 host whose NVML names its GPU with escapes (the fake library reads the
    profile's raw bytes), for the duration of a `with` block."""
    host = testbed.hosts_with("h100")[0]
    with testbed.profile(host.name, "h100"):
        profile = json.loads(host.profile_path.read_text())
        profile["gpus"][0]["name"] = "@NAME@"
        host.profile_path.write_text(json.dumps(profile).replace("@NAME@", HOSTILE))
        yield host


def test_probe_shows_a_hostile_hosts_gpu_name_escaped_and_json_exact(
        testbed: Testbed, capsys: pytest.CaptureFixture[str]) -> None:
    """The real probe over SSH, then the table and `--json`."""
    from orchestrator.cli.app import main

    with hostile_gpu(testbed) as host:
        args = ["probe", "--inventory", str(testbed.inventory_path), host.name]
        assert main(args) == 0
        table = capsys.readouterr().out
        assert main([*args, "--json"]) == 0
        facts = json.loads(capsys.readouterr().out)["facts"][host.name]
    assert_shown_safe(table)
    assert facts["gpus"][0]["name"] == HOSTILE


def test_plan_shows_a_hostile_hosts_text_escaped_and_json_exact(
        testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli.app import main
    from tests.test_plan import write_spec

    with hostile_gpu(testbed) as host:
        args = ["plan", str(write_spec(tmp_path, [host.name])), "--inventory",
                str(testbed.inventory_path)]
        main(args)
        text = capsys.readouterr().out
        main([*args, "--json"])
        plan = capsys.readouterr().out
    assert_shown_safe(text)
    messages = [c["message"] for h in json.loads(plan)["hosts"] for c in h["checks"]]
    assert any(HOSTILE in m for m in messages), messages


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_daemons_readable_log_shows_host_text_escaped_and_its_file_keeps_it_raw(
        tmp_path: Path) -> None:
    import logging

    import structlog

    from orchestrator.daemon.main import configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    terminal = _Terminal()
    try:
        configure_logging(tmp_path / "daemon.log", stream=terminal)
        structlog.get_logger("t").warning("step failed", host="gpu-01", reason=HOSTILE)
        logging.getLogger("uvicorn.error").warning("from %s", HOSTILE)
        try:
            raise ValueError(HOSTILE)
        except ValueError:
            structlog.get_logger("t").exception("crashed")
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        structlog.reset_defaults()
    shown = terminal.getvalue()
    assert not RAW_CONTROL.search(OURS.sub("", shown)), shown
    assert shown.count(SHOWN) == 3, shown
    logged = [json.loads(line) for line in (tmp_path / "daemon.log").read_text().splitlines()]
    assert logged[0]["reason"] == HOSTILE and logged[1]["event"] == f"from {HOSTILE}"


# -- the source rule: the CLI prints only what went through `safe` ------------------------------

#: Functions whose result is exact JSON (`--json`: JSON escapes control characters itself).
JSON_RENDERERS = {"dumps", "render_json"}
ALLOWED_RENDERERS = {name.split(" ")[0] for name in RENDERERS}


def _shown_safe(node: ast.expr) -> bool:
    """Whether a printed expression is display-safe by construction."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and not RAW_CONTROL.search(node.value)
    if isinstance(node, ast.IfExp):
        return _shown_safe(node.body) and _shown_safe(node.orelse)
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else \
            func.attr if isinstance(func, ast.Attribute) else ""
        return name == "safe" or name in JSON_RENDERERS or name in ALLOWED_RENDERERS
    return False


def cli_calls() -> list[tuple[str, int, ast.Call, str]]:
    """(file, line, call, innermost enclosing function) of every call in orchestrator/cli."""
    found: list[tuple[str, int, ast.Call, str]] = []

    def visit(node: ast.AST, where: str, owner: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            owner = node.name
        if isinstance(node, ast.Call):
            found.append((where, node.lineno, node, owner))
        for child in ast.iter_child_nodes(node):
            visit(child, where, owner)

    for path in sorted((PACKAGE / "cli").rglob("*.py")):
        visit(ast.parse(path.read_text("utf-8")), path.relative_to(PACKAGE).as_posix(), "")
    return found


def test_the_cli_prints_only_safe_text_json_or_a_tested_renderer() -> None:
    bad = []
    for where, line, call, _ in cli_calls():
        func = call.func
        if isinstance(func, ast.Name) and func.id in ("print", "input") and \
                not all(_shown_safe(arg) for arg in call.args):
            bad.append(f"{where}:{line}: {func.id}({ast.unparse(call.args[0])[:60]})")
    assert not bad, "print host or user text through terminal.safe:\n" + "\n".join(bad)


def test_only_the_live_follow_view_writes_to_a_stream_directly() -> None:
    """Streams are written by `print` (checked above), except LiveFollow, whose text is
    `FollowView`'s (tested above) and its own cursor codes; `inventory import -o` writes its
    file (not a terminal)."""
    writers = {(where, owner) for where, _, call, owner in cli_calls()
               if isinstance(call.func, ast.Attribute)
               and call.func.attr in ("write", "writelines", "print_exc", "print_exception")}
    assert writers == {("cli/follow.py", "_clear"), ("cli/follow.py", "_redraw"),
                       ("cli/commands/inventory.py", "_write")}
