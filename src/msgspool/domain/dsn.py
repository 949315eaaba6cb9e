"""DSN requests (RFC 3461): what the sender asked to be told, and whether an event must be told.

This module owns the SMTP side of delivery status notifications; `reports.py` writes the reports.

* xtext (RFC 3461 §4): printable ASCII 33..126 except ``+`` and ``=`` as itself, every other
  octet as ``+XX`` with two upper-case hex digits. Malformed xtext is refused, never guessed at.
* RCPT parameters: ``NOTIFY=NEVER`` or a list of ``SUCCESS``, ``FAILURE``, ``DELAY`` (§4.1);
  ``ORCPT=addr-type;xtext`` (§4.2, at most 500 characters), with RFC 6533 §3's ``utf-8`` type whose
  address is written with ``\\x{HEX}`` escapes (utf-8-addr-xtext, or utf-8-addr-unitext under SMTPUTF8).
* MAIL parameters: ``RET=FULL|HDRS`` (§4.3), ``ENVID=xtext`` (§4.4, at most 100 characters,
  printable ASCII once decoded).
* Relaying (§5.2): to a next hop that advertises DSN the parameters go along (and ORCPT is added
  when the client sent none); to one that does not, a requested SUCCESS becomes a ``relayed``
  report (§5.2.2, RFC 3464 §2.3.3).
* Delay notices (`delay_warning_at`, `delay_warning_due`): one per recipient once it has waited
  Postfix's delay_warning_time since arrival, unless NOTIFY leaves out DELAY or the sender is null.

Values are kept decoded: ``RecipientDSN.orcpt.address`` and ``MessageDSN.envid`` are what the
sender meant, and are encoded again only on the wire. ``notify`` is ``None`` when NOTIFY was not
given and the empty set for NOTIFY=NEVER. Bad parameters raise `DSNSyntaxError`, whose ``reply``
(``501 5.5.4``) is what the listener answers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import Status

ENVID_MAX = 100  # RFC 3461 §4.4
ORCPT_MAX = 500  # RFC 3461 §4.2

_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_UNICODE_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{2,6})\}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_QCHAR_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\+=]")  # RFC 6533 §3: CTLs, SP, '\', '+', '='


class DSNSyntaxError(ValueError):
    """A malformed DSN parameter; ``reply`` is the SMTP answer for it."""

    def __init__(self, parameter: str, reason: str) -> None:
        super().__init__(f"bad {parameter} parameter: {reason}")
        self.parameter = parameter
        self.reply = Reply(501, "5.5.4", f"Error: bad {parameter} parameter: {reason}")


class Notify(StrEnum):
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    DELAY = "DELAY"


class Ret(StrEnum):
    FULL = "FULL"
    HDRS = "HDRS"


class Action(StrEnum):
    """The RFC 3464 §2.3.3 action of one recipient in a report."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    EXPANDED = "expanded"


class Handoff(StrEnum):
    """How a delivered recipient left msgspool, which decides whether a success is reported here."""

    FINAL = "final"  # into a mailbox (or a system that is the end of the line): report `delivered`
    DSN_RELAY = "dsn-relay"  # to a next hop that took the DSN parameters: it reports from now on
    RELAY = "relay"  # to a next hop without DSN: report `relayed` (RFC 3461 §5.2.2)
    EXPANDED = "expanded"  # an alias expanded at delivery into new recipients: report `expanded` (RFC 3464 §2.3.3)


# -- xtext (RFC 3461 §4) ------------------------------------------------------------------------


def xtext_encode(text: str) -> str:
    """``a+b@example.org`` -> ``a+2Bb@example.org``; non-ASCII goes out as its UTF-8 octets."""
    return "".join(_xtext_octet(octet) for octet in text.encode("utf-8"))


def _xtext_octet(octet: int) -> str:
    if 33 <= octet <= 126 and octet not in (0x2B, 0x3D):
        return chr(octet)
    return f"+{octet:02X}"


