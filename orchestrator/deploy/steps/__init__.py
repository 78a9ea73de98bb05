"""The deploy steps for one host (`steps.host.HostDeploy`), and what they use: the host deploy
lock, the service restart and health check, the wheel resolver, the verify glue."""

from __future__ import annotations

from orchestrator.errors import HostError


class StepFailed(HostError):
    """A step's own check refused the host: a failing preflight verdict, a failing gate."""
