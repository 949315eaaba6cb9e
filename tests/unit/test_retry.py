"""Retry policy: doubling backoff between min and max, spread by jitter, and a lifetime limit."""

from __future__ import annotations

import random

import pytest

from msgspool.domain.retry import RetryPolicy

EXACT = RetryPolicy(min_backoff=300.0, max_backoff=4000.0, max_lifetime=5 * 86400.0, jitter=0.0)


@pytest.mark.parametrize(("attempts", "delay"), [(0, 300.0), (1, 300.0), (2, 600.0), (3, 1200.0),
                                                 (4, 2400.0), (5, 4000.0), (30, 4000.0)])
def test_delay_doubles_per_attempt_from_min_backoff_up_to_max_backoff(attempts: int, delay: float) -> None:
    assert EXACT.delay(attempts) == delay


def test_jitter_spreads_delays_within_its_fraction() -> None:
    policy = RetryPolicy(min_backoff=1000.0, jitter=0.1)
    rng = random.Random(7)
    delays = [policy.delay(1, rng) for _ in range(500)]
    assert all(900.0 <= d <= 1100.0 for d in delays)
    assert max(delays) - min(delays) > 100.0  # a queue that failed together does not return together


def test_delay_is_at_least_one_second() -> None:
    assert RetryPolicy(min_backoff=0.01, jitter=0.0).delay(1) == 1.0


def test_next_attempt_is_now_plus_delay() -> None:
    assert EXACT.next_attempt(1000.0, 2) == 1600.0


def test_recipient_expires_when_max_lifetime_has_passed_not_before() -> None:
    policy = RetryPolicy(max_lifetime=100.0)
    assert not policy.expired(submitted_at=1000.0, now=1099.9)
    assert policy.expired(submitted_at=1000.0, now=1100.0)


def test_message_expiry_time_ends_delivery_before_max_lifetime() -> None:
    policy = RetryPolicy(max_lifetime=100.0)
    assert not policy.expired(submitted_at=1000.0, now=1010.0, expires_at=1020.0)
    assert policy.expired(submitted_at=1000.0, now=1020.0, expires_at=1020.0)


def test_the_cap_on_attempts_is_the_messages_own_else_the_policys() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert not policy.exhausted(2) and policy.exhausted(3)
    assert policy.exhausted(1, cap=1) and not policy.exhausted(5, cap=0)  # 0: this message has no cap
    assert not RetryPolicy().exhausted(1000)  # no cap by default


def test_the_lifetime_of_a_deferred_message_counts_from_its_release() -> None:
    policy = RetryPolicy(max_lifetime=100.0)
    assert policy.give_up_at(submitted_at=1000.0, deliver_after=5000.0) == 5100.0
    assert not policy.expired(submitted_at=1000.0, now=2000.0, deliver_after=5000.0)
    assert policy.give_up_at(submitted_at=1000.0, expires_at=1050.0, deliver_after=5000.0) == 1050.0


def test_retries_end_at_the_message_expiry_or_the_lifetime_whichever_comes_first() -> None:
    policy = RetryPolicy(max_lifetime=100.0)
    assert policy.give_up_at(1000.0) == 1100.0
    assert policy.give_up_at(1000.0, expires_at=1050.0) == 1050.0
    assert policy.give_up_at(1000.0, expires_at=2000.0) == 1100.0
