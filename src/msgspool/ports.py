"""The roles providers play, as small Protocols (MAPI: IXPLogon for transports, IMsgStore for stores).

A transport is found by name in the ``msgspool.transports`` entry-point group and built with
``factory(name, settings, options)``; a store likewise in ``msgspool.stores``.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from msgspool.domain.events import Event
from msgspool.domain.hooks import Delivery, Draft, Preprocessed
from msgspool.domain.message import MailboxInfo, Message, MessageInfo, PendingReport, ReadReceipt, Recipient, Settlement
from msgspool.domain.outcome import Reply
from msgspool.domain.selector import Selector
from msgspool.domain.suppression import Suppression
from msgspool.domain.tokens import NewToken, Token
from msgspool.domain.users import User


class Connection(Protocol):
    """An open path to one destination, reused for several messages."""

    remote: str  # for logs and Remote-MTA, e.g. "mx.example.org[192.0.2.1]:25"

    @property
    def usable(self) -> bool: ...

    async def send(self, message: Message, recipients: Sequence[Recipient]) -> list[Reply]:
        """Transmit one message to some of its recipients; one reply per recipient. Raises
        DestinationUnavailable when the connection fails (the outcome of the message is then
        unknown: it is retried). The message carries sender, content and the DSN requests."""
        ...

    async def close(self) -> None: ...


class Transport(Protocol):
    """Moves messages to one kind of messaging system (MAPI transport provider)."""

    name: str
    addrtypes: frozenset[str]  # MAPI IXPLogon::AddressTypes
    domains: tuple[str, ...]  # domain routes; () = any domain

    def nexthop(self, address: str) -> str:
        """The destination an address goes to (a relay, the domain for MX lookup, a URL's origin)."""
        ...

    async def connect(self, nexthop: str) -> Connection:
        """Open a connection; raises DestinationUnavailable at the connection level."""
        ...

    async def close(self) -> None: ...


ReceiveFolderLookup = Callable[[str, str], Awaitable[str]]  # (mailbox, message class) -> folder


@runtime_checkable
class MailboxTransport(Protocol):
    """A transport that files into local mailboxes outside the store (a maildir): the spooler hands
    it the store's receive folders (`Mailboxes.receive_folder`) when it builds it, so a message
    class goes to the same folder as in the store. Its success replies are `Filed`."""

    def use_receive_folders(self, lookup: ReceiveFolderLookup) -> None: ...

    async def file_copy(self, message: Message, recipient: Recipient, content: bytes, *, folder: str | None = None,
                        flags: Sequence[str] = ()) -> Reply:
        """File one copy the inbound hooks made (`content`: their header lines on top, as they left
        it) for `recipient` into `folder` (None: its receive folder), with IMAP `flags`: a Filed
        reply, or the failure (temporary or permanent) as for `Connection.send`."""
        ...


class InboundSession(Protocol):
    """One session with a remote maildrop (MAPI: the transport provider receives a message from its
    messaging system). Its calls block (poplib, imaplib): the fetcher (spooler/fetch.py) runs them in
    a thread, one at a time. Each raises FetchError (LoginRefused at login) when the session fails."""

    # Whether a fetched message stays on the server (POP3 keep, IMAP flag): then `done` is not
    # asked again for a message fetched before.
    leaves_copy: bool
    # Whether `wait` can be told of new mail on this session (IMAP IDLE offered and wanted).
    can_wait: bool

    def uids(self) -> list[str]:
        """The unique ids of the messages there now, in the server's order."""
        ...

    def size(self, uid: str) -> int | None:
        """The message's size as the server counts it, when it says."""
        ...

    def retrieve(self, uid: str) -> bytes:
        """The message (CRLF lines), leaving it unread and in place."""
        ...

    def done(self, uid: str) -> None:
        """After the message was committed to the spool: delete, flag or move it, as configured."""
        ...

    def wait(self, timeout: float, stop: threading.Event) -> bool | None:
        """Wait for new mail on this session (IMAP IDLE) up to `timeout`, or until `stop` is set:
        True when the server told of some; None when this session cannot wait (close it, and poll
        again after the interval)."""
        ...

    def close(self) -> None:
        """End the session so that what `done` asked takes effect (POP3 QUIT, IMAP EXPUNGE)."""
        ...


class InboundTransport(Protocol):
    """A fetch account's protocol (the ``msgspool.fetchers`` entry-point group: pop3, imap), built
    with ``factory(account, settings)``."""

    name: str

    def check(self) -> None:
        """What only the daemon can check at start (the password file); raises ConfigError."""
        ...

    def open(self) -> InboundSession:
        """Connect, secure and log in (blocking)."""
        ...


class TransportFactory(Protocol):
    def __call__(self, name: str, settings: Any, options: dict[str, Any]) -> Transport: ...


# -- the message store, by role ---------------------------------------------------------------
# A store implements every role below (`Store` is their union); each part of the runtime and each
# front end asks for the smallest role it uses, so that what a part may touch is in its signature
# (Mailman 3's interfaces/, procrastinate's connector). The contract suite (tests/contract/) runs
# the same tests against every store through these members only.


class Lifecycle(Protocol):
    """Opening and closing a store: every user of one does both, around its work."""

    async def open(self, *, create: bool = True) -> None:
        """Open the spool, upgrading its schema when it was made by an older msgspool. With
        `create` False, a spool that was never made is not made now: NoSpool (a mistyped --data
        would otherwise give a spool that no daemon ever delivers from)."""
        ...

    async def close(self) -> None: ...

    async def upgrade(self) -> list[str]:
        """Bring the spool's schema to this version's, making the spool if there is none (what
        `open` does too); the steps applied, none when it was current (`msgspool db upgrade`)."""
        ...


class Queue(Protocol):
    """The outbox as delivery works on it: intake commits, the scheduler claims and settles.

    The store is the only place recipient states change (domain/recipient.py lists the allowed
    steps); every write that changes a state records its events in the same transaction and
    returns them. `submit` returns only once the message is durable: that is when a front end may
    acknowledge it."""

    # The delivery node this store works for (Leases), set when it starts delivering: what it
    # claims is marked as its own, and what it settles or gives back must still be.
    owner: str | None

    async def submit(self, msg: Message, copies: Sequence[Message] = (), *, owner: str | None = None) -> list[Event]:
        """Commit a submission; recipients marked active go to the delivery node `owner` (default:
        this store's own) in the same step — unless its lease ran out: then they are committed
        queued, and set so in `msg`, which the caller must then not hand on."""
        ...

    async def claim(self, now: float, limit: int, *, whole_messages: bool = False) -> list[Message]:
        """Claim up to `limit` due recipients; with `whole_messages`, a message not yet
        preprocessed comes with all its waiting recipients (past `limit`): the outbound hooks
        decide for the whole message at once."""
        ...

    async def settle(self, settlements: Sequence[Settlement], now: float) -> list[Event]: ...

    async def unclaim(self, recipients: Sequence[tuple[str, int]], now: float, *,
                      owner: str | None = None) -> list[Event]:
        """Claimed recipients (message id, index) dropped from memory unattempted wait again: held
        when their message is, else due now; those no longer active, or no longer held by node
        `owner` (default: this store's), are left alone."""
        ...

    async def active_recipients(self, owner: str | None = None) -> list[tuple[str, int, str | None]]:
        """(message id, index, owner) of every active recipient, or of those node `owner` holds
        (what the watchdog checks: on a shared spool the others' work is not its to read)."""
        ...

    async def return_stuck(self, rows: Sequence[tuple[str, int, str | None]], now: float) -> list[Event]:
        """Make these recipients due again (held if their message is), each only while it is still
        active and owned as given; recorded in the message's history."""
        ...

    async def release_destination(self, transport: str, nexthop: str, now: float) -> int:
        """A destination is up again: its recipients that waited for it are due now."""
        ...

    async def release_transport(self, transport: str, now: float) -> int:
        """A transport is online again: its recipients waiting for it are due now; returns how many."""
        ...

    async def offline_transports(self) -> dict[str, float]:
        """The transports an operator put offline (name -> since): every node honours them."""
        ...

    async def next_due(self) -> float | None: ...

    async def waiting_destinations(self) -> list[tuple[str, str]]: ...

    async def preprocessed(self, message: Message, result: Preprocessed,
                           now: float) -> tuple[list[Message], list[Event]]:
        """Record what the outbound hooks made of the message's active recipients (and their
        history); returns the messages to deliver now (the message itself, parts split off)."""
        ...

    async def record_events(self, events: Sequence[Event]) -> list[Event]:
        """Record events that change no stored state (a destination going down or up), so clients
        resuming by event id see them too; returns them with their ids."""
        ...


class QueueControl(Protocol):
    """The operator's changes to queued messages (MAPI FlushQueues and AbortSubmit; Postfix
    postqueue -f, postsuper -h/-H/-r/-d). Each returns the ids it found; unknown ids are skipped."""

    async def hold(self, ids: Sequence[str], now: float) -> list[str]: ...

    async def release(self, ids: Sequence[str], now: float) -> list[str]: ...

    async def flush(self, ids: Sequence[str] | None, now: float, *, transport: str | None = None,
                    nexthop: str | None = None) -> int:
        """Deferred recipients (of these messages; None: all, or those routed to `transport`
        and/or the destination `nexthop`) are due now; returns how many."""
        ...

    async def set_transport_offline(self, name: str, offline: bool, now: float) -> bool:
        """Put a transport offline (it takes no work; MAPI STATUS_OFFLINE) or online again, for
        every node of the spool and across restarts; True when that changed its state."""
        ...

    async def requeue(self, ids: Sequence[str], now: float) -> list[str]:
        """Through the outbound hooks again, from the content as submitted (postsuper -r)."""
        ...

    async def delete(self, ids: Sequence[str]) -> list[str]: ...

    async def matching(self, where: Selector, now: float, *, after: str = "", limit: int = ...) -> list[str]:
        """Up to `limit` ids of the outbox messages the selector picks (domain/selector.py), in id
        order after `after`, among those submitted by `now`: a bulk action pages through them,
        changing a page per transaction, so that intake commits in between."""
        ...

    async def cancel_recipients(self, keep: dict[str, list[int]], now: float) -> dict[str, list[str]]:
        """Per message, remove the waiting recipients not in `keep` (those are in flight); returns
        the addresses removed."""
        ...


class Reports(Protocol):
    """The reports owed to senders (MAPI StatusRecips -> DR/NDR; RFC 3464): recorded as a debt by
    `settle`, paid once by `reported`."""

    async def pending_reports(self, limit: int = 100) -> list[PendingReport]:
        """Messages with recipients whose report is owed (recorded by `settle`)."""
        ...

    async def reported(self, message_id: str, owed: Sequence[tuple[int, str]], report: Message | None,
                       copies: Sequence[Message] = ()) -> list[Event]:
        """Submit the report (None: dropped) and clear those recipients' debt, in one step; `owed`
        is (index, action) as read: a debt that changed since (delay -> failed) stays owed."""
        ...

    async def mark_delay_warnings(self, now: float) -> int:
        """Owe the delay notice of deferred recipients whose `warn_at` has passed (see `settle`)."""
        ...

    async def next_delay_warning(self) -> float | None:
        """The earliest `warn_at` of a deferred recipient still to be warned."""
        ...


class Mailboxes(Protocol):
    """Messages as folders hold them: filing by message class, listing, reading, the read flag and
    its receipt (MAPI IMsgStore::SetReceiveFolder, GetContentsTable, IMessage::SetReadFlag,
    IMAPISupport::ReadReceipt)."""

    async def set_receive_folder(self, mailbox: str, message_class: str, folder: str) -> None: ...

    async def answer_once(self, key: tuple[str, ...], now: float, period: float) -> bool:
        """May an auto-reply with `key` (mailbox, sender, handle) go out now? True once per
        `period` seconds, recorded in the same step: of concurrent askers, on any node, one."""
        ...

    async def receive_folder(self, mailbox: str, message_class: str) -> str:
        """MAPI GetReceiveFolder: the folder `message_class` of `mailbox` is filed into (the longest
        matching class prefix; "inbox" when none is set)."""
        ...

    async def mailbox_folders(self, mailbox: str) -> list[str] | None:
        """The folders holding messages of `mailbox`, by name; None when no such mailbox exists
        (nothing was ever filed into it or sent from it)."""
        ...

    async def list_mailboxes(self, limit: int, *, after: str = "") -> list[MailboxInfo]:
        """Up to `limit` local mailboxes, by address, those after `after` (the address of the last
        one of the previous page), each with its folders: one range of the mailboxes and one of
        their messages' folders a page, however many mailboxes there are."""
        ...

    async def get(self, message_id: str) -> MessageInfo | None:
        """One message of any folder with every recipient and its history."""
        ...

    async def existing(self, ids: Sequence[str]) -> set[str]:
        """Which of these messages are stored (any folder): one read for a whole chunk."""
        ...

    async def messages(self, ids: Sequence[str]) -> list[MessageInfo]:
        """Those of these messages that are stored, as a listing shows them (no history), in id
        order: one read for a whole chunk."""
        ...

    async def content(self, message_id: str) -> bytes | None: ...

    async def submitted_content(self, message_id: str) -> tuple[str, bytes] | None:
        """The envelope sender and content as submitted, before outbound hooks changed them."""
        ...

    async def list_messages(self, folders: Sequence[str], mailbox: str | None, limit: int, *,
                            after: tuple[float, str] | None = None) -> list[MessageInfo]:
        """Up to `limit` messages of these folders (of `mailbox`; None: any), in submission order;
        `after`: the (submitted_at, id) of the last one of the previous page, so a listing of a
        million messages costs pages, not memory."""
        ...

    async def search(self, where: Selector, now: float, *, after: str = "", limit: int = ...,
                     newest_first: bool = False) -> tuple[list[MessageInfo], str | None]:
        """A page of the messages the selector picks (domain/selector.py; no folder term: the
        outbox) among those submitted by `now`, in id order after `after` (`newest_first`: in
        reverse id order, before it; as a listing shows them: no history), and the cursor of the
        next page, None at the end. A page reads a bounded part
        of an index (stores/search.py), so that of a sparse search may be short, even empty, with a
        cursor: its reader goes on until the cursor is None."""
        ...

    async def set_read(self, ids: Sequence[str], read: bool, now: float) -> list[Event]:
        """Set or clear the read flag; a `read` event for each message whose flag changed."""
        ...

    async def send_receipt(self, receipt: ReadReceipt, now: float) -> list[Event]:
        """In one step: record the receipt's disposition unless the message has one (a `deleted` one
        only while it is unread), submit its MDN if so, then mark the message read or delete it."""
        ...


class Events(Protocol):
    """The event log clients resume from by id, and the webhook cursor over it (spooler/webhooks.py)."""

    async def events_after(self, after_id: int, limit: int = 1000) -> list[Event]: ...

    async def message_events(self, message_id: str, *, after: int = 0, limit: int = 1000) -> list[Event]:
        """The events of one message after event id `after`, in id order: its submission, every
        attempt of each recipient with its reply (deferred, delivered, failed), holds, reports."""
        ...

    async def webhook_cursor(self) -> int:
        """The id of the last event whose webhook deliveries are queued (set to the newest event
        the first time it is asked)."""
        ...

    async def enqueue_webhooks(self, after: int, upto: int, messages: Sequence[Message]) -> list[Event] | None:
        """Submit the webhook deliveries for the events (`after`, `upto`] and move the cursor to
        `upto`, in one durable step; None, writing nothing, when the cursor is not at `after`."""
        ...


class Fetched(Protocol):
    """The messages fetch accounts took from remote maildrops (domain/fetch.py), by their unique id
    there. `Queue.submit` records one with a message whose meta names the account and id
    (FETCH_ACCOUNT, FETCH_UID), in the same commit."""

    async def fetched_uids(self, account: str) -> set[str]:
        """The ids recorded for `account`."""
        ...

    async def forget_fetched(self, account: str, uids: Sequence[str]) -> int:
        """Drop ids the server no longer lists (deleted there, or an IMAP UIDVALIDITY gone)."""
        ...


class Admin(Protocol):
    """What the status table and housekeeping ask of a store."""

    async def counts(self) -> dict[str, int]:
        """Outbox recipients per status, and `messages`: the messages in the outbox."""
        ...

    async def destination_counts(self) -> list[tuple[str, str, str, int]]:
        """(transport, nexthop, status, recipients) of the pending recipients (queued, active,
        deferred, held); '' for a recipient not routed yet."""
        ...

    # Told the number of writes each commit carried (group commit), perhaps from a commit thread.
    on_commit: Callable[[int], None] | None

    async def purge(self, sent_before: float, events_before: float) -> int: ...

    @property
    def commit_stats(self) -> tuple[int, int]:
        """(commits, writes committed): how well group commit batches; (0, 0) before `open` (the
        CLI's status table reads it from a store it never opens)."""
        ...


class Credentials(Protocol):
    """HTTP API tokens (domain/tokens.py) and submission accounts (domain/users.py): the daemon
    looks them up, the CLI manages them."""

    async def token(self, token_id: str) -> tuple[Token, str] | None:
        """The token with this id and the digest of its secret, or None."""
        ...

    async def has_tokens(self) -> bool: ...

    async def tokens(self) -> list[Token]:
        """Every token (never a secret: only digests are stored), oldest first."""
        ...

    async def create_token(self, new: NewToken) -> None:
        """Store a new token; ValueError when its name is taken (as a name or an id)."""
        ...

    async def revoke_token(self, id_or_name: str) -> Token | None:
        """Delete the token with this id or name: it stops working at once; None when none has it."""
        ...

    async def user(self, name: str) -> tuple[User, str] | None:
        """The user with this name (case-insensitively) and its password hash, or None."""
        ...

    async def users(self) -> list[User]:
        """Every user (never a password: only hashes are stored), by name."""
        ...

    async def add_user(self, user: User, password_hash: str, *, replace: bool = False) -> bool:
        """Store a user; True when it replaced one (only with `replace`); ValueError when the name
        is taken and `replace` is not given."""
        ...

    async def delete_user(self, name: str) -> bool: ...


class Suppressions(Protocol):
    """The suppression list (Postal's; domain/suppression.py): addresses new mail is not sent to.
    `Queue.submit` fails a recipient in force on it, in the same step, and `Queue.settle` lists
    the address of a settlement with `suppress_until` (a hard bounce); these are the rest: what
    `msgspool suppression` and `/api/suppressions` do, and what intake's RCPT check reads."""

    async def suppressions(self, now: float) -> list[Suppression]:
        """Every entry in force at `now`, by address."""
        ...

    async def suppressed(self, addresses: Sequence[str], now: float) -> dict[str, Suppression]:
        """The entries in force at `now` for these addresses, by `suppression_key`."""
        ...

    async def suppressions_signature(self) -> tuple[int, float | None]:
        """(entries, newest created_at): what a copy of the list is checked against (it changed?)."""
        ...

    async def suppress(self, entry: Suppression) -> None:
        """Add an entry, replacing the address's old one."""
        ...

    async def suppress_bounce(self, entry: Suppression) -> None:
        """A hard bounce's entry: added, or a later end for an entry that has one (an entry until
        removed stays so), as a settled hard bounce lists it."""
        ...

    async def relayed_to(self, sender: str, recipient: str, since: float) -> list[tuple[str, str]]:
        """(message id, transport) of the messages of `sender`, submitted since `since`, whose
        recipient `recipient` was handed on (delivered), newest first: what a report received
        later as mail may be about."""
        ...

    async def unsuppress(self, address: str) -> bool:
        """Remove the address's entry: mail to it goes again at once; False when there was none."""
        ...

    async def prune_suppressions(self, now: float) -> int:
        """Delete the entries whose time has passed (housekeeping); how many."""
        ...


class Leases(Protocol):
    """Delivery nodes and their leases (issue 11.4). A process that delivers registers a node with a
    fresh identity per start (never a reused name); every recipient it claims is `active` and held
    by it (`Queue.owner`), under one lease per node that its heartbeat renews. A write tied to
    delivery (settle, unclaim, the hooks' answer, a report, a hand-over) for a recipient the caller
    no longer holds changes nothing; a lease that ran out is never renewed; only work of nodes
    without a live lease is rescued, by any node."""

    # Whether nodes on other machines may share this spool (PostgreSQL): then the local delivery
    # lock proves nothing about them, and a starting node must never take their work as dead.
    shared: bool

    async def register_node(self, owner: str, host: str, pid: int, now: float, lease_time: float, *,
                            sole: bool = False) -> None:
        """Start node `owner` with a lease until `now + lease_time`. `sole`: the caller proved no
        other node of this spool lives (SQLite's delivery lock); their leases end now, so their
        work is rescued at once."""
        ...

    async def heartbeat(self, owner: str, now: float, lease_time: float) -> bool:
        """Renew the node's lease (covering all it holds) to `now + lease_time`; False when it had
        run out or the node's row is gone: the node is dead to the others and must stop."""
        ...

    async def rescue(self, now: float) -> int:
        """Give back (held if their message is, else due now, with a history line) every active
        recipient whose node holds no live lease; prune node rows long dead. Returns how many."""
        ...

    async def retire_node(self, owner: str, now: float) -> int:
        """A clean stop: give back what the node still holds, then delete its row."""
        ...

    async def drain_node(self, owner: str, now: float) -> bool:
        """Ask node `owner` to drain (`msgspool node drain --owner`): its heartbeat sees the flag,
        and it stops as on SIGTERM, handing its work back. False when no live node has that name."""
        ...

    async def nodes(self, now: float) -> list[dict[str, Any]]:
        """Every node: owner, host, pid, started_at, heartbeat_at, lease_until, draining, leases
        (active recipients held), alive (its lease holds at `now`)."""
        ...


@runtime_checkable
class Notifier(Protocol):
    """Wakeups between the delivery nodes of a shared spool (issue 11.6): LISTEN/NOTIFY on
    PostgreSQL. A store of one machine has none (its local link and control socket carry them).
    A notice is a hint: one that is lost costs at most a poll interval (`poll_interval`), never
    mail, because every node also looks at the store by itself. spooler/notices.py lists the kinds."""

    def publish(self, kind: str, ids: Sequence[str] = ()) -> None:
        """Tell the other nodes `kind` about these message ids, with this store's next commit
        (each notice once per transaction, however often asked)."""
        ...

    def subscribe(self, callback: Callable[[str, list[str]], None]) -> None:
        """Call `callback(kind, ids)` in the event loop for every notice of another node; "due"
        once after each (re)connection, since notices sent meanwhile are lost."""
        ...


class Store(Lifecycle, Queue, Leases, QueueControl, Reports, Mailboxes, Events, Admin, Credentials, Suppressions,
            Fetched,
            Protocol):
    """The durable home of messages, folders and per-recipient state (MAPI message store provider):
    every role above. `load_store` (spooler/runtime.py) builds the configured one."""


class OutboundHook(Protocol):
    """A preprocessor (MAPI PreprocessMessage): sees an outbound message before any transport.
    `preprocess` is a plain or a coroutine function; domain/hooks.py lists its answers."""

    name: str

    def preprocess(self, draft: Draft) -> Any: ...


class InboundHook(Protocol):
    """A spooler hook on inbound mail (MAPI ISpoolerHook::InboundMsgHook): sees each local
    recipient's copy before it is filed. `postprocess` is a plain or a coroutine function;
    domain/hooks.py lists its answers."""

    name: str

    def postprocess(self, delivery: Delivery) -> Any: ...


class HookFactory(Protocol):
    def __call__(self, name: str, settings: Any, options: dict[str, Any]) -> Any: ...


class StoreFactory(Protocol):
    def __call__(self, settings: Any) -> Store: ...
