"""Destination health: a connection failure marks a destination down, probes come on a short growing
interval, and the first good session brings it back up."""

from __future__ import annotations

import random

import pytest

from msgspool.domain.health import DestinationHealth, ProbePolicy
from msgspool.domain.outcome import CONNECTION_REFUSED, CONNECTION_TIMEOUT

EXACT = ProbePolicy(probe_min=0.5, probe_max=3.0, jitter=0.0)


def health(policy: ProbePolicy = EXACT) -> DestinationHealth:
    return DestinationHealth("smtp:relay.example", policy)


@pytest.mark.parametrize(("failures", "interval"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (20, 3.0)])
def test_probe_interval_doubles_per_failure_up_to_probe_max(failures: int, interval: float) -> None:
    assert EXACT.interval(failures) == interval


def test_probe_jitter_only_brings_probes_earlier() -> None:
    policy = ProbePolicy(probe_min=1.0, probe_max=1.0, jitter=0.2)
    rng = random.Random(3)
    intervals = [policy.interval(1, rng) for _ in range(200)]
    assert all(0.8 <= i <= 1.0 for i in intervals)
    assert min(intervals) < 0.9


def test_first_connection_failure_marks_destination_down_and_says_so_once() -> None:
    h = health()
    assert h.connection_failed(100.0, CONNECTION_REFUSED) is True
    assert h.down and h.failures == 1 and h.last_reply == CONNECTION_REFUSED
    assert h.connection_failed(101.0, CONNECTION_TIMEOUT) is False
    assert h.failures == 2 and h.last_reply == CONNECTION_TIMEOUT


def test_down_since_keeps_the_time_of_the_first_failure() -> None:
    h = health()
    h.connection_failed(100.0, CONNECTION_REFUSED)
    h.connection_failed(105.0, CONNECTION_REFUSED)
    assert h.down_since == 100.0


def test_each_failed_probe_schedules_the_next_one_later() -> None:
    h = health()
    h.connection_failed(100.0, CONNECTION_REFUSED)
    assert h.probe_at == 100.5
    h.connection_failed(100.5, CONNECTION_REFUSED)
    assert h.probe_at == 101.5


def test_probe_is_due_only_while_down_and_once_its_time_has_come() -> None:
    h = health()
    assert not h.probe_due(1e9)
    h.connection_failed(100.0, CONNECTION_REFUSED)
    assert not h.probe_due(100.4)
    assert h.probe_due(100.5)


def test_good_session_brings_destination_up_and_forgets_its_failures() -> None:
    h = health()
    h.connection_failed(100.0, CONNECTION_REFUSED)
    assert h.connection_ok() is True  # the caller releases the backlog now
    assert (h.down, h.failures, h.down_since, h.probe_at) == (False, 0, None, None)
    assert h.connection_ok() is False
