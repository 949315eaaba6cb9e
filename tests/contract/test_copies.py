"""The one id story in the store (issue 13.2): a copy filed into a local mailbox names the message it
copies and the recipient it was filed for, and that message lists its copies — whether filed with
the submission or by a later delivery; the same on every store."""

from __future__ import annotations

import time

from msgspool.domain.message import Settlement
from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import Status
from msgspool.ports import Store
from msgspool.spooler.intake import Intake, Submission
from tests.contract.conftest import CONTENT, ROUTER, build


async def test_copies_filed_with_a_submission_link_both_ways(store: Store) -> None:
    message, copies = build("bob@example.org", "Carol@Example.org", "x@example.com")
    await store.submit(message, copies)
    info = await store.get(message.id)
    assert info is not None and info.copy_of is None
    assert sorted((c["recipient"], c["mailbox"], c["folder"]) for c in info.copies or []) == [
        ("Carol@Example.org", "carol@example.org", "inbox"), ("bob@example.org", "bob@example.org", "inbox")]
    for link in info.copies or []:
        copy = await store.get(link["id"])
        assert copy is not None and (copy.copy_of, copy.copy_for) == (message.id, link["recipient"])
        assert copy.copies == []
    [listed] = await store.list_messages(("inbox",), "bob@example.org", 10)
    assert listed.copy_of == message.id  # a mailbox's listing names each message's source too


async def test_a_copy_filed_by_a_later_delivery_is_linked_too(store: Store) -> None:
    now = time.time()
    sub = Submission(sender="a@example.org", recipients=["dave@example.org"], content=CONTENT)
    message, _ = Intake(ROUTER).build(sub, now, route=False)  # not filed at once: the delivery files it
    await store.submit(message, ())
    [claimed] = await store.claim(now + 1, 10)
    recipient = claimed.recipients[0]
    copy = Intake(ROUTER).local_copy(claimed, recipient, now + 1)
    await store.settle([Settlement(message.id, recipient.index, recipient.address, Status.DELIVERED,
                                   Reply(250, "2.0.0", "delivered"), copies=(copy,))], now + 1)
    info = await store.get(message.id)
    assert info is not None
    assert [(c["id"], c["recipient"]) for c in info.copies or []] == [(copy.id, "dave@example.org")]
    filed = await store.get(copy.id)
    assert filed is not None and filed.copy_of == message.id