def xtext_decode(text: str, parameter: str = "xtext") -> str:
    """The inverse of `xtext_encode`; raises `DSNSyntaxError` on malformed xtext."""
    if _XTEXT.fullmatch(text) is None:
        raise DSNSyntaxError(parameter, "malformed xtext")
    raw = re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), text)
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        raise DSNSyntaxError(parameter, "xtext is not UTF-8") from None


# -- utf-8 address type (RFC 6533 §3) ------------------------------------------------------------


def utf8_addr_encode(address: str, *, unitext: bool = False) -> str:
    """utf-8-addr-xtext (7-bit: every non-ASCII character as ``\\x{HEX}``) or, with ``unitext``,
    utf-8-addr-unitext (UTF-8 kept, only ASCII specials escaped)."""
    return "".join(_utf8_addr_char(c, unitext) for c in address)


def _utf8_addr_char(c: str, unitext: bool) -> str:
    if _QCHAR_FORBIDDEN.match(c) or (not c.isascii() and not unitext):
        return f"\\x{{{ord(c):02X}}}"
    return c


def utf8_addr_decode(text: str, *, smtputf8: bool = False) -> str:
    """Undo `utf8_addr_encode`; raw UTF-8 is allowed only when SMTPUTF8 was negotiated."""
    if not text or (not smtputf8 and not text.isascii()):
        raise DSNSyntaxError("ORCPT", "utf-8 address needs \\x{HEX} escapes")
    if _QCHAR_FORBIDDEN.search(_UNICODE_ESCAPE.sub("", text)):
        raise DSNSyntaxError("ORCPT", "malformed utf-8 address")
    return _UNICODE_ESCAPE.sub(lambda m: _code_point(m.group(1)), text)


def _code_point(hex_digits: str) -> str:
    value = int(hex_digits, 16)
    if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
        raise DSNSyntaxError("ORCPT", "escape is not a Unicode scalar value")
    return chr(value)


# -- the requests --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OriginalRecipient:
    """An ORCPT value, decoded: ``addr_type`` in lower case (``rfc822``, ``utf-8``, ...)."""

    addr_type: str
    address: str

    @classmethod
    def for_address(cls, address: str) -> OriginalRecipient:
        """The ORCPT a relay adds for an RCPT TO address (RFC 3461 §5.2.1; RFC 6533 for UTF-8)."""
        return cls("rfc822" if address.isascii() else "utf-8", address)

    def param(self, *, smtputf8: bool = False) -> str:
        """The value for ``ORCPT=`` on the wire."""
        if self.addr_type == "utf-8":
            return f"utf-8;{utf8_addr_encode(self.address, unitext=smtputf8)}"
        return f"{self.addr_type};{xtext_encode(self.address)}"


@dataclass(frozen=True, slots=True)
class RecipientDSN:
    """One recipient's request: ``notify`` None (not given), empty (NEVER) or the events asked for."""

    notify: frozenset[Notify] | None = None
    orcpt: OriginalRecipient | None = None

    @property
    def never(self) -> bool:
        return self.notify is not None and not self.notify

    def asks(self, event: Notify) -> bool:
        return self.notify is not None and event in self.notify


def without_success(request: RecipientDSN | None) -> RecipientDSN | None:
    """What the members of an alias are asked for: the alias's NOTIFY minus SUCCESS (SUCCESS alone
    becomes NEVER), since the alias itself reports `expanded` — RFC 3461 §6.2.7.3's second way,
    Postfix's too; ORCPT stays."""
    if request is None or request.notify is None or Notify.SUCCESS not in request.notify:
        return request
    return RecipientDSN(request.notify - {Notify.SUCCESS}, request.orcpt)


@dataclass(frozen=True, slots=True)
class MessageDSN:
    """The message's request: ``ret`` (None when not given) and ``envid`` (decoded)."""

    ret: Ret | None = None
    envid: str | None = None


# -- parsing (RFC 3461 §4.1-§4.4) ------------------------------------------------------------------


