"""Failed logins per client address (smtpd/limits.py AuthFailures), on an injected clock."""

from __future__ import annotations

from msgspool.smtpd.limits import AuthFailures


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_failure_waits_longer_and_the_limit_locks_the_client_out_for_the_window() -> None:
    clock = Clock()
    failures = AuthFailures(limit=3, window=600.0, delay=1.0, clock=clock)
    assert [failures.fail("192.0.2.1") for _ in range(2)] == [1.0, 2.0]
    assert not failures.locked_out("192.0.2.1")
    failures.fail("192.0.2.1")
    assert failures.locked_out("192.0.2.1") and not failures.locked_out("192.0.2.2")
    clock.now += 599
    assert failures.locked_out("192.0.2.1")
    clock.now += 1
    assert not failures.locked_out("192.0.2.1")
    assert failures.fail("192.0.2.1") == 1.0  # a fresh window


def test_failures_older_than_the_window_are_forgotten() -> None:
    clock = Clock()
    failures = AuthFailures(limit=3, window=60.0, delay=0.5, clock=clock)
    failures.fail("a")
    failures.fail("a")
    clock.now += 60
    assert failures.fail("a") == 0.5 and not failures.locked_out("a")


def test_a_limit_of_zero_never_locks_out() -> None:
    failures = AuthFailures(limit=0, window=60.0, delay=0.0, clock=Clock())
    for _ in range(100):
        failures.fail("a")
    assert not failures.locked_out("a")


def test_many_clients_are_swept_once_their_window_passed() -> None:
    clock = Clock()
    failures = AuthFailures(limit=5, window=10.0, delay=0.0, clock=clock, sweep_at=100)
    for i in range(100):
        failures.fail(f"10.0.0.{i}")
    clock.now += 11
    failures.fail("10.1.0.1")
    assert list(failures.failures) == ["10.1.0.1"]
