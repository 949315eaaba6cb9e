"""The suppression list (Postal's; domain/suppression.py) as every store keeps it: a hard bounce
settled with `suppress_until` lists its address; a submission to a listed address fails that
recipient in the same commit, with the reason and until when, and owes the sender its NDR; the
operator adds, lists and removes entries; an entry whose time passed no longer counts."""

from __future__ import annotations

import time

from msgspool.domain.message import Settlement
from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import Status
from msgspool.domain.suppression import BOUNCE, OPERATOR, Suppression
from msgspool.ports import Store
from msgspool.spooler.intake import mark_active
from tests.contract.conftest import build, statuses, submit

NO_SUCH_USER = Reply(550, "5.1.1", "No such user")
DAY = 86400.0


async def test_a_hard_bounce_settled_with_suppress_until_lists_the_address(store: Store) -> None:
    now = time.time()
    message = await submit(store, "Gone@Example.COM", "b@example.net", now=now)
    await store.claim(now, 10)
    await store.settle([Settlement(message.id, 0, "Gone@Example.COM", Status.FAILED, NO_SUCH_USER,
                                   remote="mx.example.com[192.0.2.1]", suppress_until=now + DAY),
                        Settlement(message.id, 1, "b@example.net", Status.FAILED, NO_SUCH_USER,
                                   remote="mx.example.net[192.0.2.2]")], now)  # not marked: not listed
    [entry] = await store.suppressions(now)
    assert (entry.address, entry.source, entry.until, entry.message_id) == (
        "gone@example.com", BOUNCE, now + DAY, message.id)
    assert entry.reason == "550 5.1.1 No such user"
    assert set(await store.suppressed(["GONE@example.com", "b@example.net"], now)) == {"gone@example.com"}


async def test_a_submission_to_a_suppressed_address_fails_that_recipient_in_the_commit(store: Store) -> None:
    now = time.time()
    await store.suppress(Suppression("gone@example.com", "it bounced", now, now + DAY, OPERATOR))
    message, copies = build("b@example.net", "Gone@example.com", now=now)
    mark_active(message)
    events = await store.submit(message, copies)
    assert [r.status for r in message.recipients] == [Status.ACTIVE, Status.FAILED]  # the caller sees it too
    reply = message.recipients[1].last_reply
    assert reply is not None and (reply.code, reply.enhanced) == (550, "5.1.1")
    assert "suppressed until" in reply.text and "it bounced" in reply.text
    assert await statuses(store, message.id) == ["active", "failed"]
    assert [(e.type, e.recipient) for e in events][1:] == [("failed", "Gone@example.com")]
    info = await store.get(message.id)
    assert info is not None and info.history is not None
    assert [(h["stage"], h["outcome"]) for h in info.history] == [("submission", "failed")]
    [pending] = await store.pending_reports()
    assert [(r["index"], r["action"]) for r in pending.recipients] == [(1, "failed")]  # the sender's NDR


async def test_the_operator_adds_lists_and_removes_and_a_passed_entry_no_longer_counts(store: Store) -> None:
    now = time.time()
    await store.suppress(Suppression("old@example.com", "x", now - 2 * DAY, now - DAY, BOUNCE))
    await store.suppress(Suppression("b@example.com", "asked", now, None, OPERATOR))
    await store.suppress(Suppression("a@example.com", "asked", now, now + DAY, OPERATOR))
    assert [e.address for e in await store.suppressions(now)] == ["a@example.com", "b@example.com"]
    message = await submit(store, "old@example.com", now=now)
    assert await statuses(store, message.id) == ["queued"]
    assert await store.unsuppress("A@example.com") is True
    assert await store.unsuppress("a@example.com") is False
    assert [e.address for e in await store.suppressions(now)] == ["b@example.com"]
    assert await store.prune_suppressions(now) == 1  # old@: its time had passed
    assert [e.address for e in await store.suppressions(now - 3 * DAY)] == ["b@example.com"]


async def test_a_bounce_lengthens_an_entry_but_never_ends_one_until_removed(store: Store) -> None:
    now = time.time()
    message = await submit(store, "kept@example.com", "short@example.com", now=now)
    await store.claim(now, 10)  # in flight when they were listed
    await store.suppress(Suppression("kept@example.com", "operator", now, None, OPERATOR))
    await store.suppress(Suppression("short@example.com", "x", now, now + 60, BOUNCE))
    await store.settle([Settlement(message.id, i, address, Status.FAILED, NO_SUCH_USER, remote="mx",
                                   suppress_until=now + DAY)
                        for i, address in enumerate(("kept@example.com", "short@example.com"))], now)
    by_address = {e.address: e for e in await store.suppressions(now)}
    assert by_address["kept@example.com"].until is None and by_address["kept@example.com"].source == OPERATOR
    assert by_address["short@example.com"].until == now + DAY and by_address["short@example.com"].source == BOUNCE


async def test_the_signature_changes_with_every_change_of_the_list(store: Store) -> None:
    now = time.time()
    empty = await store.suppressions_signature()
    await store.suppress(Suppression("a@example.com", "x", now, None, OPERATOR))
    one = await store.suppressions_signature()
    await store.unsuppress("a@example.com")
    assert empty != one and await store.suppressions_signature() == empty


async def test_relayed_to_finds_the_senders_messages_whose_recipient_was_handed_on(store: Store) -> None:
    """What a report received later as mail is matched against (spooler/bounces.py)."""
    now = time.time()
    old = await submit(store, "Bob@Remote.example", sender="Alice@example.org", now=now - 10 * DAY)
    new = await submit(store, "bob@remote.example", "carol@remote.example", sender="alice@example.org", now=now)
    other = await submit(store, "bob@remote.example", sender="zed@example.org", now=now)
    await store.claim(now, 10)
    relayed = Reply(250, "2.0.0", "queued as X")
    await store.settle([Settlement(m.id, 0, m.recipients[0].address, Status.DELIVERED, relayed, transport="smtp",
                                   remote="mx.remote.example[192.0.2.1]") for m in (old, new, other)]
                       + [Settlement(new.id, 1, "carol@remote.example", Status.FAILED, NO_SUCH_USER,
                                     transport="smtp", remote="mx.remote.example[192.0.2.1]")], now)
    assert await store.relayed_to("ALICE@example.org", "BOB@remote.example", now - 30 * DAY) == [
        (new.id, "smtp"), (old.id, "smtp")]  # newest first, whatever the case
    assert await store.relayed_to("alice@example.org", "bob@remote.example", now - DAY) == [(new.id, "smtp")]
    assert await store.relayed_to("alice@example.org", "carol@remote.example", now - DAY) == []  # not handed on
