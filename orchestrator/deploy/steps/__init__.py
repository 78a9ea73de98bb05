"""The deploy steps: one module per playbook step (probe, preflight, stage, install, verify,
switch, check, prune), each `run(ctx, deadline)` and `describe(spec, facts, target)`, listed once
in `registry`; the typed state they share (`context.HostContext`); recovery (`recovery`); the
pipeline's adapter over them (`host.HostDeploy`); the service restart and health (`service`);
the wheel resolver (`wheels`).

This package's own module stays light (only `StepFailed`): every step module imports it.
"""

from __future__ import annotations

from orchestrator.errors import HostError


class StepFailed(HostError):
    """A step's own check refused the host: a failing preflight verdict, a failing gate."""
