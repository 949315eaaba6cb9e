"""The delay timer: owes the delay notice of recipients that stay deferred without a new outcome.

A deferral that settles after `delay_warning_time` owes its notice in that same step (the store's
`settle`). But a recipient may wait past the threshold without being settled again: a down
destination's backlog waits for the destination, and a message-level backoff can be an hour long.
This loop covers them. It sleeps until the earliest `warn_at` the store knows (by index) — or the
earlier one the scheduler just settled (`expect`) — then has the store mark every recipient whose
time came, a bounded chunk per transaction, and pokes the reporter. Cheap with a million deferred
recipients: one indexed read per wakeup, and only due rows are touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from msgspool.ports import Reports
from msgspool.spooler.background import start_supervised, stop_task

log = logging.getLogger("msgspool.reports")
RECHECK = 60.0  # seconds: the longest sleep, so a warn_at set by another process is seen soon


class DelayTimer:
    def __init__(self, store: Reports, on_due: Callable[[], None], *, clock: Callable[[], float] = time.time,
                 recheck: float = RECHECK) -> None:
        self.store, self.on_due, self.clock, self.recheck = store, on_due, clock, recheck
        self._next: float | None = None  # the earliest warn_at known
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = start_supervised("delay-timer", self._loop)

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    def expect(self, warn_at: float) -> None:
        """A deferral was settled whose notice falls due at `warn_at`: wake up by then."""
        if self._next is None or warn_at < self._next:
            self._next = warn_at
            self._wakeup.set()

    async def _loop(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                await self._mark_due()
                self._next = await self.store.next_delay_warning()
            except Exception:
                log.exception("delay notices: marking failed; retried in %.0f s", self.recheck)
                self._next = None  # sleep the full recheck, not spin on a time that has passed
            await self._sleep()

    async def _mark_due(self) -> None:
        marked = await self.store.mark_delay_warnings(self.clock())
        if marked:
            log.info("delay notices owed for %d deferred recipients", marked)
            self.on_due()

    async def _sleep(self) -> None:
        timeout = self.recheck if self._next is None else min(self.recheck, self._next - self.clock())
        if timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)
