"""Delivery reports: the DR, NDR, delay notice and relayed notice msgspool writes, as bytes.

This module owns the composition of delivery status notifications and the rule of who gets them;
which events are reported at all is `dsn.report_action`'s decision. Pure: plain data in, bytes out.

* RFC 6522 multipart/report; report-type=delivery-status, three parts: a text/plain explanation
  (one line per recipient with its diagnostic, as Postfix's bounce(8) writes it), the
  machine-readable status, and the returned content.
* RFC 3464 message/delivery-status: per-message fields (§2.2: Reporting-MTA, Original-Envelope-Id,
  Arrival-Date) and one block per recipient (§2.3: Original-Recipient, Final-Recipient, Action,
  Status, Remote-MTA, Diagnostic-Code, Last-Attempt-Date, Will-Retry-Until).
* RFC 6533 §3-§4: when an address is not ASCII the status part is message/global-delivery-status
  with ``utf-8`` address types; a returned message whose header section is not ASCII travels as
  message/global or message/global-headers.
* Returned content (RFC 3461 §4.3): the whole message for a failure unless RET=HDRS, and for other
  reports only with RET=FULL; headers only (text/rfc822-headers) otherwise, or when the message is
  larger than the return limit (Postfix bounce_size_limit; the text part says so).
* RFC 3834 §5: every report carries ``Auto-Submitted: auto-replied``; it goes out with the null
  reverse-path, and a failed message that had the null reverse-path is never bounced back
  (`route_report`): it goes to the postmaster once ("double bounce") or is dropped.
* MAPI names the report classes ``REPORT.IPM.Note.NDR`` / ``.DR`` / ``.Delayed`` (`report_class`).
"""

from __future__ import annotations

import re
import secrets
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email import quoprimime
from email.utils import make_msgid
from enum import StrEnum

from msgspool.domain.address import mailbox_key
from msgspool.domain.content import canonical, header_block
from msgspool.domain.dsn import Action, OriginalRecipient, Ret, utf8_addr_encode
from msgspool.domain.outcome import Reply
from msgspool.domain.timefmt import rfc5322

RETURN_SIZE_LIMIT = 50_000  # bytes of original content returned whole (Postfix bounce_size_limit)
MAILER_DAEMON = "MAILER-DAEMON"
DISPLAY_NAME = "Mail Delivery System"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


class ReportKind(StrEnum):
    FAILURE = "failure"  # NDR
    DELAY = "delay"  # delay notice
    SUCCESS = "success"  # DR
    RELAYED = "relayed"  # passed to a next hop that gives no reports


_SUBJECT = {
    ReportKind.FAILURE: "Undelivered Mail Returned to Sender",
    ReportKind.DELAY: "Delayed Mail (still being retried)",
    ReportKind.SUCCESS: "Delivery Status Notification (Success)",
    ReportKind.RELAYED: "Delivery Status Notification (Relayed)",
}
_CLASS_SUFFIX = {
    ReportKind.FAILURE: "NDR", ReportKind.DELAY: "Delayed",
    ReportKind.SUCCESS: "DR", ReportKind.RELAYED: "Relayed",
}
_INTRO = {
    ReportKind.FAILURE: ("Your message could not be delivered to one or more of its recipients.",
                         "The mail system has given up on the addresses below; each is followed",
                         "by the reason. Your message is attached."),
    ReportKind.DELAY: ("THIS IS A WARNING ONLY. YOU DO NOT NEED TO SEND YOUR MESSAGE AGAIN.",
                       "",
                       "Your message could not be delivered yet to the addresses below.",
                       "The mail system keeps trying; you will hear again if it gives up."),
    ReportKind.SUCCESS: ("Your message was delivered to the addresses below.",),
    ReportKind.RELAYED: ("Your message was passed on to the addresses below, to a mail system",
                         "that sends no delivery reports. You may hear nothing more about them."),
}
_RETURNED = {
    ReportKind.FAILURE: "Undelivered Message", ReportKind.DELAY: "Delayed Message",
    ReportKind.SUCCESS: "Delivered Message", ReportKind.RELAYED: "Relayed Message",
}


