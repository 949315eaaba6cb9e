"""Scheduling controls over real sockets and a real SQLite spool: RFC 4865 FUTURERELEASE on the
SMTP listener, deferred delivery through the HTTP API, the cap on attempts (with its NDR), and
urgent mail first when the queue is backed up, also for retries claimed from the store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from msgspool.daemon import start_smtp
from msgspool.domain.message import URGENT
from msgspool.domain.timefmt import iso
from msgspool.spooler.intake import Submission
from msgspool.web.app import start as start_http
from tests.conftest import SpoolerFactory
from tests.integration.test_relay import MESSAGE, submission, wait_status
from tests.integration.test_reports import inbox
from tests.integration.test_smtpd import Client, Listener, ehlo_keywords
from tests.support.sink import Sink, free_port


@pytest.fixture
async def listener(spooler_factory: SpoolerFactory, sink: Sink) -> AsyncIterator[Listener]:
    port = free_port()
    async with spooler_factory(relay=sink.address, smtp_listen=f"127.0.0.1:{port}", local_domains=["example.org"],
                               future_release_max=3600) as spooler:
        server = await start_smtp(spooler, spooler.settings)
        try:
            yield Listener(spooler, port)
        finally:
            server.close()


async def send_held(c: Client, param: str) -> str:
    """One transaction with a hold parameter; returns the queue id."""
    assert await c.cmd(f"MAIL FROM:<a@example.org> {param}") == (250, "2.1.0 Ok")
    assert await c.cmd("RCPT TO:<b@example.com>") == (250, "2.1.5 Ok")
    assert (await c.cmd("DATA"))[0] == 354
    code, text = await c.cmd(MESSAGE + b".")
    assert code == 250, text
    return text.rsplit(" ", 1)[1]


# -- RFC 4865 FUTURERELEASE -----------------------------------------------------------------


async def test_futurerelease_holds_the_message_until_its_release_time(listener: Listener, sink: Sink) -> None:
    c = await listener.client()
    keywords = await ehlo_keywords(c)
    assert any(k.startswith("FUTURERELEASE 3600 ") for k in keywords), keywords
    submitted = time.time()
    queue_id = await send_held(c, "HOLDFOR=2")
    info = await listener.spooler.message(queue_id)
    assert info["deliver_after"] is not None and info["recipients"][0]["status"] == "queued"
    assert info["recipients"][0]["next_attempt_at"] == info["deliver_after"]  # `queue show` tells when
    await asyncio.sleep(1.2)
    assert sink.count() == 0, "released before its time"
    await sink.async_wait_for(1, timeout=5)
    arrived = time.time()
    assert 2.0 <= arrived - submitted < 4.0
    # The hold was satisfied here: the next hop is not asked to hold it again (RFC 4865 §5).
    assert [cmd for cmd in sink.commands if cmd.startswith("MAIL")] == ["MAIL FROM:<a@example.org> SIZE="
                                                                       + str(len(sink.messages[0].content))]


async def test_holduntil_with_an_offset_sets_deliver_after(listener: Listener) -> None:
    c = await listener.client()
    await ehlo_keywords(c)
    release = int(time.time()) + 600
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(release + 7200)) + "+02:00"
    queue_id = await send_held(c, f"HOLDUNTIL={local}")
    info = await listener.spooler.message(queue_id)
    assert info["deliver_after"] == iso(release)
    assert info["recipients"][0]["status"] == "queued"


@pytest.mark.parametrize(("param", "reply"), [
    ("HOLDFOR=soon", (501, "5.5.4 Bad HOLDFOR parameter: 1 to 9 digits of seconds expected")),
    ("HOLDFOR=1234567890", (501, "5.5.4 Bad HOLDFOR parameter: 1 to 9 digits of seconds expected")),
    ("HOLDUNTIL=tomorrow", (501, "5.5.4 Bad HOLDUNTIL parameter: an RFC 3339 date-time expected")),
    ("HOLDUNTIL=2001-01-01T00:00:00Z", (501, "5.5.4 HOLDUNTIL time is in the past")),
    ("HOLDFOR=10 HOLDUNTIL=2099-01-01T00:00:00Z", (501, "5.5.4 HOLDFOR and HOLDUNTIL are mutually exclusive")),
])
async def test_a_bad_hold_parameter_gets_its_syntax_error(listener: Listener, param: str,
                                                         reply: tuple[int, str]) -> None:
    c = await listener.client()
    await ehlo_keywords(c)
    assert await c.cmd(f"MAIL FROM:<a@example.org> {param}") == reply
    assert await c.cmd("MAIL FROM:<a@example.org>") == (250, "2.1.0 Ok")  # the transaction never began


@pytest.mark.parametrize("param", ["HOLDFOR=3601", "HOLDUNTIL=2099-01-01T00:00:00Z"])
async def test_a_hold_beyond_the_maximum_fails_the_transaction(listener: Listener, param: str) -> None:
    c = await listener.client()
    await ehlo_keywords(c)
    code, text = await c.cmd(f"MAIL FROM:<a@example.org> {param}")
    assert (code, text.split(":")[0]) == (554, "5.5.4 Requested release is too far in the future")


async def test_futurerelease_is_offered_only_to_clients_that_may_submit(spooler_factory: SpoolerFactory) -> None:
    port = free_port()
    async with spooler_factory(smtp_listen=f"127.0.0.1:{port}", local_domains=["example.org"],
                               trusted_networks=[]) as spooler:
        server = await start_smtp(spooler, spooler.settings)
        try:
            c = await Listener(spooler, port).client()
            assert not any(k.startswith("FUTURERELEASE") for k in await ehlo_keywords(c))
            assert await c.cmd("MAIL FROM:<a@example.net> HOLDFOR=10") == (555, "5.5.4 Unsupported option: HOLDFOR")
        finally:
            server.close()


async def test_future_release_max_zero_turns_the_extension_off(spooler_factory: SpoolerFactory) -> None:
    port = free_port()
    async with spooler_factory(smtp_listen=f"127.0.0.1:{port}", future_release_max=0) as spooler:
        server = await start_smtp(spooler, spooler.settings)
        try:
            c = await Listener(spooler, port).client()
            assert not any(k.startswith("FUTURERELEASE") for k in await ehlo_keywords(c))
            assert (await c.cmd("MAIL FROM:<a@example.org> HOLDUNTIL=2099-01-01T00:00:00Z"))[0] == 555
        finally:
            server.close()


# -- deferred delivery, expiry, priority and the cap through the HTTP API -------------------------


async def test_http_submit_takes_the_scheduling_controls(spooler_factory: SpoolerFactory, sink: Sink) -> None:
    port = free_port()
    release = int(time.time()) + 3600
    body = {"sender": "a@example.org", "recipients": ["b@example.com"], "content": MESSAGE.decode(),
            "priority": "urgent", "deliver_after": iso(release), "expires_at": release + 60, "max_attempts": 4}
    async with spooler_factory(relay=sink.address) as spooler:
        runner = await start_http(spooler, "127.0.0.1", port)
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(f"http://127.0.0.1:{port}/api/messages", json=body) as response:
                    assert response.status == 201
                    message_id = (await response.json())["id"]
                async with http.post(f"http://127.0.0.1:{port}/api/messages",
                                     json={**body, "deliver_after": "2030-01-01T00:00:00"}) as response:
                    assert response.status == 400  # a time without a zone
        finally:
            await runner.cleanup()
        info = await spooler.message(message_id)
    assert (info["priority"], info["max_attempts"]) == (URGENT, 4)
    assert (info["deliver_after"], info["expires_at"]) == (iso(release), iso(release + 60))
    assert info["recipients"][0]["next_attempt_at"] == iso(release)
    assert sink.count() == 0


async def test_deferred_delivery_from_the_api_waits_for_its_time(spooler_factory: SpoolerFactory, sink: Sink) -> None:
    async with spooler_factory(relay=sink.address) as spooler:
        t0 = time.time()
        await spooler.send(MESSAGE, sender="a@example.org", recipients=["b@example.com"], deliver_after=t0 + 1.0)
        await asyncio.sleep(0.6)
        assert sink.count() == 0
        await sink.async_wait_for(1, timeout=5)
    assert time.time() - t0 >= 1.0


async def test_deferred_delivery_to_a_local_mailbox_is_filed_at_its_time(spooler_factory: SpoolerFactory) -> None:
    async with spooler_factory() as spooler:
        t0 = time.time()
        message_id = await spooler.send(MESSAGE, sender="a@example.org", recipients=["you@localhost"],
                                        deliver_after=t0 + 1.0)
        await asyncio.sleep(0.6)
        assert await spooler.folder("you@localhost") == []
        info = await wait_status(spooler, message_id, {"delivered"}, timeout=5)
        filed = await spooler.folder("you@localhost")
    assert len(filed) == 1 and info["recipients"][0]["last_attempt_at"] >= iso(t0 + 1.0)


# -- the cap on attempts ------------------------------------------------------------------------


async def test_the_cap_on_attempts_fails_the_recipient_and_reports_it(spooler_factory: SpoolerFactory,
                                                                       sink: Sink) -> None:
    async with spooler_factory(relay=sink.address, local_domains=["example.org"], min_backoff=1.0,
                               max_attempts=3) as spooler:
        message_id = await spooler.submit(submission("fail4xx@example.com"))
        info = await wait_status(spooler, message_id, {"failed"}, timeout=15)
        reports = await inbox(spooler, "a@example.org", 1)
    r = info["recipients"][0]
    assert r["attempts"] == 3
    assert r["last_reply"] == ("554 5.4.7 delivery attempts exhausted after 3 attempts:"
                               " 450 4.2.1 Mailbox busy, try later")
    assert [e["message_class"] for e in reports] == ["REPORT.IPM.Note.NDR"]
    assert info["folder"] == "sent"


async def test_a_message_sets_its_own_cap(spooler_factory: SpoolerFactory, sink: Sink) -> None:
    async with spooler_factory(relay=sink.address, min_backoff=1.0) as spooler:  # the setting: no cap
        capped = await spooler.send(MESSAGE, sender="a@example.org", recipients=["fail4xx@example.com"],
                                    max_attempts=1)
        info = await wait_status(spooler, capped, {"failed"})
    assert info["max_attempts"] == 1 and info["recipients"][0]["attempts"] == 1


async def test_waiting_for_a_down_destination_does_not_count_toward_the_cap(spooler_factory: SpoolerFactory) -> None:
    sink = Sink()  # down: the first connection is refused, the rest wait without an attempt
    async with spooler_factory(relay=sink.address, max_attempts=2, min_backoff=300.0) as spooler:
        ids = [await spooler.submit(submission(f"r{i}@example.com")) for i in range(5)]
        for message_id in ids:
            await wait_status(spooler, message_id, {"deferred"})
        waited = [(await spooler.message(i))["recipients"][0]["attempts"] for i in ids]
        sink.start()
        try:
            infos = [await wait_status(spooler, i, {"delivered"}) for i in ids]
        finally:
            sink.stop()
    assert sorted(waited) == [0, 0, 0, 0, 1]  # one connection attempt; the others only waited
    assert all(info["recipients"][0]["status"] == "delivered" for info in infos)


# -- urgent first under a backlog ---------------------------------------------------------------


async def test_urgent_retries_are_claimed_from_the_store_before_a_normal_backlog(
        spooler_factory: SpoolerFactory) -> None:
    """The backlog is larger than a claim (active_limit 20: claims of at most 10), so the order in
    which the store hands it out decides; the urgent messages were submitted last."""
    sink = Sink()
    async with spooler_factory(relay=sink.address, active_limit=20, destination_concurrency=1,
                               min_backoff=300.0) as spooler:
        normal = [await spooler.submit(submission(f"n{i}@example.com")) for i in range(40)]
        urgent = [await spooler.submit(submission(f"u{i}@example.com", priority=URGENT)) for i in range(4)]
        for message_id in normal + urgent:
            await wait_status(spooler, message_id, {"deferred"})
        sink.start()
        try:
            await sink.async_wait_for(44, timeout=20)
        finally:
            sink.stop()
    order = [m.recipients[0] for m in sink.messages]
    assert sorted(order[:4]) == [f"u{i}@example.com" for i in range(4)], order


async def test_urgent_fresh_mail_overtakes_a_queued_normal_backlog(spooler_factory: SpoolerFactory) -> None:
    sink = Sink(data_delay=0.05).start()  # a slow next hop: the normal mail queues up in memory
    try:
        async with spooler_factory(relay=sink.address, destination_concurrency=1) as spooler:
            await asyncio.gather(*(spooler.submit(submission(f"n{i}@example.com")) for i in range(40)))
            await spooler.submit(Submission(sender="a@example.org", recipients=["u@example.com"], content=MESSAGE,
                                            priority=URGENT))
            await sink.async_wait_for(41)
    finally:
        sink.stop()
    order = [m.recipients[0] for m in sink.messages]
    assert order.index("u@example.com") < 5, order  # ahead of the ~35 normal ones still queued
