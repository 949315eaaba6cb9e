"""The listener's counters (smtpd/limits.py), on a clock the test moves: sessions in all and per
client, and requests per client per minute."""

from __future__ import annotations

from msgspool.smtpd.limits import ConnectionCounter, RateCounter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_total_limit_refuses_every_address_and_a_release_makes_room() -> None:
    counter = ConnectionCounter(2, 0, "mx.test")
    assert counter.admit("192.0.2.1") is None and counter.admit("192.0.2.2") is None
    refusal = counter.admit("192.0.2.3")
    assert refusal is not None and (refusal.code, refusal.enhanced) == (421, "4.7.0")
    assert refusal.text == "mx.test Error: too many connections"
    counter.release("192.0.2.1")
    assert counter.admit("192.0.2.3") is None


def test_the_per_client_limit_counts_each_address() -> None:
    counter = ConnectionCounter(0, 1, "mx.test")
    assert counter.admit("192.0.2.1") is None
    refusal = counter.admit("192.0.2.1")
    assert refusal is not None and refusal.text == "mx.test Error: too many connections from 192.0.2.1"
    assert counter.admit("192.0.2.2") is None
    counter.release("192.0.2.1")
    assert counter.per_client == {"192.0.2.2": 1} and counter.total == 1
    assert counter.admit("192.0.2.1") is None


def test_a_rate_counts_requests_per_client_in_windows_of_a_minute() -> None:
    clock = Clock()
    rate = RateCounter(3, clock)
    assert [rate.hit("192.0.2.1") for _ in range(4)] == [True, True, True, False]
    assert rate.hit("192.0.2.2")
    clock.now += 59.0
    assert not rate.hit("192.0.2.1")
    clock.now += 1.0
    assert rate.hit("192.0.2.1")


def test_a_rate_of_zero_is_no_limit() -> None:
    rate = RateCounter(0, Clock())
    assert all(rate.hit("192.0.2.1") for _ in range(10_000))


def test_a_rate_forgets_clients_whose_window_has_passed() -> None:
    clock = Clock()
    rate = RateCounter(5, clock, sweep_at=10)
    for i in range(10):
        rate.hit(f"192.0.2.{i}")
    clock.now += 60.0
    rate.hit("198.51.100.1")
    assert list(rate.counts) == ["198.51.100.1"]
