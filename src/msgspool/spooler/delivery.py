"""The delivering half of a spooler: this process as a delivery node — its lease, the scheduler,
the reporter, the delay timer, the webhook dispatcher and the housekeeping — started and stopped
in order, and started again as a new node when its lease was lost (spooler/lease.py).

Built by the composition root (wiring.py) with every part it starts; the lease tells it what
happens to the node through signals (lease lost, dead nodes' work rescued, asked to drain).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from msgspool.config import Settings
from msgspool.ports import Store
from msgspool.spooler.background import start_supervised, stop_task
from msgspool.spooler.delays import DelayTimer
from msgspool.spooler.hints import Hints
from msgspool.spooler.lease import NodeLease
from msgspool.spooler.notices import DUE, NODES, NoticeListener, Notices
from msgspool.spooler.reporter import Reporter
from msgspool.spooler.scheduler import Scheduler
from msgspool.spooler.signals import Signal
from msgspool.spooler.webhooks import WebhookDispatcher

log = logging.getLogger("msgspool")
SENT_RETENTION = 7 * 86400.0
EVENT_RETENTION = 86400.0
HOUSEKEEPING_INTERVAL = 300.0


class Delivery:
    def __init__(self, settings: Settings, store: Store, hints: Hints, notices: Notices, listener: NoticeListener,
                 lease: NodeLease, scheduler: Scheduler, reporter: Reporter, *, webhooks: WebhookDispatcher | None,
                 delay_timer: DelayTimer | None, lease_lost: Signal[[]], rescued: Signal[[int]],
                 drain: Signal[[]], on_lease_lost: Callable[[], None] | None = None,
                 on_drain: Callable[[], None] | None = None) -> None:
        self.settings, self.store, self.hints, self.notices = settings, store, hints, notices
        self.listener = listener  # the other nodes' notices, acted on while delivery runs
        self.lease, self.scheduler, self.reporter = lease, scheduler, reporter
        self.webhooks, self.delay_timer = webhooks, delay_timer
        # Told when this node lost its lease, after delivery stopped; None: delivery starts again
        # here as a new node. The daemon's delivery process exits instead (and is respawned).
        self.on_lease_lost = on_lease_lost
        # Told when an operator asked this node to drain (`msgspool node drain --owner`): the
        # daemon stops as on SIGTERM. None: delivery here stops in order, the rest goes on.
        self.on_drain = on_drain
        self._sole = False
        self._draining: asyncio.Task[None] | None = None
        self._relaunch: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        lease_lost.connect(self._lease_lost)
        rescued.connect(self._rescued)
        drain.connect(self._drain_asked)

    async def start(self, *, sole: bool) -> None:
        """Deliver from the store, which is open. `sole`: this process holds the spool's delivery
        lock and the spool is of this machine alone, so no other node lives: what they held is
        rescued now, not a lease time later (a restart after kill -9 delivers at once). On a
        shared spool the others' leases decide."""
        self._sole = sole
        await self.lease.start(sole=sole)
        self.notices.publish(NODES)  # the others' share of each destination shrinks now
        self.listener.start()
        await self.scheduler.start()
        self.hints.deliver(True)
        self.reporter.poke()  # owed before a crash or restart
        if self.webhooks is not None:
            await self.webhooks.start()
        if self.delay_timer is not None:
            self.delay_timer.start()
        self._housekeeping = start_supervised("housekeeping", self._housekeeping_loop)
        if self.settings.watchdog_interval > 0:
            interval = self.settings.watchdog_interval
            self._watchdog = start_supervised("watchdog", lambda: self.scheduler.watchdog_loop(interval))

    async def stop(self, drain: float = 0.0) -> None:
        """Stop everything delivery runs; with `drain` seconds, the transactions in flight finish first."""
        if self.webhooks is not None:
            await self.webhooks.stop()
        await stop_task(self._housekeeping)
        await stop_task(self._watchdog)
        if self._draining is not None:
            await self._draining
        await self.stop_delivering(drain)

    async def stop_delivering(self, drain: float) -> None:
        """Stop delivering (`stop`; or a drain the operator asked for, after which this spooler
        only submits): the node hands back what it holds and retires."""
        if not self.hints.delivering:
            return
        await self.listener.stop()
        await stop_task(self._relaunch)
        if self.delay_timer is not None:
            await self.delay_timer.stop()
        await self.scheduler.stop(drain)
        await self.reporter.stop()
        await self.lease.stop()  # after the reporter: its writes are fenced by the lease
        self.hints.deliver(False)
        self.notices.publish(NODES)  # the others' shares grow back now
        self.notices.publish(DUE)  # and what this node gave back is theirs to send

    def _lease_lost(self) -> None:
        """The heartbeat found this node's lease ran out: stop delivering now, without recording
        anything more (the store refuses it anyway), then start again as a new node, or tell the
        owner of this spooler (`on_lease_lost`)."""
        self._relaunch = asyncio.ensure_future(self._after_lease_lost())

    async def _after_lease_lost(self) -> None:
        await self.scheduler.abandon()
        if self.on_lease_lost is not None:
            self.on_lease_lost()
            return
        try:
            await self.lease.start(sole=self._sole)
            self.notices.publish(NODES)
            await self.scheduler.start()
        except Exception:
            log.exception("delivery could not start again as a new node")
            self.hints.deliver(False)
            return
        log.warning("delivery started again as node %s", self.lease.owner)

    def _rescued(self, _count: int) -> None:
        """The heartbeat gave back dead nodes' work: due now, here and on every other node."""
        self.scheduler.wakeup()
        self.notices.publish(DUE)

    def _drain_asked(self) -> None:
        """An operator asked this node to drain (the flag in its node row)."""
        if self.on_drain is not None:
            self.on_drain()
        elif self._draining is None:
            self._draining = asyncio.ensure_future(self.stop_delivering(self.settings.shutdown_timeout))

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            now = time.time()
            try:
                await self.store.purge(now - SENT_RETENTION, now - EVENT_RETENTION)
                await self.store.prune_suppressions(now)
            except Exception:
                log.exception("housekeeping failed")
