"""The runtime's background loops (refill, delay timer, webhook dispatcher, housekeeping, the
watchdog): how one is kept running and how one stops.

No background loop may die silently (issue 10.4): `supervised` restarts one that raised, with the
error logged and a pause that grows while it keeps failing, as Postfix's master restarts a daemon
that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("msgspool")
RESTART_DELAYS = (0.1, 1.0, 5.0, 30.0)


async def supervised(name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `loop()` until it returns; restart it whenever it raises (cancelling stops it)."""
    failures = 0
    while True:
        try:
            await loop()
            return
        except Exception:
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            failures += 1
            log.exception("%s failed; restarting it in %.1f s", name, delay)
            await asyncio.sleep(delay)


def start_supervised(name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
    return asyncio.create_task(supervised(name, loop), name=f"msgspool-{name}")


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel a background loop and wait until it has ended (None: it never started)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
