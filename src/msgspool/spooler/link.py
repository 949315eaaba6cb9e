"""The link between the daemon's two processes, so that a 2-core machine uses both cores.

`msgspool serve` runs intake (SMTP and HTTP listeners, the control socket, the commits that
acknowledge messages) in one process and delivery (scheduler, destinations, transports) in a
second one. The store is the only shared state: intake commits a message, delivery claims it from
the store. The link carries only hints and questions, as JSON lines over a socketpair:

    intake -> delivery   {"op": "dispatch", "message": {...}}  a message just committed with its due
                                                                recipients already `active`: deliver
                                                                it without reading it back
                         {"op": "wakeup"}                      new work was committed
                         {"op": "webhooks"}                    events were committed (sent only when
                                                                webhooks are configured)
                         {"op": "reports"}                     reports are owed: write them
                         {"op": "cancel", "ids": [...]}         held, requeued or deleted: drop queued
                                                                jobs, give their recipients back
                         {"op": "transports"}                   a transport was put offline or online:
                                                                read the offline transports again
                         {"op": "probe", "transport": T|null,   flush: probe down destinations now
                          "nexthop": N|null}                    (of one transport / destination)
                         {"op": "abort", "ids": [...], "req": N} -> {"in_flight": {id: [[idx, addr]]}}:
                                                                delete/hold first stops their jobs
                                                                (until the `cancel` that follows)
                         {"op": "events", "on": true|false}     someone listens: forward events
                         {"op": "status", "req": N}             -> {"reply": N, "body": {...}}
                         {"op": "metrics", "req": N}            -> {"reply": N, "body": {"families":
                                                                [...]}}: its Prometheus samples
                                                                (spooler/metrics.py)
                         {"op": "sync", "req": N}               -> {"reply": N, "body": {}}: every
                                                                earlier message has been handled
    delivery -> intake   {"ready": OWNER}                       registered as node OWNER, dead
                                                                nodes' work rescued: hand-overs
                                                                may begin, committed as OWNER's
                         {"events": [...]}                      settled outcomes, for subscribers
                         {"active": N}                          recipients in its window, after
                                                                each settlement: the credit for
                                                                dispatch hand-overs
                         {"drain": OWNER}                       an operator asked node OWNER to
                                                                drain: the daemon stops as on SIGTERM

Postfix's master/qmgr wakeup FIFO plays the same part. A lost hint costs latency, never mail:
delivery also finds its work by scanning the store.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from msgspool.domain.dsn import MessageDSN, Ret, notify_text, orcpt_text, recipient_dsn
from msgspool.domain.events import Event, event_from_wire, event_to_wire
from msgspool.domain.message import Message, Recipient
from msgspool.domain.recipient import RecipientType, Status

log = logging.getLogger("msgspool.link")
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]
LINE_LIMIT = 64 * 1024 * 1024


class Link:
    """One end of the link: `send` a message, `request` an answer, `run` to handle what comes in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler) -> None:
        self.reader, self.writer, self.handler = reader, writer, handler
        self._requests: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0

    @classmethod
    async def over(cls, sock: Any, handler: Handler) -> Link:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        return cls(reader, writer, handler)

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def request(self, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        self._next += 1
        number = self._next  # its own: `_next` has moved on if another request began meanwhile
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._requests[number] = future
        self.send({**message, "req": number})
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._requests.pop(number, None)

    async def run(self) -> None:
        """Handle incoming messages until the other end goes away."""
        try:
            while line := await self.reader.readline():
                if not line.endswith(b"\n"):
                    break  # the other end died in the middle of a line
                message = json.loads(line)
                if "reply" in message:
                    future = self._requests.get(message["reply"])
                    if future is not None and not future.done():
                        future.set_result(message["body"])
                    continue
                answer = await self.handler(message)
                if "req" in message:
                    self.send({"reply": message["req"], "body": answer or {}})
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for future in self._requests.values():
                if not future.done():
                    future.set_exception(ConnectionError("link closed"))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class RemoteDelivery:
    """The intake side's view of the delivery process: hints out, status and events in."""

    def __init__(self, link: Link, window: int, owner: str) -> None:
        self.link = link
        self.window = window
        self.owner = owner  # the delivery run's token: hand-overs are committed as its own
        self.active = 0  # the delivery process's window, as last reported, plus what went since
        self._pending_hints: set[str] = set()  # ops to send at the end of this loop turn

    def room(self, count: int) -> bool:
        """May `count` more recipients be handed over? Keeps the delivery process's memory bounded:
        beyond its window, work waits in the store and is claimed from there."""
        return self.active + count <= self.window

    def dispatch(self, message: Message, count: int) -> None:
        self.active += count
        self.link.send({"op": "dispatch", "message": message_to_wire(message)})

    def reported(self, message: dict[str, Any]) -> None:
        if "active" in message:
            self.active = int(message["active"])

    def wakeup(self) -> None:
        """There is work: one wakeup per turn of the event loop, however many commits it saw."""
        self._hint("wakeup")

    def webhooks(self) -> None:
        """Events were committed here: the delivery process's webhook dispatcher should look."""
        self._hint("webhooks")

    def reports(self) -> None:
        """Reports were left owed by a commit here: the delivery process's reporter writes them."""
        self._hint("reports")

    def _hint(self, op: str) -> None:
        """Send `op` once at the end of this turn of the event loop, however often it is asked."""
        if op not in self._pending_hints:
            self._pending_hints.add(op)
            asyncio.get_running_loop().call_soon(self._send_hint, op)

    def _send_hint(self, op: str) -> None:
        self._pending_hints.discard(op)
        self.link.send({"op": op})

    def cancel(self, ids: Sequence[str]) -> None:
        self.link.send({"op": "cancel", "ids": list(ids)})

    def transports(self) -> None:
        """A transport was put offline or online: the delivery process reads them again."""
        self.link.send({"op": "transports"})

    def probe(self, transport: str | None = None, nexthop: str | None = None) -> None:
        self.link.send({"op": "probe", "transport": transport, "nexthop": nexthop})

    async def abort(self, ids: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
        """Scheduler.abort in the delivery process: what of these messages is in flight there."""
        body = await self.link.request({"op": "abort", "ids": list(ids)})
        return {m: [(int(i), str(a)) for i, a in v] for m, v in body.get("in_flight", {}).items()}

    def want_events(self, on: bool) -> None:
        self.link.send({"op": "events", "on": on})

    async def status(self) -> dict[str, Any]:
        return await self.link.request({"op": "status"})

    async def metrics(self) -> list[list[Any]]:
        """The delivery process's metric families, in the wire form of Metrics.snapshot."""
        body = await self.link.request({"op": "metrics"}, timeout=5.0)
        families: list[list[Any]] = body.get("families", [])
        return families

    async def sync(self) -> None:
        """A round trip: the delivery process has handled everything sent before (it answers any
        request, in order), e.g. the `events on` of `want_events`."""
        await self.link.request({"op": "sync"})


class EventForwarder:
    """The delivery side: while intake wants events, batch them per loop turn onto the link."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._batch: list[Event] = []

    def __call__(self, event: Event) -> None:
        if not self._batch:
            asyncio.get_running_loop().call_soon(self._flush)
        self._batch.append(event)

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        self.link.send({"events": [event_to_wire(e) for e in batch]})


def events_of(message: dict[str, Any]) -> list[Event]:
    return [event_from_wire(e) for e in message.get("events", ())]


def message_to_wire(message: Message) -> dict[str, Any]:
    """What delivery needs of a message (not its folder or mailbox), in JSON's terms."""
    return {"id": message.id, "sender": message.sender, "content": base64.b64encode(message.content).decode(),
            "submitted_at": message.submitted_at, "priority": message.priority, "expires_at": message.expires_at,
            "message_class": message.message_class, "origin": message.origin, "meta": message.meta,
            "deliver_after": message.deliver_after, "max_attempts": message.max_attempts,
            "ret": message.dsn.ret if message.dsn else None, "envid": message.dsn.envid if message.dsn else None,
            "recipients": [[r.index, r.address, r.addrtype, str(r.type), r.transport, r.nexthop, r.attempts,
                            notify_text(r.dsn), orcpt_text(r.dsn)]
                           for r in message.recipients if r.status is Status.ACTIVE]}


def message_from_wire(data: dict[str, Any]) -> Message:
    recipients = [Recipient(address=address, addrtype=addrtype, type=RecipientType(rtype), transport=transport,
                            nexthop=nexthop, status=Status.ACTIVE, attempts=attempts, index=index,
                            dsn=recipient_dsn(notify, orcpt))
                  for index, address, addrtype, rtype, transport, nexthop, attempts, notify, orcpt
                  in data["recipients"]]
    ret, envid = data.get("ret"), data.get("envid")
    return Message(id=data["id"], sender=data["sender"], content=base64.b64decode(data["content"]),
                   recipients=recipients, submitted_at=data["submitted_at"], priority=data["priority"],
                   message_class=data["message_class"], origin=data["origin"], meta=data["meta"],
                   expires_at=data["expires_at"], deliver_after=data.get("deliver_after"),
                   max_attempts=data.get("max_attempts"),
                   dsn=MessageDSN(Ret(ret) if ret else None, envid) if ret or envid else None)