def parse_notify(value: str) -> frozenset[Notify]:
    """``NEVER`` -> empty set; ``success,Failure`` -> {SUCCESS, FAILURE}."""
    words = value.upper().split(",")
    if words == ["NEVER"]:
        return frozenset()
    if "NEVER" in words:
        raise DSNSyntaxError("NOTIFY", "NEVER cannot be combined")
    if len(set(words)) != len(words):
        raise DSNSyntaxError("NOTIFY", "duplicate keyword")
    if not set(words) <= set(Notify):
        raise DSNSyntaxError("NOTIFY", "unknown keyword")
    return frozenset(Notify(w) for w in words)


def parse_orcpt(value: str, *, smtputf8: bool = False) -> OriginalRecipient:
    """``rfc822;a+2Bb@example.org`` -> OriginalRecipient("rfc822", "a+b@example.org")."""
    if len(value) > ORCPT_MAX:
        raise DSNSyntaxError("ORCPT", f"longer than {ORCPT_MAX} characters")
    addr_type, semicolon, encoded = value.partition(";")
    if not semicolon or _ATOM.fullmatch(addr_type) is None or not encoded:
        raise DSNSyntaxError("ORCPT", "expected addr-type;address")
    addr_type = addr_type.lower()
    address = _orcpt_address(addr_type, encoded, smtputf8)
    if not address or _CONTROL.search(address):
        raise DSNSyntaxError("ORCPT", "address is empty or has control characters")
    return OriginalRecipient(addr_type, address)


def _orcpt_address(addr_type: str, encoded: str, smtputf8: bool) -> str:
    if addr_type == "utf-8":
        return utf8_addr_decode(encoded, smtputf8=smtputf8)
    return xtext_decode(encoded, "ORCPT")


def parse_ret(value: str) -> Ret:
    try:
        return Ret(value.upper())
    except ValueError:
        raise DSNSyntaxError("RET", "expected FULL or HDRS") from None


def parse_envid(value: str) -> str:
    """The decoded envelope id; RFC 3461 §4.4 allows only printable ASCII in it."""
    if len(value) > ENVID_MAX:
        raise DSNSyntaxError("ENVID", f"longer than {ENVID_MAX} characters")
    envid = xtext_decode(value, "ENVID")
    if not envid or not all(" " <= c <= "~" for c in envid):
        raise DSNSyntaxError("ENVID", "empty or not printable ASCII")
    return envid


def parse_rcpt_params(params: Mapping[str, str], *, smtputf8: bool = False) -> RecipientDSN:
    """NOTIFY and ORCPT from RCPT TO parameters (keys upper case, as the listener gives them)."""
    notify = parse_notify(params["NOTIFY"]) if "NOTIFY" in params else None
    orcpt = parse_orcpt(params["ORCPT"], smtputf8=smtputf8) if "ORCPT" in params else None
    return RecipientDSN(notify, orcpt)


def parse_mail_params(params: Mapping[str, str]) -> MessageDSN:
    """RET and ENVID from MAIL FROM parameters (keys upper case)."""
    ret = parse_ret(params["RET"]) if "RET" in params else None
    envid = parse_envid(params["ENVID"]) if "ENVID" in params else None
    return MessageDSN(ret, envid)


# -- relaying (RFC 3461 §5.2) ----------------------------------------------------------------------


def mail_params(message: MessageDSN) -> list[str]:
    """MAIL FROM parameters for a next hop that advertises DSN."""
    params = [f"RET={message.ret}"] if message.ret else []
    if message.envid is not None:
        params.append(f"ENVID={xtext_encode(message.envid)}")
    return params


def rcpt_params(request: RecipientDSN, received_as: str, *, smtputf8: bool = False) -> list[str]:
    """RCPT TO parameters for a next hop that advertises DSN. ``received_as`` is the RCPT TO
    address as msgspool received it: §5.2.1 says an added ORCPT carries that one."""
    params = [f"NOTIFY={_notify_value(request.notify)}"] if request.notify is not None else []
    orcpt = request.orcpt or OriginalRecipient.for_address(received_as)
    return [*params, f"ORCPT={orcpt.param(smtputf8=smtputf8)}"]


