"""The message and recipient model handed between intake, store and scheduler. Plain data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from msgspool.domain.address import SMTP
from msgspool.domain.dsn import Action, Handoff, MessageDSN, RecipientDSN, report_action
from msgspool.domain.hooks import HookRecord
from msgspool.domain.mdn import Disposition
from msgspool.domain.outcome import Filed, Reply
from msgspool.domain.recipient import RecipientType, Status

# Folders every mailbox has (MAPI: Outbox, Sent Items, Inbox).
OUTBOX, SENT, INBOX = "outbox", "sent", "inbox"
# The spool's own mailbox: owner of relayed mail that belongs to no local user.
SPOOL_MAILBOX = ""
DEFAULT_CLASS = "IPM.Note"

# A read receipt the user refused (MAPI SetReadFlag SUPPRESS_RECEIPT), as the store records it.
SUPPRESSED = "suppressed"

# MAPI PR_PRIORITY
URGENT, NORMAL, NON_URGENT = 1, 0, -1


@dataclass(slots=True)
class Recipient:
    address: str
    addrtype: str = SMTP
    type: RecipientType = RecipientType.TO
    transport: str | None = None  # `responsible` once routed
    nexthop: str | None = None
    status: Status = Status.QUEUED
    attempts: int = 0
    next_attempt_at: float | None = None
    last_reply: Reply | None = None
    last_attempt_at: float | None = None
    index: int = 0  # position within the message; with the message id, the recipient's key
    dsn: RecipientDSN | None = None  # RFC 3461 NOTIFY / ORCPT, when the submitter gave them
    handoff: Handoff = Handoff.FINAL  # how one final at submission left: an alias expanded there says EXPANDED

    @property
    def destination(self) -> str | None:
        if self.transport is None or self.nexthop is None:
            return None
        return f"{self.transport}:{self.nexthop}"

    @property
    def report_owed(self) -> Action | None:
        """The report a recipient that is final already when submitted owes its sender: filed into
        a local mailbox (a DR when NOTIFY asked for SUCCESS), or failed (no route, no such mailbox).
        Outcomes reached later are judged when they are settled."""
        return report_action(self.status, self.dsn or RecipientDSN(), handoff=self.handoff) if self.status.final \
            else None


@dataclass(slots=True)
class Message:
    id: str
    sender: str  # envelope sender; "" is the null reverse-path
    content: bytes
    recipients: list[Recipient]
    submitted_at: float
    mailbox: str = SPOOL_MAILBOX
    folder: str = OUTBOX
    message_class: str = DEFAULT_CLASS
    priority: int = NORMAL
    deliver_after: float | None = None  # MAPI PR_DEFERRED_DELIVERY_TIME; RFC 4865 HOLDFOR/HOLDUNTIL
    expires_at: float | None = None  # MAPI PR_EXPIRY_TIME
    max_attempts: int | None = None  # cap on attempts per recipient; None: the `max_attempts` setting
    delete_after_submit: bool = False
    held: bool = False
    origin: str = "api"  # smtp | sendmail | api: how it came in, for the history
    headers_prefix: bytes = b""  # per-copy header lines (Return-Path, Delivered-To) before content
    meta: dict[str, str] = field(default_factory=dict)
    dsn: MessageDSN | None = None  # RFC 3461 RET / ENVID
    preprocessed: bool = False  # the outbound hooks have run on it
    flags: tuple[str, ...] = ()  # IMAP keywords of a filed copy (set by inbound hooks, e.g. \Flagged)
    own_content: bool = False  # a filed copy whose content an inbound hook changed: not shared
    # Written with the submission: what recipient expansion did (domain/aliases.py), for the history.
    history: tuple[HookRecord, ...] = ()
    # Outbox messages split off at submission, committed with it in one step, each with its local
    # copies: the members of a list with an owner-NAME go with that envelope sender.
    parts: tuple[tuple[Message, tuple[Message, ...]], ...] = ()
    resend_of: str | None = None  # MAPI MSGFLAG_RESEND: the queue id of the message this one resends
    # A copy filed into a local mailbox: the queue id of the message it is a copy of (the id SMTP
    # answered "queued as"), and the recipient it was filed for (issue 13.2: one id story).
    copy_of: str | None = None
    copy_for: str | None = None
    # The local copies committed with it (Spooler.commit sets them): what a submitter is told.
    filed: tuple[Message, ...] = ()

    @property
    def size(self) -> int:
        return len(self.headers_prefix) + len(self.content)

    def full_content(self) -> bytes:
        return self.headers_prefix + self.content if self.headers_prefix else self.content


@dataclass(slots=True)
class Settlement:
    """The outcome of one attempt (or decision) for one recipient, as the scheduler hands it to the
    store. The store applies it only if the recipient is still pending."""

    message_id: str
    index: int
    address: str
    status: Status
    reply: Reply | None = None
    attempted: bool = True  # counts as an attempt (sets attempts+1 and last_attempt_at)
    next_attempt_at: float | None = None
    wait_destination: bool = False  # deferred because its destination is down
    remote: str | None = None  # the next hop that answered
    transport: str | None = None  # the responsible transport, recorded with the outcome
    nexthop: str | None = None
    copies: tuple[Message, ...] = ()  # local delivery: the copies to file into the recipient's mailbox
    filed: tuple[Filed, ...] = ()  # local delivery: the copies a mailbox transport filed (maildir): new_mail each
    spawn: tuple[Message, ...] = ()  # messages an inbound hook sends (forwards, auto-replies), unrouted
    history: tuple[HookRecord, ...] = ()  # what the inbound hooks did, for the message's history
    dsn: RecipientDSN | None = None  # what the sender asked to be told (decides the report)
    handoff: Handoff = Handoff.FINAL  # how a delivered recipient left: decides `delivered` or `relayed`
    crashed: bool = False  # the transport raised: counts towards the message's crash limit
    warn_at: float | None = None  # a deferral: when the sender's delay notice falls due (None: never)
    suppress_until: float | None = None  # a hard bounce: its address is suppressed until then


@dataclass(slots=True)
class MessageInfo:
    """A stored message as `queue list/show` and the API present it (a read model)."""

    id: str
    mailbox: str
    folder: str
    sender: str
    size: int
    submitted_at: float
    finished_at: float | None
    message_class: str
    priority: int
    deliver_after: float | None
    expires_at: float | None
    held: bool
    origin: str
    recipients: list[dict[str, Any]]
    ret: str | None = None
    envid: str | None = None
    read: bool = False  # MAPI MSGFLAG_READ
    mdn: str | None = None  # the read receipt answered: displayed | deleted | suppressed
    max_attempts: int | None = None
    history: list[dict[str, Any]] | None = None  # hooks, holds, requeues: only for one message's view
    flags: tuple[str, ...] = ()  # IMAP keywords a filed copy got from the inbound hooks
    resend_of: str | None = None  # MAPI MSGFLAG_RESEND: the message this one resends
    resends: list[str] | None = None  # the messages that resend this one: only for one message's view
    copy_of: str | None = None  # a filed copy: the message it is a copy of
    copy_for: str | None = None  # a filed copy: the recipient it was filed for
    # The copies of this message filed into local mailboxes, {id, mailbox, folder, recipient}: only
    # for one message's view.
    copies: list[dict[str, Any]] | None = None
    subject: str | None = None  # decoded, as stored at submission for queue searches


@dataclass(slots=True)
class MailboxInfo:
    """A local mailbox as a listing shows it: its address, when it came to exist (its first
    message or setting), and the folders holding its messages, by name."""

    address: str
    created_at: float
    folders: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ReadReceipt:
    """MAPI IMAPISupport::ReadReceipt: the MDN (RFC 8098) answering mailbox message `message_id`,
    whose `disposition` (displayed: marked read; deleted: deleted unread) the store applies,
    records and submits the MDN with, in one step, so that no message is answered twice. `mdn`
    None records that the user refused one (MAPI SUPPRESS_RECEIPT): none is sent later either."""

    message_id: str
    disposition: Disposition
    mdn: Message | None
    copies: Sequence[Message] = ()

    @property
    def recorded(self) -> str:
        """What the store keeps in the message's `mdn` column."""
        return self.disposition if self.mdn is not None else SUPPRESSED


@dataclass(slots=True)
class PendingReport:
    """A message with recipients whose report is owed: what `reporter.py` needs to write it."""

    message_id: str
    sender: str
    submitted_at: float
    message_class: str
    content: bytes
    dsn: MessageDSN | None
    recipients: list[dict[str, Any]]  # address, index, action, reply, remote, orcpt, last_attempt_at
    expires_at: float | None = None  # the message's own expiry time (a delay notice's Will-Retry-Until)
    deliver_after: float | None = None  # its release time: the lifetime counts from it
