"""spooler/metrics.py without a daemon: what is there at zero, what an outcome moves, and how two
processes' figures add up into one exposition that prometheus-client's own parser reads back."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from msgspool.domain.hooks import HookRecord
from msgspool.domain.message import Recipient, Settlement
from msgspool.domain.recipient import Status
from msgspool.spooler.metrics import Metrics, exposition, from_wire, gauge, merge, store_families


def parsed(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, key
            samples[key] = s.value
    return samples


def test_known_transports_and_hooks_are_there_at_zero() -> None:
    metrics = Metrics(["smtp", "lmtp"])
    metrics.know_hooks([("preprocess", "dkim_sign")])
    samples = parsed(exposition(metrics.collect()))
    for transport in ("smtp", "lmtp", "local"):
        for name in ("accepted", "delivered", "deferred", "failed", "expired"):
            assert samples[(f"msgspool_{name}_total", (("transport", transport),))] == 0
        assert samples[("msgspool_delivery_latency_seconds_count", (("transport", transport),))] == 0
    assert samples[("msgspool_hook_outcomes_total", (("hook", "dkim_sign"), ("outcome", "error"),
                                                     ("stage", "preprocess")))] == 0
    assert samples[("msgspool_intake_latency_seconds_count", ())] == 0


def test_outcomes_count_by_transport_and_hold_is_no_outcome() -> None:
    metrics = Metrics(["smtp"])
    metrics.settled([Settlement("m", 0, "a@x", Status.DELIVERED, transport="smtp"),
                     Settlement("m", 1, "b@x", Status.DEFERRED, transport="smtp"),
                     Settlement("m", 2, "c@x", Status.HELD, transport="smtp"),
                     Settlement("m", 3, "d@x", Status.FAILED)])
    metrics.submitted([Recipient("e@x", transport="local", status=Status.DELIVERED),
                       Recipient("f@x", transport="smtp", status=Status.ACTIVE)])
    metrics.hooks_ran("preprocess", [HookRecord("rewrite", "changed")])
    samples = parsed(exposition(metrics.collect()))
    assert samples[("msgspool_delivered_total", (("transport", "smtp"),))] == 1
    assert samples[("msgspool_deferred_total", (("transport", "smtp"),))] == 1
    assert samples[("msgspool_failed_total", (("transport", "none"),))] == 1
    assert samples[("msgspool_delivered_total", (("transport", "local"),))] == 1
    assert samples[("msgspool_accepted_total", (("transport", "local"),))] == 1
    assert samples[("msgspool_accepted_total", (("transport", "smtp"),))] == 1
    assert samples[("msgspool_hook_outcomes_total", (("hook", "rewrite"), ("outcome", "changed"),
                                                     ("stage", "preprocess")))] == 1


def test_two_processes_add_up_series_by_series_over_the_wire_form() -> None:
    intake, delivery = Metrics(["smtp"]), Metrics(["smtp"])
    intake.accept("smtp")
    intake.commit_batch.observe(3)
    delivery.settled([Settlement("m", 0, "a@x", Status.DELIVERED, transport="smtp")])
    delivery.delivered_after("smtp", 0.2)
    delivery.commit_batch.observe(1)
    delivery.add_live(lambda: [gauge("msgspool_destination_up", "up", ["transport", "destination"],
                                     [(("smtp", "relay:25"), 1)])])
    store = store_families({"queued": 2, "messages": 1}, [("webhook", "hooks.test", "queued", 4)])
    body = exposition(merge(intake.collect(), from_wire(delivery.snapshot()), store))
    samples = parsed(body)
    assert samples[("msgspool_accepted_total", (("transport", "smtp"),))] == 1
    assert samples[("msgspool_delivered_total", (("transport", "smtp"),))] == 1
    assert samples[("msgspool_delivery_latency_seconds_count", (("transport", "smtp"),))] == 1
    assert samples[("msgspool_commit_batch_size_count", ())] == 2
    assert samples[("msgspool_commit_batch_size_sum", ())] == 4
    assert samples[("msgspool_commit_batch_size_bucket", (("le", "2.0"),))] == 1
    assert samples[("msgspool_destination_up", (("destination", "relay:25"), ("transport", "smtp")))] == 1
    assert samples[("msgspool_queue_recipients", (("status", "queued"),))] == 2
    assert samples[("msgspool_webhook_backlog", ())] == 4
    assert b"_created" not in body


async def test_store_figures_are_read_again_only_after_nine_times_the_last_read() -> None:
    from msgspool.domain.address import SMTP
    from msgspool.domain.routing import Router, TransportRoute
    from msgspool.spooler.intake import Intake, Submission
    from msgspool.spooler.metrics import StoreFigures
    from msgspool.stores.memory import MemoryStore, forget

    now = [0.0]

    def clock() -> float:  # each look at the clock takes a second: the read took 1 s
        now[0] += 1.0
        return now[0]

    def messages(families: list[Any]) -> float:
        return parsed(exposition(families))[("msgspool_queue_messages", ())]

    store = MemoryStore("test-store-figures")
    await store.open()
    try:
        figures = StoreFigures(store, clock)
        assert messages(await figures.families()) == 0  # read from t=1 to t=2: fresh until t=11
        router = Router(["example.org"], [TransportRoute("smtp", frozenset({SMTP}), lambda _a: "relay:25")])
        message, copies = Intake(router).build(Submission(sender="a@example.org", recipients=["b@example.com"],
                                                          content=b"Subject: x\r\n\r\n"))
        await store.submit(message, copies)
        cached = await figures.families()
        assert messages(cached) == 0
        assert parsed(exposition(cached))[("msgspool_queue_figures_age_seconds", ())] > 0
        now[0] = 20.0
        assert messages(await figures.families()) == 1
    finally:
        forget("test-store-figures")
