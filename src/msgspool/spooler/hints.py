"""Where this process's hints of work go: to its own delivery, to the daemon's delivery process
over the link, or to the daemon of the spool over the control socket (and, on a shared spool,
to the other nodes).

A submission, a report owed, an event for webhooks: whoever commits it tells whoever delivers.
Which that is depends on what this process is at the moment — the delivering node itself
(`delivering`), the daemon's intake process while a delivery process runs (`remote`, which
comes and goes as the delivery process is respawned), or a client of the spool (`msgspool
sendmail`, an API client: the daemon's control socket). The parts that commit (the spooler's
operations, receipts, the reporter, the webhook dispatcher) hold this object and never ask which.

While this process delivers, its hints ring the signals its delivery parts answer
(wiring.Signals: `due` the scheduler, `reports` the reporter, `events` the webhook dispatcher).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from msgspool.domain.events import Event
from msgspool.domain.message import Message
from msgspool.domain.webhooks import from_webhook
from msgspool.spooler import control
from msgspool.spooler.events import EventBus
from msgspool.spooler.link import RemoteDelivery
from msgspool.spooler.metrics import Metrics
from msgspool.spooler.notices import DUE, REPORTS, Notices

if TYPE_CHECKING:
    from msgspool.spooler.wiring import Signals


class Hints:
    def __init__(self, spool_path: Path, notices: Notices, bus: EventBus, metrics: Metrics, signals: Signals, *,
                 webhooks: bool) -> None:
        self.spool_path, self.notices, self.bus, self.metrics = spool_path, notices, bus, metrics
        self.signals, self.webhooks = signals, webhooks
        self.delivering = False  # this process delivers (spooler/delivery.py sets it)
        self.routing = False  # this process routes at submission (Spooler.start)
        # In the daemon's intake process: a delivery process is supervised, so while none runs
        # (restarting) hints are dropped; the next one reads the spool when it starts.
        self.delivery_process = False
        self.remote: RemoteDelivery | None = None  # the delivery process now running (daemon.py)
        # Without webhooks, events go straight to the bus: the delivery path pays nothing for them.
        self.publish: Callable[[Sequence[Event]], None] = self._publish_for_webhooks if webhooks else bus.publish
        signals.listeners.connect(self._listeners)

    def deliver(self, delivering: bool) -> None:
        """This process delivers from now on, or no longer (spooler/delivery.py)."""
        self.delivering = delivering

    def route(self, routing: bool) -> None:
        """This process routes at submission (`Spooler.start`), or leaves it to the daemon."""
        self.routing = routing

    def supervise(self) -> None:
        """This is the daemon's intake process: a delivery process delivers (`attach` while one runs)."""
        self.delivery_process = True

    def attach(self, remote: RemoteDelivery | None) -> None:
        """The delivery process that runs now (None: none until the next one is ready). It is told
        at once whether anyone here listens to events."""
        self.remote = remote
        if remote is not None and self.bus.listened:
            remote.want_events(True)

    def _listeners(self, listened: bool) -> None:
        if self.remote is not None:
            self.remote.want_events(listened)

    def poke(self) -> None:
        """Tell whoever delivers that there is work: ourselves, or the daemon of this spool."""
        if self.delivering:
            self.signals.due()
            if self.webhooks:  # a client's wakeup may be about events too
                self.signals.events()
        elif self.remote is not None:
            self.remote.wakeup()
        elif not self.delivery_process:
            control.notify(self.spool_path, {"op": "wakeup"})
            self.notices.publish(DUE)  # `sendmail` on a shared spool: whichever node is nearest

    def reports_owed(self) -> None:
        """A commit outside delivery (a submission settling local or unroutable recipients at once)
        left reports owed: the one process that writes reports should look now. Only one does,
        so that no report is written twice."""
        if self.delivering:
            self.signals.reports()
        elif self.remote is not None:
            self.remote.reports()
        elif not self.delivery_process:
            control.notify(self.spool_path, {"op": "reports"})
            self.notices.publish(REPORTS)

    def _publish_for_webhooks(self, events: Sequence[Event]) -> None:
        """Publish, and tell the dispatcher (here, or in the delivery process) when some of the
        events may be for webhooks; those about webhook deliveries never are."""
        self.bus.publish(events)
        if not events or all(from_webhook(e) for e in events):
            return
        if self.delivering:
            self.signals.events()
        elif self.remote is not None:
            self.remote.webhooks()
        elif not self.routing:  # `sendmail` or an API client: the daemon's dispatcher, if one runs
            control.notify(self.spool_path, {"op": "wakeup"})

    def generated(self, messages: Sequence[Message]) -> None:
        """Messages the spooler made and committed itself (reports, read receipts, webhook
        deliveries): accepted like a submission, for the metrics."""
        for message in messages:
            self.metrics.submitted(message.recipients)

    def report_committed(self, message: Message) -> None:
        self.generated([message])
        self.poke()

    def hand_on(self, message: Message) -> None:
        """A message committed here by a part of the spooler (an MDN): deliver what is pending; an
        address that failed at once (no such mailbox) is reported like any failure."""
        self.generated([message])
        if any(r.status.pending for r in message.recipients):
            self.poke()
        if any(r.report_owed for r in message.recipients):
            self.reports_owed()
