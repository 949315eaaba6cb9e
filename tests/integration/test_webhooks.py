"""Webhooks end to end in one process: mail over a real SMTP session, the spooler with a real SQLite
spool, and a real aiohttp receiver on loopback that checks each POST's signature with the secret."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import smtplib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from msgspool.daemon import start_smtp
from msgspool.domain.events import EventType
from msgspool.domain.routing import Router
from msgspool.spooler.intake import Intake, Submission
from msgspool.spooler.runtime import Spooler
from msgspool.stores.sqlite import SQLiteStore
from tests.conftest import SpoolerFactory
from tests.support.receiver import Post, Receiver
from tests.support.sink import Sink, free_port

SECRET = "s3cret-for-tests"
MAIL = "From: a@example.org\r\nTo: alice@localhost\r\nSubject: hi\r\n\r\nHello.\r\n"


def hook(receiver: Receiver, path: str = "/hook", **options: Any) -> dict[str, Any]:
    return {"url": receiver.url(path), "secret": SECRET, **options}


@asynccontextmanager
async def smtp_spooler(factory: SpoolerFactory, **settings: Any) -> AsyncIterator[tuple[Spooler, int]]:
    port = free_port()
    async with factory(smtp_listen=f"127.0.0.1:{port}", **settings) as spooler:
        server = await start_smtp(spooler, spooler.settings)
        try:
            yield spooler, port
        finally:
            server.close()


async def send_smtp(port: int, recipients: list[str], content: str = MAIL) -> None:
    def send() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("a@example.org", recipients, content)

    await asyncio.to_thread(send)


def signature_ok(post: Post, secret: str = SECRET) -> bool:
    """The receiver's check, written from the documented recipe rather than msgspool's code."""
    fields = dict(item.split("=", 1) for item in post.headers["X-Msgspool-Signature"].split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + post.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 300


async def webhook_messages(spooler: Spooler) -> list[dict[str, Any]]:
    infos = await spooler.store.list_messages(("outbox", "sent"), "", 1000)
    return [await spooler.message(i.id) for i in infos if i.origin == "webhook"]


async def wait_until(predicate: Any, what: str, timeout: float = 10.0) -> Any:
    end = time.monotonic() + timeout
    while not (value := await predicate()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
    return value


async def test_new_mail_over_smtp_is_posted_signed_to_the_receiver(spooler_factory: SpoolerFactory,
                                                                   receiver: Receiver) -> None:
    receiver.start()
    async with smtp_spooler(spooler_factory, webhooks=[hook(receiver, types=["new_mail"], name="app")]) as (
            spooler, port):
        await send_smtp(port, ["alice@localhost"])
        [post] = await receiver.async_wait_for(1)
        [queued] = await wait_until(lambda: _delivered_webhooks(spooler), "the webhook message to be delivered")
        content = await spooler.content(queued["id"])
    event = post.event
    assert (event["type"], event["mailbox"], event["folder"]) == ("new_mail", "alice@localhost", "inbox")
    assert signature_ok(post)
    assert not signature_ok(post, "another secret")
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["X-Msgspool-Event"] == "new_mail"
    assert post.headers["X-Msgspool-Event-Id"] == str(event["id"])
    assert post.headers["X-Msgspool-Webhook"] == "app"
    assert post.headers["X-Msgspool-Delivery"] == queued["id"]
    # An ordinary queued message: null sender, the URL as its WEBHOOK recipient, never a report.
    assert (queued["sender"], queued["message_class"], queued["folder"]) == ("", "IPM.Webhook", "sent")
    [rcpt] = queued["recipients"]
    assert (rcpt["address"], rcpt["addrtype"], rcpt["transport"], rcpt["notify"]) == (
        receiver.url(), "WEBHOOK", "webhook", "NEVER")
    assert content == post.body and SECRET not in str(queued) and SECRET.encode() not in content


async def _delivered_webhooks(spooler: Spooler) -> list[dict[str, Any]]:
    messages = await webhook_messages(spooler)
    return messages if messages and all(m["folder"] == "sent" for m in messages) else []


async def test_types_and_mailbox_filters_choose_the_events_each_webhook_gets(spooler_factory: SpoolerFactory,
                                                                            receiver: Receiver, sink: Sink) -> None:
    receiver.start()
    webhooks = [hook(receiver, "/alice", types=["new_mail"], mailbox="Alice@localhost"),
                hook(receiver, "/delivered", types=["delivered"])]
    async with smtp_spooler(spooler_factory, relay=sink.address, webhooks=webhooks) as (spooler, port):
        await send_smtp(port, ["alice@localhost", "bob@localhost", "carol@example.com"])
        await receiver.async_wait_for(4)
        await wait_until(lambda: _delivered_webhooks(spooler), "every webhook message to be delivered")
        await asyncio.sleep(0.3)  # time for anything unwanted to arrive too
    posts = receiver.received()
    alice = [p.event for p in posts if p.path == "/alice"]
    delivered = [p.event for p in posts if p.path == "/delivered"]
    assert [(e["type"], e["mailbox"]) for e in alice] == [("new_mail", "alice@localhost")]
    assert sorted(e["recipient"] for e in delivered) == ["alice@localhost", "bob@localhost", "carol@example.com"]
    assert {e["type"] for e in delivered} == {"delivered"}
    assert all(signature_ok(p) for p in posts)


async def test_events_of_webhook_deliveries_trigger_no_webhooks(spooler_factory: SpoolerFactory,
                                                                receiver: Receiver) -> None:
    receiver.start()
    async with spooler_factory(webhooks=[hook(receiver)]) as spooler:
        await spooler.send(MAIL.encode(), sender="a@example.org", recipients=["alice@localhost"])
        await receiver.async_wait_for(3)  # submitted, delivered, new_mail
        messages = await wait_until(lambda: _delivered_webhooks(spooler), "the webhook messages to be delivered")
        await asyncio.sleep(0.5)  # the webhook messages' own events are in the store by now
        own = [e for e in await spooler.store.events_after(0) if e.message_id in {m["id"] for m in messages}]
    assert sorted(p.event["type"] for p in receiver.received()) == ["delivered", "new_mail", "submitted"]
    assert {e.type for e in own} == {EventType.SUBMITTED, EventType.DELIVERED}


async def test_receiver_that_is_down_gets_the_post_seconds_after_it_comes_back_and_mail_is_not_blocked(
        spooler_factory: SpoolerFactory, receiver: Receiver, sink: Sink) -> None:
    async with spooler_factory(relay=sink.address, webhooks=[hook(receiver, types=["new_mail"])]) as spooler:
        await spooler.send(MAIL.encode(), sender="a@example.org", recipients=["alice@localhost"])
        [waiting] = await wait_until(lambda: _deferred_webhooks(spooler), "the webhook to be deferred")
        assert waiting["recipients"][0]["last_reply"].startswith("421 4.4.1")
        # Mail keeps flowing while the receiver is down.
        await spooler.send(MAIL.encode(), sender="a@example.org", recipients=["remote@example.com"])
        await sink.async_wait_for(1, timeout=5)
        assert receiver.received() == []
        receiver.start()
        back = time.monotonic()
        [post] = await receiver.async_wait_for(1, timeout=10)
        arrived = time.monotonic() - back
        await wait_until(lambda: _delivered_webhooks(spooler), "the webhook message to be delivered")
    assert post.event["type"] == "new_mail" and signature_ok(post)
    assert post.headers["X-Msgspool-Delivery"] == waiting["id"]
    assert arrived < 5.0, f"the POST came {arrived:.2f}s after the receiver was back"


async def _deferred_webhooks(spooler: Spooler) -> list[dict[str, Any]]:
    messages = await webhook_messages(spooler)
    return messages if messages and all(m["recipients"][0]["status"] == "deferred" for m in messages) else []


async def test_a_5xx_answer_is_retried_with_backoff(spooler_factory: SpoolerFactory, receiver: Receiver) -> None:
    receiver.status = 503
    receiver.start()
    async with spooler_factory(webhooks=[hook(receiver, types=["new_mail"])]) as spooler:
        await spooler.send(MAIL.encode(), sender="a@example.org", recipients=["alice@localhost"])
        [deferred] = await wait_until(lambda: _deferred_webhooks(spooler), "the webhook to be deferred")
        rcpt = deferred["recipients"][0]
        assert rcpt["last_reply"] == "451 4.0.0 HTTP 503 Service Unavailable" and rcpt["attempts"] == 1
        next_at = datetime.fromisoformat(rcpt["next_attempt_at"]).timestamp()
        assert next_at > time.time() + 30  # per-message backoff (min_backoff is 60 s in tests)
        receiver.status = 204
        await spooler.flush([deferred["id"]])
        await wait_until(lambda: _delivered_webhooks(spooler), "the retried webhook to be delivered")
    first, second = receiver.received()
    assert first.body == second.body and first.headers["X-Msgspool-Delivery"] == second.headers["X-Msgspool-Delivery"]


async def test_deliveries_queued_before_a_restart_are_posted_after_it_once(spooler_factory: SpoolerFactory,
                                                                           receiver: Receiver) -> None:
    webhooks = [hook(receiver, types=["new_mail"])]
    async with spooler_factory(webhooks=webhooks) as spooler:
        await spooler.send(MAIL.encode(), sender="a@example.org", recipients=["alice@localhost"])
        await wait_until(lambda: _deferred_webhooks(spooler), "the webhook to be deferred")
    # Events recorded while no dispatcher runs (a crash between commit and dispatch looks the same).
    async with spooler_factory() as spooler:
        await spooler.send(MAIL.encode(), sender="a@example.org", recipients=["alice@localhost"])
    receiver.start()
    async with spooler_factory(webhooks=webhooks) as spooler:
        await receiver.async_wait_for(2)
        await wait_until(lambda: _delivered_webhooks(spooler), "both webhook messages to be delivered")
    async with spooler_factory(webhooks=webhooks) as spooler:  # and once more: nothing is queued again
        await asyncio.sleep(0.5)
        messages = await webhook_messages(spooler)
    assert len(messages) == 2
    assert sorted(p.headers["X-Msgspool-Delivery"] for p in receiver.received()) == sorted(m["id"] for m in messages)



async def test_the_cursor_starts_at_the_newest_event_and_moves_only_from_where_it_is(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "spool.db")
    await store.open()
    try:
        message, _ = Intake(Router([], [])).build(
            Submission(sender="", recipients=["x@example.com"], content=b"\r\n"), route=False)
        newest = max(e.id or 0 for e in await store.submit(message))
        assert await store.webhook_cursor() == newest
        assert await store.enqueue_webhooks(newest - 1, newest + 5, []) is None  # elsewhere: nothing written
        assert await store.webhook_cursor() == newest
        assert await store.enqueue_webhooks(newest, newest + 5, []) == []
        assert await store.webhook_cursor() == newest + 5
    finally:
        await store.close()
