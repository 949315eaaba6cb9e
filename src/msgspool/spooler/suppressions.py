"""Intake's copy of the suppression list, kept fresh, so that SMTP refuses a suppressed recipient
at RCPT time (the store checks again when it commits: what was listed a moment ago fails there
all the same); the operator's entries (`msgspool suppression add|remove`, /api/suppressions);
and the hard bounces that come back later as mail (spooler/bounces.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence

from msgspool.domain.bounces import read_report
from msgspool.domain.suppression import OPERATOR, Suppression, suppression_key
from msgspool.ports import Store, Transport
from msgspool.spooler.background import start_supervised, stop_task
from msgspool.spooler.bounces import suppress_from_report
from msgspool.spooler.intake import Intake

log = logging.getLogger("msgspool")
SUPPRESSION_REFRESH = 1.0  # seconds between looks at the suppression list for intake's RCPT-time copy


class SuppressionList:
    def __init__(self, store: Store, intake: Intake) -> None:
        self.store, self.intake = store, intake
        self._watch: asyncio.Task[None] | None = None
        self._signature: tuple[int, float | None] | None = None
        self._reading: set[asyncio.Task[list[Suppression]]] = set()  # reports received, being read

    def watch(self) -> None:
        """Keep intake's copy fresh: read again within SUPPRESSION_REFRESH of a change by any
        process or node."""
        if self._watch is None:
            self._watch = start_supervised("suppressions", self._loop)

    async def stop(self) -> None:
        await stop_task(self._watch)
        for task in list(self._reading):
            task.cancel()
        await asyncio.gather(*self._reading, return_exceptions=True)

    def report_received(self, content: bytes, owners: Sequence[str], transports: Mapping[str, Transport],
                        suppression_time: float) -> asyncio.Task[list[Suppression]]:
        """A message from the null sender for the local addresses `owners`, committed: when it is
        a delivery status report about one of their messages, list its hard bounces. Read in the
        background (the sender of the report has its 250 already); what it adds, the task's result."""
        task = asyncio.ensure_future(self._read_report(content, owners, transports, suppression_time))
        self._reading.add(task)
        task.add_done_callback(self._reading.discard)
        return task

    async def _read_report(self, content: bytes, owners: Sequence[str], transports: Mapping[str, Transport],
                           suppression_time: float) -> list[Suppression]:
        try:
            report = await asyncio.to_thread(read_report, content)
            if report is None:
                return []
            added = await suppress_from_report(self.store, transports, report, owners, time.time(), suppression_time)
            if added:
                await self.refresh(force=True)
            return added
        except Exception:
            log.exception("could not read a delivery status report for %s", ", ".join(owners))
            return []

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("could not read the suppression list")
            await asyncio.sleep(SUPPRESSION_REFRESH)

    async def refresh(self, *, force: bool = False) -> None:
        signature = await self.store.suppressions_signature()
        if force or signature != self._signature:
            self.intake.use_suppressions(await self.store.suppressions(time.time()))
            self._signature = signature

    async def entries(self) -> list[Suppression]:
        return await self.store.suppressions(time.time())

    async def add(self, address: str, reason: str, until: float | None) -> Suppression:
        """An operator's entry."""
        entry = Suppression(suppression_key(address), reason or "added by the operator", time.time(), until, OPERATOR)
        await self.store.suppress(entry)
        await self.refresh(force=True)
        return entry

    async def remove(self, address: str) -> bool:
        removed = await self.store.unsuppress(address)
        await self.refresh(force=True)
        return removed
