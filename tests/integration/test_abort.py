"""Cancel tells the truth (issue 10.5; MAPI AbortSubmit answers MAPI_E_UNABLE_TO_ABORT once a
transport has the message).

`delete` and `hold` take back every recipient not yet in a transaction; recipients a transport
has in flight go on, and the answer (UnableToAbort) says which were in flight and which were
cancelled or held."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from msgspool.errors import UnableToAbort
from msgspool.spooler.runtime import Spooler
from tests.conftest import make_settings
from tests.integration.test_relay import submission, wait_status
from tests.support.flaky import FlakyTransport


@pytest.fixture
def flaky() -> FlakyTransport:
    transport = FlakyTransport()
    transport.gate = asyncio.Event()
    return transport


@pytest.fixture
async def spooler(tmp_path: Path, flaky: FlakyTransport) -> AsyncIterator[Spooler]:
    # One connection, one recipient per transaction: the first recipient is in flight, the rest wait.
    spooler = Spooler(make_settings(tmp_path / "spool", destination_concurrency=1, destination_recipient_limit=1),
                      transports={flaky.name: flaky})
    await spooler.start()
    try:
        yield spooler
    finally:
        assert flaky.gate is not None
        flaky.gate.set()
        await spooler.stop()


async def test_delete_of_a_message_in_flight_says_so_and_cancels_only_the_rest(spooler: Spooler,
                                                                              flaky: FlakyTransport) -> None:
    assert flaky.gate is not None
    message_id = await spooler.submit(submission("first@example.com", "second@example.com", "third@example.com"))
    await asyncio.wait_for(flaky.sending.wait(), 5)
    with pytest.raises(UnableToAbort) as caught:
        await spooler.delete([message_id])
    err = caught.value
    assert str(err) == "unable to abort: in flight"
    assert err.done == []
    assert err.in_flight == {message_id: ["first@example.com"]}
    assert sorted(err.cancelled[message_id]) == ["second@example.com", "third@example.com"]
    flaky.gate.set()
    info = await wait_status(spooler, message_id, {"delivered"})
    assert [r["address"] for r in info["recipients"]] == ["first@example.com"]
    await asyncio.sleep(0.3)
    assert flaky.delivered == ["first@example.com"]  # the cancelled ones never went out


async def test_delete_of_messages_not_in_flight_deletes_them_and_nothing_goes_out(spooler: Spooler,
                                                                                 flaky: FlakyTransport) -> None:
    assert flaky.gate is not None
    busy = await spooler.submit(submission("busy@example.com"))
    await asyncio.wait_for(flaky.sending.wait(), 5)
    waiting = await spooler.submit(submission("waiting@example.com"))  # queued behind the one connection
    assert await spooler.delete([waiting]) == [waiting]
    flaky.gate.set()
    await wait_status(spooler, busy, {"delivered"})
    await asyncio.sleep(0.3)
    assert flaky.delivered == ["busy@example.com"]
    with pytest.raises(Exception, match=waiting):
        await spooler.message(waiting)


async def test_hold_of_a_message_in_flight_holds_the_rest_and_says_what_went_on(spooler: Spooler,
                                                                                flaky: FlakyTransport) -> None:
    assert flaky.gate is not None
    message_id = await spooler.submit(submission("first@example.com", "second@example.com"))
    await asyncio.wait_for(flaky.sending.wait(), 5)
    with pytest.raises(UnableToAbort) as caught:
        await spooler.hold([message_id])
    assert str(caught.value) == "unable to hold: in flight"
    assert caught.value.in_flight == {message_id: ["first@example.com"]}
    assert caught.value.cancelled == {message_id: ["second@example.com"]}
    flaky.gate.set()
    info = await wait_status(spooler, message_id, {"delivered", "held"})
    assert {r["address"]: r["status"] for r in info["recipients"]} == {"first@example.com": "delivered",
                                                                      "second@example.com": "held"}
    await asyncio.sleep(0.3)
    assert flaky.delivered == ["first@example.com"]
