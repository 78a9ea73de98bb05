"""An operator's hold on one running rollout: pause, resume, abort (and cancel).

`RolloutControl` is the `cancel_event` the daemon hands its runner (a `threading.Event`, so every
runner and the pipeline keep using `is_set()` for cancel) with three more requests on it:

- `pause()`: the rollout finishes the batch in flight, then waits in `hold()` before the next;
- `resume()`: the waiting rollout goes on (a rollout held by `on_failure: pause` goes on too,
  accepting the failures that held it);
- `abort()`: no host is started any more (the event is set, so hosts in flight stop before
  their switch, staged releases removed) and the hosts this deployment already switched are put
  back when the spec says `rollout.on_failure: rollback`, left as they are with `pause`.

`cancel` (`set()`) stops the same way as abort but never puts switched hosts back.
The daemon learns that a rollout really waits (and when it goes on) through `on_hold`, to move the
deployment to `paused` and back to `running`. Threads only wait here; none is started.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

#: How often a held rollout looks again at its requests (a wake-up is also sent on each).
POLL_S = 1.0


class RolloutControl(threading.Event):
    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition()
        self._paused = False
        self._aborted = False
        self._held = False
        # Called with True when the rollout starts waiting, False when it goes on.
        self.on_hold: Callable[[bool, str], None] | None = None

    # -- the operator's requests (any thread) ---------------------------------------------

    def pause(self) -> None:
        with self._cond:
            self._paused = True
            self._cond.notify_all()

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()
        self.set()

    def set(self) -> None:  # cancel, abort, or the daemon stopping: a held rollout wakes
        super().set()
        with self._cond:
            self._cond.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def aborted(self) -> bool:
        return self._aborted

    @property
    def held(self) -> bool:
        return self._held

    # -- the rollout's side --------------------------------------------------------------

    def hold(self, reason: str, *, force: bool = False) -> bool:
        """Wait while paused (or, with `force`, until resumed: `on_failure: pause`). Returns
        True to go on, False when cancelled or aborted meanwhile."""
        with self._cond:
            if force:
                self._paused = True
            if not self._paused or self.is_set():
                return not self.is_set()
            self._held = True
        self._notify(True, reason)
        with self._cond:
            while self._paused and not self.is_set():
                self._cond.wait(POLL_S)
            self._held = False
        self._notify(False, "aborted" if self._aborted else
                     "cancelled" if self.is_set() else "resumed")
        return not self.is_set()

    def _notify(self, holding: bool, reason: str) -> None:
        if self.on_hold is not None:
            self.on_hold(holding, reason)


def control_of(cancel: Any) -> RolloutControl | None:
    """The control behind a runner's `cancel_event`, when the daemon gave one."""
    return cancel if isinstance(cancel, RolloutControl) else None
