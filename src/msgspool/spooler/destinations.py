"""Destinations: one per (transport, nexthop). Each owns its queue of jobs, its connections
(reused, at most `concurrency` at once), and its health.

A job is one message with the recipients it has for this destination (at most
`recipient_limit` per SMTP transaction). Workers — one per open connection — take jobs until the
queue stays empty for `idle_time`, then close. When a connection cannot be set up (or is lost),
the destination is marked down: every job still queued is deferred *without* an attempt and
flagged as waiting for the destination, and a probe loop (health.py) tries the destination again
on a short interval. The first good probe brings it up and the scheduler releases the backlog.
Each change between down and up is told once to `on_status` (the `transport_status` event: MAPI's
status table row changing).

On a spool shared by several nodes (issue 11.6) a destination's limits hold for all of them together:
each node opens at most its share of `concurrency` — the limit divided by the live nodes, rounded
down, at least one (so N nodes open at most `concurrency` connections together while N <= the
limit) — and a worker beyond the share closes when its transaction ends, should the share shrink
because a node joined. A node that finds the destination down tells the others (`heard`): they mark
it down too and only probe it, instead of each finding out with connections of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from msgspool.domain.dsn import Handoff, delay_warning_at
from msgspool.domain.health import DestinationHealth, ProbePolicy
from msgspool.domain.message import NORMAL, Message, Recipient, Settlement
from msgspool.domain.outcome import DESTINATION_DOWN, Reply, attempts_exhausted
from msgspool.domain.recipient import Status
from msgspool.domain.retry import RetryPolicy
from msgspool.errors import DestinationUnavailable
from msgspool.logs import fields
from msgspool.ports import Connection, Transport
from msgspool.spooler.metrics import Metrics

log = logging.getLogger("msgspool.delivery")


def deferral(retry: RetryPolicy, warn_after: float, now: float, message: Message, r: Recipient, reply: Reply, *,
             attempted: bool, wait: bool = False, remote: str | None = None) -> Settlement:
    """A temporary failure: deferred with backoff, or given up (expired; failed at the cap on
    attempts — which only an attempt made can reach, not a wait for a down destination)."""
    give_up_at = retry.give_up_at(message.submitted_at, message.expires_at, message.deliver_after)
    if now >= give_up_at:
        return Settlement(message.id, r.index, r.address, Status.EXPIRED, reply, attempted=attempted, dsn=r.dsn,
                          remote=remote)
    if attempted and retry.exhausted(r.attempts + 1, message.max_attempts):
        return Settlement(message.id, r.index, r.address, Status.FAILED, attempts_exhausted(r.attempts + 1, reply),
                          remote=remote, dsn=r.dsn)
    next_at = retry.next_attempt(now, r.attempts + 1)
    # Waiting for a down destination counts too: a long outage is when senders want to know.
    warn_at = delay_warning_at(r.dsn, sender=message.sender, submitted_at=message.submitted_at,
                               warn_after=warn_after, deliver_after=message.deliver_after)
    return Settlement(message.id, r.index, r.address, Status.DEFERRED, reply, attempted=attempted,
                      next_attempt_at=min(next_at, give_up_at), wait_destination=wait, remote=remote, dsn=r.dsn,
                      warn_at=warn_at)


@dataclass(slots=True)
class Job:
    message: Message
    recipients: list[Recipient]
    fresh: bool = False  # in the head of the queue: new or urgent mail, ahead of retries and backlog
    settled: bool = False  # its outcomes went to the scheduler
    queued_at: float = 0.0  # when it joined the destination's queue (the log line's delays=)
    setup: float = 0.0  # seconds its worker spent opening a connection for it (0: one reused)


@dataclass(frozen=True, slots=True)
class DestinationLimits:
    concurrency: int = 20
    recipient_limit: int = 50
    idle_time: float = 2.0
    reuse_limit: int = 1000


DOWN_ELSEWHERE = Reply(421, "4.4.1", "destination marked down by another node; waiting for it to come back")
Settle = Callable[[list[Settlement]], None]
# Told when a destination goes down (with the reply that made it so) or comes back up (with the
# number of waiting recipients released).
OnStatus = Callable[["Destination", bool, dict[str, Any]], None]


class Destination:
    def __init__(self, transport: Transport, nexthop: str, limits: DestinationLimits, retry: RetryPolicy,
                 probe: ProbePolicy, settle: Settle, on_up: Callable[[Destination], Awaitable[int]],
                 clock: Callable[[], float] = time.time, *, warn_after: float = 0.0,
                 on_status: OnStatus | None = None, may_start: Callable[[], bool] = lambda: True,
                 nodes: Callable[[], int] = lambda: 1, metrics: Metrics | None = None) -> None:
        self.transport, self.nexthop = transport, nexthop
        self.metrics = metrics
        self.nodes = nodes  # the live nodes of the spool, this one included: they share `concurrency`
        self.may_start = may_start  # False: this node's lease may have run out, no transaction starts
        self.name = f"{transport.name}:{nexthop}"
        self.limits, self.retry, self.on_up, self.clock = limits, retry, on_up, clock
        self.on_status = on_status
        self._announced_down = False  # what on_status was last told (probe_now's marking is not news)
        self.warn_after = warn_after  # delay_warning_time: 0 = no delay notices
        self._settle = settle
        self.health = DestinationHealth(self.name, probe)
        self.jobs: deque[Job] = deque()
        self.inflight: dict[int, Job] = {}  # jobs a worker has taken, by id(): for the watchdog
        self.draining = False  # shutting down: no job starts
        self._fresh = 0  # jobs in the head of `jobs` (fresh or urgent mail)
        self.workers = 0
        self.idle_workers = 0
        self.delivered = self.deferred = self.failed = 0  # recipients, by outcome of their attempt
        self.connections_opened = 0  # by workers and probes (the metrics' connections out)
        self.connections_open = 0
        # The transport raised (a bug of its own, MAPI's critical error): the status row says
        # `failure` with this reply until a connection or a transaction works again.
        self.failure: Reply | None = None
        # Its transport is offline (an operator's `msgspool transport offline`): every job is
        # deferred at once with this reply, nothing connects, nothing probes.
        self.offline: Reply | None = None
        self._work = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._prober: asyncio.Task[None] | None = None
        self._probe_wakeup = asyncio.Event()

    # -- queueing ---------------------------------------------------------------------------

    def enqueue(self, message: Message, recipients: Sequence[Recipient], *, fresh: bool = False) -> None:
        """Queue the message for these recipients. The head of the queue holds fresh mail and
        urgent mail, most urgent first and otherwise in order; retries and released backlog follow.
        So a destination draining a large backlog still sends new mail at once, and urgent mail
        goes first when the queue is backed up (MAPI PR_PRIORITY)."""
        limit = self.limits.recipient_limit
        ahead = fresh or message.priority > NORMAL
        now = self.clock()
        for start in range(0, len(recipients), limit):
            job = Job(message, list(recipients[start:start + limit]), ahead, queued_at=now)
            if ahead:
                self.jobs.insert(self._head_position(message.priority), job)
                self._fresh += 1
            else:
                self.jobs.append(job)

        if self.offline is not None:
            self._defer_queued(self.offline)
            return
        if self.health.down:
            self._defer_queued(DESTINATION_DOWN)
            return
        if self.draining:  # shutting down: they stay active; recovery retries them at the next start
            return
        self._work.set()
        self._add_workers()

    @property
    def concurrency(self) -> int:
        """This node's share of the destination's connections (module docstring)."""
        limit = self.limits.concurrency
        return max(min(1, limit), limit // max(1, self.nodes()))

    def _add_workers(self) -> None:
        """A worker per queued job that no idle worker will take, up to this node's share."""
        limit = self.concurrency
        while self.workers < limit and self.workers - self.idle_workers < len(self.jobs):
            self.workers += 1  # counted at spawn, not when the task first runs: the loop must see it
            self._spawn(self._worker())

    def resize(self) -> None:
        """The number of live nodes changed: a bigger share takes up waiting jobs now; workers
        beyond a smaller one close as their transactions end (`_worker`)."""
        if self.jobs and not self.health.down and not self.draining and self.offline is None:
            self._add_workers()

    def go_offline(self, reply: Reply) -> None:
        """Its transport went offline: queued jobs wait (deferred, no attempt counted, released
        when it is online again), idle workers close, probing stops. A transaction in flight
        finishes, as under Postfix's defer_transports."""
        self.offline = reply
        self._defer_queued(reply)
        self._work.set()
        self._probe_wakeup.set()  # the probe loop sees it offline and ends

    def go_online(self) -> None:
        """Its transport is online again: a destination that was down is probed at once (the
        backlog itself is released in the store, by transport)."""
        self.offline = None
        if self.health.down:
            self.probe_now()

    def _head_position(self, priority: int) -> int:
        """After every head job at least as urgent: the head is short, so a scan is cheap."""
        position = self._fresh
        while position > 0 and self.jobs[position - 1].message.priority < priority:
            position -= 1
        return position

    def count(self, status: Status) -> None:
        """Per-destination counters of what happened to recipients (the status table)."""
        if status is Status.DELIVERED:
            self.delivered += 1
        elif status is Status.DEFERRED:
            self.deferred += 1
        else:
            self.failed += 1

    def settle(self, settlements: list[Settlement]) -> None:
        """Hand outcomes to the scheduler, stamped with the route they took."""
        for s in settlements:
            s.transport, s.nexthop = self.transport.name, self.nexthop
        self._settle(settlements)

    def drain(self) -> list[Job]:
        """Orderly shutdown: no job starts any more; returns the queued jobs, taken out."""
        self.draining = True
        jobs, self.jobs, self._fresh = list(self.jobs), deque(), 0
        self._work.set()  # idle workers end now
        return jobs

    def cancel(self, message_ids: set[str]) -> list[Job]:
        """Drop queued jobs of these messages (hold, requeue, delete); returns the jobs dropped."""
        dropped = [job for job in self.jobs if job.message.id in message_ids]
        self.jobs = deque(job for job in self.jobs if job.message.id not in message_ids)
        self._fresh = sum(1 for job in self.jobs if job.fresh)
        return dropped

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- delivery ---------------------------------------------------------------------------

    async def _worker(self) -> None:
        conn: Connection | None = None
        sent = 0
        try:
            while (job := await self._next_job()) is not None:
                self.inflight[id(job)] = job
                try:
                    if conn is None or not conn.usable or sent >= self.limits.reuse_limit:
                        if conn is not None:
                            await self._close(conn)
                        began = self.clock()
                        conn, sent = await self._connect(job), 0
                        job.setup = self.clock() - began
                        if conn is None:
                            if self.health.down:
                                return
                            continue
                    if not await self._deliver(conn, job):
                        conn = None  # lost or closed by _deliver
                        if self.health.down:
                            return
                        continue
                    sent += 1
                except Exception as err:  # our own bug: the job goes back to the queue, the worker goes on
                    log.exception("%s: delivery to %s failed", job.message.id, self.name)
                    if not job.settled:
                        self._crashed(job, self._raised(err), attempted=False)
                    if conn is not None:
                        await self._close(conn)
                        conn = None
                finally:
                    del self.inflight[id(job)]
        finally:
            self.workers -= 1  # before any await: the next worker to ask `_next_job` counts without this one
            if conn is not None:
                await self._close(conn)

    def _opened(self) -> None:
        self.connections_opened += 1
        self.connections_open += 1

    def _lost(self) -> None:
        """A connection that is gone without `_close` (lost mid-transaction)."""
        self.connections_open -= 1

    async def _close(self, conn: Connection) -> None:
        """Close a connection; whatever the transport raises doing so changes no outcome."""
        self.connections_open -= 1
        try:
            await conn.close()
        except Exception as err:
            log.warning("%s: transport %s raised closing a connection: %s: %s", self.name, self.transport.name,
                        type(err).__name__, err)

    def _raised(self, err: Exception) -> Reply:
        return Reply(451, "4.3.0", f"transport {self.transport.name} raised {type(err).__name__}: {err}")

    def _crashed(self, job: Job, reply: Reply, *, attempted: bool = True, wait: bool = False) -> None:
        """The transport raised on this job: its recipients wait again, and the attempt counts
        towards the message's `crash_limit` (poison isolation)."""
        self.failure = reply
        self._settle_job(job, [dataclasses.replace(self._deferral(job.message, r, reply, attempted=attempted,
                                                                  wait=wait), crashed=True)
                               for r in job.recipients])

    def _settle_job(self, job: Job, settlements: list[Settlement]) -> None:
        job.settled = True
        self.settle(settlements)

    async def _next_job(self) -> Job | None:
        """The worker's next job; None: the worker ends (idle too long, down, draining, or beyond
        this node's share, which shrinks when a node joins the spool)."""
        if self.draining or not self.may_start() or self.workers > self.concurrency or self.offline is not None:
            return None
        deadline = self.clock() + self.limits.idle_time
        while not self.jobs:
            if self.health.down or self.draining or self.workers > self.concurrency or self.offline is not None:
                return None
            remaining = deadline - self.clock()
            if remaining <= 0:
                return None
            self._work.clear()
            self.idle_workers += 1
            try:
                await asyncio.wait_for(self._work.wait(), remaining)
            except TimeoutError:
                pass
            finally:
                self.idle_workers -= 1
        if not self.may_start():  # woken after a stall past the lease: the work may be another node's now
            return None
        job = self.jobs.popleft()
        if job.fresh:
            self._fresh -= 1
        return job

    async def _connect(self, job: Job) -> Connection | None:
        """A new connection; None when it failed (the job is settled: failed on a permanent
        answer such as a null MX, else deferred while the destination is marked down). A
        transport that raises anything else is treated the same way, as a crash."""
        try:
            conn = await self.transport.connect(self.nexthop)
        except DestinationUnavailable as err:
            if err.reply.permanent:
                self._settle_job(job, [Settlement(job.message.id, r.index, r.address, Status.FAILED, err.reply,
                                                  dsn=r.dsn) for r in job.recipients])
                return None
            self._settle_job(job, [self._deferral(job.message, r, err.reply, attempted=True, wait=True)
                                   for r in job.recipients])
            self.mark_down(err.reply)
            return None
        except Exception as err:
            log.exception("%s: transport %s raised connecting", self.name, self.transport.name)
            reply = self._raised(err)
            self._crashed(job, reply, wait=True)
            self.mark_down(reply)
            return None
        self._opened()
        self.failure = None
        if self.health.connection_ok():
            # A connection that began before another worker marked the destination down: the
            # probe loop sees it up and ends, so the backlog is released from here.
            log.info("%s: destination is up again", self.name)
            self._spawn(self._back_up())
        return conn

    async def _deliver(self, conn: Connection, job: Job) -> bool:
        message, recipients = job.message, job.recipients
        began = self.clock()
        try:
            replies = await conn.send(message, recipients)
        except DestinationUnavailable as err:
            # The outcome is unknown (the connection died mid-transaction): retry later.
            self._settle_job(job, [self._deferral(message, r, err.reply, attempted=True, remote=conn.remote)
                                   for r in recipients])
            self._lost()
            self.mark_down(err.reply)
            return False
        except Exception as err:  # the transport's own bug: retry, and hold the message if it keeps crashing
            log.exception("%s: transport %s raised", message.id, self.transport.name)
            self._crashed(job, self._raised(err))
            await self._close(conn)
            return False
        now = self.clock()
        handoff = getattr(conn, "handoff", Handoff.FINAL)  # optional for a transport: final by default
        # Optional too: which next hop answered each recipient, when one send used several (MX fallback).
        remotes = getattr(conn, "remotes", None) or [conn.remote] * len(recipients)
        settlements = [self._outcome(message, r, reply, now, remote, handoff)
                       for r, reply, remote in zip(recipients, replies, remotes, strict=True)]
        self._settle_job(job, settlements)
        self.failure = None
        logged = log.isEnabledFor(logging.INFO)  # without -v: no line, and nothing formatted for one
        delays = _delays(now - message.submitted_at, began - job.setup - job.queued_at, job.setup,
                         now - began) if logged else ""
        for s in settlements:
            _log_outcome(message, s, now, delays)
            self.count(s.status)
            if s.status is Status.DELIVERED and self.metrics is not None:
                self.metrics.delivered_after(self.transport.name, now - message.submitted_at)
        return True

    def _outcome(self, message: Message, r: Recipient, reply: Reply, now: float, remote: str,
                 handoff: Handoff) -> Settlement:
        if reply.ok:
            return Settlement(message.id, r.index, r.address, Status.DELIVERED, reply, remote=remote, dsn=r.dsn,
                              handoff=handoff)
        if reply.permanent:
            return Settlement(message.id, r.index, r.address, Status.FAILED, reply, remote=remote, dsn=r.dsn)
        return self._deferral(message, r, reply, attempted=True, remote=remote)

    def _deferral(self, message: Message, r: Recipient, reply: Reply, *, attempted: bool,
                  wait: bool = False, remote: str | None = None) -> Settlement:
        return deferral(self.retry, self.warn_after, self.clock(), message, r, reply, attempted=attempted, wait=wait,
                        remote=remote)

    # -- health -----------------------------------------------------------------------------

    def mark_down(self, reply: Reply) -> None:
        if self.health.connection_failed(self.clock(), reply):
            log.warning("%s: destination down: %s", self.name, reply.line())
        self._announce(True, reply=reply.line())
        self._defer_queued(reply)
        if self._prober is None or self._prober.done():
            self._prober = self._spawn(self._probe_loop())

    def _defer_queued(self, reply: Reply) -> None:
        jobs, self.jobs, self._fresh = self.jobs, deque(), 0
        settlements = [self._deferral(job.message, r, reply, attempted=False, wait=True)
                       for job in jobs for r in job.recipients]
        if settlements:
            self.settle(settlements)

    async def _probe_loop(self) -> None:
        while self.health.down and self.offline is None:
            delay = max(0.0, (self.health.probe_at or self.clock()) - self.clock())
            if not self._probe_wakeup.is_set():  # set by probe_now, perhaps during the last probe
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._probe_wakeup.wait(), delay)
            self._probe_wakeup.clear()
            if not self.health.down or self.offline is not None:  # found up elsewhere (`heard`), or offline
                break
            try:
                conn = await self.transport.connect(self.nexthop)
            except Exception as err:
                reply = err.reply if isinstance(err, DestinationUnavailable) else self._raised(err)
                self.health.connection_failed(self.clock(), reply)
                self._announce(True, reply=reply.line())  # found down after a restart or flush
                continue
            self._opened()
            await self._close(conn)
            self.failure = None
            self.health.connection_ok()
            log.info("%s: probe succeeded; releasing the backlog", self.name)
            await self._back_up()

    async def _back_up(self) -> None:
        delay = 0.5
        while True:
            try:
                released = await self.on_up(self)
                break
            except Exception:  # the store failed (a full disk): the backlog stays waiting; try again
                log.exception("%s: could not release the waiting recipients; retrying in %.1f s", self.name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        if not self.health.down:
            self._announce(False, released=released)

    def _announce(self, down: bool, **detail: Any) -> None:
        if down != self._announced_down:
            self._announced_down = down
            if self.on_status is not None:
                self.on_status(self, down, detail)

    def heard(self, down: bool) -> None:
        """Another node of the spool found this destination down (or up again): adopt it. Down:
        queued jobs wait for the destination and this node only probes it (on its own growing
        interval), so the nodes do not each hammer it; no event is recorded (the other node's
        is). Up: the probing ends; the node that found it up released the backlog in the store."""
        if down == self.health.down:
            return
        self._announced_down = down
        if down:
            self.health.connection_failed(self.clock(), DOWN_ELSEWHERE)
            self._defer_queued(DOWN_ELSEWHERE)
            if self._prober is None or self._prober.done():
                self._prober = self._spawn(self._probe_loop())
            return
        self.health.connection_ok()
        self.failure = None
        self._probe_wakeup.set()  # the probe loop sees it up and ends
        self.resize()

    def probe_now(self) -> None:
        """Probe at once: after a restart (a backlog may be waiting) or on `queue flush`; never
        while the transport is offline."""
        if self.offline is not None:
            return
        if not self.health.down:
            self.health.connection_failed(self.clock(), DESTINATION_DOWN)
        self.health.probe_at = self.clock()
        self._probe_wakeup.set()
        if self._prober is None or self._prober.done():
            self._prober = self._spawn(self._probe_loop())


def _delays(total: float, queued: float, setup: float, transmission: float) -> str:
    """Postfix's delays=a/b/c/d: before the destination's queue (in the store: waiting to be claimed
    or for a retry), in that queue (for a connection), connection setup (DNS, TCP, greeting, TLS,
    AUTH; 0 for a connection reused), transmission."""
    queued, setup, transmission = max(0.0, queued), max(0.0, setup), max(0.0, transmission)
    before = max(0.0, total - queued - setup - transmission)
    return f"{before:.2f}/{queued:.2f}/{setup:.2f}/{transmission:.2f}"


def _log_outcome(message: Message, s: Settlement, now: float, delays: str) -> None:
    """The delivery line (Postfix's smtp(8) line), with its fields for the JSON log (logs.py)."""
    if not log.isEnabledFor(logging.INFO):
        return
    status = {Status.DELIVERED: "sent", Status.FAILED: "bounced", Status.EXPIRED: "expired"}.get(
        s.status, "deferred")
    delay = now - message.submitted_at
    dsn, reply = (s.reply.dsn, s.reply.line()) if s.reply else ("", "")
    log.info("%s: to=<%s>, relay=%s, delay=%.2f, delays=%s, dsn=%s, status=%s (%s)", message.id, s.address,
             s.remote, delay, delays, dsn, status, reply,
             extra=fields(queue_id=message.id, recipient=s.address, relay=s.remote, delay=round(delay, 3),
                          delays=delays, dsn=dsn, status=status, reply=reply))
