"""A destination's queue order: fresh mail goes ahead of retries and released backlog (no sockets:
the concurrency limit is 0, so nothing is sent and the queue can be read)."""

from __future__ import annotations

import time
from typing import Any

from msgspool.domain.health import ProbePolicy
from msgspool.domain.message import NON_URGENT, NORMAL, URGENT, Message, Recipient
from msgspool.domain.retry import RetryPolicy
from msgspool.spooler.destinations import Destination, DestinationLimits


class Idle:
    name = "smtp"


def destination() -> Destination:
    return Destination(Idle(), "relay:25", DestinationLimits(concurrency=0), RetryPolicy(), ProbePolicy(),  # type: ignore[arg-type]
                       lambda _s: None, on_up=lambda _d: None)  # type: ignore[arg-type,return-value]


def message(name: str, priority: int = NORMAL) -> Message:
    return Message(id=name, sender="a@example.org", content=b"x", submitted_at=0.0, priority=priority,
                   recipients=[Recipient(f"{name}@example.com")])


async def test_fresh_mail_is_queued_after_earlier_fresh_mail_and_before_the_backlog() -> None:
    settled: list[Any] = []
    dest = Destination(Idle(), "relay:25", DestinationLimits(concurrency=0), RetryPolicy(), ProbePolicy(),  # type: ignore[arg-type]
                       settled.extend, on_up=lambda _d: None)  # type: ignore[arg-type,return-value]
    for name, fresh in (("old1", False), ("new1", True), ("old2", False), ("new2", True)):
        m = message(name)
        dest.enqueue(m, m.recipients, fresh=fresh)
    assert [job.message.id for job in dest.jobs] == ["new1", "new2", "old1", "old2"]
    assert (await dest._next_job()).message.id == "new1"  # type: ignore[union-attr]
    m = message("new3")
    dest.enqueue(m, m.recipients, fresh=True)
    assert [job.message.id for job in dest.jobs] == ["new2", "new3", "old1", "old2"]


def test_urgent_mail_goes_first_and_non_urgent_after_normal_fresh_mail() -> None:
    dest = destination()
    for name, priority, fresh in (("old", NORMAL, False), ("new", NORMAL, True), ("slow", NON_URGENT, True),
                                  ("old-urgent", URGENT, False), ("new-urgent", URGENT, True)):
        m = message(name, priority)
        dest.enqueue(m, m.recipients, fresh=fresh)
    assert [job.message.id for job in dest.jobs] == ["old-urgent", "new-urgent", "new", "slow", "old"]


def test_the_cap_on_attempts_counts_attempts_made_not_waits_for_a_down_destination() -> None:
    from msgspool.domain.outcome import DESTINATION_DOWN, Reply
    from msgspool.domain.recipient import Status

    dest = Destination(Idle(), "relay:25", DestinationLimits(concurrency=0), RetryPolicy(max_attempts=2),  # type: ignore[arg-type]
                       ProbePolicy(), lambda _s: None, on_up=lambda _d: None)  # type: ignore[arg-type,return-value]
    m = message("capped")
    m.submitted_at = time.time()  # within its lifetime
    r = m.recipients[0]
    r.attempts = 1
    busy = Reply(450, "4.2.1", "Mailbox busy")
    assert dest._deferral(m, r, DESTINATION_DOWN, attempted=False, wait=True).status is Status.DEFERRED
    failed = dest._deferral(m, r, busy, attempted=True)
    assert failed.status is Status.FAILED and failed.reply is not None
    assert failed.reply.line() == "554 5.4.7 delivery attempts exhausted after 2 attempts: 450 4.2.1 Mailbox busy"
    m.max_attempts = 0  # the message's own: no cap
    assert dest._deferral(m, r, busy, attempted=True).status is Status.DEFERRED
