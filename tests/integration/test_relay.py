"""The spooler in-process, relaying through a real SMTP sink on loopback, with a real SQLite spool."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from msgspool.domain.events import EventType
from msgspool.errors import UnableToAbort
from msgspool.spooler.intake import Submission
from tests.conftest import SpoolerFactory
from tests.support.sink import Sink, free_port

MESSAGE = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello.\r\n.leading dot\r\n"


def submission(*recipients: str, content: bytes = MESSAGE, **kw: object) -> Submission:
    return Submission(sender="a@example.org", recipients=list(recipients), content=content, **kw)  # type: ignore[arg-type]


async def wait_status(spooler, message_id: str, wanted: set[str], timeout: float = 10.0) -> dict:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while True:
        info = await spooler.message(message_id)
        if all(r["status"] in wanted for r in info["recipients"]):
            return info
        if time.monotonic() > end:
            raise AssertionError(f"statuses {[r['status'] for r in info['recipients']]} never became {wanted}")
        await asyncio.sleep(0.02)


async def test_message_is_relayed_and_moves_to_sent(spooler_factory: SpoolerFactory, sink: Sink) -> None:
    async with spooler_factory(relay=sink.address) as spooler:
        message_id = await spooler.submit(submission("b@example.com", "c@example.net"))
        info = await wait_status(spooler, message_id, {"delivered"})
    assert sink.recipients() == ["b@example.com", "c@example.net"]  # one transaction, both recipients
    assert len(sink.messages) == 1
    assert sink.messages[0].content == MESSAGE
    assert info["folder"] == "sent"
    assert info["recipients"][0]["last_reply"].startswith("250 2.0.0")
    assert info["recipients"][0]["attempts"] == 1


async def test_permanent_failure_of_one_recipient_spares_its_sibling(spooler_factory: SpoolerFactory,
                                                                     sink: Sink) -> None:
    async with spooler_factory(relay=sink.address) as spooler:
        message_id = await spooler.submit(submission("good@example.com", "fail5xx@example.com"))
        info = await wait_status(spooler, message_id, {"delivered", "failed"})
        await sink.async_wait_for(2)  # the message, then the non-delivery report, sent before the spooler stops
    by_address = {r["address"]: r for r in info["recipients"]}
    assert by_address["good@example.com"]["status"] == "delivered"
    assert by_address["fail5xx@example.com"]["status"] == "failed"
    assert by_address["fail5xx@example.com"]["last_reply"] == "550 5.1.1 No such user here"
    assert [(m.sender, m.recipients) for m in sink.messages] == [("a@example.org", ["good@example.com"]),
                                                                 ("", ["a@example.org"])]
    assert b"report-type=delivery-status" in sink.messages[1].content


async def test_temporary_failure_is_deferred_with_backoff(spooler_factory: SpoolerFactory, sink: Sink) -> None:
    async with spooler_factory(relay=sink.address) as spooler:
        message_id = await spooler.submit(submission("fail4xx@example.com"))
        info = await wait_status(spooler, message_id, {"deferred"})
    r = info["recipients"][0]
    assert r["last_reply"] == "450 4.2.1 Mailbox busy, try later"
    assert r["attempts"] == 1 and r["next_attempt_at"] is not None
    assert info["folder"] == "outbox"


async def test_backlog_flows_within_seconds_after_destination_returns(spooler_factory: SpoolerFactory) -> None:
    sink = Sink()  # not started: the destination is down
    async with spooler_factory(relay=sink.address, min_backoff=300.0) as spooler:
        ids = [await spooler.submit(submission(f"r{i}@example.com")) for i in range(30)]
        await wait_status(spooler, ids[-1], {"deferred"})
        assert spooler.status()["transports"][0]["destinations"][0]["status"] == "down"
        sink.start()
        try:
            t0 = time.monotonic()
            await sink.async_wait_for(30, timeout=10)
            elapsed = time.monotonic() - t0
        finally:
            sink.stop()
    assert elapsed < 5.0, f"backlog took {elapsed:.1f}s after the destination came back"


async def test_a_destination_going_down_and_coming_back_is_told_by_transport_status_events(
        spooler_factory: SpoolerFactory) -> None:
    sink = Sink()  # not started: the destination is down
    async with spooler_factory(relay=sink.address, min_backoff=300.0) as spooler:
        events = spooler.events(types=[EventType.TRANSPORT_STATUS])
        ids = [await spooler.submit(submission(f"r{i}@example.com")) for i in range(3)]
        down = await asyncio.wait_for(anext(events), 5)
        await wait_status(spooler, ids[-1], {"deferred"})
        sink.start()
        try:
            up = await asyncio.wait_for(anext(events), 5)
            await sink.async_wait_for(3, timeout=5)
            await asyncio.sleep(0.2)
            assert events.queue.empty(), "each change is told once"  # three deferrals, one `down`
        finally:
            sink.stop()
        stored = [e.id for e in await spooler.store.events_after(0) if e.type is EventType.TRANSPORT_STATUS]
    assert (down.detail["transport"], down.detail["destination"], down.detail["status"]) == \
        ("smtp", sink.address, "down")
    assert down.detail["reply"].startswith("4") and down.message_id is None and down.id is not None
    assert (up.detail["status"], up.detail["released"]) == ("up", 3)
    assert stored == [down.id, up.id]  # in the store too: a client resuming by event id sees them


async def test_down_destination_is_probed_after_restart(spooler_factory: SpoolerFactory) -> None:
    sink = Sink()
    async with spooler_factory(relay=sink.address, min_backoff=300.0) as spooler:
        message_id = await spooler.submit(submission("x@example.com"))
        await wait_status(spooler, message_id, {"deferred"})
    sink.start()
    try:
        async with spooler_factory(relay=sink.address, min_backoff=300.0):
            await sink.async_wait_for(1, timeout=5)
    finally:
        sink.stop()


async def test_local_recipient_is_filed_in_its_inbox_with_new_mail_event(spooler_factory: SpoolerFactory) -> None:
    async with spooler_factory(local_domains=["example.org"]) as spooler:
        events = spooler.events(types=[EventType.NEW_MAIL])
        message_id = await spooler.submit(submission("Bob@Example.org"))
        event = await asyncio.wait_for(anext(events), 2)
        info = await spooler.message(message_id)
        inbox = await spooler.store.read(lambda c: c.execute(
            "SELECT id, folder FROM messages WHERE mailbox = 'bob@example.org'").fetchall())
    assert event.mailbox == "bob@example.org" and event.folder == "inbox"
    assert info["recipients"][0]["status"] == "delivered"
    assert info["recipients"][0]["transport"] == "local"
    assert [row[1] for row in inbox] == ["inbox"]


async def test_recipients_of_two_address_types_are_split_across_transports(spooler_factory: SpoolerFactory,
                                                                          sink: Sink) -> None:
    posted: list[bytes] = []

    async def receive(request: web.Request) -> web.Response:
        posted.append(await request.read())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/inbox", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    hook = f"http://127.0.0.1:{port}/inbox"
    try:
        async with spooler_factory(relay=sink.address,
                                   transports=[{"name": "hooks", "type": "http", "addrtypes": ["HTTP"]}]) as spooler:
            message_id = await spooler.submit(submission("b@example.com", hook, addrtypes=["SMTP", "HTTP"]))
            info = await wait_status(spooler, message_id, {"delivered"})
    finally:
        await runner.cleanup()
    transports = {r["address"]: r["transport"] for r in info["recipients"]}
    assert transports == {"b@example.com": "smtp", hook: "hooks"}
    assert posted == [MESSAGE]
    assert sink.recipients() == ["b@example.com"]


async def test_unroutable_address_type_fails_with_reason(spooler_factory: SpoolerFactory, sink: Sink) -> None:
    async with spooler_factory(relay=sink.address) as spooler:
        message_id = await spooler.submit(submission("fax:+123", addrtypes=["FAX"]))
        info = await spooler.message(message_id)
    assert info["recipients"][0]["status"] == "failed"
    assert info["recipients"][0]["last_reply"].startswith("550 5.4.4")


async def test_held_message_is_not_sent_until_released(spooler_factory: SpoolerFactory) -> None:
    sink = Sink()
    async with spooler_factory(relay=sink.address) as spooler:
        held = await spooler.submit(submission("held@example.com"))
        other = await spooler.submit(submission("other@example.com"))
        await wait_status(spooler, held, {"deferred"})
        await spooler.hold([held])
        assert (await spooler.message(held))["recipients"][0]["status"] == "held"
        sink.start()
        try:
            await wait_status(spooler, other, {"delivered"})
            await spooler.flush()
            await asyncio.sleep(0.3)
            assert sink.recipients() == ["other@example.com"]
            await spooler.release([held])
            await wait_status(spooler, held, {"delivered"})
        finally:
            sink.stop()
    assert sink.recipients() == ["other@example.com", "held@example.com"]


async def test_hold_holds_recipients_whose_jobs_were_waiting_for_a_connection(
        spooler_factory: SpoolerFactory) -> None:
    """One connection, one recipient a transaction, a slow next hop: while b is being sent, c and
    d wait in the destination's queue, claimed (`active`). Hold drops those jobs; c and d must be
    held, not left `active` with nobody to settle them until a restart."""
    sink = Sink(data_delay=1.0).start()
    try:
        async with spooler_factory(relay=sink.address, destination_concurrency=1,
                                   destination_recipient_limit=1) as spooler:
            message_id = await spooler.submit(submission("b@example.com", "c@example.com", "d@example.com"))
            await asyncio.sleep(0.3)  # b is in its DATA phase
            with pytest.raises(UnableToAbort):  # b goes on, and hold says so (issue 10.5)
                await spooler.hold([message_id])
            held = await wait_status(spooler, message_id, {"delivered", "held"})
            await spooler.release([message_id])
            await wait_status(spooler, message_id, {"delivered"})
    finally:
        sink.stop()
    assert [r["status"] for r in held["recipients"]] == ["delivered", "held", "held"]
    assert sorted(sink.recipients()) == ["b@example.com", "c@example.com", "d@example.com"]


async def test_requeue_makes_recipients_whose_jobs_were_waiting_for_a_connection_due_again(
        spooler_factory: SpoolerFactory) -> None:
    sink = Sink(data_delay=1.0).start()
    try:
        async with spooler_factory(relay=sink.address, destination_concurrency=1,
                                   destination_recipient_limit=1) as spooler:
            message_id = await spooler.submit(submission("b@example.com", "c@example.com", "d@example.com"))
            await asyncio.sleep(0.3)  # b is in its DATA phase, c and d wait in the queue
            await spooler.requeue([message_id])
            await wait_status(spooler, message_id, {"delivered"})
    finally:
        sink.stop()
    assert sorted(sink.recipients()) == ["b@example.com", "c@example.com", "d@example.com"]


async def test_deleted_message_is_gone(spooler_factory: SpoolerFactory) -> None:
    sink = Sink()
    async with spooler_factory(relay=sink.address) as spooler:
        message_id = await spooler.submit(submission("x@example.com"))
        await wait_status(spooler, message_id, {"deferred"})
        assert await spooler.delete([message_id]) == [message_id]
        counts = await spooler.store.counts()
    assert counts["messages"] == 0


async def test_flush_retries_a_deferred_message_now(spooler_factory: SpoolerFactory, sink: Sink) -> None:
    async with spooler_factory(relay=sink.address, min_backoff=3600.0) as spooler:
        message_id = await spooler.submit(submission("fail4xx@example.com"))
        await wait_status(spooler, message_id, {"deferred"})
        await spooler.flush([message_id])
        end = time.monotonic() + 5
        while (await spooler.message(message_id))["recipients"][0]["attempts"] < 2:
            assert time.monotonic() < end, "flush did not cause a new attempt"
            await asyncio.sleep(0.02)


async def test_expired_recipient_is_not_retried(spooler_factory: SpoolerFactory, sink: Sink) -> None:
    async with spooler_factory(relay=sink.address) as spooler:
        message_id = await spooler.submit(submission("fail4xx@example.com", expires_at=time.time() + 0.3))
        await wait_status(spooler, message_id, {"deferred"})
        await asyncio.sleep(0.4)
        await spooler.flush([message_id])
        info = await wait_status(spooler, message_id, {"expired"})
    assert info["folder"] == "sent"


async def test_a_submitter_that_does_not_deliver_leaves_routing_to_the_daemon(spooler_factory: SpoolerFactory,
                                                                             sink: Sink) -> None:
    """`msgspool sendmail` knows neither `serve --relay` nor `--local-domain`: the daemon routes."""
    async with spooler_factory(deliver=False) as submitter:  # no relay, default local domain
        remote = await submitter.submit(submission("b@example.com"))
        local = await submitter.submit(submission("bob@example.org"))
        assert (await submitter.message(remote))["recipients"][0]["transport"] is None
    async with spooler_factory(relay=sink.address, local_domains=["example.org"]) as daemon:
        remote_info = await wait_status(daemon, remote, {"delivered"})
        local_info = await wait_status(daemon, local, {"delivered"})
        inbox = await daemon.folder("bob@example.org")
    assert sink.recipients() == ["b@example.com"]
    assert remote_info["recipients"][0]["destination"] == sink.address
    assert local_info["recipients"][0]["transport"] == "local"
    assert len(inbox) == 1


async def test_flush_probes_a_down_destination_at_once(spooler_factory: SpoolerFactory) -> None:
    sink = Sink()
    async with spooler_factory(relay=sink.address, probe_min=30.0, probe_max=30.0) as spooler:
        message_id = await spooler.submit(submission("x@example.com"))
        await wait_status(spooler, message_id, {"deferred"})
        sink.start()
        try:
            await spooler.flush()
            await sink.async_wait_for(1, timeout=3)  # not the 30 s probe interval
        finally:
            sink.stop()


async def test_urgent_mail_goes_first_when_the_queue_is_backed_up(spooler_factory: SpoolerFactory,
                                                                  sink: Sink) -> None:
    urgent = b"From: a@example.org\r\nX-Priority: 1 (Highest)\r\nSubject: urgent\r\n\r\nnow\r\n"
    async with spooler_factory(relay=sink.address, destination_concurrency=1) as spooler:
        await asyncio.gather(*(spooler.submit(submission(f"n{i}@example.com")) for i in range(30)),
                             spooler.submit(submission("u@example.com", content=urgent)))
        await sink.async_wait_for(31)
    order = [m.recipients[0] for m in sink.messages]
    assert order.index("u@example.com") == 0, order
