"""What crosses the link between the daemon's intake and delivery processes survives the trip."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from msgspool.domain.dsn import MessageDSN, Notify, OriginalRecipient, RecipientDSN, Ret
from msgspool.domain.events import Event, EventType, event_from_wire, event_to_wire
from msgspool.domain.message import Message, Recipient
from msgspool.domain.recipient import Status
from msgspool.spooler.link import Link, message_from_wire, message_to_wire


def test_a_handed_over_message_keeps_its_active_recipients_and_dsn_requests() -> None:
    dsn = RecipientDSN(frozenset({Notify.SUCCESS}), OriginalRecipient("rfc822", "B@example.com"))
    message = Message(id="Q1", sender="a@example.org", content=b"Subject: x\r\n\r\n\xff\r\n", submitted_at=1.5,
                      recipients=[Recipient("b@example.com", status=Status.ACTIVE, transport="smtp",
                                            nexthop="relay:25", index=0, dsn=dsn),
                                  Recipient("local@localhost", status=Status.DELIVERED, index=1)],
                      dsn=MessageDSN(Ret.HDRS, "env-1"))
    back = message_from_wire(message_to_wire(message))
    assert back.content == message.content
    assert back.dsn == message.dsn
    assert [(r.address, r.index, r.transport, r.nexthop, r.dsn) for r in back.recipients] == [
        ("b@example.com", 0, "smtp", "relay:25", dsn)]


def test_an_event_survives_the_link() -> None:
    event = Event(EventType.NEW_MAIL, "Q1", 2.0, mailbox="bob@localhost", folder="inbox", detail={"x": 1}, id=7)
    assert event_from_wire(event_to_wire(event)) == event


async def test_requests_in_flight_together_each_get_their_own_answer() -> None:
    """The daemon asks the delivery process for its status from the status watcher and from
    `GET /api/status` at once: the first answer must not unhook the second request's waiter
    (it did, and `/api/status` then hung for the link's 10 s timeout)."""
    async def answer(message: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.05 * message["n"])  # the first answer is back before the others
        return {"echo": message["n"]}

    ours, theirs = socket.socketpair()
    asker = await Link.over(ours, answer)
    answerer = await Link.over(theirs, answer)
    running = [asyncio.create_task(asker.run()), asyncio.create_task(answerer.run())]
    try:
        got = await asyncio.gather(*(asker.request({"op": "status", "n": n}, timeout=2.0) for n in range(3)))
        assert [g["echo"] for g in got] == [0, 1, 2]
        assert not asker._requests
    finally:
        for link in (asker, answerer):
            link.writer.close()
        for task in running:
            task.cancel()
