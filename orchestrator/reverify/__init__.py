"""Re-verification of one host's serving releases over SSH (`audit`): probe, re-hash the model and
the environment, run the warmup again, and judge with the pure findings of
orchestrator/core/findings.py. The daemon schedules it (orchestrator/daemon/reverifier.py)."""