@dataclass(frozen=True, slots=True)
class RecipientEntry:
    """One recipient's lines in a report. ``status`` is the RFC 3463 code, ``diagnostic`` the
    Diagnostic-Code value (``smtp; 550 5.1.1 ...``), times are POSIX timestamps."""

    final_recipient: str
    action: Action
    status: str
    original_recipient: OriginalRecipient | None = None
    remote_mta: str | None = None
    diagnostic: str | None = None
    last_attempt: float | None = None
    will_retry_until: float | None = None

    @classmethod
    def from_reply(cls, address: str, action: Action, reply: Reply, *, remote_mta: str | None = None,
                   original_recipient: OriginalRecipient | None = None, last_attempt: float | None = None,
                   will_retry_until: float | None = None) -> RecipientEntry:
        """An entry whose Status and Diagnostic-Code come from the reply that decided it."""
        return cls(address, action, reply.dsn, original_recipient, remote_mta, f"smtp; {reply.line()}",
                   last_attempt, will_retry_until)


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """Everything a report says. ``to`` is the envelope sender of the original (or the postmaster
    for a double bounce, see `route_report`); ``arrival`` when msgspool took the message."""

    reporting_mta: str
    to: str
    original: bytes
    recipients: Sequence[RecipientEntry]
    arrival: float
    envid: str | None = None
    ret: Ret | None = None
    return_limit: int = RETURN_SIZE_LIMIT
    queue_id: str | None = None

    @property
    def kind(self) -> ReportKind:
        return report_kind(entry.action for entry in self.recipients)

    @property
    def international(self) -> bool:
        """Any address not ASCII: RFC 6533's global status type and utf-8 address types."""
        return not all(_entry_is_ascii(entry) for entry in self.recipients)


def _entry_is_ascii(entry: RecipientEntry) -> bool:
    original = entry.original_recipient
    return entry.final_recipient.isascii() and (original is None or original.address.isascii())


def report_kind(actions: Iterable[Action]) -> ReportKind:
    """The kind of a report that lists these actions; the gravest wins (a failure makes an NDR)."""
    found = set(actions)
    for action, kind in ((Action.FAILED, ReportKind.FAILURE), (Action.DELAYED, ReportKind.DELAY),
                         (Action.DELIVERED, ReportKind.SUCCESS), (Action.EXPANDED, ReportKind.SUCCESS)):
        if action in found:
            return kind
    return ReportKind.RELAYED


def report_class(kind: ReportKind, original_class: str = "IPM.Note") -> str:
    """The MAPI message class of a report: ``REPORT.IPM.Note.NDR`` for a failure of an IPM.Note."""
    return f"REPORT.{original_class}.{_CLASS_SUFFIX[kind]}"


# -- who gets it: never bounce a bounce ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportRoute:
    """Where a report goes: ``to`` an address, or nowhere (``to`` None) with the reason to log.
    A report always leaves with the null reverse-path (``""``)."""

    to: str | None
    reason: str

    @property
    def dropped(self) -> bool:
        return self.to is None


def route_report(sender: str, kind: ReportKind, *, postmaster: str | None,
                 failed_recipients: Sequence[str] = ()) -> ReportRoute:
    """To the envelope sender; for a failed message with the null sender, once to the postmaster
    (double bounce), and dropped if that message already was for the postmaster (no loop)."""
    if sender:
        return ReportRoute(sender, "to the envelope sender")
    if kind is not ReportKind.FAILURE:
        return ReportRoute(None, f"no {kind} notice for mail with the null sender")
    if postmaster is None:
        return ReportRoute(None, "double bounce dropped: no postmaster configured")
    if mailbox_key(postmaster) in {mailbox_key(r) for r in failed_recipients}:
        return ReportRoute(None, "double bounce to the postmaster failed: dropped, not looped")
    return ReportRoute(postmaster, "double bounce to the postmaster")


# -- composition --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportPart:
    """One body part of a multipart/report: its type, a Content-Description, and its bytes."""

    content_type: str
    description: str
    body: bytes
    transfer_encoding: str | None = None  # None: 7bit, or 8bit when the body is not ASCII

    def header_lines(self) -> list[str]:
        lines = [f"Content-Description: {self.description}", f"Content-Type: {self.content_type}"]
        encoding = self.transfer_encoding or (None if self.body.isascii() else "8bit")
        return [*lines, f"Content-Transfer-Encoding: {encoding}"] if encoding else lines


