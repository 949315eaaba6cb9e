"""The webhook dispatcher: turns events into queued webhook deliveries, each exactly once.

It runs in the process that delivers and tails the store's events table from a cursor the store
keeps (`Events.webhook_cursor`). For each event and each webhook that wants it (domain/webhooks.py),
it builds an outbound message — null sender, one recipient of address type WEBHOOK whose address
is the URL, NOTIFY=NEVER, origin "webhook", class "IPM.Webhook", the event's JSON as content — and
submits the messages of a batch of events together with the new cursor in one store write
(`Events.enqueue_webhooks`). So a crash either queues a batch and moves the cursor, or neither: no
event is lost, none is posted twice by the dispatcher. From then on they are ordinary queued mail:
the `webhook` transport POSTs them, with retries, destination health and expiry, and they survive
restarts and show in `queue list`.

Events about webhook deliveries themselves are skipped (`from_webhook`): no feedback loop. The
dispatcher is poked when events are published here and by the intake process over the link
(link.py, op "webhooks"); it also looks every `CHECK_INTERVAL` seconds, for events written by
processes that cannot tell it (`msgspool sendmail` with no daemon's link).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from msgspool.domain.dsn import RecipientDSN
from msgspool.domain.events import Event
from msgspool.domain.message import Message
from msgspool.domain.webhooks import (
    WEBHOOK,
    WEBHOOK_CLASS,
    WEBHOOK_ORIGIN,
    WebhookTarget,
    from_webhook,
    webhook_body,
)
from msgspool.errors import SubmitError
from msgspool.ports import Events
from msgspool.spooler.background import start_supervised, stop_task
from msgspool.spooler.intake import Intake, Submission
from msgspool.spooler.signals import Signal

log = logging.getLogger("msgspool.webhooks")
CHECK_INTERVAL = 5.0  # seconds between looks at the events table when nobody pokes
BATCH = 500  # events per store write
NEVER = RecipientDSN(frozenset())  # RFC 3461 NOTIFY=NEVER: a webhook delivery owes no report


class WebhookDispatcher:
    def __init__(self, store: Events, intake: Intake, targets: Sequence[WebhookTarget], *,
                 publish: Callable[[Sequence[Event]], None], deliver: Callable[[], None],
                 queued: Callable[[Sequence[Message]], None] = lambda _messages: None,
                 interval: float = CHECK_INTERVAL, batch: int = BATCH, poked_by: Signal[[]] | None = None) -> None:
        self.store, self.intake, self.targets = store, intake, tuple(targets)
        self.publish, self.deliver = publish, deliver
        self.queued = queued  # told the deliveries committed (the metrics count them accepted)
        self.interval, self.batch = interval, batch
        self.cursor = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        if poked_by is not None:  # events were committed (wiring.Signals.events)
            poked_by.connect(self.poke)

    async def start(self) -> None:
        self.cursor = await self.store.webhook_cursor()
        self._wakeup.set()  # events written while no dispatcher ran
        self._task = start_supervised("webhook-dispatcher", self._loop)

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    def poke(self) -> None:
        """New events may be in the store."""
        self._wakeup.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.interval)
            self._wakeup.clear()
            try:
                await self.drain()
            except Exception:  # the cursor did not move: the same events are tried again
                log.exception("queueing webhooks failed; retrying in %.0f s", self.interval)

    async def drain(self) -> int:
        """Queue the deliveries for every event after the cursor; returns how many were queued."""
        queued = 0
        while events := await self.store.events_after(self.cursor, self.batch):
            messages = [m for e in events if not from_webhook(e) for m in self._deliveries(e)]
            upto = events[-1].id or self.cursor
            written = await self.store.enqueue_webhooks(self.cursor, upto, messages)
            if written is None:  # moved by someone else: take up from where it is now
                self.cursor = await self.store.webhook_cursor()
                continue
            self.cursor = upto
            queued += len(messages)
            if messages:
                self.queued(messages)
                self.publish(written)
                self.deliver()
            if len(events) < self.batch:
                break
        return queued

    def _deliveries(self, event: Event) -> list[Message]:
        return [m for m in (self._delivery(event, t) for t in self.targets if t.wants(event)) if m is not None]

    def _delivery(self, event: Event, target: WebhookTarget) -> Message | None:
        submission = Submission(sender="", recipients=[target.url], content=webhook_body(event), addrtypes=[WEBHOOK],
                                origin=WEBHOOK_ORIGIN, message_class=WEBHOOK_CLASS, recipient_dsn=[NEVER])
        try:
            message, _copies = self.intake.build(submission)
        except SubmitError as err:  # e.g. larger than message_size_limit: it would never go out
            log.warning("event %s: webhook %s not queued: %s", event.id, target.name, err)
            return None
        return message
