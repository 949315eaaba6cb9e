"""Leases with fencing (issue 11.4) in the runtime, on the real SQLite store: the heartbeat keeps a
live node's work however long it takes, a node that finds its lease lost drops its work and goes
on as a new node, a clean stop hands back what is left. The store's side of leases is in
tests/contract/test_leases.py; here also what only raw SQL can set up (a node row pruned by hand).

Two nodes are two `SQLiteStore`s on one spool file, as two processes would be.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from msgspool.domain.message import Message
from msgspool.spooler.intake import mark_active
from msgspool.spooler.runtime import Spooler
from msgspool.stores.ops import NODE_RETENTION
from msgspool.stores.sqlite import DB_NAME, SQLiteStore
from tests.conftest import make_settings, sqlite_only
from tests.integration.test_relay import submission, wait_status
from tests.support.flaky import FlakyTransport


@asynccontextmanager
async def node(path: Path, owner: str | None, lease_time: float = 60.0,
               now: float | None = None) -> AsyncIterator[SQLiteStore]:
    """A store on the spool file working as node `owner` (registered unless None)."""
    store = SQLiteStore(path)
    await store.open()
    try:
        if owner is not None:
            await store.register_node(owner, "host", 1, time.time() if now is None else now, lease_time)
            store.owner = owner
        yield store
    finally:
        await store.close()


@pytest.fixture
def spool_file(tmp_path: Path) -> Path:
    return tmp_path / "spool" / DB_NAME


@pytest.fixture
async def builder(tmp_path: Path) -> AsyncIterator[Callable[[str], Message]]:
    """Messages routed as the daemon would, their recipients due now and marked active."""
    spooler = Spooler(make_settings(tmp_path / "spool"))

    def build(address: str) -> Message:
        message, _ = spooler.intake.build(submission(address), route=True)
        mark_active(message)
        return message

    yield build


def status_of(path: Path, message_id: str) -> list[tuple[str, str | None]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT status, owner FROM recipients WHERE message_id = ? ORDER BY idx",
                            (message_id,)).fetchall()


@sqlite_only  # it reads or writes the SQLite file itself
async def test_a_rescue_takes_only_the_work_of_nodes_without_a_live_lease_a_row_pruned_by_hand_included(
        spool_file: Path, builder: Callable[[str], Message]) -> None:
    async with node(spool_file, "live", lease_time=60.0) as live, \
            node(spool_file, "expired", lease_time=0.2) as expired, node(spool_file, None) as nobody:
        await live.register_node("pruned", "host", 1, time.time(), 60.0)
        mine, theirs, gone, orphan = (builder(f"{who}@example.com") for who in ("live", "expired", "gone", "x"))
        await live.submit(mine)
        await expired.submit(theirs)
        await live.submit(gone, owner="pruned")
        await nobody.submit(orphan)  # active with no node at all
        with sqlite3.connect(spool_file) as conn:  # the node row of "pruned" was cleaned up by someone
            conn.execute("DELETE FROM nodes WHERE owner = 'pruned'")
        await asyncio.sleep(0.3)
        assert await live.rescue(time.time()) == 3
        assert status_of(spool_file, mine.id) == [("active", "live")]
        for message in (theirs, gone, orphan):
            assert status_of(spool_file, message.id) == [("queued", None)]
        assert await live.rescue(time.time()) == 0
        nodes = {n["owner"]: n for n in await live.nodes(time.time())}
        assert set(nodes) == {"live", "expired"}
        assert (nodes["live"]["alive"], nodes["live"]["leases"]) == (True, 1)
        assert (nodes["expired"]["alive"], nodes["expired"]["leases"]) == (False, 0)
        # long dead and holding nothing: pruned by the next rescue
        assert await live.rescue(time.time() + NODE_RETENTION + 1) == 1  # "live" itself is expired by then
        assert [n["owner"] for n in await live.nodes(time.time())] == ["live"]


# -- the runtime ------------------------------------------------------------------------------


@pytest.fixture
def flaky() -> FlakyTransport:
    return FlakyTransport()


def spooler_with(tmp_path: Path, flaky: FlakyTransport, **overrides: Any) -> Spooler:
    return Spooler(make_settings(tmp_path / "spool", **overrides), transports={flaky.name: flaky})


async def test_the_heartbeat_keeps_a_live_nodes_work_across_many_lease_times(
        tmp_path: Path, flaky: FlakyTransport) -> None:
    """A transaction that lasts ten lease times, while another node rescues every few ms: the
    heartbeat keeps the lease, nothing is taken, the message goes once. (A lease of 0.5 s: with
    0.2 s, on PostgreSQL on a loaded machine, a beat came late enough to lose the lease now and
    then, which is the right answer to a late beat but not this test's question.)"""
    flaky.gate = asyncio.Event()
    spooler = spooler_with(tmp_path, flaky, lease_time=0.5)
    await spooler.start()
    rescued: list[int] = []
    try:
        message_id = await spooler.submit(submission("b@example.com"))
        await asyncio.wait_for(flaky.sending.wait(), 5)
        async with node(spooler.settings.spool_path / DB_NAME, "rescuer") as other:
            end = time.monotonic() + 5.0
            while time.monotonic() < end:
                rescued.append(await other.rescue(time.time()))
                await asyncio.sleep(0.01)
        flaky.gate.set()
        await wait_status(spooler, message_id, {"delivered"})
        history = (await spooler.message(message_id)).get("history", [])
    finally:
        await spooler.stop()
    assert sum(rescued) == 0 and len(rescued) > 50
    assert flaky.delivered == ["b@example.com"]
    assert not [h for h in history if h["stage"] == "rescue"]


@sqlite_only  # it reads or writes the SQLite file itself
async def test_a_node_that_finds_its_lease_lost_drops_its_work_and_delivers_again_as_a_new_node(
        tmp_path: Path, flaky: FlakyTransport, caplog: pytest.LogCaptureFixture) -> None:
    flaky.gate = asyncio.Event()
    spooler = spooler_with(tmp_path, flaky, lease_time=0.4)
    await spooler.start()
    try:
        first = spooler.lease.owner
        message_id = await spooler.submit(submission("b@example.com"))
        await asyncio.wait_for(flaky.sending.wait(), 5)
        path = spooler.settings.spool_path / DB_NAME
        with sqlite3.connect(path) as conn:  # as if the process had stalled past its lease
            conn.execute("UPDATE nodes SET lease_until = ? WHERE owner = ?", (time.time() - 1, first))
        end = time.monotonic() + 5
        while spooler.lease.owner == first and time.monotonic() < end:
            await asyncio.sleep(0.02)
        assert spooler.lease.owner != first
        assert "lease ran out" in caplog.text
        # the old transaction was cancelled unrecorded; the new node rescued its row and sends it
        flaky.gate.set()
        await wait_status(spooler, message_id, {"delivered"})
        later = await spooler.submit(submission("c@example.com"))
        await wait_status(spooler, later, {"delivered"})
        nodes = {n["owner"]: n for n in (await spooler.status_table())["nodes"]}
    finally:
        await spooler.stop()
    assert nodes[first]["alive"] is False and nodes[spooler.lease.owner]["alive"] is True
    assert sorted(flaky.delivered) == ["b@example.com", "c@example.com"]


@sqlite_only  # it reads or writes the SQLite file itself
async def test_a_clean_stop_gives_back_what_is_in_flight_and_removes_the_node(
        tmp_path: Path, flaky: FlakyTransport) -> None:
    flaky.gate = asyncio.Event()
    spooler = spooler_with(tmp_path, flaky, lease_time=5.0)
    await spooler.start()
    owner = spooler.lease.owner
    message_id = await spooler.submit(submission("b@example.com"))
    await asyncio.wait_for(flaky.sending.wait(), 5)
    table = await spooler.status_table()
    assert [(n["owner"], n["alive"], n["leases"]) for n in table["nodes"]] == [(owner, True, 1)]
    await spooler.stop(drain=0.2)  # the transaction does not finish in time: cancelled
    path = spooler.settings.spool_path / DB_NAME
    assert status_of(path, message_id) == [("queued", None)]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM nodes").fetchone() == (0,)


async def test_a_node_waking_from_a_stall_past_its_lease_starts_no_transaction(
        tmp_path: Path, flaky: FlakyTransport) -> None:
    """The event loop blocked for three lease times (a stall) with one transaction in flight and
    a second message queued behind it: the transaction finishes and is recorded (nobody took its
    recipient), but the queued one never starts on the old node — by its own clock the lease ran
    out — and the new node rescues it and sends it. Each goes once."""
    flaky.gate = asyncio.Event()
    spooler = spooler_with(tmp_path, flaky, lease_time=0.3, destination_concurrency=1)
    await spooler.start()
    try:
        first = spooler.lease.owner
        in_flight = await spooler.submit(submission("a@example.com"))
        await asyncio.wait_for(flaky.sending.wait(), 5)
        queued = await spooler.submit(submission("b@example.com"))  # waits behind it for the one connection
        time.sleep(1.0)  # the stall: nothing of this process runs
        flaky.gate.set()
        await wait_status(spooler, in_flight, {"delivered"})
        await wait_status(spooler, queued, {"delivered"})
        assert spooler.lease.owner != first
        stages = {m: [h["stage"] for h in (await spooler.message(m)).get("history") or []] for m in (in_flight, queued)}
    finally:
        await spooler.stop()
    assert flaky.delivered == ["a@example.com", "b@example.com"]
    assert stages == {in_flight: [], queued: ["rescue"]}, stages