def multipart_report(headers: Sequence[str], report_type: str, parts: Sequence[ReportPart]) -> bytes:
    """An RFC 6522 multipart/report message: ``headers`` (without MIME fields) then ``parts``,
    with a boundary that occurs in none of them. CRLF line ends throughout."""
    boundary = _boundary(b"".join(part.body for part in parts))
    eight_bit = not all(part.body.isascii() for part in parts)  # RFC 2045 §6.4: say so at the top too
    mime = ["MIME-Version: 1.0",
            f'Content-Type: multipart/report; report-type={report_type};\r\n\tboundary="{boundary}"',
            f"Content-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}"]
    chunks = [_lines([*headers, *mime]), b"\r\nThis is a MIME-encapsulated message.\r\n"]
    for part in parts:
        chunks += [f"\r\n--{boundary}\r\n".encode(), _lines(part.header_lines()), b"\r\n", part.body]
    chunks.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(chunks)


def compose_report(report: DeliveryReport, *, now: float, message_id: str | None = None) -> bytes:
    """The report as an RFC 5322 message with CRLF line ends, ready to submit with sender ``""``.
    Its content is 8-bit (needs BODY=8BITMIME) when the returned message or an address is."""
    returned, notes = _returned_part(report)
    parts = [_text_part(report, notes), _status_part(report), returned]
    headers = _top_headers(report, now, message_id or make_msgid(domain=report.reporting_mta))
    return multipart_report(headers, "delivery-status", parts)


def _top_headers(report: DeliveryReport, now: float, message_id: str) -> list[str]:
    headers = [f"From: {DISPLAY_NAME} <{MAILER_DAEMON}@{report.reporting_mta}>", f"To: <{clean_field(report.to)}>",
               f"Subject: {_SUBJECT[report.kind]}", f"Date: {rfc5322(now)}", f"Message-ID: {message_id}"]
    return [*headers, *reference_fields(report.original), "Auto-Submitted: auto-replied"]


def reference_fields(original: bytes) -> list[str]:
    """In-Reply-To and References naming the original's Message-ID, so clients thread the report."""
    found = _MESSAGE_ID.search(header_block(original))
    if found is None:
        return []
    reference = found.group(1).decode("ascii", "replace")
    return [f"In-Reply-To: {reference}", f"References: {reference}"]


def _lines(lines: Sequence[str]) -> bytes:
    return "".join(f"{line}\r\n" for line in lines).encode("utf-8")


def _boundary(content: bytes) -> str:
    while True:
        boundary = f"=_msgspool_report_{secrets.token_hex(12)}"
        if boundary.encode() not in content:
            return boundary


# -- part 1: for people ---------------------------------------------------------------------------------


def _text_part(report: DeliveryReport, notes: list[str]) -> ReportPart:
    lines = [f"This is the mail system at host {report.reporting_mta}.", "", *_INTRO[report.kind], ""]
    lines += [_wrap(_human_line(entry)) for entry in report.recipients]
    lines += ["", *notes] if notes else []
    return text_part(lines, "Notification")


def text_part(lines: Sequence[str], description: str) -> ReportPart:
    """The human-readable first part: us-ascii when it can be, else UTF-8 in quoted-printable, so
    the text alone never makes a report 8-bit."""
    text = "".join(f"{line}\r\n" for line in lines)
    if text.isascii():
        return ReportPart("text/plain; charset=us-ascii", description, text.encode("ascii"))
    octets = text.encode("utf-8").decode("latin-1")  # quoprimime encodes one character per octet
    body = quoprimime.body_encode(octets, eol="\r\n").encode("ascii")
    return ReportPart("text/plain; charset=utf-8", description, body, "quoted-printable")


def _wrap(line: str) -> str:
    return "\r\n".join(textwrap.wrap(line, 78, subsequent_indent="    ", break_long_words=False,
                                     break_on_hyphens=False))


def _human_line(entry: RecipientEntry) -> str:
    who = f"<{clean_field(entry.final_recipient)}>"
    original = entry.original_recipient
    if original is not None and original.address != entry.final_recipient:
        who += f" (originally <{clean_field(original.address)}>)"
    return f"{who}: {_human_reason(entry)}"


def _human_reason(entry: RecipientEntry) -> str:
    text = clean_field(entry.diagnostic.partition(";")[2]) if entry.diagnostic else entry.action.value
    if entry.remote_mta:
        text = f"host {clean_field(entry.remote_mta)} said: {text}"
    if entry.action is Action.DELAYED and entry.will_retry_until is not None:
        text += f" (will be retried until {rfc5322(entry.will_retry_until)})"
    return text


# -- part 2: for programs (RFC 3464) ------------------------------------------------------------------


