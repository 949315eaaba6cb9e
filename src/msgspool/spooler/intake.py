"""Intake: the one way into the spool (MAPI IMessage::SubmitMessage).

Every front end — the SMTP listener, `msgspool sendmail`, the Python API — builds a `Submission`
and calls `Intake.submit`. Intake checks it, routes every recipient (local mailbox, a transport,
or no route), stamps per-copy headers for local delivery, and hands it to the store in one atomic
write. Only when that write is committed does `submit` return the queue id: that is the moment a
front end may acknowledge the message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from msgspool.domain import address as addr
from msgspool.domain.aliases import ALIAS_ONLY, AliasTable, Expanded
from msgspool.domain.content import canonical, count_hops, header_priority
from msgspool.domain.dsn import Handoff, MessageDSN, Notify, OriginalRecipient, RecipientDSN, without_success
from msgspool.domain.hooks import HookRecord
from msgspool.domain.ids import new_id
from msgspool.domain.mdn import original_recipient_header
from msgspool.domain.message import DEFAULT_CLASS, NON_URGENT, NORMAL, URGENT, Message, Recipient, Settlement
from msgspool.domain.outcome import LOOP_DETECTED, NO_ROUTE, Reply
from msgspool.domain.recipient import RecipientType, Status
from msgspool.domain.routing import LOCAL, Router
from msgspool.domain.suppression import Suppression, refusal, suppression_key
from msgspool.domain.timefmt import in_range
from msgspool.errors import INSUFFICIENT_STORAGE, SubmitError

ALIASES_ORIGIN = "aliases"  # the origin of a message of an alias's members expanded at delivery: not again
MAX_ATTEMPTS_CAP = 1_000_000  # a larger cap is no cap; 0 says that
PRIORITIES = (URGENT, NORMAL, NON_URGENT)  # MAPI PR_PRIORITY's values


@dataclass(slots=True)
class Submission:
    sender: str
    recipients: Sequence[str]
    content: bytes
    addrtypes: Sequence[str] | None = None  # parallel to recipients; default SMTP
    types: Sequence[RecipientType] | None = None  # to/cc/bcc, parallel to recipients
    mailbox: str = ""
    message_class: str = DEFAULT_CLASS
    priority: int = NORMAL
    deliver_after: float | None = None
    expires_at: float | None = None
    max_attempts: int | None = None  # None: the `max_attempts` setting; 0: no cap
    delete_after_submit: bool = False
    origin: str = "api"
    message_id: str | None = None  # a queue id chosen in advance (the SMTP listener's Received: id)
    meta: dict[str, str] = field(default_factory=dict)
    dsn: MessageDSN | None = None  # RET / ENVID (RFC 3461)
    recipient_dsn: Sequence[RecipientDSN | None] | None = None  # NOTIFY / ORCPT, parallel to recipients
    resend_of: str | None = None  # `queue resend`: the message this one sends again (MAPI MSGFLAG_RESEND)


class Intake:
    def __init__(self, router: Router, *, hopcount_limit: int = 50, mailboxes: Sequence[str] = (),
                 message_size_limit: int = 0, clock: Callable[[], float] = time.time,
                 free_space: Callable[[], int] | None = None, queue_minfree: int = 0,
                 defer_local: bool = False) -> None:
        self.router = router
        self.free_space, self.queue_minfree = free_space, queue_minfree
        self.hopcount_limit = hopcount_limit
        self.message_size_limit = message_size_limit
        self.mailboxes = frozenset(addr.mailbox_key(m) for m in mailboxes)
        self.clock = clock
        self.aliases = AliasTable()  # the `aliases` setting, read where mail is routed (`use_aliases`)
        # A copy of the suppression list for RCPT time, kept fresh by spooler/suppressions.py; the store checks
        # again when it commits (what was listed a moment ago fails there all the same).
        self.suppressed: dict[str, Suppression] = {}
        # With inbound hooks, local recipients are queued like remote ones and filed by the
        # delivering process after the hooks ran (Postfix's local(8)), not filed at submission.
        self.defer_local = defer_local

    def use_aliases(self, aliases: AliasTable) -> None:
        """The aliases to expand at submission (read by a process that routes, at start and reload)."""
        self.aliases = aliases

    def use_suppressions(self, entries: Sequence[Suppression]) -> None:
        """The suppression list as last read, for RCPT time."""
        self.suppressed = {e.address: e for e in entries}

    def reconfigure(self, router: Router, *, hopcount_limit: int, message_size_limit: int, mailboxes: Sequence[str],
                    defer_local: bool) -> None:
        """A reloaded configuration: routes, limits, local mailboxes, whether local mail waits for the
        inbound hooks."""
        self.router = router
        self.hopcount_limit = hopcount_limit
        self.message_size_limit = message_size_limit
        self.mailboxes = frozenset(addr.mailbox_key(m) for m in mailboxes)
        self.defer_local = defer_local

    def check_space(self, size: int = 0) -> Reply | None:
        """``452 4.3.1`` when the spool has less room than `queue_minfree` plus `size` (a message's
        declared SIZE), so a client is told at MAIL rather than after sending it (RFC 1870 §6.1);
        None when it has room, or when the store's room is not known (`free_space` None)."""
        if self.free_space is None or self.free_space() >= self.queue_minfree + size:
            return None
        return INSUFFICIENT_STORAGE

    def check_recipient(self, address: str, addrtype: str = addr.SMTP) -> Reply | None:
        """A reply refusing `address` now (SMTP RCPT time), or None when it is acceptable."""
        if self.router.is_local(address, addrtype):
            return self._check_mailbox(address)
        if self.router.route(address, addrtype) is None:
            return Reply(550, "5.1.2", f"<{address}>: no transport for this address")
        entry = self.suppressed.get(suppression_key(address)) if self.suppressed else None
        if entry is not None and entry.active(self.clock()):
            return refusal(entry)
        return None

    def _check_mailbox(self, address: str) -> Reply | None:
        if self.aliases and self.aliases.lookup(address) is not None:
            return None
        key = addr.mailbox_key(address)
        # RFC 5321 §4.5.1: postmaster exists in every local domain, listed or not.
        if self.mailboxes and key not in self.mailboxes and addr.split(key)[0] != "postmaster":
            return Reply(550, "5.1.1", f"<{address}>: Recipient address rejected: User unknown")
        return None

    def build(self, sub: Submission, now: float | None = None, *, route: bool = True,
              expand: bool | None = None) -> tuple[Message, list[Message]]:
        """The outbox message and the local copies of a submission; raises SubmitError.

        With `route`, recipients are routed now and local ones filed at once (the delivering
        process). Without it they stay unrouted and the delivering process routes them when it
        claims them, with its own configuration — as Postfix's sendmail leaves routing to the
        daemon (a `sendmail` run does not know the daemon's --relay or --local-domain). Aliases
        are expanded with the routing (`expand`, default `route`): without it, by the delivering
        process when it claims them (`expand_later`), with the daemon's aliases."""
        now = self.clock() if now is None else now
        expand = route if expand is None else expand
        self._check(sub)
        content = canonical(sub.content)
        if self.message_size_limit and len(content) > self.message_size_limit:
            raise SubmitError(Reply(552, "5.3.4", "Message size exceeds fixed limit"))
        message = Message(
            id=sub.message_id or new_id(now), sender=sub.sender, content=content, recipients=[],
            submitted_at=now, mailbox=sub.mailbox, message_class=sub.message_class,
            priority=sub.priority if sub.priority != NORMAL else (header_priority(content) or NORMAL),
            deliver_after=sub.deliver_after, expires_at=sub.expires_at, max_attempts=sub.max_attempts,
            delete_after_submit=sub.delete_after_submit, origin=sub.origin, meta=dict(sub.meta), dsn=sub.dsn,
            resend_of=sub.resend_of)
        copies: list[Message] = []
        parts: dict[str, tuple[Message, list[Message]]] = {}  # owner-NAME -> the part with that sender
        seen: set[tuple[str, str]] = set()
        for i, address in enumerate(sub.recipients):
            addrtype = (sub.addrtypes[i] if sub.addrtypes else addr.SMTP).upper()
            rtype = sub.types[i] if sub.types else RecipientType.TO
            dsn = sub.recipient_dsn[i] if sub.recipient_dsn else None
            expanded = (self.aliases.expand(address, self.router.is_local)
                        if expand and self.aliases and addrtype == addr.SMTP else None)
            if expanded is None:
                if (addrtype, address.lower()) not in seen:  # MAPI ExpandRecips removes duplicates
                    seen.add((addrtype, address.lower()))
                    self._add(message, copies, Recipient(address, addrtype, rtype, dsn=dsn), now, route)
                continue
            if dsn is not None and dsn.asks(Notify.SUCCESS) and (addrtype, address.lower()) not in seen:
                seen.add((addrtype, address.lower()))  # the alias itself reports `expanded` (RFC 3461 §6.2.7.3)
                self._add(message, copies, self._expanded(address, rtype, dsn, len(expanded), now), now, route)
            for member in expanded:
                # a path or a command is case-sensitive, an address is not
                key = (member.addrtype, member.address if member.addrtype in ALIAS_ONLY else member.address.lower())
                if key not in seen:
                    seen.add(key)
                    target, target_copies = self._target(message, copies, parts, member.owner, now)
                    self._add_member(target, target_copies, member, address, rtype, dsn, now, route)
                    if target is not message:  # the message the submitter knows tells it too
                        message.history += target.history[-1:]
        message.parts = tuple((part, tuple(part_copies)) for part, part_copies in parts.values())
        message.history += tuple(HookRecord("aliases", "split", f"members of {owner}'s list: message {part.id}")
                                 for owner, (part, _c) in parts.items())
        return message, copies

    def _target(self, message: Message, copies: list[Message], parts: dict[str, tuple[Message, list[Message]]],
                owner: str | None, now: float) -> tuple[Message, list[Message]]:
        """Where a member goes: the message itself, or the part of its list's owner (owner-NAME is
        its envelope sender; the null sender of a report stays null)."""
        if owner is None or not message.sender or owner.lower() == message.sender.lower():
            return message, copies
        if owner not in parts:
            parts[owner] = (self._part(message, owner, now), [])
        return parts[owner]

    def _add(self, message: Message, copies: list[Message], recipient: Recipient, now: float, route: bool) -> None:
        recipient.index = len(message.recipients)
        waiting = recipient.status is Status.QUEUED
        recipient.next_attempt_at = max(now, message.deliver_after or now) if waiting else None
        message.recipients.append(recipient)
        if route and recipient.status is Status.QUEUED:
            copy = self.route(message, recipient, now)
            if copy is not None:
                copies.append(copy)

    def _add_member(self, message: Message, copies: list[Message], member: Expanded, original: str,
                    rtype: RecipientType, dsn: RecipientDSN | None, now: float, route: bool) -> None:
        """A recipient an alias expanded to. It keeps the original recipient as its ORCPT, so that
        its DSN names the address the sender wrote (RFC 3461 §4.2: a relay that adds ORCPT gives
        the address of the RCPT it received), and what the sender asked NOTIFY for."""
        orcpt = dsn.orcpt if dsn is not None and dsn.orcpt is not None else OriginalRecipient.for_address(original)
        request = without_success(dsn)
        notify = request.notify if request is not None else None
        recipient = Recipient(member.address, member.addrtype, rtype, dsn=RecipientDSN(notify, orcpt))
        message.history += (HookRecord("aliases", "expanded", member.describe()),)
        if member.refusal is not None:
            recipient.status, recipient.last_reply = Status.FAILED, member.refusal
        self._add(message, copies, recipient, now, route)

    @staticmethod
    def _expanded(address: str, rtype: RecipientType, dsn: RecipientDSN, members: int, now: float) -> Recipient:
        """The alias itself, kept when its sender asked for SUCCESS: done, owing an `expanded` report."""
        return Recipient(address, addr.SMTP, rtype, transport=LOCAL, nexthop="aliases", status=Status.DELIVERED,
                         last_reply=Reply(250, "2.0.0", f"alias expanded to {members} recipients"),
                         last_attempt_at=now, attempts=1, dsn=dsn, handoff=Handoff.EXPANDED)

    def expand_later(self, message: Message, r: Recipient, now: float) -> Settlement | None:
        """An alias the submitter did not expand (`sendmail`: routing is the daemon's), expanded by
        the delivering process when it claims it, as Postfix's local(8) does: the recipient is done
        (`expanded`: RFC 3464 §2.3.3 — a report if NOTIFY asked for SUCCESS) and its members go in a
        message of their own, committed with that outcome. None: `r` is no alias here."""
        if not self.aliases or r.addrtype != addr.SMTP or message.origin == ALIASES_ORIGIN \
                or self.aliases.lookup(r.address) is None \
                or not self.router.is_local(r.address):
            return None
        sub = Submission(message.sender, [r.address], message.content, types=[r.type], mailbox=message.mailbox,
                         recipient_dsn=[without_success(r.dsn)], message_class=message.message_class,
                         priority=message.priority,
                         expires_at=message.expires_at, max_attempts=message.max_attempts, origin=ALIASES_ORIGIN,
                         meta={"expanded_from": message.id}, dsn=message.dsn)
        try:
            members, _copies = self.build(sub, now, route=False, expand=True)
        except SubmitError as err:
            return Settlement(message.id, r.index, r.address, Status.FAILED, err.reply, attempted=False, dsn=r.dsn)
        named = ", ".join(m.address for part in (members, *(p for p, _c in members.parts)) for m in part.recipients)
        return Settlement(message.id, r.index, r.address, Status.DELIVERED,
                          Reply(250, "2.0.0", f"expanded by aliases into message {members.id}"), dsn=r.dsn,
                          transport=LOCAL, nexthop="aliases", handoff=Handoff.EXPANDED, spawn=(members,),
                          history=(HookRecord("aliases", "expanded", f"into message {members.id}: {named}"),))

    @staticmethod
    def _part(message: Message, owner: str, now: float) -> Message:
        """A message split off for a list's members: the same content, `owner` as its sender."""
        return Message(
            id=new_id(now), sender=owner, content=message.content, recipients=[], submitted_at=message.submitted_at,
            mailbox=message.mailbox, message_class=message.message_class, priority=message.priority,
            deliver_after=message.deliver_after, expires_at=message.expires_at, max_attempts=message.max_attempts,
            delete_after_submit=message.delete_after_submit, origin=message.origin, meta=dict(message.meta),
            dsn=message.dsn, history=(HookRecord("aliases", "split", f"from message {message.id}, sender {owner}"),))

    def _check(self, sub: Submission) -> None:
        if not sub.recipients:
            raise SubmitError(Reply(554, "5.5.1", "no recipients"))
        for name, values in (("addrtypes", sub.addrtypes), ("types", sub.types),
                             ("recipient_dsn", sub.recipient_dsn)):
            if values is not None and len(values) != len(sub.recipients):
                raise SubmitError(Reply(501, "5.5.4", f"{name} must have one entry per recipient"))
        if sub.sender and not addr.valid_smtp(sub.sender):
            raise SubmitError(Reply(501, "5.1.7", f"<{sub.sender}>: Bad sender address syntax"))
        # It would run a command or write a file: only the operator's aliases file names those.
        special = sorted({a.upper() for a in sub.addrtypes or ()} & ALIAS_ONLY)
        if special:
            raise SubmitError(Reply(550, "5.7.1", f"address type {special[0]} comes from the aliases file only"))
        for i, address in enumerate(sub.recipients):
            if not addr.valid_recipient(address, sub.addrtypes[i] if sub.addrtypes else addr.SMTP):
                raise SubmitError(Reply(501, "5.1.3", f"<{address!r}>: Bad recipient address syntax"))
        self._check_scheduling(sub)
        if count_hops(sub.content) > self.hopcount_limit:
            raise SubmitError(LOOP_DETECTED)

    @staticmethod
    def _check_scheduling(sub: Submission) -> None:
        """Values the store could not hold, or that no listing could show, are refused, never stored."""
        if sub.max_attempts is not None and not 0 <= sub.max_attempts <= MAX_ATTEMPTS_CAP:
            raise SubmitError(Reply(501, "5.5.4", f"max_attempts must be 0 (no cap) to {MAX_ATTEMPTS_CAP}"))
        if sub.priority not in PRIORITIES:
            raise SubmitError(Reply(501, "5.5.4", "priority must be 1 (urgent), 0 (normal) or -1 (non-urgent)"))
        for name, ts in (("deliver_after", sub.deliver_after), ("expires_at", sub.expires_at)):
            if ts is not None and not in_range(ts):
                raise SubmitError(Reply(501, "5.5.4", f"{name} must be a time between 1970 and 9999"))

    def route(self, message: Message, recipient: Recipient, now: float) -> Message | None:
        """Route one recipient (MAPI: find the responsible transport). A remote one gets its
        transport and nexthop; a local one is settled as delivered and its mailbox copy returned;
        one no transport takes fails. Used at submission and again when a recipient is claimed.
        With `defer_local`, a local one keeps its state: the scheduler files it after the hooks."""
        route = self.router.route(recipient.address, recipient.addrtype)
        if route is None:
            recipient.status, recipient.last_reply, recipient.next_attempt_at = Status.FAILED, NO_ROUTE, None
            return None
        recipient.transport, recipient.nexthop = route.transport, route.nexthop
        local = route.transport == LOCAL
        if local or self.router.is_local(recipient.address, recipient.addrtype):  # a maildir's too
            refusal = self._check_mailbox(recipient.address)
            if refusal is not None:
                recipient.status, recipient.last_reply, recipient.next_attempt_at = Status.FAILED, refusal, None
                return None
        if not local:
            return None
        if self.defer_local or (recipient.next_attempt_at or 0) > now:  # hooks first, or not released yet
            return None
        recipient.next_attempt_at = None
        recipient.status = Status.DELIVERED
        recipient.last_reply = Reply(250, "2.0.0", f"delivered to mailbox {route.nexthop}")
        recipient.last_attempt_at = now
        recipient.attempts += 1
        return self.local_copy(message, recipient, now)

    def local_copy(self, message: Message, recipient: Recipient, now: float, *, folder: str = "",
                   flags: Sequence[str] = (), added_headers: Sequence[str] = ()) -> Message:
        """The copy a local recipient's mailbox gets: Return-Path and Delivered-To, Original-Recipient
        when the client gave an ORCPT (RFC 8098 §2.3: the delivering MTA adds it, so that a read
        receipt names the address as first given), and any header lines the inbound hooks added,
        above the shared content; folder "" is the receive folder."""
        mailbox = recipient.nexthop or addr.mailbox_key(recipient.address)
        lines = [f"Return-Path: <{message.sender}>", f"Delivered-To: {recipient.address}"]
        if recipient.dsn is not None and recipient.dsn.orcpt is not None:
            lines.append(original_recipient_header(recipient.dsn.orcpt).rstrip("\r\n"))
        lines += added_headers
        return Message(
            id=new_id(now), sender=message.sender, content=message.content, recipients=[],
            submitted_at=now, mailbox=mailbox, folder=folder, message_class=message.message_class,
            priority=message.priority, origin=message.origin,
            headers_prefix="".join(f"{h}\r\n" for h in lines).encode(), flags=tuple(flags),
            copy_of=message.id, copy_for=recipient.address)


def mark_active(message: Message) -> None:
    for r in message.recipients:
        if r.status is Status.QUEUED and (r.next_attempt_at or 0) <= message.submitted_at:
            r.status = Status.ACTIVE


def due_now(message: Message) -> int:
    return sum(1 for r in message.recipients
               if r.status is Status.QUEUED and (r.next_attempt_at or 0) <= message.submitted_at)

