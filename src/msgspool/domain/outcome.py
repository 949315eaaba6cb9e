"""Replies and outcomes: what a next hop (or msgspool itself) answered, and what it means.

A `Reply` is an SMTP-shaped answer: a three-digit code (RFC 5321 §4.2), an optional enhanced
status code (RFC 3463, written ``class.subject.detail``) and a text. Every outcome in msgspool is
expressed this way, including those of non-SMTP transports and of msgspool's own decisions, so
that status, logs and reports speak one language.

    2xx  -> delivered          (the next hop took responsibility)
    4xx  -> deferred           (temporary: try again later)
    5xx  -> failed             (permanent: report it)
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import Enum

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")


class Kind(Enum):
    """The three ways a reply can end an attempt."""

    SUCCESS = "success"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply: ``code`` (e.g. 250), ``enhanced`` (e.g. "2.0.0" or ""), ``text``."""

    code: int
    enhanced: str = ""
    text: str = ""

    @property
    def kind(self) -> Kind:
        if 200 <= self.code < 400:
            return Kind.SUCCESS
        if 400 <= self.code < 500:
            return Kind.TEMPORARY
        return Kind.PERMANENT

    @property
    def ok(self) -> bool:
        return self.kind is Kind.SUCCESS

    @property
    def temporary(self) -> bool:
        return self.kind is Kind.TEMPORARY

    @property
    def permanent(self) -> bool:
        return self.kind is Kind.PERMANENT

    @property
    def dsn(self) -> str:
        """The RFC 3463 status for logs and reports; derived from the code when the peer sent none."""
        if self.enhanced:
            return self.enhanced
        return {Kind.SUCCESS: "2.0.0", Kind.TEMPORARY: "4.0.0", Kind.PERMANENT: "5.0.0"}[self.kind]

    def line(self) -> str:
        """The reply as one line, e.g. ``250 2.0.0 Ok``; used in status output and logs."""
        parts = [str(self.code)]
        if self.enhanced:
            parts.append(self.enhanced)
        if self.text:
            parts.append(self.text)
        return " ".join(parts)

    def wire(self) -> bytes:
        """The reply as it goes on the wire; a multi-line text becomes a multi-line reply."""
        return _wire(self)

    def _format(self) -> bytes:
        lines = self.text.split("\n") if self.text else [""]
        prefix = f"{self.enhanced} " if self.enhanced else ""
        out = []
        for i, text in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            out.append(f"{self.code}{sep}{prefix}{text}".rstrip() + "\r\n")
        return "".join(out).encode("utf-8", "replace")

    @classmethod
    def parse(cls, code: int, text: str) -> Reply:
        """Split an enhanced status code off the front of a reply text, when there is one."""
        head, _, rest = text.partition(" ")
        if _ENHANCED.match(head) and head[0] == str(code)[0]:
            return cls(code, head, rest)
        return cls(code, "", text)

    def __str__(self) -> str:
        return self.line()


@dataclass(frozen=True, slots=True)
class Filed(Reply):
    """A success that filed the message into a local mailbox outside the store (a maildir): the
    store records a `new_mail` event of `mailbox`/`folder` with the outcome, as it does for the
    copies it files itself. `location` says where (a file name), for the event's detail."""

    mailbox: str = ""
    folder: str = "inbox"
    location: str = ""
    sender: str = ""
    message_class: str = ""


@functools.lru_cache(maxsize=4096)
def _wire(reply: Reply) -> bytes:
    """Cached: the listener sends the same few replies over and over."""
    return reply._format()


# Replies msgspool gives on its own account (RFC 3463 codes).
CONNECTION_REFUSED = Reply(421, "4.4.1", "connection refused")
CONNECTION_TIMEOUT = Reply(421, "4.4.1", "connection timed out")
CONNECTION_LOST = Reply(421, "4.4.2", "lost connection with the next hop")
DESTINATION_DOWN = Reply(421, "4.4.1", "destination marked down; waiting for it to come back")


def transport_offline(name: str) -> Reply:
    """Why a recipient waits while an operator has its transport offline (Postfix's "delivery
    temporarily suspended: deferred transport"; RFC 3463 4.3.2: system not accepting messages)."""
    return Reply(421, "4.3.2", f"transport {name} is offline")
NO_ROUTE = Reply(550, "5.4.4", "no transport accepts this address type or domain")
EXPIRED = Reply(554, "5.4.7", "message expired: delivery time limit exceeded")
LOOP_DETECTED = Reply(554, "5.4.6", "too many hops: mail loop suspected")


def attempts_exhausted(attempts: int, last: Reply) -> Reply:
    """A recipient given up after its cap on attempts, quoting the temporary reply it last got.

    RFC 3463 X.4.7 ("delivery time expired": the message stayed too long, or the sender's limit
    was exceeded) is what the queue's own giving-up means, as for an expired lifetime; the next
    hop's code (a 4.x.x) is quoted, not promoted to 5.x.x, since the next hop never said the
    failure was permanent. 554: the transaction as a whole failed (RFC 5321 §4.2.2)."""
    return Reply(554, "5.4.7", f"delivery attempts exhausted after {attempts} attempts: {last.line()}")
