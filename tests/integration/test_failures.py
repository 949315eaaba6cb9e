"""Exceptions become states (issue 10.4; MAPI: a transport's critical error puts its status row in
FAILURE and the spooler recovers it without a restart).

Whatever a transport raises — in connect, send or close — its recipients go back to the queue
with the error as their last reply, the attempt counts towards `crash_limit`, the transport's
status row says `failure` with the reason, and it recovers by itself once the transport works.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from msgspool.spooler.runtime import Spooler
from tests.conftest import make_settings
from tests.integration.test_relay import submission, wait_status
from tests.support.flaky import FlakyTransport


@pytest.fixture
def flaky() -> FlakyTransport:
    return FlakyTransport()


@pytest.fixture
async def spooler(tmp_path: Path, flaky: FlakyTransport) -> AsyncIterator[Spooler]:
    spooler = Spooler(make_settings(tmp_path / "spool", min_backoff=0.2, max_backoff=0.4, crash_limit=3),
                      transports={flaky.name: flaky})
    await spooler.start()
    try:
        yield spooler
    finally:
        await spooler.stop()


async def until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    end = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return value


def transport_row(spooler: Spooler, name: str = "flaky") -> dict[str, Any]:
    row: dict[str, Any] = next(t for t in spooler.status()["transports"] if t["name"] == name)
    return row


async def test_a_transport_whose_connect_raises_defers_reports_failure_and_recovers_alone(
        spooler: Spooler, flaky: FlakyTransport) -> None:
    flaky.raise_in = {"connect"}
    message_id = await spooler.submit(submission("b@example.com"))
    info = await wait_status(spooler, message_id, {"deferred"})
    assert info["recipients"][0]["last_reply"].startswith(
        "451 4.3.0 transport flaky raised RuntimeError: boom in connect"), info
    row = await until(lambda: (r := transport_row(spooler))["status"] == "failure" and r, "status failure")
    assert "boom in connect" in row["reason"], row
    assert not flaky.delivered

    flaky.raise_in.clear()  # it works again: no flush, no restart
    await wait_status(spooler, message_id, {"delivered"})
    assert flaky.delivered == ["b@example.com"]
    await until(lambda: transport_row(spooler)["status"] == "online", "status online again")


async def test_a_transport_whose_send_raises_defers_counts_the_crash_and_holds_a_message_at_the_limit(
        spooler: Spooler, flaky: FlakyTransport) -> None:
    flaky.raise_in = {"send"}
    message_id = await spooler.submit(submission("b@example.com"))
    info = await wait_status(spooler, message_id, {"deferred", "held"})
    assert info["recipients"][0]["last_reply"].startswith("451 4.3.0 transport flaky raised RuntimeError: boom in send")
    row = await until(lambda: (r := transport_row(spooler))["status"] == "failure" and r, "status failure")
    assert "boom in send" in row["reason"], row
    info = await wait_status(spooler, message_id, {"held"})  # crash_limit = 3 attempts
    assert info["recipients"][0]["attempts"] == 3, info

    flaky.raise_in.clear()
    other = await spooler.submit(submission("c@example.com"))
    await wait_status(spooler, other, {"delivered"})
    await until(lambda: transport_row(spooler)["status"] == "online", "status online after a good delivery")


async def test_a_transport_whose_close_raises_loses_nothing(spooler: Spooler, flaky: FlakyTransport) -> None:
    flaky.raise_in = {"close"}
    ids = [await spooler.submit(submission(f"r{i}@example.com")) for i in range(5)]
    for message_id in ids:
        await wait_status(spooler, message_id, {"delivered"})
    await until(lambda: flaky.calls["close"] >= 1, "the idle connection closed")  # connection_idle_time 0.5 s
    later = await spooler.submit(submission("later@example.com"))  # the destination still works
    await wait_status(spooler, later, {"delivered"})
    assert sorted(flaky.delivered) == sorted([f"r{i}@example.com" for i in range(5)] + ["later@example.com"])


async def test_outcomes_the_store_failed_to_record_are_recorded_once_it_works_again(
        spooler: Spooler, flaky: FlakyTransport) -> None:
    """A full disk while outcomes are recorded: they wait in memory and are written when the store
    takes writes again — no restart, no second delivery."""
    real = spooler.store.settle
    failures = 3

    async def full_disk(settlements: Any, now: float) -> Any:
        nonlocal failures
        if failures:
            failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return await real(settlements, now)

    spooler.store.settle = full_disk  # type: ignore[method-assign]
    message_id = await spooler.submit(submission("b@example.com"))
    await wait_status(spooler, message_id, {"delivered"})
    assert failures == 0
    assert flaky.delivered == ["b@example.com"]
    # The reader may see the commit a moment before the writer's answer reaches the scheduler.
    await until(lambda: spooler.scheduler.active == 0, "the window to empty")


async def test_a_refill_that_fails_is_tried_again_and_claims_what_waits(spooler: Spooler,
                                                                        flaky: FlakyTransport) -> None:
    real = spooler.store.claim
    failures = 2

    async def failing(*args: Any, **kw: Any) -> Any:
        nonlocal failures
        if failures:
            failures -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return await real(*args, **kw)

    spooler.store.claim = failing  # type: ignore[method-assign]
    message_id = await spooler.submit(submission("b@example.com", deliver_after=time.time() + 0.3))
    await wait_status(spooler, message_id, {"delivered"})
    assert failures == 0


async def test_the_watchdog_gives_back_what_this_node_lost_and_raises_an_alarm(spooler: Spooler,
                                                                               flaky: FlakyTransport) -> None:
    """A recipient `active` as this node's that nothing in memory holds (lost by a bug) is due
    again after two looks of the watchdog, and delivered; what this node holds is never touched."""
    from msgspool.spooler.intake import mark_active

    message, _ = spooler.intake.build(submission("orphan@example.com"), route=True)
    mark_active(message)
    await spooler.store.submit(message)  # this node's, but never handed to its scheduler
    assert await spooler.scheduler.watch() == 0  # first look: a suspect only
    assert (await spooler.message(message.id))["recipients"][0]["status"] == "active"
    assert await spooler.scheduler.watch() == 1
    await wait_status(spooler, message.id, {"delivered"})
    assert flaky.delivered == ["orphan@example.com"]
    row = spooler.status()["spooler"]
    assert row["stuck_returned"] == 1 and "watchdog" in row["alarm"], row


async def test_the_watchdog_never_takes_the_work_of_another_live_node(spooler: Spooler) -> None:
    """Issue 11.4: another node's rows are its own while its lease holds (the lease's rescue takes
    them once it ran out): the watchdog leaves them alone however often it looks."""
    from msgspool.spooler.intake import mark_active

    await spooler.store.register_node("other-node", "elsewhere", 1, time.time(), 60.0)
    message, _ = spooler.intake.build(submission("theirs@example.com"), route=True)
    mark_active(message)
    await spooler.store.submit(message, owner="other-node")
    for _ in range(3):
        assert await spooler.scheduler.watch() == 0
    assert (await spooler.message(message.id))["recipients"][0]["status"] == "active"


async def test_the_watchdog_leaves_recipients_in_a_transaction_alone(spooler: Spooler, flaky: FlakyTransport) -> None:
    release = asyncio.Event()
    real_send = FlakyTransport.connect

    async def slow_connect(self: FlakyTransport, nexthop: str) -> Any:
        await release.wait()
        return await real_send(self, nexthop)

    flaky.connect = slow_connect.__get__(flaky)  # type: ignore[method-assign]
    message_id = await spooler.submit(submission("b@example.com"))
    for _ in range(3):
        assert await spooler.scheduler.watch() == 0
    release.set()
    await wait_status(spooler, message_id, {"delivered"})
    assert flaky.delivered == ["b@example.com"]
