"""Read receipts: message disposition notifications (RFC 8098), MAPI's IPNRN and IPNNRN.

This module owns reading an MDN request from a stored message and writing the MDN; when to send
one (a message marked read, or deleted unread, through the API) is spooler/receipts.py's call.

* Request (§2.1): ``Disposition-Notification-To: mailbox *("," mailbox)``. None is answered for a
  message that is itself an MDN, nor for any other multipart/report (a DSN), so reports never
  loop. An MDN may go out without asking the user only when the request names one distinct
  address and that address equals the Return-Path (local part compared exactly, domain without
  case); otherwise the user must agree (`may_send_mdn`'s ``user_consents``).
  A ``Disposition-Notification-Options`` parameter of importance ``required`` that msgspool does
  not know forbids the MDN (§2.2).
* MDN (§3): multipart/report; report-type=disposition-notification (RFC 6522) with a text/plain
  explanation, the message/disposition-notification fields (Reporting-UA, Original-Recipient copied
  from the message's Original-Recipient header (§2.3, §3.2.3), Final-Recipient, Original-Message-ID,
  Disposition: ``manual-action/MDN-sent-manually; displayed`` or
  ``automatic-action/MDN-sent-automatically; deleted``) and the original's header section.
  From: the recipient it speaks for; To: the requested address(es); it is sent with the null
  reverse-path and never asks for an MDN itself. RFC 6533 §5: message/global-disposition-notification
  when an address is not ASCII.
* MAPI classes: ``REPORT.IPM.Note.IPNRN`` (read), ``REPORT.IPM.Note.IPNNRN`` (not read).
"""

from __future__ import annotations

from dataclasses import dataclass
from email.errors import HeaderParseError
from email.header import Header, decode_header, make_header
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32
from email.utils import getaddresses, make_msgid, parseaddr
from enum import StrEnum

from msgspool.domain.address import split
from msgspool.domain.content import canonical, header_block
from msgspool.domain.dsn import OriginalRecipient
from msgspool.domain.reports import (
    ReportPart,
    clean_field,
    multipart_report,
    reference_fields,
    returned_part,
    text_part,
    typed_address,
)
from msgspool.domain.timefmt import rfc5322

PRODUCT = "msgspool"


class Disposition(StrEnum):
    DISPLAYED = "displayed"  # read: IPNRN
    DELETED = "deleted"  # deleted unread: IPNNRN


_CLASS_SUFFIX = {Disposition.DISPLAYED: "IPNRN", Disposition.DELETED: "IPNNRN"}
_SUBJECT_PREFIX = {Disposition.DISPLAYED: "Read", Disposition.DELETED: "Not read"}
_EXPLANATION = {
    Disposition.DISPLAYED: ("The message has been displayed on the recipient's screen.",
                            "This is no guarantee that it has been read or understood."),
    Disposition.DELETED: ("The message has been deleted without being displayed.",),
}


@dataclass(frozen=True, slots=True)
class MDNRequest:
    """What a message asks: ``notify_to`` (addr-specs), ``return_path`` (None when absent, "" for
    ``<>``), the Original-Recipient header value, and what the MDN refers back to."""

    notify_to: tuple[str, ...]
    return_path: str | None
    original_recipient: str | None
    message_id: str | None
    subject: str
    unknown_required_option: bool = False

    @property
    def needs_consent(self) -> bool:
        """RFC 8098 §2.1: not automatic unless one distinct address equal to the Return-Path."""
        distinct = {split(address) for address in self.notify_to}
        if len(distinct) != 1 or not self.return_path:
            return True
        return distinct != {split(self.return_path)}


def mdn_request(content: bytes) -> MDNRequest | None:
    """The MDN request in a message's header section; None when it asks for none (or is a report)."""
    text = header_block(canonical(content)).decode("utf-8", "replace")  # RFC 6532 headers are UTF-8
    headers = HeaderParser(policy=compat32).parsestr(text)
    notify_to = tuple(a for _n, a in getaddresses(_all(headers, "disposition-notification-to")) if a)
    if not notify_to or _is_report(headers):
        return None
    return MDNRequest(notify_to, _return_path(headers), _first(headers, "original-recipient"),
                      _first(headers, "message-id"), _decoded(_first(headers, "subject") or ""),
                      _unknown_required(_all(headers, "disposition-notification-options")))


def _decoded(value: str) -> str:
    """An unstructured value with its RFC 2047 encoded-words decoded (left as is when malformed)."""
    try:
        return clean_field(str(make_header(decode_header(value))))
    except (HeaderParseError, LookupError, UnicodeError):
        return value


def _all(headers: Message, name: str) -> list[str]:
    return [clean_field(str(value)) for value in headers.get_all(name, [])]


def _first(headers: Message, name: str) -> str | None:
    values = _all(headers, name)
    return values[0] if values else None