def _status_part(report: DeliveryReport) -> ReportPart:
    international = report.international
    blocks = [_message_fields(report)]
    blocks += [_recipient_fields(entry, international) for entry in report.recipients]
    body = "\r\n".join("".join(f"{line}\r\n" for line in block) for block in blocks)
    content_type = "message/global-delivery-status" if international else "message/delivery-status"
    data = body.encode("utf-8") if international else body.encode("ascii", "replace")
    return ReportPart(content_type, "Delivery report", data)


def _message_fields(report: DeliveryReport) -> list[str]:
    fields = [f"Reporting-MTA: dns; {report.reporting_mta}"]
    if report.queue_id:
        fields.append(f"X-Msgspool-Queue-ID: {clean_field(report.queue_id)}")
    if report.envid is not None:
        fields.append(f"Original-Envelope-Id: {clean_field(report.envid)}")
    return [*fields, f"Arrival-Date: {rfc5322(report.arrival)}"]


def _recipient_fields(entry: RecipientEntry, international: bool) -> list[str]:
    fields = []
    if entry.original_recipient is not None:
        fields.append(f"Original-Recipient: {typed_address(entry.original_recipient, international)}")
    final = OriginalRecipient.for_address(entry.final_recipient)
    fields += [f"Final-Recipient: {typed_address(final, international)}", f"Action: {entry.action}",
               f"Status: {entry.status}"]
    if entry.remote_mta:
        fields.append(f"Remote-MTA: dns; {clean_field(entry.remote_mta)}")
    if entry.diagnostic:
        fields.append(_folded("Diagnostic-Code", clean_field(entry.diagnostic)))
    return fields + _time_fields(entry)


def _time_fields(entry: RecipientEntry) -> list[str]:
    fields = [f"Last-Attempt-Date: {rfc5322(entry.last_attempt)}"] if entry.last_attempt is not None else []
    if entry.action is Action.DELAYED and entry.will_retry_until is not None:
        fields.append(f"Will-Retry-Until: {rfc5322(entry.will_retry_until)}")
    return fields


def typed_address(recipient: OriginalRecipient, international: bool) -> str:
    """``type; address`` as RFC 3464 §2.3.1 and RFC 6533 §3 write it: raw UTF-8 only in a global
    status part, the 7-bit utf-8-addr-xtext form elsewhere."""
    address = clean_field(recipient.address)
    if recipient.addr_type == "utf-8" and not international:
        address = utf8_addr_encode(address)
    return f"{recipient.addr_type}; {address}"


def _folded(name: str, value: str, width: int = 78) -> str:
    """``name: value`` folded at spaces so lines stay near ``width`` (RFC 5322 §2.2.3)."""
    lines = [f"{name}:"]
    for word in value.split():
        if len(lines[-1]) + 1 + len(word) > width and lines[-1] != f"{name}:":
            lines.append(f"\t{word}")
        else:
            lines[-1] += f" {word}"
    return "\r\n".join(lines)


def clean_field(text: str) -> str:
    """No control characters (CR and LF above all) from outside into a header field."""
    return _CONTROL.sub(" ", text).strip()


# -- part 3: the returned content -------------------------------------------------------------------


def _returned_part(report: DeliveryReport) -> tuple[ReportPart, list[str]]:
    """The returned content, and a note for the text part when it had to be cut to headers."""
    full = _returns_full(report.kind, report.ret)
    size = len(canonical(report.original))
    fits = size <= report.return_limit
    part = returned_part(report.original, _RETURNED[report.kind], full=full and fits)
    return part, _size_note(size, report.return_limit) if full and not fits else []


def returned_part(original: bytes, description: str, *, full: bool) -> ReportPart:
    """The original whole (message/rfc822) or its header section (text/rfc822-headers); the
    RFC 6533 global types when the header section is not ASCII."""
    content = canonical(original)
    ascii_headers = header_block(content).isascii()
    if full:
        return ReportPart("message/rfc822" if ascii_headers else "message/global", description, content)
    headers_type = "text/rfc822-headers" if ascii_headers else "message/global-headers"
    return ReportPart(headers_type, f"{description} Headers", header_block(content))


def _returns_full(kind: ReportKind, ret: Ret | None) -> bool:
    """RFC 3461 §4.3: RET=HDRS never, RET=FULL always; without RET only a failure returns it all."""
    if ret is not None:
        return ret is Ret.FULL
    return kind is ReportKind.FAILURE


def _size_note(size: int, limit: int) -> list[str]:
    return [f"The message was {size} bytes, more than the {limit} bytes returned in full;",
            "only its header section is attached."]
