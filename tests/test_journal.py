"""journald priorities (daemon/journal.py): the real daemon, its stderr a file that
`JOURNAL_STREAM` names as systemd would, writes `<N>` before each line; errors are `<3>`."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from orchestrator.daemon.journal import PriorityFormatter, is_journal_stream, priority
from tests.daemons import Daemon, wait_for, write_config

LINE = re.compile(r"^<([0-7])>(\{.*\})$")


def parsed(text: str) -> list[tuple[int, dict[str, object]]]:
    """Each line as (priority, JSON); a line without a prefix fails the test."""
    out = []
    for line in text.splitlines():
        match = LINE.match(line)
        assert match, f"no priority prefix: {line!r}"
        out.append((int(match.group(1)), json.loads(match.group(2))))
    return out


def test_the_daemon_prefixes_each_stderr_line_with_its_journald_priority(
        tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "broken.yaml").write_text("apiVersion: orchestrator/v1\nkind: Nonsense\n")
    config = write_config(tmp_path, 'specs_dir = "specs"\n')
    output = tmp_path / "daemon.out"  # the daemon's stdout and stderr (tests/daemons.py)
    output.touch()
    info = os.stat(output)
    daemon = daemons(config, env={"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
    wait_for(lambda: "spec refused" in output.read_text(), what="the refused spec logged")
    daemon.stop()
    lines = parsed(output.read_text())
    levels = {(p, str(e["level"])) for p, e in lines}
    assert (3, "error") in levels  # `journalctl -p err` finds the refused spec
    assert (6, "info") in levels  # "starting", "stopped"
    assert all(p == {"error": 3, "warning": 4, "info": 6}[level] for p, level in levels), levels
    refused = [e for p, e in lines if e["event"] == "spec refused"]
    assert refused and "broken.yaml" in str(refused[0]["spec"])
    # The file log keeps plain JSON: its lines carry the level themselves.
    logged = (daemon.state_dir / "logs" / "daemon.log").read_text().splitlines()
    assert logged and all(line.startswith("{") for line in logged)


def test_another_stream_gets_plain_lines(tmp_path: Path) -> None:
    """A redirect to some other file (a child that inherited JOURNAL_STREAM, a manual run)
    is not the journal: no prefixes."""
    journal, other = tmp_path / "journal", tmp_path / "other"
    journal.touch()
    info = os.stat(journal)
    env = {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
    with journal.open("a") as j, other.open("a") as o:
        assert is_journal_stream(j, env)
        assert not is_journal_stream(o, env)
        assert not is_journal_stream(j, {})
        assert not is_journal_stream(j, {"JOURNAL_STREAM": "garbage"})


def test_priorities_and_multiline_records() -> None:
    assert [priority(n) for n in (logging.CRITICAL, logging.ERROR, logging.WARNING,
                                  logging.INFO, logging.DEBUG, 25, 1)] == [2, 3, 4, 6, 7, 6, 7]
    formatter = PriorityFormatter(logging.Formatter("%(message)s"))
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "one\ntwo", None, None)
    assert formatter.format(record) == "<3>one\n<3>two"
