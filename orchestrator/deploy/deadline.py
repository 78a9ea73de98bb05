"""A step's time budget (`Deadline`), apart from the engine so the steps can take one without
importing the pipeline that drives them (the pipeline imports the playbook, the playbook the step
registry: a step importing the pipeline would close that loop)."""

from __future__ import annotations

import time
from collections.abc import Callable

from orchestrator.errors import CommandTimeout

#: Budget of the recovery actions (abort-stage, rollback, mark-bad): small, bounded host operations.
RECOVERY_TIMEOUT_S = 120.0


class Deadline:
    """A step's time budget; remote calls take their timeout from what is left of it."""

    def __init__(self, host: str, step: str, seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host, self.step, self.seconds, self._clock = host, step, seconds, clock
        self._end = clock() + seconds

    def remaining(self) -> float:
        return self._end - self._clock()

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0

    def timeout(self, cap: float | None = None) -> float:
        """Seconds a remote call may take now; raises CommandTimeout when nothing is left."""
        left = self.remaining()
        if left <= 0:
            raise CommandTimeout(self.host, f"step {self.step} exceeded its budget of "
                                            f"{self.seconds:g} s")
        return min(left, cap) if cap is not None else left