def _notify_value(notify: frozenset[Notify]) -> str:
    return ",".join(n.value for n in Notify if n in notify) or "NEVER"


# -- which events are reported -----------------------------------------------------------------


def report_action(status: Status, request: RecipientDSN, *, handoff: Handoff = Handoff.FINAL,
                  warn_delays: bool = False) -> Action | None:
    """The action to report for a recipient that reached ``status``, or None for no report.

    failed/expired: unless NOTIFY was given without FAILURE. deferred: only when the caller's delay
    warning is due (``warn_delays``) and NOTIFY is absent or has DELAY. delivered: only with SUCCESS,
    as `delivered` (final) or `relayed` (next hop without DSN); a DSN next hop reports itself.
    """
    if status in (Status.FAILED, Status.EXPIRED):
        return Action.FAILED if request.notify is None or Notify.FAILURE in request.notify else None
    if status is Status.DEFERRED:
        wanted = request.notify is None or Notify.DELAY in request.notify
        return Action.DELAYED if warn_delays and wanted else None
    if status is Status.DELIVERED and request.asks(Notify.SUCCESS):
        return _SUCCESS_ACTION[handoff]
    return None


_SUCCESS_ACTION: dict[Handoff, Action | None] = {
    Handoff.FINAL: Action.DELIVERED, Handoff.DSN_RELAY: None, Handoff.RELAY: Action.RELAYED,
    Handoff.EXPANDED: Action.EXPANDED,
}


def delay_warning_at(request: RecipientDSN | None, *, sender: str, submitted_at: float,
                     warn_after: float, deliver_after: float | None = None) -> float | None:
    """When a deferred recipient's delay notice falls due, or None if it never gets one.

    Postfix's delay_warning_time: measured from the message's arrival, off when ``warn_after`` is
    0; for mail held until a release time (deliver_after, FUTURERELEASE) from that time, as its
    lifetime is: the wait its sender asked for is no delay. None too for the null sender (a notice
    about a bounce is never sent: no loops) and when NOTIFY was given without DELAY (RFC 3461 §4.1:
    NEVER, or e.g. FAILURE alone)."""
    if warn_after <= 0 or not sender:
        return None
    if report_action(Status.DEFERRED, request or RecipientDSN(), warn_delays=True) is None:
        return None
    return max(submitted_at, deliver_after or submitted_at) + warn_after


def delay_warning_due(request: RecipientDSN | None, *, sender: str, submitted_at: float, now: float,
                      warn_after: float, warned: bool = False) -> bool:
    """Is the one delay notice a recipient may get owed now? Due once it has waited
    ``warn_after`` seconds since arrival, unless it was warned already (one notice per recipient,
    as Postfix sends) or `delay_warning_at` says it gets none."""
    due_at = delay_warning_at(request, sender=sender, submitted_at=submitted_at, warn_after=warn_after)
    return not warned and due_at is not None and now >= due_at


# -- stored form ---------------------------------------------------------------------------------


def notify_text(request: RecipientDSN | None) -> str | None:
    """NOTIFY as a store keeps it: None (not given), "NEVER", or e.g. "SUCCESS,FAILURE"."""
    return None if request is None or request.notify is None else _notify_value(request.notify)


def orcpt_text(request: RecipientDSN | None) -> str | None:
    """ORCPT, decoded, as ``addr-type;address``."""
    return None if request is None or request.orcpt is None else f"{request.orcpt.addr_type};{request.orcpt.address}"


def recipient_dsn(notify: str | None, orcpt: str | None) -> RecipientDSN | None:
    """The inverse of `notify_text` and `orcpt_text`."""
    if notify is None and orcpt is None:
        return None
    original = OriginalRecipient(*orcpt.split(";", 1)) if orcpt is not None else None
    return RecipientDSN(None if notify is None else parse_notify(notify), original)
