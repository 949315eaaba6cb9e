"""The recipient state table (domain/recipient.py) as a user sees it through every role: an
outcome, once final, is never changed by an operation, and each operation moves only the
recipients it is about."""

from __future__ import annotations

import time

from msgspool.domain.message import Settlement
from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import Status
from msgspool.ports import Store
from tests.contract.conftest import ids, statuses, submit

OK = Reply(250, "2.0.0", "ok")
BUSY = Reply(450, "4.2.1", "Mailbox busy")
TOO_OLD = Reply(554, "5.4.7", "message expired")


async def test_operations_leave_final_recipients_as_they_are(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", "c@example.com", "d@example.com", now=now)
    await store.claim(now, 2)  # b and c
    await store.settle([Settlement(message.id, 0, "b@example.com", Status.DELIVERED, OK),
                        Settlement(message.id, 1, "c@example.com", Status.DEFERRED, BUSY, next_attempt_at=now + 60)],
                       now)
    await store.hold([message.id], now)
    assert await statuses(store, message.id) == ["delivered", "held", "held"]
    await store.release([message.id], now)
    assert await statuses(store, message.id) == ["delivered", "queued", "queued"]
    await store.flush([message.id], now)
    await store.requeue([message.id], now)
    assert await statuses(store, message.id) == ["delivered", "queued", "queued"]
    await store.unclaim([(message.id, 0)], now)  # not active: nothing to give back
    await store.rescue(now + 3600)  # nor to rescue
    assert await statuses(store, message.id) == ["delivered", "queued", "queued"]
    claimed = await store.claim(now, 10)
    assert [(m.id, [r.index for r in m.recipients]) for m in claimed] == [(message.id, [1, 2])]


async def test_an_expired_recipient_is_final_and_owes_its_failure_report(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", now=now, expires_at=now + 10)
    await store.claim(now, 10)
    events = await store.settle([Settlement(message.id, 0, "b@example.com", Status.EXPIRED, TOO_OLD,
                                            attempted=False)], now + 11)
    assert [e.type for e in events] == ["expired"]
    assert await statuses(store, message.id) == ["expired"]
    info = await store.get(message.id)
    assert info is not None and info.folder == "sent" and info.recipients[0]["attempts"] == 0
    [pending] = await store.pending_reports()
    assert [(r["address"], r["action"]) for r in pending.recipients] == [("b@example.com", "failed")]
    assert await store.claim(now + 100, 10) == [] and ids(await store.list_messages(("outbox",), "", 10)) == []
