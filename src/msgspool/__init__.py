"""msgspool: a store-and-forward message spooler.

    import asyncio
    from email.message import EmailMessage
    import msgspool

    async def main():
        async with msgspool.open_spool("./msgspool-data", relay="smtp.example.org:25") as spool:
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = "app@example.org", "user@example.com", "Hi"
            msg.set_content("Hello")
            queue_id = await spool.send(msg)          # returns once the message is on disk
            async for event in spool.events():         # submitted, delivered, deferred, ...
                print(event.type, event.recipient)

`deliver=False` only writes into the spool and wakes the daemon (`msgspool serve`) that delivers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from msgspool.config import Settings
from msgspool.config import load as load_settings
from msgspool.domain.events import Event, EventType
from msgspool.domain.message import NON_URGENT, NORMAL, URGENT
from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import RecipientType, Status
from msgspool.errors import DestinationUnavailable, MsgspoolError, NotFound, SpoolError, SubmitError
from msgspool.spooler.intake import Submission
from msgspool.spooler.runtime import Spooler

__all__ = [
    "NON_URGENT",
    "NORMAL",
    "URGENT",
    "DestinationUnavailable",
    "Event",
    "EventType",
    "MsgspoolError",
    "NotFound",
    "RecipientType",
    "Reply",
    "Settings",
    "SpoolError",
    "Spooler",
    "Status",
    "Submission",
    "SubmitError",
    "load_settings",
    "open_spool",
]


@contextlib.asynccontextmanager
async def open_spool(data_dir: str | None = None, *, deliver: bool = True, config_file: str | None = None,
                     **settings: Any) -> AsyncIterator[Spooler]:
    """Open (creating if needed) the spool in `data_dir` and, with `deliver`, run delivery here."""
    spooler = Spooler(load_settings(config_file, data_dir, **settings))
    await spooler.start(deliver=deliver)
    try:
        yield spooler
    finally:
        await spooler.stop()
