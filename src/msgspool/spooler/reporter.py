"""The reporter: writes the delivery reports the store says are owed (MAPI StatusRecips -> DR/NDR;
Postfix's bounce daemon).

When an outcome is recorded, the store notes in the same step whether the sender asked to be told
(RFC 3461 NOTIFY; a failure is told unless NOTIFY says otherwise). This loop turns those notes into
RFC 3464 reports — one per message and kind (failures, delay notices and successes apart), listing
every recipient it covers — submits each through intake like any message, with the null sender (so it is
filed straight into a local sender's mailbox with its MAPI class, or queued for a remote one), and
clears the notes in the same commit: a crash neither loses a report nor sends it twice.

A delay notice (Postfix delay_warning_time) is owed once per recipient, when a deferral settles
after the threshold or when the delay timer (delays.py) finds one that waited past it; its
Will-Retry-Until is the recipient's expiry.

A report about mail from the null sender goes once to the postmaster, or nowhere (domain/reports.py:
never bounce a bounce).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from msgspool.domain.dsn import Action, OriginalRecipient
from msgspool.domain.events import Event
from msgspool.domain.message import Message, PendingReport
from msgspool.domain.reports import (
    DeliveryReport,
    RecipientEntry,
    compose_report,
    report_class,
    report_kind,
    route_report,
)
from msgspool.domain.retry import RetryPolicy
from msgspool.errors import SubmitError
from msgspool.ports import Reports
from msgspool.spooler.intake import Intake, Submission
from msgspool.spooler.signals import Signal

log = logging.getLogger("msgspool.reports")


class Reporter:
    def __init__(self, store: Reports, intake: Intake, *, hostname: str, postmaster: str,
                 publish: Callable[[Sequence[Event]], None], deliver: Callable[[Message], None],
                 retry: RetryPolicy | None = None, clock: Callable[[], float] = time.time,
                 poked_by: Signal[[]] | None = None) -> None:
        self.store, self.intake, self.hostname, self.postmaster = store, intake, hostname, postmaster
        self.publish, self.deliver, self.clock = publish, deliver, clock
        self.retry = retry or RetryPolicy()
        self._task: asyncio.Task[None] | None = None
        self._again = False
        if poked_by is not None:  # reports may be owed (wiring.Signals.reports)
            poked_by.connect(self.poke)

    def poke(self) -> None:
        """Reports may be owed: write them soon (one run at a time)."""
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        else:
            self._again = True

    async def stop(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                pending = await self.store.pending_reports()
                for item in pending:
                    for group in _groups(item):
                        await self._report(item, group)
            except Exception:
                log.exception("writing reports failed; they stay owed and are retried")
                return
            if not pending and not self._again:
                return

    async def _report(self, item: PendingReport, recipients: list[dict[str, Any]]) -> None:
        retry_until = self.retry.give_up_at(item.submitted_at, item.expires_at, item.deliver_after)
        entries = [_entry(r, retry_until) for r in recipients]
        kind = report_kind(e.action for e in entries)
        failed = [e.final_recipient for e in entries if e.action is Action.FAILED]
        route = route_report(item.sender, kind, postmaster=self.postmaster or None, failed_recipients=failed)
        owed = [(int(r["index"]), str(r["action"])) for r in recipients]
        if route.to is None:
            log.info("%s: %s report not sent: %s", item.message_id, kind, route.reason)
            await self.store.reported(item.message_id, owed, None)
            return
        report = DeliveryReport(reporting_mta=self.hostname, to=route.to, original=item.content, recipients=entries,
                                arrival=item.submitted_at, envid=item.dsn.envid if item.dsn else None,
                                ret=item.dsn.ret if item.dsn else None, queue_id=item.message_id)
        try:
            content = compose_report(report, now=self.clock())
            message, copies = self.intake.build(Submission(
                sender="", recipients=[route.to], content=content, origin="report",
                message_class=report_class(kind, item.message_class)))
        except SubmitError as err:
            log.warning("%s: %s report to <%s> refused: %s", item.message_id, kind, route.to, err)
            await self.store.reported(item.message_id, owed, None)
            return
        except Exception:  # our bug on this message's content: it must not hold up every report after it
            log.exception("%s: %s report to <%s> could not be written; dropped", item.message_id, kind, route.to)
            await self.store.reported(item.message_id, owed, None)
            return
        events = await self.store.reported(item.message_id, owed, message, copies)
        log.info("%s: %s report %s to <%s> (%s)", item.message_id, kind, message.id, route.to, route.reason)
        self.publish(events)
        if any(r.status.pending for r in message.recipients):
            self.deliver(message)


def _groups(item: PendingReport) -> list[list[dict[str, Any]]]:
    """Failures in one report (an NDR), delays in another (a delay notice), successes (delivered,
    relayed) in a third: each kind has its own MAPI class, and a sender's client files them apart."""
    failures = [r for r in item.recipients if r["action"] == Action.FAILED]
    delays = [r for r in item.recipients if r["action"] == Action.DELAYED]
    successes = [r for r in item.recipients if r["action"] not in (Action.FAILED, Action.DELAYED)]
    return [g for g in (failures, delays, successes) if g]


def _entry(r: dict[str, Any], retry_until: float) -> RecipientEntry:
    action = Action(r["action"])
    original = OriginalRecipient(*r["orcpt"].split(";", 1)) if r["orcpt"] else None
    remote = r["remote"].split("[", 1)[0] if r["remote"] else None  # "host[addr]:port" -> host
    return RecipientEntry.from_reply(r["address"], action, r["reply"], remote_mta=remote,
                                     original_recipient=original, last_attempt=r["last_attempt_at"],
                                     will_retry_until=retry_until if action is Action.DELAYED else None)
