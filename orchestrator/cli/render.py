"""Pure text rendering for the client commands: tables, event lines, state colours.

Colour only when the output is a terminal and NO_COLOR is unset; plain text when piped, so
`orchestrator status | grep failed` works. `--json` output never comes through here.
Every piece of text from a host, the daemon or a user is passed through `core.terminal.safe` here,
before our own colour codes are added, so it cannot move the cursor, clear the screen or set
the window title (issue 13); the store and `--json` keep it raw.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from orchestrator.core.progress import BYTES
from orchestrator.core.terminal import safe

_COLOURS = {
    "succeeded": "32", "ok": "32", "healthy": "32", "pass": "32",
    "running": "36", "queued": "36", "pending": "36", "rolling_back": "33",
    "failed": "31", "unreachable": "31", "fail": "31",
    "rolled_back": "33", "cancelled": "33", "degraded": "33", "skipped": "90", "warn": "33",
    "interrupted": "33", "requested": "33",
}


def use_colour(stream: IO[str] | None = None) -> bool:
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)()) and "NO_COLOR" not in os.environ


def paint(text: str, state: str | None, colour: bool) -> str:
    code = _COLOURS.get(state or "")
    return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, colour: bool = False,
          state_column: int | None = None) -> str:
    """Left-aligned columns; the state column painted (widths computed on the plain text).
    Every cell is shown through `safe` on one line: a cell cannot forge a row or a colour."""
    headers = [safe(h, line=True) for h in headers]
    shown = [[safe(cell, line=True) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in shown:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in shown:
        cells = []
        for i, (cell, width) in enumerate(zip(row, widths, strict=True)):
            padded = cell.ljust(width)
            cells.append(paint(padded, cell, colour) if i == state_column else padded)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


BAR_WIDTH = 20


def bar(done: int, total: int, *, colour: bool, width: int = BAR_WIDTH) -> str:
    """A progress bar of `width` cells drawn by rich (its glyphs; our four plain colours, so
    only SGR codes reach the terminal); without colour, the done part alone, padded."""
    from rich.console import Console  # here: only the live view pays for importing rich
    from rich.progress_bar import ProgressBar

    console = Console(file=io.StringIO(), width=width, force_terminal=colour,
                      color_system="standard" if colour else None, no_color=not colour,
                      legacy_windows=False)
    with console.capture() as captured:
        console.print(ProgressBar(total=max(total, 1), completed=min(done, total), width=width,
                                  style="bright_black", complete_style="cyan",
                                  finished_style="green"), end="")
    text = captured.get()
    return text if colour else text.ljust(width)


def progress_text(event: dict[str, Any], *, colour: bool) -> str:
    """`wheels ━━━━━━╸        12.3 MB/50.0 MB 8.1 MB/s` (bytes: done/total, average rate) or
    `warmup ━━━━━━━━━━━━    5/20` (iterations: n/N), from a `progress` event; the item a
    host may name shown through `safe`. Pure."""
    from rich import filesize

    done, total = int(event.get("done") or 0), int(event.get("total") or 0)
    item = safe(event.get("item") or "", line=True)
    drawn = bar(done, total, colour=colour)
    if event.get("unit") == BYTES:
        elapsed = float(event.get("elapsed_ms") or 0) / 1000.0
        rate = f" {filesize.decimal(int(done / elapsed))}/s" if elapsed > 0 else ""
        return f"{item} {drawn} {filesize.decimal(done)}/{filesize.decimal(total)}{rate}"
    return f"{item} {drawn} {done}/{total}"


def clock(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def event_line(event: dict[str, Any], *, colour: bool = False) -> str:
    """`12:00:01 #7 gpu-01 probe ok 812 ms driver=550.54.15` (details after the core); each
    field shown through `safe` on one line (an event is one line, whatever a host sent)."""
    core = {"seq", "ts", "level", "event", "deployment", "host", "step", "status", "duration_ms"}
    when = time.strftime("%H:%M:%S", time.localtime(float(event.get("ts") or 0)))
    what = event.get("step") or event.get("event") or "?"
    status = str(event.get("status") or "")
    parts = [when, safe(f"#{event.get('seq', '?')}", line=True),
             safe(event.get("host") or "-", line=True), safe(what, line=True),
             paint(safe(status, line=True), status, colour)]
    if event.get("duration_ms") is not None:
        parts.append(f"{float(event['duration_ms']):.0f} ms")
    extras = [safe(f"{k}={_short(v)}", line=True) for k, v in event.items()
              if k not in core and k != "checks"]
    return " ".join([*parts, *extras])


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= 200 else text[:197] + "..."


def deployments_table(records: Sequence[dict[str, Any]], *, colour: bool) -> str:
    rows = [[r["id"], r["app"], r["state"], clock(r.get("created")), clock(r.get("updated")),
             ",".join(r.get("targets") or [])] for r in records]
    return table(["id", "app", "state", "created", "updated", "targets"], rows, colour=colour,
                 state_column=2)


def deployment_detail(record: dict[str, Any], *, colour: bool) -> str:
    lines = [f"deployment {safe(record['id'], line=True)}  app {safe(record['app'], line=True)}  "
             f"{paint(safe(record['state'], line=True), record['state'], colour)}",
             f"created {clock(record.get('created'))}  updated {clock(record.get('updated'))}"]
    result = record.get("result") or {}
    if result.get("reason"):
        lines.append(f"reason: {safe(result['reason'])}")
    rows = []
    for host, entry in sorted((record.get("hosts") or {}).items()):
        for step in entry["steps"]:
            detail = step.get("detail") or {}
            rows.append([host, step["step"], step["state"], clock(step.get("finished")
                                                                    or step.get("started")),
                         _short(detail.get("reason", ""))])
    if rows:
        lines.append("")
        lines.append(table(["host", "step", "state", "at", "reason"], rows, colour=colour,
                           state_column=2))
    return "\n".join(lines)


def hosts_table(hosts: Sequence[dict[str, Any]], *, colour: bool) -> str:
    rows = []
    for h in hosts:
        facts = h.get("facts") or {}
        nvml = facts.get("nvml") or {}
        gpus = facts.get("gpus") or []
        gpu = f"{len(gpus)}x {gpus[0]['name']}" if gpus else "-"
        rows.append([h["host"], h["status"], nvml.get("driver_version") or "-",
                     nvml.get("cuda_driver_version") or "-", gpu, clock(h.get("ts")),
                     _short("; ".join(h.get("reasons") or []))])
    return table(["host", "status", "driver", "cuda", "gpus", "checked", "reasons"], rows,
                 colour=colour, state_column=1)
