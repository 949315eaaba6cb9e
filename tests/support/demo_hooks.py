"""Third-party hooks and a transport for the hook tests, registered by a test distribution's entry
points (tests/integration/test_hooks.py): the way an operator's own package plugs in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from msgspool.domain.hooks import AutoReply, Delivery, Draft, DraftRecipient, File, InboundAction
from msgspool.domain.message import Message, Recipient
from msgspool.domain.outcome import Reply

STATE = {"broken": True, "crashes": 0}


class Hook:
    def __init__(self, name: str, settings: Any, options: dict[str, Any]) -> None:
        self.name, self.options = name, options


class Boom(Hook):
    """Raises while STATE['broken'] for messages whose Subject contains 'boom'."""

    def preprocess(self, draft: Draft) -> None:
        if STATE["broken"] and b"boom" in draft.content:
            raise RuntimeError("the hook is broken")


class InboundBoom(Hook):
    """An inbound hook that raises while STATE['broken'] for messages whose content says 'boom'."""

    def postprocess(self, delivery: Delivery) -> None:
        if STATE["broken"] and b"boom" in delivery.content:
            raise RuntimeError("the hook is broken")


class Slow(Hook):
    async def preprocess(self, draft: Draft) -> None:
        if b"slow" in draft.content:
            await asyncio.sleep(30)


class Block(Hook):
    """A plain (threaded) hook that blocks its thread for seconds on messages that say 'block'."""

    def preprocess(self, draft: Draft) -> None:
        if b"block" in draft.content:
            time.sleep(3)


class Garbage(Hook):
    def preprocess(self, draft: Draft) -> object:
        return 42 if b"garbage" in draft.content else None


class InPlace(Hook):
    """Edits the draft it is given and answers None, as many third-party hooks do: a header on
    top, and the first recipient renamed when the Subject says 'rename'."""

    def preprocess(self, draft: Draft) -> None:
        draft.content = b"X-Edited: in place\r\n" + draft.content
        if b"rename" in draft.content:
            draft.recipients[0].address = "renamed@example.net"


class Malformed(Hook):
    """Answers a draft broken as the Subject says: 'no-addrtype' (None for a recipient's address
    type), 'crlf-sender' (a sender that would inject an SMTP command)."""

    def preprocess(self, draft: Draft) -> Draft:
        if b"no-addrtype" in draft.content:
            draft.recipients[0].addrtype = None  # type: ignore[assignment]
        if b"crlf-sender" in draft.content:
            draft.sender = "a@example.org>\r\nRCPT TO:<victim@example.net"
        return draft


class Exits(Hook):
    """Calls sys.exit (in its worker thread) on messages that say 'exit'."""

    def preprocess(self, draft: Draft) -> None:
        if b"exit" in draft.content:
            raise SystemExit(3)


class AsyncExits(Hook):
    async def preprocess(self, draft: Draft) -> None:
        if b"exit" in draft.content:
            raise SystemExit(3)


class InboundExits(Hook):
    def postprocess(self, delivery: Delivery) -> None:
        if b"exit" in delivery.content:
            raise SystemExit(3)


class InboundAutoReply(Hook):
    """Keeps the message and answers its sender; on messages that say 'bad-reply' the reply's
    content is a str, not bytes."""

    def postprocess(self, delivery: Delivery) -> list[InboundAction]:
        reply: object = b"Subject: Re: your mail\r\n\r\nThanks.\r\n"
        if b"bad-reply" in delivery.content:
            reply = "Subject: Re: your mail\r\n\r\nThanks.\r\n"
        return [File(), AutoReply(delivery.sender, reply)]  # type: ignore[arg-type]


class Split(Hook):
    """One message per recipient, each with its own X-Part header (MAPI: a preprocessor that
    produces several messages)."""

    def preprocess(self, draft: Draft) -> list[Draft]:
        parts = []
        for i, r in enumerate(draft.recipients):
            part = draft.copy()
            part.recipients = [r]
            part.content = f"X-Part: {i}\r\n".encode() + draft.content
            parts.append(part)
        return parts


class AddArchive(Hook):
    def preprocess(self, draft: Draft) -> Draft:
        draft.recipients.append(DraftRecipient(str(self.options["address"])))
        return draft


class Tagger(Hook):
    """Declares its own scope: only messages with a recipient in tagged.example get X-Tagged."""

    domains = ("tagged.example",)

    def preprocess(self, draft: Draft) -> Draft:
        draft.content = b"X-Tagged: yes\r\n" + draft.content
        return draft


class CrashConnection:
    remote = "crash"
    usable = True

    async def send(self, message: Message, recipients: Sequence[Recipient]) -> list[Reply]:
        STATE["crashes"] += 1
        raise ValueError("transport bug")

    async def close(self) -> None:
        return None


class CrashTransport:
    addrtypes = frozenset({"CRASH"})
    domains = ()

    def __init__(self, name: str, settings: Any, options: dict[str, Any]) -> None:
        self.name = name

    def nexthop(self, address: str) -> str:
        return "crash"

    async def connect(self, nexthop: str) -> CrashConnection:
        return CrashConnection()

    async def close(self) -> None:
        return None
