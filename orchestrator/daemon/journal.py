"""Log priorities for journald: sd-daemon `<N>` prefixes on the daemon's stderr lines.

Under systemd, the daemon's stderr is a stream to journald, which reads a leading `<N>` on each
line as that line's syslog priority (sd-daemon(3), `SyslogLevelPrefix=`, on by default) and
strips it. Without it every line is priority 6 (info) and `journalctl -p err` finds nothing.

systemd says the stream is its own by setting `JOURNAL_STREAM=<device>:<inode>` of the stderr
it connected (systemd.exec(5)); the prefix is added only when the stream we write to is that
one, so a terminal or a redirect to a file (also a child that inherited the variable) gets plain
lines. The file log (`logs/daemon.log`) never gets prefixes: its JSON has the `level` already.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

#: Python level -> syslog priority (`emerg` 0 ... `debug` 7), as `journalctl -p` names them.
PRIORITIES = {
    logging.CRITICAL: 2,  # crit
    logging.ERROR: 3,  # err
    logging.WARNING: 4,  # warning
    logging.INFO: 6,  # info
    logging.DEBUG: 7,  # debug
}


def priority(levelno: int) -> int:
    """The syslog priority of a Python level; a custom level between two takes the priority
    of the standard level below it (25 is info, not warning)."""
    for level in sorted(PRIORITIES, reverse=True):
        if levelno >= level:
            return PRIORITIES[level]
    return PRIORITIES[logging.DEBUG]


def is_journal_stream(stream: object, env: Mapping[str, str]) -> bool:
    """Whether `stream` is the journald stream systemd connected (`JOURNAL_STREAM` names its
    device and inode)."""
    expected = env.get("JOURNAL_STREAM", "")
    device, sep, inode = expected.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
        info = os.fstat(fd)
    except (AttributeError, OSError, ValueError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


class PriorityFormatter(logging.Formatter):
    """Wraps the formatter of the journald stream: each output line starts with `<N>`, N the
    record's priority (a multi-line record becomes several journal entries: each gets it)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))
