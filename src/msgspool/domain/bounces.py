"""Reports that come back later as mail: an asynchronous DSN (RFC 3464) about a message msgspool
sent, arriving inbound for its sender. A relay that took the message (250) and could not deliver
it afterwards says so in a new message from the null sender:

    Content-Type: multipart/report; report-type=delivery-status       (RFC 6522)
      1. a text part for people
      2. message/delivery-status: per-message fields (Reporting-MTA, Original-Envelope-Id), then
         one block per recipient (Final-Recipient, Action, Status, Diagnostic-Code, Remote-MTA)
      3. the original: message/rfc822, or text/rfc822-headers (its header only)

`read_report` takes what a later step needs from one: which message it is about (its Message-ID,
from part 3, and the ENVID) and each recipient's verdict. Which of them is a hard bounce is
domain/suppression.py's rule, applied to the Status (and the Diagnostic-Code's reply code) as to a
reply heard in the SMTP session. Pure: parsing only, with Python's `email` package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import Message as EmailMessage

from msgspool.domain.outcome import Reply

_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_CODE = re.compile(r"^\s*([245]\d\d)\b")


@dataclass(frozen=True, slots=True)
class ReportedRecipient:
    address: str  # the Final-Recipient's address (the one msgspool sent to is its Original-Recipient)
    original: str  # the Original-Recipient's address, "" when not given
    action: str  # failed | delayed | delivered | relayed | expanded (lower case)
    status: str  # the RFC 3463 code, e.g. "5.1.1"
    diagnostic: str  # the Diagnostic-Code's text, "" when not given

    @property
    def reply(self) -> Reply:
        """The verdict as a reply: the Diagnostic-Code's SMTP code when it has one, else 550 or 450
        (what a remote that said this status at RCPT time would have said), the Status as its code."""
        found = _SMTP_CODE.match(self.diagnostic)
        code = int(found.group(1)) if found else {"5": 550, "4": 450}.get(self.status[:1], 250)
        return Reply(code, self.status, self.diagnostic or f"Action: {self.action}")

    @property
    def addresses(self) -> tuple[str, ...]:
        """The addresses it may be known by here: the original recipient first, then the final one."""
        return tuple(dict.fromkeys(a for a in (self.original, self.address) if a))


@dataclass(frozen=True, slots=True)
class ReceivedReport:
    message_id: str  # the Message-ID of the original, from the report's third part; "" if none
    envid: str  # Original-Envelope-Id, "" if none
    reporting_mta: str
    recipients: tuple[ReportedRecipient, ...]


def looks_like_report(content: bytes) -> bool:
    """A cheap first look, before any parsing: could this be a delivery status report?"""
    head = content[:65536].lower()
    return b"multipart/report" in head and b"delivery-status" in head


def read_report(content: bytes) -> ReceivedReport | None:
    """The delivery status report in `content`; None when it is none (or not one we can read)."""
    if not looks_like_report(content):
        return None
    top = message_from_bytes(content, policy=policy.compat32)
    if top.get_content_type() != "multipart/report" or \
            str(top.get_param("report-type") or "").lower() != "delivery-status":
        return None
    status_part = next((p for p in top.walk() if p.get_content_type() == "message/delivery-status"), None)
    if status_part is None:
        return None
    blocks = _blocks(status_part)
    if len(blocks) < 2:
        return None
    per_message, per_recipient = blocks[0], blocks[1:]
    recipients = tuple(r for r in (_recipient(b) for b in per_recipient) if r is not None)
    return ReceivedReport(_original_message_id(top), _value(per_message.get("original-envelope-id")).strip(),
                          _typed(per_message.get("reporting-mta")), recipients)


def _blocks(part: EmailMessage) -> list[EmailMessage]:
    """The field blocks of a message/delivery-status part (the email package parses each block
    as a message of its own)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [b for b in payload if isinstance(b, EmailMessage)]
    return []


def _recipient(block: EmailMessage) -> ReportedRecipient | None:
    final = _typed(block.get("final-recipient"))
    status = _STATUS.match(_value(block.get("status")))
    if not final or status is None:
        return None
    action = _value(block.get("action")).strip().lower()
    return ReportedRecipient(final, _typed(block.get("original-recipient")), action, ".".join(status.groups()),
                             _typed(block.get("diagnostic-code")))


def _original_message_id(top: EmailMessage) -> str:
    for part in top.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], EmailMessage):
                return _value(inner[0].get("message-id")).strip()
        elif kind == "text/rfc822-headers":
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                headers = message_from_bytes(raw.lstrip(b"\r\n") + b"\r\n\r\n", policy=policy.compat32)
                return _value(headers.get("message-id")).strip()
    return ""


def _value(field: object) -> str:
    return " ".join(str(field).split()) if field is not None else ""


def _typed(field: object) -> str:
    """The value of an `address-type; value` field (RFC 3464 §2.1.2: rfc822; user@host)."""
    text = _value(field)
    kind, semicolon, rest = text.partition(";")
    value = rest if semicolon else kind
    return value.strip().strip("<>").strip()


def message_id_of(content: bytes) -> str:
    """The Message-ID of a message, from its header alone ("" when it has none)."""
    end = content.find(b"\r\n\r\n")
    head = content if end < 0 else content[:end + 2]
    return _value(message_from_bytes(head, policy=policy.compat32).get("message-id")).strip()
