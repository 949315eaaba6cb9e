"""The in-process event bus: subscribers get every event the store recorded, after its commit.

Subscribers are callbacks (called in the event loop; exceptions are logged, never raised into the
spooler) or async iterators (`subscribe()`), each with optional filters by type and mailbox. A slow
iterator never blocks the spooler: its queue is bounded and, when full, it is told it lost events
by a final `None` and dropped (it can resume from the store by event id).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from msgspool.domain.address import mailbox_key
from msgspool.domain.events import Event, EventType

log = logging.getLogger("msgspool.events")


@dataclass(slots=True)
class EventFilter:
    types: frozenset[EventType] | None = None
    mailbox: str | None = None  # as a user writes it: compared as the mailbox's name (lower case)

    def __post_init__(self) -> None:
        if self.mailbox is not None:
            self.mailbox = mailbox_key(self.mailbox)

    def matches(self, event: Event) -> bool:
        if self.types is not None and event.type not in self.types:
            return False
        return self.mailbox is None or event.mailbox == self.mailbox


class Subscription:
    """An async iterator of matching events. It is registered when created, not when first awaited,
    so an event published between `subscribe()` and the first `anext()` is not missed."""

    def __init__(self, bus: EventBus, flt: EventFilter, maxsize: int) -> None:
        self._bus = bus
        self.filter = flt
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.overflowed = False
        self.closed = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if self.closed:
            raise StopAsyncIteration
        event = await self.queue.get()
        if event is None:
            await self.aclose()
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        self.closed = True
        self._bus._remove(self)

    def offer(self, event: Event) -> None:
        if self.overflowed or not self.filter.matches(event):
            return
        if self.queue.qsize() >= self.queue.maxsize - 1:
            self.overflowed = True  # the reader fell behind: end its stream, it resumes by event id
            self.queue.put_nowait(None)
        else:
            self.queue.put_nowait(event)


class EventBus:
    def __init__(self, on_listeners: Callable[[bool], None] | None = None) -> None:
        self._callbacks: list[tuple[EventFilter, Callable[[Event], object]]] = []
        self._subscriptions: set[Subscription] = set()
        # Told when the bus gains its first listener or loses its last: the daemon's intake process
        # asks its delivery process for events only while someone listens.
        self.on_listeners = on_listeners

    @property
    def listened(self) -> bool:
        return bool(self._callbacks or self._subscriptions)

    @property
    def listeners(self) -> int:
        """Subscriptions (SSE streams, `events()` iterators) and callbacks, for the status table."""
        return len(self._callbacks) + len(self._subscriptions)

    def on(self, callback: Callable[[Event], object], *, types: Iterable[EventType] | None = None,
           mailbox: str | None = None) -> Callable[[], None]:
        """Call `callback(event)` for matching events; returns an unsubscribe function."""
        entry = (EventFilter(frozenset(types) if types else None, mailbox), callback)
        was = self.listened
        self._callbacks.append(entry)
        self._changed(was)

        def unsubscribe() -> None:
            if entry in self._callbacks:
                was = self.listened
                self._callbacks.remove(entry)
                self._changed(was)

        return unsubscribe

    def subscribe(self, *, types: Iterable[EventType] | None = None, mailbox: str | None = None,
                  maxsize: int = 10000) -> Subscription:
        sub = Subscription(self, EventFilter(frozenset(types) if types else None, mailbox), maxsize)
        was = self.listened
        self._subscriptions.add(sub)
        self._changed(was)
        return sub

    def _remove(self, sub: Subscription) -> None:
        was = self.listened
        self._subscriptions.discard(sub)
        self._changed(was)

    def _changed(self, was: bool) -> None:
        if self.on_listeners is not None and was != self.listened:
            self.on_listeners(self.listened)

    def publish(self, events: Iterable[Event]) -> None:
        for event in events:
            for flt, callback in list(self._callbacks):
                if flt.matches(event):
                    try:
                        callback(event)
                    except Exception:
                        log.exception("event callback failed")
            for sub in list(self._subscriptions):
                sub.offer(event)
