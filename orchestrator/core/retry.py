"""Retries with exponential backoff and full jitter, bounded by a deadline: the one policy the
SSH connect (hosts/ssh/session.py) and the wheel cache's index downloads (deploy/wheelcache.py)
share.

    policy = RetryPolicy(attempts=4, base_s=0.5, cap_s=8.0)
    policy.delay(attempt=2, rng=random.Random(7))      # uniform in [0, min(cap, base * 2**2)]
    retry(call, policy, transient=is_flaky, remaining=deadline.remaining)

Full jitter (a delay drawn uniformly between 0 and the exponential bound, as in AWS's
"Exponential Backoff and Jitter") spreads a fleet's reconnects to a restarted bastion or mirror
instead of having every worker knock again at the same instant.

Pure: the delays are a function of the attempt number and a random source; `retry` is given
its clock (`remaining`) and its `sleep`, so tests run it without waiting. Which errors are worth
another attempt is the caller's decision (`transient`): a refused connection or a reset is, an
authentication failure or a changed host key never is (trying again cannot change the answer
and only hammers the host).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4        # calls in all, the first included; 1 = no retry
    base_s: float = 0.5      # bound of the first retry's delay
    cap_s: float = 8.0       # no delay is ever longer

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_s < 0 or self.cap_s < 0:
            raise ValueError(f"invalid retry policy {self}")

    def bound(self, attempt: int) -> float:
        """Upper bound of the delay after failed call number `attempt` (1-based)."""
        return min(self.cap_s, self.base_s * 2.0 ** max(attempt - 1, 0))

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The delay after failed call number `attempt`: uniform in [0, bound(attempt)]."""
        return rng.uniform(0.0, self.bound(attempt))


NO_RETRY = RetryPolicy(attempts=1)


def retry(call: Callable[[], T], policy: RetryPolicy, *,
          transient: Callable[[Exception], bool],
          remaining: Callable[[], float] | None = None,
          sleep: Callable[[float], None] = time.sleep,
          rng: random.Random | None = None,
          on_retry: Callable[[int, float, Exception], None] | None = None) -> T:
    """`call()` until it returns, at most `policy.attempts` times. An exception `transient`
    rejects is raised at once; the last transient one is raised when the attempts are spent or
    when the next delay would not leave any of `remaining()` seconds (the step's deadline) for
    another call. `on_retry(attempt, delay, exc)` is told before each wait (for a log line)."""
    source = rng or random.Random()
    attempt = 1
    while True:
        try:
            return call()
        except Exception as exc:
            if not transient(exc) or attempt >= policy.attempts:
                raise
            wait = policy.delay(attempt, source)
            if remaining is not None and remaining() <= wait:
                raise
            if on_retry is not None:
                on_retry(attempt, wait, exc)
            sleep(wait)
            attempt += 1
