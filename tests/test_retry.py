"""The retry policy (core/retry.py): delays from the attempt and a random source, and `retry`
bounded by attempts and by the deadline, with only transient errors retried."""

from __future__ import annotations

import random

import pytest

from orchestrator.core.retry import RetryPolicy, retry


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


def test_bounds_grow_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy(attempts=8, base_s=0.5, cap_s=3.0)
    assert [policy.bound(a) for a in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_delays_are_jittered_within_the_bound_and_reproducible_from_the_seed() -> None:
    policy = RetryPolicy(attempts=8, base_s=1.0, cap_s=8.0)
    first = [policy.delay(a, random.Random(42)) for a in range(1, 6)]
    again = [policy.delay(a, random.Random(42)) for a in range(1, 6)]
    assert first == again
    draws = [policy.delay(3, random.Random(seed)) for seed in range(200)]
    assert all(0.0 <= d <= 4.0 for d in draws)
    assert len(set(draws)) > 150  # spread, not one value for every worker
    assert max(draws) > 3.0 and min(draws) < 1.0


def test_invalid_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_transient_errors_are_retried_until_success() -> None:
    calls: list[int] = []
    waits: list[float] = []

    def call() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Flaky("refused")
        return "ok"

    seen: list[int] = []
    result = retry(call, RetryPolicy(attempts=5, base_s=1.0, cap_s=8.0),
                   transient=lambda e: isinstance(e, Flaky), sleep=waits.append,
                   rng=random.Random(1), on_retry=lambda a, d, e: seen.append(a))
    assert result == "ok" and len(calls) == 3 and seen == [1, 2]
    assert len(waits) == 2 and waits[0] <= 1.0 and waits[1] <= 2.0


def test_a_permanent_error_is_raised_at_once() -> None:
    waits: list[float] = []

    def call() -> None:
        raise Fatal("authentication failed")

    with pytest.raises(Fatal):
        retry(call, RetryPolicy(attempts=5), transient=lambda e: isinstance(e, Flaky),
              sleep=waits.append)
    assert waits == []


def test_attempts_are_bounded() -> None:
    calls: list[int] = []

    def call() -> None:
        calls.append(1)
        raise Flaky(f"try {len(calls)}")

    with pytest.raises(Flaky, match="try 3"):
        retry(call, RetryPolicy(attempts=3), transient=lambda e: True, sleep=lambda s: None)
    assert len(calls) == 3


def test_the_deadline_stops_retrying_before_a_wait_it_cannot_afford() -> None:
    clock = [0.0]
    calls: list[int] = []

    def call() -> None:
        calls.append(1)
        raise Flaky("timeout")

    def sleep(s: float) -> None:
        clock[0] += s

    with pytest.raises(Flaky):
        retry(call, RetryPolicy(attempts=100, base_s=1.0, cap_s=1.0), transient=lambda e: True,
              remaining=lambda: 3.0 - clock[0], sleep=sleep, rng=random.Random(3))
    assert clock[0] < 3.0  # never slept past the deadline
    assert 2 <= len(calls) < 100
