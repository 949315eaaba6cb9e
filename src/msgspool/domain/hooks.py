"""Hooks: what a preprocessor (outbound hook) sees and may answer, and how its answer is judged.
Plain data and pure decisions; running hooks is spooler/hooks.py's job.

MAPI runs registered preprocessors (PreprocessMessage) on an outbound message before any
transport sees it: they may change it, change its recipients, or turn it into several messages.
msgspool's outbound hook is called with a `Draft` and answers with one of:

    None                 the draft as it is now (the hook may have changed it in place)
    Draft                the message to send instead
    [Draft, ...]         several messages in place of one (a split); each recipient of the
                         original goes into exactly one of them or is dropped
    Reject(reply)        the message is refused: its recipients fail with the reply (an NDR)
    Hold(reason)         the message is held with the reason once the other hooks have done their
                         part; `queue release` sends it as they left it (Postfix header_checks HOLD,
                         then postsuper -H), `queue requeue` runs the hooks again

Anything else is garbage, and so is a malformed draft (a sender or recipient address intake would
refuse, an address type that is not a word, content that is not bytes): the message is held with
the error recorded, like a hook that raises or times out (poison isolation: one bad message or hook
never stalls the queue); as the hooks did not finish, `queue release` runs them again (after the
hook is fixed).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from msgspool.domain.address import SMTP, domain_of, valid_recipient, valid_smtp
from msgspool.domain.outcome import Reply
from msgspool.domain.routing import domain_matches


@dataclass(slots=True)
class DraftRecipient:
    address: str
    addrtype: str = SMTP
    index: int | None = None  # the recipient's key in the stored message; None: added by a hook


@dataclass(slots=True)
class Draft:
    """An outbound message as hooks see it: the envelope and the RFC 5322 content (CRLF lines)."""

    message_id: str
    sender: str
    recipients: list[DraftRecipient]
    content: bytes
    message_class: str = "IPM.Note"
    origin: str = "api"
    meta: dict[str, str] = field(default_factory=dict)

    def copy(self) -> Draft:
        return copy.deepcopy(self)


@dataclass(frozen=True, slots=True)
class Reject:
    reply: Reply

    @classmethod
    def because(cls, text: str, code: int = 550, enhanced: str = "5.7.1") -> Reject:
        return cls(Reply(code, enhanced, text))


@dataclass(frozen=True, slots=True)
class Hold:
    reason: str


@dataclass(frozen=True, slots=True)
class HookScope:
    """Which messages a hook applies to (MAPI RegisterPreprocessor's address type): those with a
    recipient of one of `addrtypes` (empty: any) in one of `domains` (empty: any)."""

    addrtypes: frozenset[str] = frozenset()
    domains: tuple[str, ...] = ()

    def applies(self, recipients: Sequence[DraftRecipient]) -> bool:
        return any(self._matches(r) for r in recipients)

    def _matches(self, r: DraftRecipient) -> bool:
        if self.addrtypes and r.addrtype.upper() not in self.addrtypes:
            return False
        return not self.domains or domain_matches(domain_of(r.address), self.domains)


class HookError(Exception):
    """A hook failed (raised, timed out, answered garbage): the message is held with this text."""


@dataclass(frozen=True, slots=True)
class HookRecord:
    """One line of a message's history: which hook did what (shown by `queue show`)."""

    hook: str
    outcome: str  # unchanged | changed | split | rejected | held | error
    detail: str = ""


@dataclass(slots=True)
class Preprocessed:
    """The outbound pipeline's answer for one message: the drafts to send (the first one stays
    the stored message, the others become new messages), or the verdict that stopped it — a
    Reject, or a Hold because a hook failed (the hooks are not done: they run again on release).
    `hold` is a hook's own Hold: the pipeline went on, and the drafts are kept held until release."""

    drafts: list[Draft]
    verdict: Reject | Hold | None = None
    hold: Hold | None = None
    history: list[HookRecord] = field(default_factory=list)


def judge(answer: object, before: Draft, given: Draft | None = None) -> list[Draft] | Reject | Hold:
    """A hook's answer as drafts or a verdict; raises HookError on garbage. `before` is the draft as
    the hook found it, `given` the copy it was handed (default `before`): a hook that changed that
    copy in place and answers None answered the changed copy. The recipients a split may place are
    `before`'s, so an edit in place cannot make up a stored recipient."""
    if isinstance(answer, Reject | Hold):
        return answer
    if answer is None:
        drafts = [before if given is None else given]
    elif isinstance(answer, Draft):
        drafts = [answer]
    elif isinstance(answer, list | tuple) and answer and all(isinstance(d, Draft) for d in answer):
        drafts = list(answer)
    else:
        raise HookError(f"answered {type(answer).__name__}, not a Draft, a list of Drafts, Reject or Hold")
    for draft in drafts:
        _check(draft)
    _check_partition(before, drafts)
    return drafts


# Every hook that ran leaves a record, also one that let the message pass as it was.
UNCHANGED = HookRecord("", "unchanged", "")


def describe(original: Draft, drafts: Sequence[Draft]) -> HookRecord | None:
    """What a hook did to a message, for its history; None when it changed nothing."""
    if len(drafts) > 1:
        return HookRecord("", "split", f"into {len(drafts)} messages")
    draft = drafts[0]
    changes = [name for name, changed in (
        ("sender", draft.sender != original.sender),
        ("recipients", _addresses(draft) != _addresses(original)),
        ("content", draft.content != original.content)) if changed]
    return HookRecord("", "changed", ", ".join(changes)) if changes else None


def _addresses(draft: Draft) -> list[tuple[str, str, int | None]]:
    return [(r.address, r.addrtype, r.index) for r in draft.recipients]


def _check(draft: Draft) -> None:
    """Everything the store writes from a draft must be well formed here: what slips through fails
    in the store write instead, which leaves the message active and its history silent."""
    if not isinstance(draft.content, bytes):
        raise HookError(f"a draft's content must be bytes, not {type(draft.content).__name__}")
    if not isinstance(draft.sender, str):
        raise HookError(f"a draft's sender must be a str, not {type(draft.sender).__name__}")
    if draft.sender and not valid_smtp(draft.sender):  # "" is the null sender
        raise HookError(f"bad sender address {draft.sender!r}")
    if not isinstance(draft.recipients, list):
        raise HookError(f"a draft's recipients must be a list, not {type(draft.recipients).__name__}")
    for r in draft.recipients:
        _check_recipient(r)


_ADDRTYPE = re.compile(r"[!-~]+")  # MAPI PR_ADDRTYPE: SMTP, FAX, X400 ... (visible ASCII)


def _check_recipient(r: object) -> None:
    if not isinstance(r, DraftRecipient):
        raise HookError(f"a draft's recipients must be DraftRecipients, not {type(r).__name__}")
    if not isinstance(r.addrtype, str) or not _ADDRTYPE.fullmatch(r.addrtype):
        raise HookError(f"bad address type {r.addrtype!r} (a word such as SMTP)")
    if not isinstance(r.address, str) or not r.address or not valid_recipient(r.address, r.addrtype):
        raise HookError(f"bad recipient address {r.address!r} ({r.addrtype})")
    if r.index is not None and (not isinstance(r.index, int) or isinstance(r.index, bool)):
        raise HookError(f"a recipient's index must be the one it was given or None, not {r.index!r}")


def _check_partition(before: Draft, drafts: Sequence[Draft]) -> None:
    """A stored recipient may go into one of the drafts at most (or be dropped), never two."""
    seen: set[int] = set()
    known = {r.index for r in before.recipients}
    for draft in drafts:
        for r in draft.recipients:
            if r.index is None:
                continue
            if r.index in seen or r.index not in known:
                raise HookError(f"recipient #{r.index} appears twice or was not the message's")
            seen.add(r.index)


# -- inbound hooks (postprocessors) -----------------------------------------------------------
#
# MAPI's spooler hook (ISpoolerHook::InboundMsgHook) sees a message before the store files it, and
# may move it to another folder, delete it or pass it on. msgspool's inbound hook is called with a
# `Delivery` — one local recipient's copy on its way into its mailbox — and answers:
#
#     None                 the delivery as the hook left it (it may have changed `actions` or added
#                          header lines)
#     [action, ...]        what to do instead: File (into a folder, with flags), Forward, AutoReply;
#                          an empty list discards the message (nothing is filed)
#     Reject(reply)        the recipient fails with the reply; the sender gets an NDR
#     Hold(reason)         the recipient is held (`queue release` runs the hooks again)
#
# Anything else holds the recipient with the error, as for outbound hooks; so do actions that are
# malformed (a Forward or AutoReply to an address intake would refuse, flags that are not words).


_HEADER_FIELD = re.compile(r"[!-9;-~]+:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*")  # RFC 5322 §2.2, folded with CRLF


@dataclass(frozen=True, slots=True)
class File:
    """File a copy into `folder` (None: the mailbox's receive folder for the message class)."""

    folder: str | None = None
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the message on to `address`, envelope sender unchanged (a Sieve redirect)."""

    address: str


@dataclass(frozen=True, slots=True)
class AutoReply:
    """Send `content` (a whole RFC 5322 message) to `to` with the null sender (RFC 3834). With
    `once`, a key such as (mailbox, sender, handle), it goes only if no reply with that key went
    out in the last `period` seconds (a Sieve vacation, RFC 5230 §4.2): the runtime asks the store,
    which every node of a spool shares, so that two nodes never both answer."""

    to: str
    content: bytes
    once: tuple[str, ...] | None = None
    period: float = 0.0


InboundAction = File | Forward | AutoReply


@dataclass(slots=True)
class Delivery:
    """One local recipient's copy of an inbound message, before it is filed."""

    message_id: str
    mailbox: str  # the local mailbox it goes into
    recipient: str  # the envelope recipient, as given
    sender: str
    content: bytes
    message_class: str = "IPM.Note"
    added_headers: list[str] = field(default_factory=list)  # "Name: value" lines put above the copy
    actions: list[InboundAction] = field(default_factory=lambda: [File()])  # the implicit keep

    def copy(self) -> Delivery:
        return copy.deepcopy(self)

    def with_added_headers(self) -> bytes:
        """The message as the filed copy will carry it (Return-Path and Delivered-To aside): the
        header lines the hooks so far added, above the content. What a hook that reads the message
        looks at, so Sieve sees the Authentication-Results dkim_verify wrote. `content` itself stays
        the message as received: a hook that cleans it (dkim_verify drops forged results) must not
        take the trusted lines added before it for forgeries."""
        return "".join(f"{h}\r\n" for h in self.added_headers).encode() + self.content


@dataclass(slots=True)
class Postprocessed:
    """The inbound pipeline's answer for one delivery."""

    delivery: Delivery
    verdict: Reject | Hold | None = None
    history: list[HookRecord] = field(default_factory=list)


def judge_inbound(answer: object, delivery: Delivery) -> list[InboundAction] | Reject | Hold:
    """An inbound hook's answer as the actions to take, or a verdict; HookError on garbage."""
    if isinstance(answer, Reject | Hold):
        return answer
    actions = delivery.actions if answer is None else answer
    if not isinstance(actions, list | tuple) or not all(isinstance(a, InboundAction) for a in actions):
        raise HookError(f"answered {type(answer).__name__}, not a list of File, Forward and AutoReply, Reject or Hold")
    for action in actions:
        _check_action(action)
    if not isinstance(delivery.added_headers, list) or not all(
            isinstance(h, str) and _HEADER_FIELD.fullmatch(h) for h in delivery.added_headers):
        raise HookError("added_headers must be a list of 'Name: value' fields (folded lines start with a space)")
    if not isinstance(delivery.content, bytes):
        raise HookError("a delivery's content must stay bytes")
    return list(actions)


_FLAG = re.compile(r"[^\s\x00-\x1f\x7f]+")  # the store keeps a copy's flags space-separated


def _check_action(action: InboundAction) -> None:
    """What local delivery carries out must be well formed here: what slips through fails while the
    copy is filed or the forward built, not as this hook's answer."""
    if isinstance(action, File):
        if action.folder is not None and (not isinstance(action.folder, str) or _has_line_break(action.folder)):
            raise HookError(f"bad folder name {action.folder!r}")
        if not isinstance(action.flags, tuple | list) or not all(
                isinstance(f, str) and _FLAG.fullmatch(f) for f in action.flags):
            raise HookError(f"a File's flags must be a tuple of single words such as \\Seen, not {action.flags!r}")
    elif isinstance(action, Forward):
        _check_sent_to("Forward", action.address)
    else:
        _check_sent_to("AutoReply", action.to)
        if not isinstance(action.content, bytes):
            raise HookError(f"an AutoReply's content must be bytes, not {type(action.content).__name__}")


def _check_sent_to(kind: str, address: object) -> None:
    if not isinstance(address, str) or not valid_recipient(address, SMTP):
        raise HookError(f"a {kind} to a bad address: {address!r}")


def _has_line_break(text: str) -> bool:
    return any(c in text for c in "\r\n\x00")


def describe_inbound(before: Delivery, after: Delivery) -> HookRecord | None:
    changes = []
    if after.actions != before.actions:
        changes.append("actions: " + (", ".join(_action_text(a) for a in after.actions) or "discard"))
    if after.added_headers != before.added_headers:
        names = [h.split(":", 1)[0] for h in after.added_headers[len(before.added_headers):]]
        changes.append("added " + ", ".join(names))
    if after.content != before.content:  # e.g. dkim_verify removing a forged Authentication-Results
        changes.append("content")
    return HookRecord("", "changed", "; ".join(changes)) if changes else None


def _action_text(action: InboundAction) -> str:
    if isinstance(action, File):
        return f"file into {action.folder or 'the receive folder'}" + (f" {' '.join(action.flags)}" if action.flags
                                                                        else "")
    if isinstance(action, Forward):
        return f"forward to {action.address}"
    return f"auto-reply to {action.to}"
