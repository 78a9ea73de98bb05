"""Processes on this machine, read from /proc: for tests that check a process tree is gone (a
stopped daemon, a killed model's children)."""

from __future__ import annotations

from pathlib import Path


def processes_mentioning(text: str) -> list[str]:
    """`pid: command line` of every process whose command line contains `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue  # gone meanwhile
            if text in cmdline:
                found.append(f"{proc.name}: {cmdline}")
    return found
