"""This process as a delivery node (issue 11.4): its identity, its lease, its heartbeat, and the
rescue of dead nodes' work.

A process that delivers registers a node with an identity of its own, new at every start (a uuid4,
with host and pid for people to read): a restarted process can never refresh a dead one's lease
(Oban#862, procrastinate#1518). Every recipient it claims is `active` with that identity as owner,
all under the node's one lease, which the heartbeat renews every quarter of `lease_time` — at least
three beats per lease, so a beat that comes late is no reason to take live work (pgqueuer#323
re-picked running jobs when beats came no more often than the timeout). A beat that finds the lease
ran out (the process stalled longer than a lease) means the node is dead to the others and its work
may be theirs: it stops and never beats again (`on_lost`). Each beat also rescues the work of nodes
whose lease ran out, judged by their heartbeat and never by how long work has been active.

Each beat also reads the nodes table (issue 11.6, 11.7): how many nodes live — each destination's
connections are shared between them (destinations.py) — and whether an operator asked this node to
drain (`msgspool node drain --owner`), which it then does as on SIGTERM (`on_drain`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from msgspool.ports import Leases
from msgspool.spooler.background import stop_task

log = logging.getLogger("msgspool")
BEATS_PER_LEASE = 4


def new_owner() -> str:
    """A node identity never used before: host and pid for people, a uuid4 for uniqueness."""
    return f"{socket.gethostname() or 'localhost'}-{os.getpid()}-{uuid.uuid4().hex}"


class NodeStore(Leases, Protocol):
    """What a node's lease needs of the store: the Leases role, and the node it works for."""

    owner: str | None


class NodeLease:
    def __init__(self, store: NodeStore, lease_time: float, *, on_lost: Callable[[], None],
                 on_rescued: Callable[[int], None], clock: Callable[[], float] = time.time,
                 on_nodes: Callable[[int], None] = lambda _live: None,
                 on_drain: Callable[[], None] = lambda: None) -> None:
        self.store, self.lease_time, self.clock = store, lease_time, clock
        self.on_lost, self.on_rescued = on_lost, on_rescued
        self.on_nodes, self.on_drain = on_nodes, on_drain
        self.owner: str | None = None
        self.lost = False
        self.live_nodes = 1  # nodes of the spool with a live lease, this one included (`look`)
        self.draining = False  # asked to drain: told `on_drain` once
        self.renewed_at = 0.0  # when the lease was last renewed (this process's clock)
        self._beats: asyncio.Task[None] | None = None

    async def start(self, *, sole: bool = False) -> int:
        """Register a new node and hold its lease from now on; rescue what dead nodes held (with
        `sole`, every other node is dead: SQLite's delivery lock proves it). Returns how many
        recipients were rescued. The store's `owner` is the new node from then on."""
        await self._stop_beats()  # a start after a lost lease: the old loop must not beat for the new node
        owner, now = new_owner(), self.clock()
        await self.store.register_node(owner, socket.gethostname(), os.getpid(), now, self.lease_time, sole=sole)
        self.owner, self.lost, self.renewed_at = owner, False, now
        self.store.owner = owner
        self.draining = False
        rescued = await self.store.rescue(now)
        if rescued:
            log.info("node %s: %d recipients of nodes that are gone are due again", owner, rescued)
        await self.look()
        self._beats = asyncio.create_task(self._beat_loop(), name="msgspool-heartbeat")
        return rescued

    async def look(self) -> None:
        """Read the nodes table: the live nodes (`on_nodes` when their number changed) and this
        node's draining flag (`on_drain`, once). At every beat, and when another node says it
        started or stopped (a `nodes` notice), so that shares change at once rather than a beat later."""
        rows = await self.store.nodes(self.clock())
        live = max(1, sum(1 for row in rows if row["alive"]))
        if live != self.live_nodes:
            log.info("node %s: %d live nodes share each destination's connections", self.owner, live)
            self.live_nodes = live
            self.on_nodes(live)
        if not self.draining and any(row["owner"] == self.owner and row["draining"] for row in rows):
            self.draining = True
            log.warning("node %s: asked to drain; it hands its work back and stops", self.owner)
            self.on_drain()

    async def _beat_loop(self) -> None:
        """Beat until the lease is lost or the node stops. A beat the store fails (a full disk) is
        logged and tried again at the next one: should the lease run out meanwhile, the first beat
        that gets through finds it so."""
        while True:
            await asyncio.sleep(self.lease_time / BEATS_PER_LEASE)
            try:
                if not await self.beat():
                    return
            except Exception:
                log.exception("node %s: heartbeat failed (%.1f s since the lease was renewed)", self.owner,
                              self.clock() - self.renewed_at)

    def holds(self) -> bool:
        """May this node start work now? Not once its lease ran out by its own clock — the lease
        was renewed up to `renewed_at + lease_time` and is never renewed after — even before a
        beat told it so: a process that wakes from a stall must not start a transaction on work
        that may be another node's by now (the store would refuse its outcome; the mail would go
        twice). Checked before each transaction starts; the first that finds it so declares it lost."""
        if self.lost or self.owner is None:
            return False
        if self.clock() > self.renewed_at + self.lease_time:
            self._lose(self.clock())
            return False
        return True

    def _lose(self, now: float) -> None:
        if self.lost:
            return
        self.lost = True
        log.error("node %s: its lease ran out (renewed %.1f s ago, lease_time %.1f s) and other nodes may have"
                  " taken its work: it stops delivering without recording anything more", self.owner,
                  now - self.renewed_at, self.lease_time)
        self.on_lost()

    async def beat(self) -> bool:
        """Renew the lease, then rescue dead nodes' work; False once the lease was found lost."""
        assert self.owner is not None
        if self.lost:
            return False
        now = self.clock()
        if not await self.store.heartbeat(self.owner, now, self.lease_time):
            self._lose(now)
            return False
        took = self.clock() - now
        if took > self.lease_time / BEATS_PER_LEASE:
            log.warning("node %s: a heartbeat took %.2f s (lease_time %.1f s)", self.owner, took, self.lease_time)
        self.renewed_at = now
        rescued = await self.store.rescue(now)
        if rescued:
            log.warning("node %s: rescued %d recipients of nodes whose lease ran out; they are due again",
                        self.owner, rescued)
            self.on_rescued(rescued)
        await self.look()
        return True

    async def stop(self) -> None:
        """Stop beating; on a clean stop (the lease still held), give back what the node still
        holds and delete its row. Called after delivery stopped."""
        await self._stop_beats()
        if self.owner is None or self.lost:
            return
        returned = await self.store.retire_node(self.owner, self.clock())
        if returned:
            log.info("node %s: %d recipients still active at the stop are due again", self.owner, returned)

    async def _stop_beats(self) -> None:
        task, self._beats = self._beats, None
        if task is not None and task is not asyncio.current_task():
            await stop_task(task)
