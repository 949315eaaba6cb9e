"""Vacation replies (RFC 5230): whether a `Vacation` action is answered, and the reply itself. Pure:
the caller keeps the last-sent time per `Vacation.key` and passes it in.

No reply (`vacation_skip_reason` says why), in this order:

* the envelope sender is null (RFC 5230 §4.6, RFC 3834 §2), or a system address: MAILER-DAEMON,
  LISTSERV, majordomo, ``owner-*``, ``*-request`` (§4.6);
* the message came from the user (one of its own addresses, §4.6);
* it says it is automatic: ``Auto-Submitted`` other than ``no`` (RFC 3834 §5, RFC 5230 §4.6),
  a ``List-Id`` (RFC 2919) or ``List-*`` field (RFC 2369), ``Precedence: bulk``, ``list`` or ``junk``;
* none of the user's addresses (the envelope recipient, the mailbox, ``:addresses``) is in To,
  Cc, Bcc, Resent-To, Resent-Cc or Resent-Bcc (§4.5);
* a reply with the same key went out less than ``:days`` (or ``:seconds``) ago (§4.2).

The reply (§5): To the envelope sender, From ``:from`` or the user's address the message was sent
to, Subject ``:subject`` or "Auto: " and the original subject, In-Reply-To and References for
threading, ``Auto-Submitted: auto-replied`` (RFC 3834 §5.1); a text/plain body in UTF-8, or with
``:mime`` the reason as a whole MIME entity. It goes out with the null reverse-path (§5; RFC 3834
§3.3): the caller submits it with sender "".
"""

from __future__ import annotations

from email import message_from_string
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import make_msgid

from msgspool.domain.address import domain_of, mailbox_key
from msgspool.domain.sieve import MessageView, Vacation, ascii_lower, decode_words, own_address
from msgspool.domain.timefmt import rfc5322

RECIPIENT_FIELDS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")
LIST_FIELDS = ("list-id", "list-help", "list-subscribe", "list-unsubscribe", "list-post", "list-owner",
               "list-archive")
BULK_PRECEDENCE = ("bulk", "list", "junk")
SYSTEM_SENDERS = ("mailer-daemon", "listserv", "majordomo")


def own_addresses(vacation: Vacation) -> list[str]:
    """The user's addresses, as mailbox keys, the envelope recipient first."""
    found = [vacation.recipient, vacation.mailbox, *(own_address(a) for a in vacation.addresses)]
    return list(dict.fromkeys(mailbox_key(a) for a in found if a))


def vacation_skip_reason(vacation: Vacation, original: bytes, *, last_sent: float | None = None,
                         now: float = 0.0) -> str | None:
    """Why no reply goes out for this message (None: one is due). ``last_sent``: when the caller
    last sent one with ``vacation.key``."""
    view = MessageView.parse(original)
    return (_sender_reason(vacation) or _automatic_reason(view) or _addressing_reason(vacation, view)
            or _period_reason(vacation, last_sent, now))


def vacation_due(vacation: Vacation, original: bytes, *, last_sent: float | None = None, now: float = 0.0) -> bool:
    return vacation_skip_reason(vacation, original, last_sent=last_sent, now=now) is None


def _sender_reason(vacation: Vacation) -> str | None:
    if not vacation.sender:
        return "the envelope sender is null"
    local = ascii_lower(vacation.sender.rpartition("@")[0] or vacation.sender)
    if local in SYSTEM_SENDERS or local.startswith("owner-") or local.endswith("-request"):
        return f"the sender {vacation.sender} is a system or list address"
    if mailbox_key(vacation.sender) in own_addresses(vacation):
        return "the message is from the user"
    return None


def _automatic_reason(view: MessageView) -> str | None:
    auto = view.first("auto-submitted")
    if auto is not None and ascii_lower(auto.split(";")[0].strip()) != "no":
        return f"Auto-Submitted: {auto}"
    listed = next((name for name in LIST_FIELDS if view.raw(name)), None)
    if listed is not None:
        return f"a mailing list message ({listed})"
    precedence = ascii_lower(view.first("precedence") or "")
    if precedence in BULK_PRECEDENCE:
        return f"Precedence: {precedence}"
    return None


def _addressing_reason(vacation: Vacation, view: MessageView) -> str | None:
    if _addressed_as(vacation, view) is None:
        return "none of the user's addresses is in To/Cc/Bcc"
    return None


def _addressed_as(vacation: Vacation, view: MessageView) -> str | None:
    """The first of the user's addresses the message names in a recipient field, as written there."""
    mine = set(own_addresses(vacation))
    named = [address for name in RECIPIENT_FIELDS for address in view.addresses(name)]
    return next((address for address in named if mailbox_key(address) in mine), None)


def _period_reason(vacation: Vacation, last_sent: float | None, now: float) -> str | None:
    if last_sent is not None and now - last_sent < vacation.seconds:
        return f"already answered {int(now - last_sent)} s ago (period {vacation.seconds} s)"
    return None


# -- the reply ------------------------------------------------------------------------------------------


def vacation_reply(vacation: Vacation, original: bytes, *, now: float, last_sent: float | None = None,
                   message_id: str | None = None) -> bytes | None:
    """The reply to send (with the null reverse-path, to ``vacation.sender``), or None when none is
    due. The caller then records ``now`` as the last-sent time of ``vacation.key``."""
    if not vacation_due(vacation, original, last_sent=last_sent, now=now):
        return None
    return compose_vacation(vacation, original, now=now, message_id=message_id)


def compose_vacation(vacation: Vacation, original: bytes, *, now: float, message_id: str | None = None) -> bytes:
    """The RFC 5230 §5 reply, whatever the rules say; CRLF line ends."""
    view = MessageView.parse(original)
    sender = vacation.from_address or _addressed_as(vacation, view) or vacation.recipient or vacation.mailbox
    reply = EmailMessage(policy=SMTP)
    reply["From"] = sender
    reply["To"] = f"<{vacation.sender}>"
    reply["Subject"] = vacation.subject if vacation.subject is not None else _auto_subject(view)
    reply["Date"] = rfc5322(now)
    reply["Message-ID"] = message_id or make_msgid(domain=domain_of(own_address(sender)) or "localhost")
    for name, value in _threading(view):
        reply[name] = value
    reply["Auto-Submitted"] = "auto-replied"
    _set_body(reply, vacation)
    return reply.as_bytes()


def _auto_subject(view: MessageView) -> str:
    subject = " ".join(decode_words(view.first("subject") or "").split())
    return f"Auto: {subject}" if subject else "Automated reply"


def _threading(view: MessageView) -> list[tuple[str, str]]:
    """In-Reply-To and References (RFC 5322 §3.6.4) naming the original."""
    message_id = view.first("message-id")
    if not message_id:
        return []
    earlier = view.first("references") or view.first("in-reply-to") or ""
    return [("In-Reply-To", message_id), ("References", f"{earlier} {message_id}".strip())]


def _set_body(reply: EmailMessage, vacation: Vacation) -> None:
    if not vacation.mime:
        cte = None if vacation.reason.isascii() else "quoted-printable"  # never 8bit: no need for 8BITMIME
        reply.set_content(vacation.reason, charset="utf-8", cte=cte)
        return
    entity = message_from_string(vacation.reason.lstrip("\r\n"), policy=SMTP)
    reply["MIME-Version"] = "1.0"
    for name, value in entity.items():
        reply[name] = value
    reply.set_payload(entity.get_payload())