def _return_path(headers: Message) -> str | None:
    """Return-Path's address; more than one Return-Path counts as a failed comparison (§2.1)."""
    values = _all(headers, "return-path")
    return parseaddr(values[0])[1] if len(values) == 1 else None


def _is_report(headers: Message) -> bool:
    """An MDN or a delivery report (any multipart/report): never answered, so reports cannot loop."""
    content_type = str(headers.get("content-type", "")).lower().strip()
    return content_type.startswith("multipart/report")


def _unknown_required(options: list[str]) -> bool:
    """§2.2: ``attr=importance,value...`` parameters; msgspool understands none of them."""
    for option in options:
        for parameter in option.split(";"):
            importance = parameter.partition("=")[2].partition(",")[0].strip().lower()
            if importance == "required":
                return True
    return False


def may_send_mdn(request: MDNRequest, *, user_consents: bool = False) -> bool:
    """Whether an MDN may go out: never past an unknown required option, and only with the user's
    consent when the request is not plainly the sender's own (§2.1)."""
    if request.unknown_required_option:
        return False
    return user_consents or not request.needs_consent


def mdn_class(disposition: Disposition, original_class: str = "IPM.Note") -> str:
    """The MAPI class of the MDN: ``REPORT.IPM.Note.IPNRN`` when read, ``.IPNNRN`` when not."""
    return f"REPORT.{original_class}.{_CLASS_SUFFIX[disposition]}"


def disposition_field(disposition: Disposition, *, manual: bool) -> str:
    """The §3.2.6 Disposition value, e.g. ``manual-action/MDN-sent-manually; displayed``."""
    mode = "manual-action/MDN-sent-manually" if manual else "automatic-action/MDN-sent-automatically"
    return f"{mode}; {disposition}"


def original_recipient_header(orcpt: OriginalRecipient) -> str:
    """The Original-Recipient header line (§2.3) a delivering MTA adds from ORCPT, with CRLF."""
    return f"Original-Recipient: {typed_address(orcpt, not orcpt.address.isascii())}\r\n"


def compose_mdn(request: MDNRequest, content: bytes, *, final_recipient: str, disposition: Disposition,
                reporting_host: str, now: float, manual: bool | None = None,
                message_id: str | None = None) -> bytes:
    """The MDN that ``final_recipient`` (the mailbox owner) sends for ``content``. ``manual``
    defaults to True for displayed and False for deleted. Submit it with sender ``""``."""
    manual = disposition is Disposition.DISPLAYED if manual is None else manual
    parts = [_explanation(request, final_recipient, disposition),
             _notification_part(request, final_recipient, disposition, manual, reporting_host),
             returned_part(content, "Original Message", full=False)]
    headers = _mdn_headers(request, content, final_recipient, disposition, now,
                           message_id or make_msgid(domain=reporting_host))
    return multipart_report(headers if manual else [*headers, "Auto-Submitted: auto-replied"],
                            "disposition-notification", parts)


def _mdn_headers(request: MDNRequest, content: bytes, final_recipient: str, disposition: Disposition,
                 now: float, message_id: str) -> list[str]:
    subject = f"{_SUBJECT_PREFIX[disposition]}: {request.subject}"
    return [f"From: <{clean_field(final_recipient)}>",
            f"To: {', '.join(f'<{a}>' for a in request.notify_to)}",
            f"Subject: {_encoded(subject)}", f"Date: {rfc5322(now)}", f"Message-ID: {message_id}",
            *reference_fields(content)]


def _encoded(text: str) -> str:
    """An unstructured field value, RFC 2047-encoded when it is not ASCII."""
    return text if text.isascii() else Header(text, "utf-8").encode(linesep="\r\n")


def _explanation(request: MDNRequest, final_recipient: str, disposition: Disposition) -> ReportPart:
    lines = [f"This is a disposition notification for the message to <{clean_field(final_recipient)}>",
             f"with the subject: {request.subject}", "", *_EXPLANATION[disposition]]
    return text_part(lines, "Notification")


def _notification_part(request: MDNRequest, final_recipient: str, disposition: Disposition, manual: bool,
                       reporting_host: str) -> ReportPart:
    international = not final_recipient.isascii() or not (request.original_recipient or "").isascii()
    fields = [f"Reporting-UA: {reporting_host}; {PRODUCT}"]
    if request.original_recipient:
        fields.append(f"Original-Recipient: {request.original_recipient}")
    fields.append(f"Final-Recipient: {typed_address(OriginalRecipient.for_address(final_recipient), international)}")
    if request.message_id:
        fields.append(f"Original-Message-ID: {request.message_id}")
    fields.append(f"Disposition: {disposition_field(disposition, manual=manual)}")
    body = "".join(f"{line}\r\n" for line in fields).encode("utf-8")
    kind = "global-disposition-notification" if international else "disposition-notification"
    return ReportPart(f"message/{kind}", "Disposition notification", body)
