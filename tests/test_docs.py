"""Every command in README.md and docs/*.md runs as written.

The convention (docs/README-style, stated in README.md's "Documentation" section):

- ```sh blocks hold commands a user types. Every `orchestrator ...` command in them (also as
  `.venv/bin/orchestrator` or after `$ `) must parse with the real CLI parser
  (`orchestrator.cli.app.build_parser`): the subcommand exists and every flag is accepted. Every
  `make TARGET` names a target of the Makefile.
- ```sh run blocks are also executed here, one line at a time, by bash from the repository
  root, against a 4-host testbed like the demo's (h100, h100, t4, old-driver) started for this
  test, with the demo's specs in its specs/: `.demo` in a command is replaced by the testbed's
  directory. A line must exit 0 unless its comment starts `# exits N`.
- ```text, ```yaml, ```toml and unlabelled blocks are examples of output or files: not run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator import demo
from orchestrator.cli.app import build_parser
from orchestrator.testbed import Testbed

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "configs" / "examples" / "README.md"]
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```", re.M | re.S)
EXITS = re.compile(r"#\s*exits\s+(\d+)\b.*$")
DEMO_PROFILES = ("h100", "h100", "t4", "old-driver")


@dataclass(frozen=True)
class Command:
    file: Path
    line: int
    text: str
    run: bool

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> Iterator[tuple[str, str, int, str]]:
    """(language, rest of the info string, first line number, body) of each fenced block."""
    text = path.read_text()
    for m in FENCE.finditer(text):
        yield m.group(1), m.group(2).strip(), text.count("\n", 0, m.start(3)) + 1, m.group(3)


def commands(path: Path) -> Iterator[Command]:
    for lang, info, first, body in blocks(path):
        if lang != "sh":
            continue
        heredoc: str | None = None
        for offset, raw in enumerate(body.splitlines()):
            line = raw.strip()
            if heredoc is not None:  # the body of `cat > f <<EOF` is data, not commands
                heredoc = None if line == heredoc else heredoc
                continue
            if found := re.search(r"<<-?'?(\w+)'?", line):
                heredoc = found.group(1)
            line = line.removeprefix("$ ")
            if line and not line.startswith("#"):
                yield Command(path, first + offset, line, info == "run")


ALL = [c for doc in DOCS for c in commands(doc)]


def orchestrator_argv(text: str) -> list[str] | None:
    """The argv after `orchestrator` if the line runs it (first command of the line)."""
    code = EXITS.sub("", text).split(" #", 1)[0].strip().rstrip("&").strip()
    words = shlex.split(code.split("|", 1)[0].split("&&", 1)[0].split(" > ", 1)[0])
    while words and ("=" in words[0] and not words[0].startswith("-")):
        words = words[1:]  # VAR=value prefixes
    if words and words[0] == "sudo":
        words = words[1:]
    if not words or Path(words[0]).name != "orchestrator":
        return None
    return words[1:]


def test_the_docs_have_commands_and_some_are_run() -> None:
    assert len(ALL) > 30
    assert sum(c.run for c in ALL) >= 8
    documented = {(orchestrator_argv(c.text) or [""])[0] for c in ALL}
    for name in ("validate", "hash", "plan", "probe", "trust", "submit", "verify", "testbed",
                 "golden", "daemon", "logs", "status", "rollback", "hosts"):
        assert name in documented, f"no doc shows `orchestrator {name}`"


@pytest.mark.parametrize("command", [c for c in ALL if orchestrator_argv(c.text) is not None],
                         ids=lambda c: c.where)
def test_every_orchestrator_command_parses(command: Command) -> None:
    argv = orchestrator_argv(command.text)
    assert argv is not None
    try:
        build_parser(argv).parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 0, f"{command.where}: `{command.text}` does not parse"


def test_every_make_target_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"(?m)^([a-z][\w-]*):", makefile))
    for c in ALL:
        words = c.text.split("#", 1)[0].split()
        if words[:1] == ["make"]:
            for target in (w for w in words[1:] if "=" not in w):
                assert target in targets, f"{c.where}: no make target {target!r}"


@pytest.fixture(scope="module")
def demo_testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    root = tmp_path_factory.mktemp("demo")
    tb = Testbed.up(root, len(DEMO_PROFILES), DEMO_PROFILES)
    demo.Demo(root).write_specs()  # .demo/specs/{gpu,v1,v2}/spec.yaml, as `make demo` writes
    try:
        yield tb
    finally:
        Testbed.down(root)


@pytest.mark.parametrize("command", [c for c in ALL if c.run], ids=lambda c: c.where)
def test_runnable_commands_run(command: Command, demo_testbed: Testbed) -> None:
    expected = int(m.group(1)) if (m := EXITS.search(command.text)) else 0
    line = command.text.replace(".demo", str(demo_testbed.dir))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == expected, (
        f"{command.where}: `{command.text}` exited {done.returncode}, not {expected}\n"
        f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
