"""The scheduler: claim -> route to destinations -> send -> settle (MAPI: the spooler's outgoing
queue loop, SetLockState / SubmitMessage / FinishedMsg).

Work enters the in-memory window two ways: fresh submissions are handed over directly by the
runtime (no store read), and everything else — retries that fell due, a backlog released by a
destination that came back, messages written by `msgspool sendmail`, leftovers after a restart —
is claimed from the store by time, a bounded batch at a time. The window is bounded
(`active_limit` recipients), so a million queued messages cost disk, not memory.

Outcomes are settled in batches: every outcome produced during one turn of the event loop goes to
the store in one write (and so into one group commit); the events it records are then published.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any

from msgspool.domain.events import Event, EventType
from msgspool.domain.health import ProbePolicy
from msgspool.domain.message import Message, Recipient, Settlement
from msgspool.domain.outcome import EXPIRED, Reply, transport_offline
from msgspool.domain.recipient import Status
from msgspool.domain.retry import RetryPolicy
from msgspool.domain.routing import LOCAL
from msgspool.domain.suppression import hard_bounce
from msgspool.errors import StorageFull
from msgspool.ports import MailboxTransport, Queue, Transport
from msgspool.spooler.background import start_supervised
from msgspool.spooler.destinations import Destination, DestinationLimits, deferral
from msgspool.spooler.hooks import Preprocessor, draft_of
from msgspool.spooler.intake import Intake
from msgspool.spooler.local import LocalDelivery
from msgspool.spooler.metrics import Metrics
from msgspool.spooler.signals import Signal

log = logging.getLogger("msgspool.scheduler")
CLAIM_BATCH = 1000
IDLE_RECHECK = 30.0  # seconds between store checks when nothing is known to be due
REFILL_RETRY = 1.0  # seconds before the refill loop reads the store again after it failed
SETTLE_RETRY_MAX = 5.0  # seconds: the longest pause between tries to record outcomes


class Scheduler:
    def __init__(self, store: Queue, transports: Mapping[str, Transport], intake: Intake,
                 publish: Callable[[Sequence[Event]], None], *, retry: RetryPolicy, probe: ProbePolicy,
                 limits: DestinationLimits, active_limit: int, preprocessor: Preprocessor | None = None,
                 local: LocalDelivery | None = None, may_start: Callable[[], bool] = lambda: True,
                 warn_after: float = 0.0, clock: Callable[[], float] = time.time,
                 nodes: Callable[[], int] = lambda: 1, idle_recheck: float = IDLE_RECHECK,
                 suppression_time: float = 0.0, metrics: Metrics | None = None,
                 on_destination: Callable[[str, str, bool], None] | None = None,
                 on_settled: Callable[[int], None] | None = None, on_reports: Callable[[], None] | None = None,
                 on_warning_later: Callable[[float], None] | None = None,
                 woken_by: Signal[[]] | None = None, resized_by: Signal[[int]] | None = None) -> None:
        self.store, self.transports, self.intake, self.publish = store, transports, intake, publish
        self.suppression_time = suppression_time  # a hard bounce suppresses its address this long; 0: never
        self.metrics = metrics if metrics is not None else Metrics()
        self.preprocessor, self.local = preprocessor, local
        self.retry, self.probe, self.limits, self.warn_after = retry, probe, limits, warn_after
        self.active_limit, self.clock = active_limit, clock
        self.may_start = may_start  # this node still holds its lease: a transaction may start
        self.nodes = nodes  # live nodes of the spool: they share each destination's connections
        # The longest sleep of the refill loop. On a shared spool another node can make work due
        # earlier than the store's next_due said when this one went to sleep (a flush, a release,
        # a rescue) and its notice may be lost: the runtime passes `poll_interval` then.
        self.idle_recheck = idle_recheck
        # Told when a destination goes down or comes back (the runtime tells the other nodes).
        self.on_destination = on_destination
        self.active = 0  # recipients in memory: dispatched and not yet settled
        self.on_settled = on_settled  # told the window after each settlement
        self.on_reports = on_reports  # told when settled outcomes may owe reports
        self.on_warning_later = on_warning_later  # told when a delay notice falls due
        self.destinations: dict[str, Destination] = {}
        # Transports an operator put offline (name -> since), as last read from the store: their
        # destinations take no work (Destination.go_offline). Read at start, when told of a change
        # (link, notices), and at least every `idle_recheck` in case a notice was lost.
        self.offline: dict[str, float] = {}
        self._offline_read_at = -math.inf
        self._wakeup = asyncio.Event()
        self._pending: list[Settlement] = []
        self._flush_scheduled = False
        self._settling: dict[asyncio.Task[None], list[Settlement]] = {}
        self._busy: dict[str, int] = {}  # messages in the hooks or in local delivery: for the watchdog
        self._suspects: set[tuple[str, int, str | None]] = set()
        self._abort_drain = asyncio.Event()
        self._aborting: set[str] = set()  # messages being deleted or held: no transaction may start
        self._aborted: list[tuple[str, int]] = []  # their recipients taken out of the queues meanwhile
        self.stuck_returned = 0  # recipients the watchdog gave back (an alarm in `status`)
        self._hook_work: set[asyncio.Task[None]] = set()
        self._refill: asyncio.Task[None] | None = None
        self._running = False
        self._starved = False
        self._wake_at = 0.0  # when the refill loop means to look at the store again
        if woken_by is not None:  # work is due here (wiring.Signals.due)
            woken_by.connect(self.wakeup)
        if resized_by is not None:  # the number of live nodes changed (wiring.Signals.nodes)
            resized_by.connect(lambda _live: self.resize())

    async def start(self) -> None:
        """Start delivering as the node the store works for (`store.owner`, registered by the
        runtime's NodeLease, which rescued what dead nodes held first)."""
        self._running = True
        await self.read_offline()
        for transport, nexthop in await self.store.waiting_destinations():
            if transport in self.transports:
                self.destination(transport, nexthop).probe_now()  # not while offline
        self._refill = start_supervised("refill", self._refill_loop)

    async def stop(self, drain: float = 0.0) -> None:
        """Stop delivering. With `drain` (seconds; MAPI StoreLogoff's orderly case) no transaction
        starts any more, those in flight finish and their outcomes are recorded, and what waited in
        the queues is given back, before the rest is cancelled; without, everything in flight is
        cancelled at once (abort: crash-safe, recovery retries it at the next start)."""
        self._running = False
        self._wakeup.set()
        if self._refill is not None:
            self._refill.cancel()
            await asyncio.gather(self._refill, return_exceptions=True)
        if drain > 0:
            await self._drain(drain)
        for task in list(self._hook_work):
            task.cancel()
        await asyncio.gather(*self._hook_work, return_exceptions=True)
        for dest in self.destinations.values():
            await dest.close()
        self._flush_settlements()
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def abandon(self) -> None:
        """This node lost its lease (another may have taken its work): stop at once and forget
        everything in memory — transactions in flight are cancelled, and what is still recorded
        is refused by the store (fenced), so the next `start`, as a new node, begins empty."""
        await self.stop()
        self.destinations.clear()
        self._pending, self._aborted, self._aborting = [], [], set()
        self._busy.clear()
        self._suspects = set()
        self.active = 0

    async def _drain(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        dropped = [(job.message.id, r.index) for dest in self.destinations.values() for job in dest.drain()
                   for r in job.recipients]
        if dropped:
            await self._give_back(dropped)
        in_flight = sum(len(dest.inflight) for dest in self.destinations.values())
        if in_flight:
            log.info("waiting up to %.0f s for %d transactions in flight", timeout, in_flight)
        while (any(dest.inflight for dest in self.destinations.values()) or self._hook_work) \
                and loop.time() < deadline and not self._abort_drain.is_set():
            await asyncio.sleep(0.02)
        left = sum(len(dest.inflight) for dest in self.destinations.values())
        if left:
            log.warning("%d transactions still in flight; cancelled (they are retried at the next start)", left)
        self._flush_settlements()
        if self._settling:
            await asyncio.wait(list(self._settling), timeout=max(0.1, deadline - loop.time()))

    def abort_drain(self) -> None:
        """A second stop signal while draining: cancel what is still in flight now."""
        self._abort_drain.set()

    # -- entry points -----------------------------------------------------------------------

    def reserve(self, count: int) -> bool:
        """Room in the window for a fresh submission? If so it is counted as active already."""
        if not self._running or self.active + count > self.active_limit:
            return False
        self.active += count
        return True

    def unreserve(self, count: int) -> None:
        self.active -= count

    def adopt(self, message: Message) -> None:
        """A message committed by another process with its due recipients `active` (link.py)."""
        self.active += len(message.recipients)
        self.dispatch(message, fresh=True)

    def wakeup(self) -> None:
        self._wakeup.set()

    def dispatch(self, message: Message, *, fresh: bool = False) -> None:
        """Route the message's active recipients (again: with this process's configuration, which
        may differ from the submitter's) and hand them to their destinations. A message the
        outbound hooks have not seen goes through them first."""
        if message.id in self._aborting:  # being deleted or held: set aside until `cancel` gives them back
            self._aborted += [(message.id, r.index) for r in message.recipients if r.status is Status.ACTIVE]
            return
        if self.preprocessor is not None and not message.preprocessed:
            self._track(self._preprocess(self.preprocessor, message, fresh))
            return
        now = self.clock()
        groups: dict[tuple[str, str], list[Recipient]] = {}
        decided: list[Settlement] = []
        local: list[Recipient] = []
        for r in message.recipients:
            if r.status is not Status.ACTIVE:
                continue
            if self.retry.expired(message.submitted_at, now, message.expires_at, message.deliver_after):
                decided.append(Settlement(message.id, r.index, r.address, Status.EXPIRED, EXPIRED, attempted=False,
                                          dsn=r.dsn))
                continue
            if r.transport is None and (expanded := self.intake.expand_later(message, r, now)) is not None:
                decided.append(expanded)  # an alias the submitter left to us (sendmail)
                continue
            copy = self.intake.route(message, r, now)
            if r.status is not Status.ACTIVE:  # failed (no route, unknown mailbox) or filed locally
                decided.append(Settlement(message.id, r.index, r.address, r.status, r.last_reply, dsn=r.dsn,
                                          transport=r.transport, nexthop=r.nexthop,
                                          copies=(copy,) if copy is not None else ()))
            elif r.transport in self.offline:  # a mailbox transport's recipients too, which bypass destinations
                decided.append(dataclasses.replace(
                    deferral(self.retry, self.warn_after, now, message, r, transport_offline(r.transport),
                             attempted=False, wait=True), transport=r.transport, nexthop=r.nexthop))
            elif r.transport == LOCAL or (self.local is not None and self.local.takes(r.transport)):
                # inbound hooks first (intake.defer_local), also for a maildir's recipients
                local.append(r)
            else:
                assert r.transport is not None and r.nexthop is not None
                groups.setdefault((r.transport, r.nexthop), []).append(r)
        if decided:
            self.settle(decided)
        if local and self.local is not None:
            self._track(self._deliver_local(self.local, message, local))
        for (transport, nexthop), recipients in groups.items():
            self.destination(transport, nexthop).enqueue(message, recipients, fresh=fresh)

    def _track(self, work: Coroutine[Any, Any, None]) -> None:
        """Work in flight: hooks (stop cancels it; the recipients stay active until recovery) and
        transport_status events."""
        task = asyncio.ensure_future(work)
        self._hook_work.add(task)
        task.add_done_callback(self._hook_work.discard)

    async def _deliver_local(self, local: LocalDelivery, message: Message, recipients: list[Recipient]) -> None:
        with self._working_on(message.id):
            try:
                settlements = await local.deliver(message, recipients)
                settlements = self._timed(message, recipients, settlements)
            except Exception as err:  # a bug of ours, not a hook's (those are contained)
                log.exception("%s: local delivery failed", message.id)
                settlements = self._crashed(message, recipients, f"local delivery raised {type(err).__name__}: {err}")
            self.settle(settlements)

    def _timed(self, message: Message, recipients: list[Recipient], settlements: list[Settlement]) -> list[Settlement]:
        """A copy a maildir could not write defers its recipient: by the retry policy, as a
        destination's temporary failure (or given up: expired, attempts exhausted)."""
        by_index = {r.index: r for r in recipients}
        out = []
        for s in settlements:
            if s.status is Status.DEFERRED and s.next_attempt_at is None and s.reply is not None:
                timed = deferral(self.retry, self.warn_after, self.clock(), message, by_index[s.index], s.reply,
                                 attempted=True)
                s = dataclasses.replace(timed, transport=s.transport, nexthop=s.nexthop, history=s.history)
            out.append(s)
        return out

    @contextlib.contextmanager
    def _working_on(self, message_id: str) -> Iterator[None]:
        """The message's active recipients are in hand here (hooks, local delivery): not stuck."""
        self._busy[message_id] = self._busy.get(message_id, 0) + 1
        try:
            yield
        finally:
            if (left := self._busy.pop(message_id) - 1) > 0:
                self._busy[message_id] = left

    def _crashed(self, message: Message, recipients: Sequence[Recipient], why: str) -> list[Settlement]:
        """Outcomes for recipients whose handling raised: deferred with backoff, with the error as
        their last reply, counted towards the message's `crash_limit` (then it is held)."""
        reply, now = Reply(451, "4.3.0", why), self.clock()
        return [Settlement(message.id, r.index, r.address, Status.DEFERRED, reply, attempted=False,
                           next_attempt_at=self.retry.next_attempt(now, r.attempts + 1), dsn=r.dsn, crashed=True)
                for r in recipients]

    async def _preprocess(self, preprocessor: Preprocessor, message: Message, fresh: bool) -> None:
        """Outbound hooks, their answer recorded, then delivery of what they made of the message."""
        active = [r for r in message.recipients if r.status is Status.ACTIVE]
        before = len(active)
        try:
            with self._working_on(message.id):
                result = await preprocessor.run(draft_of(message))
                messages, events = await self.store.preprocessed(message, result, self.clock())
        except Exception as err:  # the store failed: the recipients wait and the hooks run again later
            log.exception("%s: could not record the outbound hooks' answer", message.id)
            self.settle(self._crashed(message, active, f"recording the outbound hooks' answer failed: "
                                                       f"{type(err).__name__}: {err}"))
            return
        self.active += sum(len(m.recipients) for m in messages) - before
        self.publish(events)
        failed = [e for e in events if e.type is EventType.FAILED]  # a hook's Reject
        if failed:
            routes = {r.address: r.transport for r in active}
            for e in failed:
                self.metrics.outcome(Status.FAILED, routes.get(e.recipient or ""))
        if self.on_reports is not None and failed:
            self.on_reports()
        for m in messages:
            self.dispatch(m, fresh=fresh)

    def abort(self, message_ids: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
        """MAPI AbortSubmit, first step (before `delete` or `hold` change the store): no
        transaction of these messages starts from now on — their queued jobs are taken out, and
        one claimed meanwhile is set aside — until `cancel`. Returns, per message, the recipients
        (index, address) a transport has in a transaction now: those go on, and are reported."""
        ids = set(message_ids)
        self._aborting |= ids
        self._aborted += [(job.message.id, r.index) for dest in self.destinations.values()
                          for job in dest.cancel(ids) for r in job.recipients]
        in_flight: dict[str, list[tuple[int, str]]] = {}
        for dest in self.destinations.values():
            for job in dest.inflight.values():
                if job.message.id in ids and not job.settled:
                    in_flight.setdefault(job.message.id, []).extend((r.index, r.address) for r in job.recipients)
        return in_flight

    async def cancel(self, message_ids: Sequence[str]) -> None:
        """Forget queued work of held, requeued or deleted messages (the store changed their state
        first) and give its recipients back to the store: claimed, they are `active` there, and
        nothing here would settle them any more. A hold keeps them held, a requeue makes them due."""
        ids = set(message_ids)
        self._aborting -= ids
        dropped = [(job.message.id, r.index) for dest in self.destinations.values() for job in dest.cancel(ids)
                   for r in job.recipients]
        dropped += [pair for pair in self._aborted if pair[0] in ids]
        self._aborted = [pair for pair in self._aborted if pair[0] not in ids]
        if dropped:
            await self._give_back(dropped)
        self._wakeup.set()

    async def _give_back(self, dropped: list[tuple[str, int]]) -> None:
        """Unclaim recipients dropped from memory; a failing store is tried again while this run lasts."""
        delay = 0.1
        while True:
            try:
                events = await self.store.unclaim(dropped, self.clock())
                break
            except Exception:
                if not self._running:  # recovery gives them back at the next start
                    log.exception("could not give back %d recipients dropped from the queue", len(dropped))
                    events = []
                    break
                _store_failed("could not give back %d recipients; trying again in %.1f s", len(dropped), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, SETTLE_RETRY_MAX)
        self.active -= len(dropped)
        self.publish(events)
        self._wakeup.set()

    async def cancel_elsewhere(self, message_ids: Sequence[str]) -> None:
        """Another node held, requeued or deleted these messages (a `cancel` notice): drop their
        queued jobs here too and give them back, as `cancel` does — but not while an abort of
        this node's own is under way for one of them: its own `cancel` follows, and must find
        the transactions still stopped until then."""
        ids = [i for i in message_ids if i not in self._aborting]
        if any(job.message.id in ids for dest in self.destinations.values() for job in dest.jobs) \
                or any(pair[0] in ids for pair in self._aborted):
            await self.cancel(ids)

    def probe_down(self, transport: str | None = None, nexthop: str | None = None) -> None:
        """Probe every destination that is down now (flush), or those of one transport and/or nexthop."""
        for dest in self.destinations.values():
            if dest.health.down and transport in (None, dest.transport.name) and nexthop in (None, dest.nexthop):
                dest.probe_now()

    def heard_destination(self, transport: str, nexthop: str, down: bool) -> None:
        """Another node found a destination down or up again (Destination.heard); up: look for
        the backlog it released."""
        if transport not in self.transports:
            return
        self.destination(transport, nexthop).heard(down)
        if not down:
            self._wakeup.set()

    async def read_offline(self) -> None:
        """Read which transports are offline from the store, and act on what changed: a
        transport gone offline defers what its destinations hold; one back online releases the
        backlog that waited for it (again, should another node have deferred some meanwhile:
        releasing is idempotent) and probes its destinations that were down."""
        self._offline_read_at = self.clock()
        offline = {name: since for name, since in (await self.store.offline_transports()).items()
                   if name in self.transports}
        gone, back = offline.keys() - self.offline.keys(), self.offline.keys() - offline.keys()
        self.offline = offline
        for dest in self.destinations.values():
            if dest.transport.name in gone:
                dest.go_offline(transport_offline(dest.transport.name))
            elif dest.transport.name in back:
                dest.go_online()
        for name in sorted(back):
            released = await self.store.release_transport(name, self.clock())
            log.info("transport %s is online: released %d waiting recipients", name, released)
        for name in sorted(gone):
            log.info("transport %s is offline: it takes no work until it is online again", name)
        if back:
            self._wakeup.set()

    def use_hooks(self, preprocessor: Preprocessor | None, local: LocalDelivery | None) -> None:
        """The outbound hooks, and the local delivery that runs the inbound ones (None: none), as
        the runtime built them at start or after a reload."""
        self.preprocessor, self.local = preprocessor, local

    def reconfigure(self, *, suppression_time: float) -> None:
        """What a reloaded configuration changes here."""
        self.suppression_time = suppression_time

    def resize(self) -> None:
        """The live nodes changed: each destination takes its new share of connections."""
        for dest in self.destinations.values():
            dest.resize()

    def destination(self, transport: str, nexthop: str) -> Destination:
        key = f"{transport}:{nexthop}"
        dest = self.destinations.get(key)
        if dest is None:
            provider = self.transports[transport]
            # A local transport's refusal (no such maildir) is this site's own: it suppresses nothing.
            settle = self.settle if isinstance(provider, MailboxTransport) else self._settle_remote
            dest = Destination(provider, nexthop, self.limits, self.retry, self.probe,
                               settle, self._destination_up, self.clock, warn_after=self.warn_after,
                               on_status=self._destination_status, may_start=self.may_start,
                               nodes=self.nodes, metrics=self.metrics)
            if transport in self.offline:
                dest.offline = transport_offline(transport)
            self.destinations[key] = dest
        return dest

    # -- settling ---------------------------------------------------------------------------

    def _settle_remote(self, settlements: list[Settlement]) -> None:
        """Outcomes from a remote: a hard bounce (domain/suppression.py) lists its address on the
        suppression list for `suppression_time`, in the step that records it."""
        if self.suppression_time > 0:
            for s in settlements:
                if (s.status is Status.FAILED and s.remote and hard_bounce(s.reply)
                        and getattr(self.transports.get(s.transport or ""), "bounces_suppress", False)):
                    s.suppress_until = self.clock() + self.suppression_time
        self.settle(settlements)

    def settle(self, settlements: list[Settlement]) -> None:
        self._pending.extend(settlements)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_settlements)

    def _flush_settlements(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        self._write(batch)

    def _write(self, batch: list[Settlement]) -> None:
        task = asyncio.ensure_future(self._write_settlements(batch))
        self._settling[task] = batch
        task.add_done_callback(lambda t: self._settling.pop(t, None))

    async def _write_settlements(self, batch: list[Settlement]) -> None:
        """Record a batch of outcomes. A store that fails (a full disk) is tried again, with a
        growing pause, for as long as this run lasts: the outcomes wait in memory, their
        recipients stay active in the store (recovery would retry them after a crash). A batch
        that keeps failing is split, so one bad outcome cannot hold up the others."""
        delay = 0.1
        for failures in itertools.count():
            now = self.clock()  # one time for the store and the checks below: a warn_at between two would be missed
            try:
                events = await self.store.settle(batch, now)
                break
            except Exception:
                if not self._running:
                    log.exception("could not record %d outcomes; recovery retries them at the next start", len(batch))
                    self.active -= len(batch)
                    return
                _store_failed("could not record %d outcomes; trying again in %.1f s", len(batch), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, SETTLE_RETRY_MAX)
                if failures >= 2 and len(batch) > 1:
                    for s in batch:
                        self._write([s])
                    return
        self.active -= len(batch)
        self.metrics.settled(batch)
        if self._starved:  # the window was full when due work may have been waiting
            self._starved = False
            self._wakeup.set()
        self.publish(events)
        self._wake_for_retries(batch)
        if any(s.spawn for s in batch):
            self._wakeup.set()  # forwards and auto-replies were queued with the outcomes: claim them
        if self.on_reports is not None and any(_may_owe_report(s, now) for s in batch):
            self.on_reports()
        later = [s.warn_at for s in batch if s.warn_at is not None and s.warn_at > now]
        if later and self.on_warning_later is not None:
            self.on_warning_later(min(later))
        if self.on_settled is not None:
            self.on_settled(self.active)

    async def _destination_up(self, dest: Destination) -> int:
        # Deferrals "waiting for the destination" recorded while it was down must be in the store
        # before the release, or a late one would wait out its whole backoff.
        self._flush_settlements()
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        released = await self.store.release_destination(dest.transport.name, dest.nexthop, self.clock())
        log.info("%s: released %d waiting recipients", dest.name, released)
        self._wakeup.set()
        return released

    def _destination_status(self, dest: Destination, down: bool, detail: dict[str, Any]) -> None:
        """A `transport_status` event: a destination went down or came back (MAPI status table)."""
        event = Event(EventType.TRANSPORT_STATUS, None, self.clock(), detail={
            "transport": dest.transport.name, "destination": dest.nexthop, "status": "down" if down else "up",
            **detail})
        self._track(self._record_status(event))
        if self.on_destination is not None:
            self.on_destination(dest.transport.name, dest.nexthop, down)

    async def _record_status(self, event: Event) -> None:
        try:
            events = await self.store.record_events([event])
        except Exception:  # news only: the destination's state itself lives in memory and the status table
            log.exception("could not record a transport_status event")
            return
        self.publish(events)

    # -- watchdog (issue 10.4) ---------------------------------------------------------------

    async def watchdog_loop(self, interval: float) -> None:
        while self._running:
            await asyncio.sleep(interval)
            await self.watch()

    async def watch(self) -> int:
        """One pass of the watchdog: recipients `active` in the store as this node's that it does
        not hold (not queued for a destination, not in a transaction, not in the hooks, their
        outcome not being written) — lost by a bug of ours — and that were already unaccounted
        for at the previous pass, are given back: due now. A hand-over in transit is never taken:
        it is held within milliseconds, long before the next pass. Other nodes' work is never
        touched here: that of dead nodes is rescued by the lease (NodeLease), that of live ones
        is theirs. Returns how many it gave back; each is an alarm in the log and the status table."""
        owner = self.store.owner
        rows = await self.store.active_recipients(owner)  # None: a store without nodes, every active one
        held = self._held()
        unknown = {row for row in rows if row[2] == owner and (row[0], row[1]) not in held
                   and row[0] not in self._busy}
        stuck, self._suspects = unknown & self._suspects, unknown - self._suspects
        if not stuck:
            return 0
        events = await self.store.return_stuck(sorted(stuck, key=lambda row: (row[0], row[1])), self.clock())
        returned = len(stuck)
        self.stuck_returned += returned
        log.warning("watchdog: %d recipients were active with no delivery holding them; they are due again",
                    returned)
        self.publish(events)
        self._wakeup.set()
        return returned

    def _held(self) -> set[tuple[str, int]]:
        """(message id, index) of every recipient this run has in hand."""
        held = {(job.message.id, r.index) for dest in self.destinations.values()
                for job in (*dest.jobs, *dest.inflight.values()) for r in job.recipients}
        held.update(self._aborted)
        held.update((s.message_id, s.index) for s in self._pending)
        held.update((s.message_id, s.index) for batch in self._settling.values() for s in batch)
        return held

    # -- refill -----------------------------------------------------------------------------

    async def _refill_loop(self) -> None:
        while self._running:
            try:
                if self.clock() - self._offline_read_at >= self.idle_recheck:
                    await self.read_offline()
                if await self._refill_once():
                    continue
                await self._sleep_until_due()
            except Exception:  # the store failed (a full disk): look again soon
                _store_failed("refill failed; trying again in %.1f s", REFILL_RETRY)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), REFILL_RETRY)
                self._wakeup.clear()

    async def _refill_once(self) -> bool:
        """Claim what is due; True when more may be waiting right now."""
        # Claims from the store (retries, a released backlog) fill at most half the window: the
        # other half stays free for fresh submissions handed over directly, so new mail never
        # queues behind a million-message backlog that just became due.
        room = min(CLAIM_BATCH, self.active_limit // 2 - self.active)
        if room <= 0:
            self._starved = True
            return False
        self.active += room
        try:  # with hooks, a message they have not seen comes whole: it may overfill the window
            messages = await self.store.claim(self.clock(), room, whole_messages=self.preprocessor is not None)
        finally:
            self.active -= room
        claimed = sum(len(m.recipients) for m in messages)
        self.active += claimed
        for message in messages:
            self.dispatch(message)
        return claimed >= room

    def _wake_for_retries(self, batch: list[Settlement]) -> None:
        """A deferral due before the refill loop's planned look at the store wakes it: it planned
        its sleep from the store's next due time, which did not know this retry yet."""
        due = [s.next_attempt_at for s in batch if s.status is Status.DEFERRED and s.next_attempt_at is not None]
        if due and min(due) < self._wake_at:
            self._wakeup.set()

    async def _sleep_until_due(self) -> None:
        self._wakeup.clear()
        self._wake_at = math.inf  # a retry settled while next_due is read wakes us at once
        longest = self.idle_recheck
        if self.active >= self.active_limit // 2:
            self._starved = True
            timeout = longest
        else:
            due = await self.store.next_due()
            timeout = longest if due is None else min(longest, max(0.0, due - self.clock()))
        self._wake_at = self.clock() + timeout
        if timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)
        self._wake_at = 0.0  # awake: the next sleep reads the store's next due time anyway

def _store_failed(what: str, *args: object) -> None:
    """A store write that failed and is retried: a full disk is one line (it may last, and is
    retried every few seconds); anything else is logged with its traceback."""
    err = sys.exc_info()[1]
    if isinstance(err, StorageFull):
        log.warning(what + ": %s", *args, err)
    else:
        log.exception(what, *args)


def _may_owe_report(s: Settlement, now: float) -> bool:
    """Cheap pre-check; the store decides (RFC 3461 NOTIFY, one delay notice) when it records it."""
    if s.status is Status.DEFERRED:
        return s.warn_at is not None and s.warn_at <= now
    return s.status in (Status.FAILED, Status.EXPIRED) or (s.status is Status.DELIVERED and s.dsn is not None)
