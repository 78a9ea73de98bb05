"""The one sanitiser for text shown on a terminal: what a host or a user wrote is shown, never
obeyed.

Hosts are untrusted (issue 13): an NVML string, a health check's output, an error tail or a
file name read back from a host can hold terminal control sequences (`ESC ]0;...BEL` sets the
window title, `ESC [2J` clears the screen, a C1 `CSI` (0x9b) does the same on terminals that
read 8-bit controls, `CR` overwrites the line already shown). The store keeps such text raw (it
is evidence) and `--json` prints it exact (JSON escapes controls itself); every human-readable
line the CLI prints goes through `safe`, which shows each C0/C1 control character, DEL included,
as a visible `\\xNN` escape. Newline and tab are kept in free text (tracebacks, multi-line
reasons) and escaped too in a one-line field (`line=True`: a table cell, an event line's field),
where a newline would forge a row. It lives in `core` (pure, a leaf) because two layers show
host text on a terminal: the CLI, and the daemon's readable log lines when its stderr is one
(orchestrator/daemon/main.py).

The rule, checked from the source by tests/test_terminal.py: in `orchestrator/cli`, `print` is
given only a constant, `safe(...)`, JSON (`json.dumps`, `--json`'s exact output), or one of the
renderers that test names, each of which builds its text from `safe` pieces and is fed hostile
text there.
"""

from __future__ import annotations

import re

#: C0 controls but tab and newline, DEL, and the C1 range (U+0080..U+009F: Python's str holds
#: them as code points, which a UTF-8 terminal may still obey).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: The same, tab and newline included: for text that must stay on one line.
_LINE_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")

def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def safe(text: object, *, line: bool = False) -> str:
    """`text` (str() of it) with every control character shown as `\\xNN`: stored raw, shown
    safe. With `line`, tab and newline too, so the text stays on one line."""
    return (_LINE_CONTROLS if line else _CONTROLS).sub(_escape, str(text))
