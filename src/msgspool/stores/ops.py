"""The SQL stores' steps: what each write and read of the spool does, over any SQL dialect.

Every function takes a transaction `Tx` (the writer's batch, or a reader's connection) and
returns plain data. The decisions are the domain's (domain/transitions.py: a recipient's new
state, its event, its report debt, poison counting, whether a finished message goes); a step here
reads what a decision needs, applies it as guarded writes ("set X where still Y [and the node
still holds it]") and records what the guard let through. A recipient's state is written only by
`_set_status`, through the statements of WRITES, each bound to one domain step. Only named
statements run (`tx.q.<name>`, stores/sql/queries.sql): no SQL is written here, so that SQLite
(stores/sqlite.py) and PostgreSQL (stores/postgresql.py) run the same steps, each with its own
spelling of the few statements that differ.

Statements built at run time: only the IN lists of `iter_messages` (a page of ids, the folders
asked for), from their blocks by `Queries.expand`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from msgspool.domain import transitions
from msgspool.domain.content import subject as content_subject
from msgspool.domain.dsn import MessageDSN, Ret, notify_text, orcpt_text, recipient_dsn
from msgspool.domain.events import Event, EventType
from msgspool.domain.fetch import FETCH_ACCOUNT, FETCH_UID
from msgspool.domain.hooks import Draft, HookRecord, Preprocessed
from msgspool.domain.ids import new_id
from msgspool.domain.mdn import Disposition
from msgspool.domain.message import (
    INBOX,
    OUTBOX,
    SENT,
    MailboxInfo,
    Message,
    MessageInfo,
    PendingReport,
    ReadReceipt,
    Recipient,
    Settlement,
)
from msgspool.domain.outcome import Filed, Reply
from msgspool.domain.recipient import RecipientType, Status
from msgspool.domain.selector import SUBJECT_MAX
from msgspool.domain.suppression import BOUNCE, Suppression, refusal, suppression_key
from msgspool.errors import AlreadyFetched
from msgspool.stores.queries import ROWS, Queries

# Bytes of message content one many-rows statement carries at most (PostgreSQL, `_insert_contents`):
# the batch's contents travel in one JSON parameter, base64 inside, so big mail goes alone.
CONTENTS_PER_STATEMENT = 4 * 1024 * 1024
CHUNK = 5000  # rows one bulk change (flush, a released backlog) touches per transaction
# Messages one step of a bulk action by selector (`queue hold --where`) reads and changes: a
# message is several rows (its recipients, events, history), so a tenth of CHUNK per transaction.
MESSAGE_CHUNK = CHUNK // 10
NODE_RETENTION = 3600.0  # seconds a dead node's row stays (for `status`) once its work is rescued
# Priority classes, urgent first: the order refill claims in (recipients.priority holds the class).
PRIORITY_CLASSES = (1, 0, -1)
Params = Mapping[str, Any]
# The statements that write a recipient's state, each bound to the domain step it applies: the
# only writers of `recipients.status` (tests/unit/test_transition_writes.py reads the SQL).
WRITES: Mapping[str, transitions.Step] = {
    "claim_due": transitions.CLAIM,
    "claim_the_rest": transitions.CLAIM,
    "settle_recipient": transitions.SETTLE,
    "settle_recipient_rows": transitions.SETTLE,
    "give_back": transitions.GIVE_BACK,
    "give_back_held_by": transitions.GIVE_BACK,
    "give_back_unleased": transitions.GIVE_BACK,
    "hold_waiting_recipients": transitions.HOLD,
    "hold_active_recipients": transitions.HOLD_IN_DELIVERY,
    "release_recipients": transitions.RELEASE,
    "requeue_recipients": transitions.REQUEUE,
}


class Cursor(Protocol):
    """What a step reads of a statement's result (sqlite3's and psycopg's cursors both are one)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Tx(Protocol):
    """A connection inside a transaction, with its dialect's statements (`q`)."""

    @property
    def q(self) -> Queries: ...

    def execute(self, sql: str, parameters: Params = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Params], /) -> Cursor: ...

    # What a transaction reads once for all the steps of its batch, emptied at each transaction's
    # start: whether any suppression is in force ("suppressing"), and each node's lease end as
    # read (("lease", owner) -> float, or None: no lease): a batch hands many messages over to
    # one node, and reads its lease once (`_holds_lease`).
    memo: dict[Any, Any]

    # None: an event is inserted when recorded (one writer at a time: ids come in commit order).
    # A list: the events the transaction records, which its engine inserts just before COMMIT
    # with ids in commit order (PostgreSQL, whose nodes commit side by side; postgresql.py).
    events: list[Event] | None


def priority_class(priority: int) -> int:
    """1 urgent, 0 normal, -1 non-urgent (MAPI PR_PRIORITY's three values; others fold into them)."""
    return (priority > 0) - (priority < 0)


def _set_status(tx: Tx, name: str, status: Status, parameters: Params) -> Cursor:
    """Apply a decided state: statement `name` of WRITES sets `status` where its guard still holds
    (its rows: those the guard let through). A state its step cannot reach is refused before
    anything is written (TransitionRefused), as the table's trigger would refuse it after."""
    return tx.execute(tx.q[name], {**parameters, "status": str(WRITES[name].to(status))})


# --------------------------------------------------------------------------------------------
# Submission and filing.


def insert_event(tx: Tx, event: Event) -> Event:
    """Record `event`; its id is set by the time the transaction commits (Tx.events)."""
    if tx.events is not None:
        tx.events.append(event)
        return event
    event.id = tx.execute(tx.q.insert_event, {
        "time": event.time, "type": str(event.type), "message_id": event.message_id, "recipient": event.recipient,
        "mailbox": event.mailbox, "folder": event.folder,
        "detail": json.dumps(event.detail) if event.detail else None}).fetchone()[0]
    return event


def _insert_content(tx: Tx, data: bytes) -> int:
    content_id: int = tx.execute(tx.q.insert_content, {"data": data}).fetchone()[0]
    return content_id


def _insert_contents(tx: Tx, contents: Sequence[bytes]) -> list[int]:
    """The content rows of a batch, their ids in order: on PostgreSQL one statement for each run
    of contents of at most CONTENTS_PER_STATEMENT bytes together (the ids it returns are taken in
    the order of the rows, so sorted they are the rows' order; a bigger content goes alone, never
    copied into a parameter of many), one per content on SQLite."""
    if len(contents) < 2 or "insert_content_rows" not in tx.q:
        return [_insert_content(tx, data) for data in contents]
    runs: list[list[bytes]] = [[]]
    size = 0
    for data in contents:
        if runs[-1] and size + len(data) > CONTENTS_PER_STATEMENT:
            runs.append([])
            size = 0
        runs[-1].append(data)
        size += len(data)
    ids: list[int] = []
    for run in runs:
        if len(run) == 1:
            ids.append(_insert_content(tx, run[0]))
        else:
            ids += sorted(row[0] for row in tx.execute(tx.q.insert_content_rows,
                                                       {"rows": _json_rows([{"data": data} for data in run])}))
    return ids


def _many(tx: Tx, name: str, rows: Sequence[Params]) -> None:
    """Statement `name` (an INSERT) for each of `rows`. Where the dialect has its many-rows form
    (`<name>_rows`, stores/queries.py: the rows as one JSON parameter), one statement for all of
    them: on PostgreSQL a statement is a round trip and a run of the count triggers
    (sql/postgresql/0008_counts.sql), so a batch of 20 messages costs one of each instead of 20.
    Else executemany of the one-row form (SQLite: a call into the library each)."""
    if not rows:
        return
    many = name + ROWS
    if len(rows) > 1 and many in tx.q:
        tx.execute(tx.q[many], {"rows": _json_rows(rows)})
    else:
        tx.executemany(tx.q[name], rows)


def _json_rows(rows: Sequence[Params]) -> str:
    """Rows of named parameters as the :rows of a many-rows statement: a JSON array, bytes in
    base64 (the statement decodes them)."""
    return json.dumps(rows, separators=(",", ":"), default=_base64)


def _base64(value: Any) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not a statement parameter")


def _insert_message(tx: Tx, msg: Message, content_id: int, *, read: bool) -> None:
    tx.execute(tx.q.insert_message, _message_row(msg, content_id, read=read))


def _message_row(msg: Message, content_id: int, *, read: bool) -> dict[str, Any]:
    return {
        "id": msg.id, "mailbox": msg.mailbox, "folder": msg.folder, "sender": msg.sender, "size": msg.size,
        "submitted_at": msg.submitted_at, "content_id": content_id, "headers_prefix": msg.headers_prefix or None,
        "message_class": msg.message_class, "priority": msg.priority, "deliver_after": msg.deliver_after,
        "expires_at": msg.expires_at, "delete_after_submit": int(msg.delete_after_submit), "held": int(msg.held),
        "origin": msg.origin, "meta": json.dumps(msg.meta) if msg.meta else None,
        "ret": msg.dsn.ret if msg.dsn else None, "envid": msg.dsn.envid if msg.dsn else None, "read": int(read),
        "max_attempts": msg.max_attempts, "flags": " ".join(msg.flags), "resend_of": msg.resend_of,
        "copy_of": msg.copy_of, "copy_for": msg.copy_for,
        "subject": content_subject(msg.content, SUBJECT_MAX)}


def _recipient_row(msg: Message, r: Recipient, owner: str | None) -> dict[str, Any]:
    reply = r.last_reply
    return {"message_id": msg.id, "idx": r.index, "address": r.address, "addrtype": r.addrtype, "type": str(r.type),
            "transport": r.transport, "nexthop": r.nexthop, "status": str(transitions.born(r.status)),
            "attempts": r.attempts,
            "next_attempt_at": r.next_attempt_at, "last_attempt_at": r.last_attempt_at,
            "reply_code": reply.code if reply else None, "reply_enhanced": reply.enhanced if reply else None,
            "reply_text": reply.text if reply else None, "notify": notify_text(r.dsn), "orcpt": orcpt_text(r.dsn),
            "priority": priority_class(msg.priority), "report": r.report_owed,
            "owner": owner if r.status is Status.ACTIVE else None}


Submitted = tuple[Message, Sequence[Message], str | None]  # a submission, its local copies, the node


def op_submit(tx: Tx, msg: Message, copies: Sequence[Message], owner: str | None = None) -> list[Event]:
    """Store a submission: the outbox message with its recipients, and the local copies filed
    straight into their mailboxes (tightly coupled delivery) — one atomic step. Recipients
    committed `active` are handed to the delivery node `owner` in the same step, while that node
    is live: a hand-over to a node whose lease ran out is refused — its recipients are committed
    queued, due now, for whichever node claims them, and set so in `msg` (the caller must not
    hand it on: that node may no longer deliver)."""
    return op_submit_many(tx, [(msg, copies, owner)])[0]


def op_submit_many(tx: Tx, items: Sequence[Submitted]) -> list[list[Event]]:
    """`op_submit` of each item (the submissions of one group commit: stores/base.py `run_jobs`),
    with the rows of all of them written by one statement per table (`_many`). The checks of
    each come first, then the rows, then what each files and records: no item reads what another
    writes, so the order across items does not matter."""
    _read_checks(tx, items)
    notes = [_before_submit(tx, msg, owner) for msg, _copies, owner in items]
    content_ids = _insert_contents(tx, [msg.content for msg, _copies, _owner in items])
    # Its writer has read it (MAPI: Sent Items show read).
    _many(tx, "insert_message", [_message_row(msg, content_id, read=True)
                                 for (msg, _copies, _owner), content_id in zip(items, content_ids, strict=True)])
    _many(tx, "insert_recipient", [_recipient_row(msg, r, owner) for msg, _copies, owner in items
                                   for r in msg.recipients])
    return [_after_submit(tx, msg, copies, content_id, fetched)
            for (msg, copies, _owner), content_id, fetched in zip(items, content_ids, notes, strict=True)]


def _read_checks(tx: Tx, items: Sequence[Submitted]) -> None:
    """The lease of the node a batch is handed to and whether any suppression is in force, read
    for the whole batch in one statement into what `_holds_lease` and `_any_suppression` read
    once per transaction. On PostgreSQL each statement is a round trip, about a millisecond on a
    busy machine, and every 250 of the batch waits for all of them."""
    owner = next((owner for _msg, _copies, owner in items if owner is not None), None)
    if owner is None or ("lease", owner) in tx.memo or "suppressing" in tx.memo:
        return
    row = tx.execute(tx.q.submission_checks, {"owner": owner, "now": items[0][0].submitted_at}).fetchone()
    tx.memo[("lease", owner)], tx.memo["suppressing"] = row[0], bool(row[1])


def _before_submit(tx: Tx, msg: Message, owner: str | None) -> str:
    """A submission's checks, before anything of it is written: a fetched message is recorded (or
    refused: another node filed it), suppressed recipients fail, a hand-over to a node that is no
    longer live is refused. Returns the line for the history of a fetched message."""
    fetched = _claim_fetched(tx, msg)  # first: a message another node filed stores nothing here
    _refuse_suppressed(tx, msg)
    handed = [r for r in msg.recipients if r.status is Status.ACTIVE]
    if handed and owner is not None and not _holds_lease(tx, owner, msg.submitted_at):
        for r in handed:
            r.status = transitions.handed_over(node_live=False)
    return fetched


def _after_submit(tx: Tx, msg: Message, copies: Sequence[Message], content_id: int, fetched: str) -> list[Event]:
    """What a stored submission records: its history, its events, its local copies, its parts."""
    if token := msg.meta.get("http_token"):
        _insert_history(tx, msg.id, msg.submitted_at, "submission",
                        [HookRecord("", "submitted", f"over HTTP with token {token}")])
    if user := msg.meta.get("smtp_auth_user"):
        _insert_history(tx, msg.id, msg.submitted_at, "submission",
                        [HookRecord("", "submitted", f"over SMTP by authenticated user {user}")])
    for stage, hook in (("expansion", "aliases"), ("submission", "suppression")):  # what intake, then we, did
        if records := [h for h in msg.history if h.hook == hook]:
            _insert_history(tx, msg.id, msg.submitted_at, stage, records)
    if msg.resend_of is not None:  # MAPI MSGFLAG_RESEND: each message names the other in its history
        to = ", ".join(f"<{r.address}>" for r in msg.recipients)
        _insert_history(tx, msg.id, msg.submitted_at, "submission",
                        [HookRecord("", "resend", f"resend of {msg.resend_of} to {to}")])
        _insert_history(tx, msg.resend_of, msg.submitted_at, "operator",
                        [HookRecord("", "resent", f"as {msg.id} to {to}")])
    if fetched:
        _insert_history(tx, msg.id, msg.submitted_at, "submission", [HookRecord("", "fetched", fetched)])
    events = [insert_event(tx, Event(EventType.SUBMITTED, msg.id, msg.submitted_at,
                                     detail={"sender": msg.sender, "size": msg.size, "origin": msg.origin}))]
    for r in msg.recipients:
        if transitions.birth_event(r.status) is not None:
            events.append(insert_event(tx, transitions.recipient_event(msg.id, r.address, r.status, r.last_reply,
                                                            msg.submitted_at, r.transport)))
    events += [_file(tx, copy, content_id, msg.id) for copy in copies]
    if not any(r.status.pending for r in msg.recipients):
        events += _finish_if_done(tx, msg.id, msg.submitted_at)
    for part, part_copies in msg.parts:  # committed queued: whichever node claims them delivers them
        events += op_submit(tx, part, part_copies)
    return events


def _claim_fetched(tx: Tx, msg: Message) -> str:
    """A fetched message's id on its server, recorded in the commit that stores it: a fetch that
    runs again before the server forgot it (a crash before DELE) finds it and files nothing twice.
    Recorded already — another node polling the same account filed it a moment ago (on PostgreSQL
    this insert waits on the key for that node's commit) — AlreadyFetched: the step stores
    nothing. Returns the line for the message's history ("" for mail that was not fetched)."""
    account, uid = msg.meta.get(FETCH_ACCOUNT), msg.meta.get(FETCH_UID)
    if not account or not uid:
        return ""
    if tx.execute(tx.q.insert_fetched, {"account": account, "uid": uid, "fetched_at": msg.submitted_at,
                                        "message_id": msg.id}).fetchone() is None:
        raise AlreadyFetched(f"fetch {account}: id {uid} was filed already (by another node)")
    return f"by fetch {account} from {msg.meta.get('fetch_source', '')} id {uid}"


def fetched_uids(tx: Tx, account: str) -> set[str]:
    return {row[0] for row in tx.execute(tx.q.fetched_uids, {"account": account})}


def op_forget_fetched(tx: Tx, account: str, uids: Sequence[str]) -> int:
    tx.executemany(tx.q.delete_fetched, [{"account": account, "uid": uid} for uid in uids])
    return len(uids)


def _refuse_suppressed(tx: Tx, msg: Message) -> None:
    """Recipients on the suppression list fail now, before anything is written (Postal's
    suppression list; domain/suppression.py): no attempt is made, the sender's NDR says why."""
    waiting = [r for r in msg.recipients if r.status in (Status.QUEUED, Status.ACTIVE) and r.addrtype == "SMTP"]
    if not waiting or not _any_suppression(tx, msg.submitted_at):
        return
    found = in_force(tx, [r.address for r in waiting], msg.submitted_at)
    for r in waiting:
        entry = found.get(suppression_key(r.address))
        if entry is not None:
            reply = refusal(entry)
            r.status, r.last_reply, r.next_attempt_at = transitions.born(Status.FAILED), reply, None
            msg.history += (HookRecord("suppression", "failed", f"<{r.address}> {reply.line()}"),)


def _any_suppression(tx: Tx, now: float) -> bool:
    """Is any suppression in force? Read once per transaction: with an empty list (the common
    case) a batch of submissions pays one statement for the check, not one per message (on
    PostgreSQL a round trip each; tests/integration/test_statements.py)."""
    if "suppressing" not in tx.memo:
        tx.memo["suppressing"] = tx.execute(tx.q.any_suppression_in_force, {"now": now}).fetchone() is not None
    return bool(tx.memo["suppressing"])


def _suppression(row: Sequence[Any]) -> Suppression:
    address, reason, source, created_at, until, message_id = row
    return Suppression(address, reason, created_at, until, source, message_id)


def suppression_params(entry: Suppression) -> dict[str, Any]:
    return {"address": suppression_key(entry.address), "reason": entry.reason, "source": entry.source,
            "created_at": entry.created_at, "until": entry.until, "message_id": entry.message_id}


def in_force(tx: Tx, addresses: Sequence[str], now: float, chunk: int = 500) -> dict[str, Suppression]:
    """The suppression entries in force at `now` for these addresses, by key."""
    keys = sorted({suppression_key(a) for a in addresses})
    found: dict[str, Suppression] = {}
    for start in range(0, len(keys), chunk):
        part = keys[start:start + chunk]
        sql = tx.q.expand("suppressions_among", addresses=len(part))
        for row in tx.execute(sql, {**tx.q.spread(addresses=part), "now": now}):
            found[row[0]] = _suppression(row)
    return found


def list_suppressions(tx: Tx, now: float) -> list[Suppression]:
    return [_suppression(row) for row in tx.execute(tx.q.list_suppressions, {"now": now})]


def _file(tx: Tx, copy: Message, content_id: int, source: str) -> Event:
    """File a local copy (sharing the submission's content row) into its mailbox's receive folder,
    linked to its `source` message (the one whose queue id the submitter got)."""
    copy.copy_of = copy.copy_of or source
    tx.execute(tx.q.insert_mailbox, {"address": copy.mailbox, "created_at": copy.submitted_at})
    copy.folder = copy.folder or receive_folder(tx, copy.mailbox, copy.message_class)
    _insert_message(tx, copy, content_id, read="\\Seen" in copy.flags)
    return insert_event(tx, Event(EventType.NEW_MAIL, copy.id, copy.submitted_at, mailbox=copy.mailbox,
                                  folder=copy.folder,
                                  detail={"sender": copy.sender, "message_class": copy.message_class}))


def _file_copy(tx: Tx, message_id: str, copy: Message) -> Event:
    if copy.own_content:
        content_id = _insert_content(tx, copy.content)
    else:
        content_id = tx.execute(tx.q.content_id_of, {"message_id": message_id}).fetchone()[0]
    assert content_id is not None
    return _file(tx, copy, content_id, message_id)


def receive_folder(tx: Tx, mailbox: str, message_class: str) -> str:
    """MAPI GetReceiveFolder: the folder of the longest matching class prefix; Inbox by default."""
    rows = tx.execute(tx.q.receive_folders_of, {"mailbox": mailbox}).fetchall()
    best, folder = -1, INBOX
    wanted = message_class.upper()
    for cls, fld in rows:
        cls = cls.upper()
        if (wanted == cls or wanted.startswith(cls + ".") or cls == "") and len(cls) > best:
            best, folder = len(cls), fld
    return str(folder)


def mailbox_folders(tx: Tx, mailbox: str) -> list[str] | None:
    """The folders holding `mailbox`'s messages; None when there is no such mailbox."""
    if tx.execute(tx.q.mailbox_exists, {"mailbox": mailbox}).fetchone() is None:
        return None
    return [str(row[0]) for row in tx.execute(tx.q.folders_of_mailbox, {"mailbox": mailbox}).fetchall()]


def list_mailboxes(tx: Tx, limit: int, after: str) -> list[MailboxInfo]:
    """A page of the mailboxes by address after `after`, each with its folders (two queries)."""
    rows = tx.execute(tx.q.list_mailboxes, {"after": after, "limit": limit}).fetchall()
    page = {str(address): MailboxInfo(str(address), float(created_at)) for address, created_at in rows}
    if page:
        last = str(rows[-1][0])
        for mailbox, folder in tx.execute(tx.q.folders_of_mailbox_range, {"after": after, "last": last}):
            if (info := page.get(str(mailbox))) is not None:  # a mailbox of messages only has no row here
                info.folders.append(str(folder))
    return list(page.values())


def _finish_if_done(tx: Tx, message_id: str, now: float) -> list[Event]:
    """MAPI FinishedMsg: once every recipient is final, the message leaves the outbox — to Sent
    Items, or deleted when the submitter asked for delete-after-submit."""
    _finish(tx, {message_id: now})
    return []


def _finish(tx: Tx, messages: Mapping[str, float]) -> None:
    """`_finish_if_done` of each message (id: when): one statement on the common path whether or
    not they are finished (a statement per settled message counts: on PostgreSQL it is a round
    trip); PostgreSQL's many-rows form takes a whole batch's in one."""
    outbox, sent = transitions.FINISH
    if len(messages) > 1 and "finish_to_sent_rows" in tx.q:
        rows = tx.execute(tx.q.finish_to_sent_rows, {"sent": sent, "outbox": outbox, "rows": _json_rows(
            [{"message_id": message_id, "now": now} for message_id, now in messages.items()])}).fetchall()
    else:
        rows = [(message_id, row[0]) for message_id, now in messages.items()
                if (row := tx.execute(tx.q.finish_to_sent, {"sent": sent, "now": now, "message_id": message_id,
                                                            "outbox": outbox}).fetchone()) is not None]
    for message_id, delete_after_submit in rows:
        if delete_after_submit and transitions.deleted_when_finished(
                delete_after_submit=True, reports_owed=_reports_owed(tx, message_id)):
            _delete_messages(tx, [message_id])


def _reports_owed(tx: Tx, message_id: str) -> bool:
    return tx.execute(tx.q.reports_owed, {"message_id": message_id}).fetchone() is not None


def _delete_messages(tx: Tx, ids: Sequence[str]) -> None:
    q = tx.q
    for message_id in ids:
        key = {"message_id": message_id}
        row = tx.execute(q.contents_of, key).fetchone()
        tx.execute(q.delete_recipients_of, key)
        tx.execute(q.delete_history_of, key)
        tx.execute(q.delete_message, key)
        for content_id in row or ():
            if content_id is not None:
                _drop_content_if_unused(tx, content_id)


def _drop_content_if_unused(tx: Tx, content_id: int) -> None:
    tx.execute(tx.q.drop_content_if_unused, {"content_id": content_id})


def _insert_history(tx: Tx, message_id: str, now: float, stage: str, records: Iterable[HookRecord]) -> None:
    tx.executemany(tx.q.insert_history, [{"message_id": message_id, "time": now, "stage": stage, "hook": r.hook,
                                          "outcome": r.outcome, "detail": r.detail} for r in records])


# --------------------------------------------------------------------------------------------
# Claiming and settling delivery work.


def op_claim(tx: Tx, now: float, limit: int, whole_messages: bool = False, owner: str | None = None) -> list[Message]:
    """Claim due recipients (queued or deferred, next_attempt_at passed) for the delivery run
    `owner`: mark them active and owned by it, and return their messages with only the claimed
    recipients, urgent ones first. Bounded by `limit` rows; each priority class is one range of
    `recipients_due_by_priority`, oldest due first, so an urgent retry is claimed before a backlog
    of a million normal ones without reading them.

    With `whole_messages` (outbound hooks run in this process), a message the hooks have not seen
    yet comes with every waiting recipient it has, past `limit`: the hooks decide once for the
    whole message (a reject, a rewrite, a split covers all its recipients), and then it is marked
    preprocessed. Preprocessed mail is claimed as before, a row at a time by the index.

    A node whose lease ran out claims nothing (its heartbeat will tell it it is dead)."""
    if owner is not None and not node_live(tx, owner, now):
        return []
    rows: list[Any] = []
    active = transitions.claim()
    for priority in PRIORITY_CLASSES:
        if len(rows) >= limit:
            break
        rows += _set_status(tx, "claim_due", active, {"owner": owner, "priority": priority, "now": now,
                                                      "limit": limit - len(rows)}).fetchall()
    by_message: dict[str, list[Recipient]] = {}
    for row in rows:
        by_message.setdefault(row[0], []).append(_claimed_recipient(row))
    messages = [m for m in (_load_message(tx, mid, rcpts) for mid, rcpts in by_message.items()) if m]
    for message in messages:
        if whole_messages and not message.preprocessed:
            _claim_the_rest(tx, message, owner)
    return messages


def _claimed_recipient(row: Sequence[Any]) -> Recipient:
    _mid, idx, address, addrtype, rtype, transport, nexthop, attempts, notify, orcpt = row
    return Recipient(address=address, addrtype=addrtype, type=RecipientType(rtype), transport=transport,
                     nexthop=nexthop, status=Status.ACTIVE, attempts=attempts, index=idx,
                     dsn=recipient_dsn(notify, orcpt))


def _claim_the_rest(tx: Tx, message: Message, owner: str | None) -> None:
    """Claim the message's other waiting recipients too, due or not: the hooks must see them all
    (one that was deferred before hooks were configured is tried again early, once)."""
    rest = _set_status(tx, "claim_the_rest", transitions.claim(), {"owner": owner, "message_id": message.id}).fetchall()
    message.recipients += [_claimed_recipient(row) for row in rest]
    message.recipients.sort(key=lambda r: r.index)


def _load_message(tx: Tx, message_id: str, recipients: list[Recipient]) -> Message | None:
    row = tx.execute(tx.q.load_message, {"message_id": message_id}).fetchone()
    if row is None:
        return None
    (sender, submitted_at, mailbox, folder, cls, priority, deliver_after, expires_at, das, held, origin,
     prefix, data, ret, envid, preprocessed, max_attempts) = row
    return Message(id=message_id, sender=sender, content=bytes(data), recipients=recipients,
                   submitted_at=submitted_at, mailbox=mailbox, folder=folder, message_class=cls,
                   priority=priority, deliver_after=deliver_after, expires_at=expires_at,
                   delete_after_submit=bool(das), held=bool(held), origin=origin,
                   headers_prefix=bytes(prefix or b""), preprocessed=bool(preprocessed), max_attempts=max_attempts,
                   dsn=MessageDSN(Ret(ret) if ret else None, envid) if ret or envid else None)


Outcomes = tuple[Sequence[Settlement], float, int, str | None]  # outcomes, now, crash_limit, owner


def op_settle(tx: Tx, settlements: Sequence[Settlement], now: float, crash_limit: int = 0,
              owner: str | None = None) -> list[Event]:
    """Record outcomes (and the route each recipient took), as the domain decides each one
    (transitions.settle: a temporary failure of a held message leaves it held; the report debt;
    the event); a recipient that is no longer active (deleted, or settled already) is left alone
    by the guard. A local delivery files its copy in the same step. A message whose attempts
    crashed its transport `crash_limit` times is held (transitions.poisoned: poison isolation, as
    Exim freezes a message).

    Fenced (issue 11.4): with `owner`, a recipient no longer held by that node (its lease ran out
    and another node rescued it) is left alone too, with nothing recorded of the outcome — no
    event, no report debt, no copy filed: the node that lost the lease can never record over the
    work of the one that took it."""
    return op_settle_many(tx, [(settlements, now, crash_limit, owner)])[0]


def op_settle_many(tx: Tx, parts: Sequence[Outcomes]) -> list[list[Event]]:
    """`op_settle` of each part (the settlements of one group commit: stores/base.py `run_jobs`):
    every outcome decided first, then written by one statement per new state (`_apply_settled`),
    then what each recorded outcome files and records, in order; the messages they finished
    leave the outbox together at the end."""
    decided: list[tuple[int, Settlement, transitions.Settled, float, str | None]] = []
    for n, (settlements, now, _limit, owner) in enumerate(parts):
        for s in settlements:
            held = transitions.needs_held_flag(s) and _is_held(tx, s.message_id)
            decided.append((n, s, transitions.settle(s, held=held, now=now), now, owner))
    applied = _apply_settled(tx, decided)
    events: list[list[Event]] = [[] for _ in parts]
    touched: list[dict[str, None]] = [{} for _ in parts]
    for n, s, outcome, now, _owner in decided:
        transport = applied.pop((s.message_id, s.index), _UNTOUCHED)
        if transport is _UNTOUCHED:  # the guard: no longer active, or (fenced) no longer this node's
            continue
        touched[n][s.message_id] = None
        events[n] += _record_settled(tx, s, outcome, now, transport)
    finished: dict[str, float] = {}
    for n, (settlements, now, crash_limit, _owner) in enumerate(parts):
        for message_id in {s.message_id for s in settlements if s.crashed} & touched[n].keys():
            events[n] += _count_crash(tx, message_id, crash_limit, now)
        finished.update(dict.fromkeys(touched[n], now))
    _finish(tx, finished)
    return events


_UNTOUCHED = object()


def _apply_settled(tx: Tx, decided: Sequence[tuple[int, Settlement, transitions.Settled, float, str | None]]
                   ) -> dict[tuple[str, int], Any]:
    """Write the decided outcomes where the guard still holds; the (message id, index) of each
    written, with its recipient's transport. PostgreSQL: one statement per new state for all of
    them (`settle_recipient_rows`); SQLite: one per outcome. A recipient given twice is written
    once, by its first outcome (the second would find it settled)."""
    rows: dict[tuple[str, int], tuple[Status, dict[str, Any]]] = {}
    for _n, s, outcome, now, owner in decided:
        reply = s.reply
        rows.setdefault((s.message_id, s.index), (outcome.status, {
            "attempted": int(s.attempted), "next_at": s.next_attempt_at, "now": now,
            "code": reply.code if reply else None, "enhanced": reply.enhanced if reply else None,
            "text": reply.text if reply else None, "remote": s.remote, "wait": int(s.wait_destination),
            "transport": s.transport, "nexthop": s.nexthop, "report": outcome.report,
            "once": int(outcome.report_once), "void": outcome.void_report, "warn_at": outcome.warn_at,
            "message_id": s.message_id, "idx": s.index, "owner": owner}))
    applied: dict[tuple[str, int], Any] = {}
    if len(rows) > 1 and "settle_recipient_rows" in tx.q:
        by_status: dict[Status, list[dict[str, Any]]] = {}
        for status, params in rows.values():
            by_status.setdefault(status, []).append(params)
        for status, group in by_status.items():
            for message_id, idx, transport in _set_status(tx, "settle_recipient_rows", status,
                                                          {"rows": _json_rows(group)}):
                applied[(message_id, idx)] = transport
        return applied
    for key, (status, params) in rows.items():
        row = _set_status(tx, "settle_recipient", status, params).fetchone()
        if row is not None:
            applied[key] = row[0]
    return applied


def _record_settled(tx: Tx, s: Settlement, outcome: transitions.Settled, now: float, transport: Any) -> list[Event]:
    """What a written outcome records besides its row: a hard bounce's suppression, the copies
    filed, the inbound hooks' history, the messages it spawned, its events."""
    events: list[Event] = []
    status, reply = outcome.status, s.reply
    if s.suppress_until is not None and reply is not None:  # a hard bounce (domain/suppression.py)
        tx.execute(tx.q.suppress_bounce, suppression_params(Suppression(
            s.address, reply.line(), now, s.suppress_until, BOUNCE, s.message_id)))
    events += [_file_copy(tx, s.message_id, copy) for copy in s.copies]
    if s.history:
        _insert_history(tx, s.message_id, now, "inbound", [dataclasses.replace(h, detail=f"<{s.address}> "
                                                                              f"{h.detail}") for h in s.history])
    for spawned in s.spawn:
        events += op_submit(tx, spawned, ())
    if outcome.event is not None:
        events.append(insert_event(tx, transitions.recipient_event(s.message_id, s.address, status, reply, now,
                                                                   transport, s.remote)))
    if status is Status.DELIVERED:
        filed = (reply, *s.filed) if isinstance(reply, Filed) else s.filed
        events += [insert_event(tx, _filed_event(s.message_id, f, now)) for f in filed]
    return events


def _filed_event(message_id: str, reply: Filed, now: float) -> Event:
    """A transport filed the message into a mailbox outside the store (a maildir): `new_mail`, as
    for a copy filed here, naming the outbox message (the copy is not in the store)."""
    return Event(EventType.NEW_MAIL, message_id, now, mailbox=reply.mailbox, folder=reply.folder,
                 detail={"sender": reply.sender, "message_class": reply.message_class, "location": reply.location})


def _count_crash(tx: Tx, message_id: str, limit: int, now: float) -> list[Event]:
    crashes = tx.execute(tx.q.count_crash, {"message_id": message_id}).fetchone()[0]
    reason = transitions.poisoned(crashes, limit)
    if reason is None:
        return []
    _insert_history(tx, message_id, now, "transport", [HookRecord("", "held", reason)])
    return _hold(tx, message_id, reason, now, active=False)


def _is_held(tx: Tx, message_id: str) -> bool:
    row = tx.execute(tx.q.held_flag, {"message_id": message_id}).fetchone()
    return bool(row and row[0])


def op_unclaim(tx: Tx, recipients: Sequence[tuple[str, int]], now: float, owner: str | None = None) -> list[Event]:
    """Claimed recipients that the delivery process dropped from memory unattempted (their message
    was held, requeued or deleted while they waited for a connection) wait again, in one step:
    held when their message is held, else due now. Only rows still active change: one settled
    meanwhile, or deleted with its message, is left alone. With `owner`, only rows that node still
    holds (fenced): intake takes back a hand-over its delivery process died before receiving,
    never what the next node claimed."""
    query = "give_back" if owner is None else "give_back_held_by"
    events = []
    for (message_id, _index, _owner), (status, address, transport) in _give_back(
            tx, query, [(message_id, index, owner) for message_id, index in recipients], now):
        if status == Status.HELD:
            events.append(insert_event(tx, Event(EventType.HELD, message_id, now, recipient=address,
                                                 detail={"transport": transport})))
    return events


def _give_back(tx: Tx, query: str, rows: Sequence[tuple[str, int, str | None]],
               now: float) -> list[tuple[tuple[str, int, str | None], Any]]:
    """Give back each (message id, index, owner) by `query` (a give_back_* statement of WRITES)
    as the domain decides from its message's held flag (transitions.give_back), guarded by that
    flag as read. Returns each row given back with what the statement returned (status, address,
    transport). On PostgreSQL an operator may hold or release the message between the read and
    the write: a guard that failed so is tried once more with the flag read again (a row settled
    or taken meanwhile fails again, and stays as it is)."""
    done: list[tuple[tuple[str, int, str | None], Any]] = []
    held = _held_flags(tx, [message_id for message_id, _index, _owner in rows])
    for attempt in range(2):
        missed = []
        for row in rows:
            message_id, index, owner = row
            if message_id not in held:  # deleted, recipients with it
                continue
            got = _set_status(tx, query, transitions.give_back(held=held[message_id]), {
                "now": now, "message_id": message_id, "idx": index, "owner": owner,
                "held": int(held[message_id])}).fetchone()
            if got is not None:
                done.append((row, got))
            else:
                missed.append(row)
        if not missed or attempt:
            break
        again = _held_flags(tx, [message_id for message_id, _index, _owner in missed])
        rows = [row for row in missed if row[0] in again and again[row[0]] != held[row[0]]]
        held = again
    return done


def _held_flags(tx: Tx, message_ids: Iterable[str], chunk: int = 500) -> dict[str, bool]:
    """Whether each message (of those that exist) is held: a statement per `chunk` messages."""
    ids = sorted(set(message_ids))
    flags: dict[str, bool] = {}
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        sql = tx.q.expand("held_flags", ids=len(part))
        flags.update((str(message_id), bool(held)) for message_id, held in tx.execute(sql, tx.q.spread(ids=part)))
    return flags


def _give_back_all(tx: Tx, rows: Sequence[tuple[str, int, str | None]], now: float, stage: str,
                   why: Callable[[str, str | None], str], query: str) -> tuple[int, list[Event]]:
    """Give back (by `query`, a give_back_* statement) each (message id, index, owner) still
    active and held as seen, with a line in its message's history. Returns how many were given
    back (another node's rescue may have been first) and the `held` events of those whose
    message is held."""
    given, events = 0, []
    for (message_id, _index, owner), (status, address, _transport) in _give_back(tx, query, rows, now):
        given += 1
        if status == Status.HELD:
            events.append(insert_event(tx, Event(EventType.HELD, message_id, now, recipient=address)))
        _insert_history(tx, message_id, now, stage, [HookRecord("", "returned", why(address, owner))])
    return given, events


def active_recipients(tx: Tx, owner: str | None = None) -> list[tuple[str, int, str | None]]:
    rows: list[tuple[str, int, str | None]] = (
        tx.execute(tx.q.active_recipients) if owner is None
        else tx.execute(tx.q.active_recipients_of, {"owner": owner})).fetchall()
    return rows


def op_return_stuck(tx: Tx, rows: Sequence[tuple[str, int, str | None]], now: float) -> list[Event]:
    """The watchdog's give-back: like op_unclaim, for rows still active and still owned as seen."""
    return _give_back_all(tx, rows, now, "watchdog", lambda address, _owner:
                          f"<{address}> was active with no delivery holding it", "give_back_held_by")[1]


def op_release_destination(tx: Tx, transport: str, nexthop: str, now: float, chunk: int = CHUNK) -> int:
    """A destination answered again: its waiting backlog becomes due now (chunked so that intake
    commits interleave with a large release)."""
    return tx.execute(tx.q.release_destination, {"now": now, "transport": transport, "nexthop": nexthop,
                                                  "limit": chunk}).rowcount


def op_release_transport(tx: Tx, transport: str, now: float, chunk: int = CHUNK) -> int:
    """A transport is online again: what waited for it is due now (chunked, as a destination's)."""
    return tx.execute(tx.q.release_transport, {"now": now, "transport": transport, "limit": chunk}).rowcount


def offline_transports(tx: Tx) -> dict[str, float]:
    """The transports an operator put offline, and since when."""
    return {name: since for name, since in tx.execute(tx.q.offline_transports)}


def op_set_transport_offline(tx: Tx, name: str, offline: bool, now: float) -> bool:
    """Put a transport offline or online again; True when that changed its state."""
    query = tx.q.set_transport_offline if offline else tx.q.set_transport_online
    return tx.execute(query, {"name": name, "now": now}).rowcount > 0


def op_mark_delay_warnings(tx: Tx, now: float, chunk: int = CHUNK) -> int:
    """Owe the delay notice of deferred recipients whose time came while they waited without a
    new outcome (a down destination's backlog, a long backoff): by index, a chunk per call."""
    return tx.execute(tx.q.mark_delay_warnings, {"now": now, "limit": chunk,
                                                 "report": transitions.delay_notice_owed()}).rowcount


def next_delay_warning(tx: Tx) -> float | None:
    """When the next delay notice of a deferred recipient falls due (by index)."""
    row = tx.execute(tx.q.next_delay_warning).fetchone()
    return None if row is None else float(row[0])


def next_due(tx: Tx) -> float | None:
    """The earliest next attempt: the head of each priority class's range (one index probe each)."""
    heads = [row[0] for priority in PRIORITY_CLASSES
             for row in tx.execute(tx.q.next_due_in_class, {"priority": priority})]
    return float(min(heads)) if heads else None


def waiting_destinations(tx: Tx) -> list[tuple[str, str]]:
    return [(t, n) for t, n in tx.execute(tx.q.waiting_destinations)]


# --------------------------------------------------------------------------------------------
# Leases (issue 11.4): a node's lease covers every recipient it holds `active` (recipients.owner);
# one heartbeat renews them all. Judged by a heartbeat that advances, never by how long a row has
# been active (River's and Oban's time-based rescue ran live work twice); rescued by NOT EXISTS a
# live node row, so a pruned or missing row never hides work (procrastinate#1518).


def _holds_lease(tx: Tx, owner: str, now: float) -> bool:
    """`node_live`, with the lease read once per transaction: a hand-over per submission would
    otherwise cost a statement per message (a tenth of a relayed message's). A lease renewed by
    another transaction meanwhile is not seen: the hand-over is refused, the safe way round."""
    key = ("lease", owner)
    if key not in tx.memo:
        row = tx.execute(tx.q.lease_until, {"owner": owner}).fetchone()
        tx.memo[key] = None if row is None else row[0]
    until = tx.memo[key]
    return until is not None and until >= now


def node_live(tx: Tx, owner: str, now: float) -> bool:
    """Does node `owner` hold a lease at `now`? An expired one never comes back (op_heartbeat)."""
    return bool(tx.execute(tx.q.node_live, {"owner": owner, "now": now}).fetchone()[0])


def op_register_node(tx: Tx, owner: str, host: str, pid: int, now: float, lease_time: float,
                     sole: bool = False) -> None:
    """A node starts delivering, with a lease until `now + lease_time`. Its identity must be new
    (the primary key refuses a reused one). `sole`: the caller proved that no other node of this
    spool lives (SQLite's delivery lock): every other node's lease ends at its last heartbeat, so
    their work is rescued at once instead of a lease time later."""
    if sole:
        tx.execute(tx.q.end_other_leases, {"owner": owner})
    tx.execute(tx.q.insert_node, {"owner": owner, "host": host, "pid": pid, "now": now,
                                  "lease_until": now + lease_time})


def op_heartbeat(tx: Tx, owner: str, now: float, lease_time: float) -> bool:
    """Renew node `owner`'s lease, and with it every recipient it holds (one row written, not
    theirs). False when its lease had run out or its row is gone: it is dead to the others, its
    work may be someone else's already, and it must stop (a dead lease is never renewed)."""
    return tx.execute(tx.q.heartbeat, {"now": now, "lease_until": now + lease_time, "owner": owner}).rowcount == 1


def active_owners(tx: Tx) -> list[str | None]:
    """The distinct owners of active recipients (None: rows no node holds), one index probe each
    by skipping along `recipients_active_by_owner`: a few nodes holding ten thousand rows cost a
    few probes, not a scan, on every heartbeat."""
    owners: list[str | None] = []
    if tx.execute(tx.q.any_unowned_active).fetchone():
        owners.append(None)
    last = ""
    while row := tx.execute(tx.q.next_active_owner, {"after": last}).fetchone():
        last = row[0]
        owners.append(last)
    return owners


def rescue_due(tx: Tx, now: float) -> bool:
    """Is there anything for op_rescue to do: work of a node without a live lease, or a node row
    to prune? Read-only, so that a heartbeat with nothing to rescue takes no write lock for it."""
    if any(owner is None or not node_live(tx, owner, now) for owner in active_owners(tx)):
        return True
    return tx.execute(tx.q.any_node_dead_since, {"before": now - NODE_RETENTION}).fetchone() is not None


def op_rescue(tx: Tx, now: float, chunk: int = CHUNK) -> int:
    """Active recipients whose node holds no live lease (expired, retired, pruned, never
    registered) wait again — held if their message is, else due now — each with a line in its
    history; a chunk per call. Once none is left, node rows dead for NODE_RETENTION are pruned."""
    rows: list[tuple[str, int, str | None]] = []
    for owner in active_owners(tx):
        if len(rows) >= chunk:
            break
        if owner is None or not node_live(tx, owner, now):
            query = tx.q.active_of_no_node if owner is None else tx.q.active_of_node
            rows += tx.execute(query, {"owner": owner, "limit": chunk - len(rows)}).fetchall()
    given, _ = _give_back_all(tx, rows, now, "rescue", lambda address, owner: f"<{address}> was active for"
                              f" node {owner or '(none)'}, which holds no lease any more", "give_back_unleased")
    if len(rows) < chunk:
        tx.execute(tx.q.prune_nodes, {"before": now - NODE_RETENTION})
    return given


def op_retire_node(tx: Tx, owner: str, now: float) -> int:
    """A clean stop: what node `owner` still holds waits again (its transactions were cancelled:
    their outcome is unknown), then its row goes. Returns how many recipients it gave back."""
    held = tx.execute(tx.q.held_by_node, {"owner": owner}).fetchall()
    given, _ = _give_back_all(tx, held, now, "rescue", lambda address, _owner: f"<{address}> was active when"
                              f" node {owner} stopped", "give_back_held_by")
    tx.execute(tx.q.delete_node, {"owner": owner})
    return given


def op_drain_node(tx: Tx, owner: str, now: float) -> bool:
    """Ask live node `owner` to drain (`msgspool node drain --owner`); False when none lives."""
    return tx.execute(tx.q.drain_node, {"owner": owner, "now": now}).rowcount == 1


def list_nodes(tx: Tx, now: float) -> list[dict[str, Any]]:
    """Every node row, oldest first, with the leases it holds (active recipients) and whether it
    is alive (its lease has not run out)."""
    return [{"owner": owner, "host": host, "pid": pid, "started_at": started_at, "heartbeat_at": heartbeat_at,
             "lease_until": lease_until, "draining": bool(draining), "leases": leases,
             "alive": lease_until is not None and lease_until >= now}
            for owner, host, pid, started_at, heartbeat_at, lease_until, draining, leases
            in tx.execute(tx.q.list_nodes).fetchall()]


# --------------------------------------------------------------------------------------------
# The operator's commands and the reader's flags.


def _existing(tx: Tx, ids: Iterable[str]) -> list[str]:
    return [i for i in ids if tx.execute(tx.q.message_exists, {"message_id": i}).fetchone()]


def op_hold(tx: Tx, ids: Sequence[str], now: float) -> list[str]:
    found = _existing(tx, ids)
    for message_id in found:
        tx.execute(tx.q.hold_message, {"message_id": message_id})
        for address, transport in _set_status(tx, "hold_waiting_recipients", transitions.hold(),
                                              {"message_id": message_id}).fetchall():
            insert_event(tx, Event(EventType.HELD, message_id, now, recipient=address, detail={"transport": transport}))
    return found


def op_release(tx: Tx, ids: Sequence[str], now: float) -> list[str]:
    found = _existing(tx, ids)
    for message_id in found:
        tx.execute(tx.q.release_message, {"message_id": message_id})
        _set_status(tx, "release_recipients", transitions.release(), {"now": now, "message_id": message_id})
    return found


def op_flush(tx: Tx, ids: Sequence[str] | None, now: float, chunk: int = CHUNK, *,
             transport: str | None = None, nexthop: str | None = None) -> int:
    """Make deferred (and not-yet-due queued) recipients due now: those of `ids`, or — a chunk per
    call, so intake's commits interleave with flushing a million — all of them, or all of one
    transport and/or destination (Postfix `postqueue -s SITE`)."""
    if ids is None and (transport is not None or nexthop is not None):
        return tx.execute(tx.q.flush_route, {"now": now, "limit": chunk, "transport": transport,
                                             "nexthop": nexthop}).rowcount
    if ids is None:
        return tx.execute(tx.q.flush_all, {"now": now, "limit": chunk}).rowcount
    return sum(tx.execute(tx.q.flush_message, {"now": now, "message_id": i}).rowcount for i in ids)


def op_answer_once(tx: Tx, key: tuple[str, ...], now: float, period: float) -> bool:
    """An auto-reply with `key` (mailbox, sender, handle) may go now: none went within `period`."""
    mailbox, sender, handle = key
    return tx.execute(tx.q.answer_once, {"mailbox": mailbox, "sender": sender, "handle": handle, "now": now,
                                         "before": now - period}).fetchone() is not None


def op_set_receive_folder(tx: Tx, mailbox: str, message_class: str, folder: str) -> None:
    """MAPI SetReceiveFolder: file messages of `message_class` (and its subclasses) into `folder`."""
    tx.execute(tx.q.insert_mailbox, {"address": mailbox, "created_at": time.time()})
    tx.execute(tx.q.set_receive_folder, {"mailbox": mailbox, "message_class": message_class, "folder": folder})


def op_delete(tx: Tx, ids: Sequence[str]) -> list[str]:
    found = _existing(tx, ids)
    _delete_messages(tx, found)
    return found


def op_cancel_recipients(tx: Tx, keep: dict[str, list[int]], now: float) -> dict[str, list[str]]:
    """`queue delete` of messages a transport has in flight: their other waiting recipients are
    cancelled (removed, with a line in the history); the ones in `keep` go on."""
    cancelled: dict[str, list[str]] = {}
    for message_id, indexes in keep.items():
        key = {"message_id": message_id}
        rows = [row for (idx,) in tx.execute(tx.q.pending_indexes, key).fetchall() if idx not in indexes
                for row in tx.execute(tx.q.cancel_recipient, {**key, "idx": idx}).fetchall()]
        cancelled[message_id] = [address for (address,) in rows]
        if rows:
            _insert_history(tx, message_id, now, "operator",
                            [HookRecord("", "cancelled", f"<{address}> by queue delete; others were in flight")
                             for (address,) in rows])
    return cancelled


def op_set_read(tx: Tx, ids: Sequence[str], read: bool, now: float) -> list[Event]:
    """MAPI SetReadFlag: set or clear the read flag; a `read` event for each message it changed."""
    events = []
    for message_id in ids:
        row = tx.execute(tx.q.set_read, {"read": int(read), "message_id": message_id}).fetchone()
        if row is not None:
            events.append(insert_event(tx, Event(EventType.READ, message_id, now, mailbox=row[0], folder=row[1],
                                                 detail={"read": read})))
    return events


def op_send_receipt(tx: Tx, receipt: ReadReceipt, now: float) -> list[Event]:
    """MAPI ReadReceipt: record the disposition and submit the MDN in one step, and only while the
    message has none recorded (RFC 8098 §2.1: one MDN per message) and, for `deleted`, is unread;
    so a crash or a concurrent request neither loses nor doubles it. Then apply the disposition:
    the message is marked read, or deleted."""
    deleted = receipt.disposition is Disposition.DELETED
    row = tx.execute(tx.q.record_mdn, {"mdn": receipt.recorded, "message_id": receipt.message_id,
                                       "deleted": int(deleted)}).fetchone()
    events: list[Event] = []
    if row is not None and receipt.mdn is not None:
        events += op_submit(tx, receipt.mdn, receipt.copies)
        events.append(insert_event(tx, Event(
            EventType.REPORT, receipt.message_id, now, mailbox=row[0], folder=row[1],
            detail={"report_id": receipt.mdn.id, "class": receipt.mdn.message_class,
                    "disposition": str(receipt.disposition)})))
    if deleted:
        _delete_messages(tx, [receipt.message_id])
    else:
        events += op_set_read(tx, [receipt.message_id], True, now)
    return events


def op_requeue(tx: Tx, ids: Sequence[str], now: float) -> list[str]:
    """`queue requeue` (Postfix postsuper -r): the message goes through the outbound hooks again,
    from its content and sender as submitted; its held, deferred and queued recipients are due now."""
    q = tx.q
    found = [i for i in _existing(tx, ids)
             if tx.execute(q.message_in_folder, {"message_id": i, "folder": OUTBOX}).fetchone()]
    for message_id in found:
        key = {"message_id": message_id}
        row = tx.execute(q.contents_of, key).fetchone()
        tx.execute(q.restore_submitted, key)
        if row[1] is not None:
            _drop_content_if_unused(tx, row[0])
        tx.execute(q.delete_added_recipients, key)
        _set_status(tx, "requeue_recipients", transitions.requeue(), {**key, "now": now})
        _insert_history(tx, message_id, now, "operator", [HookRecord("", "requeued")])
    return found


def op_purge(tx: Tx, sent_before: float, events_before: float, chunk: int = 2000) -> int:
    """Housekeeping: drop the spool's own finished messages and old events past their retention."""
    ids = [r[0] for r in tx.execute(tx.q.purgeable_messages, {"before": sent_before, "limit": chunk})]
    _delete_messages(tx, ids)
    tx.execute(tx.q.purge_events, {"before": events_before})
    return len(ids)


# --------------------------------------------------------------------------------------------
# Reports and webhooks.


def pending_reports(tx: Tx, limit: int) -> list[PendingReport]:
    q = tx.q
    out = []
    for (message_id,) in tx.execute(q.messages_owing_reports, {"limit": limit}).fetchall():
        key = {"message_id": message_id}
        row = tx.execute(q.report_message, key).fetchone()
        content = get_content(tx, message_id)
        if row is None or content is None:  # deleted meanwhile, recipients with it
            continue
        sender, submitted_at, message_class, ret, envid, expires_at, deliver_after = row
        recipients = [{"index": idx, "address": address, "action": report, "remote": remote, "orcpt": orcpt,
                       "last_attempt_at": last_at, "reply": Reply(code or 0, enhanced or "", text or "")}
                      for idx, address, report, code, enhanced, text, remote, orcpt, last_at
                      in tx.execute(q.reports_owed_by, key)]
        dsn = MessageDSN(Ret(ret) if ret else None, envid) if ret or envid else None
        out.append(PendingReport(message_id, sender, submitted_at, message_class, content, dsn, recipients,
                                 expires_at, deliver_after))
    return out


def op_reported(tx: Tx, message_id: str, owed: Sequence[tuple[int, str]], report: Message | None,
                copies: Sequence[Message], owner: str | None = None, now: float = 0.0) -> list[Event]:
    """The report for these recipients is written (or deliberately dropped): submit it and clear
    their debt in one step. `owed` is (index, action) as `pending_reports` read it: unless every
    one of them still stands as read, nothing is written and what is owed now stays owed (a delay
    notice overtaken by a failure; the same report written meanwhile by another node, whose
    debts are then cleared). Fenced: with `owner`,
    a node whose lease ran out at `now` writes nothing (the debt stays for a live node)."""
    if owner is not None and not node_live(tx, owner, now):
        return []
    # Exactly once across nodes: only while every debt is still owed as read. Another node that
    # read the same debts and wrote this report first cleared them; then this one writes nothing.
    standing = {(idx, action) for idx, action in tx.execute(tx.q.report_debts, {"message_id": message_id})}
    if not transitions.report_stands(owed, standing):
        return []
    events = op_submit(tx, report, copies) if report is not None else []
    tx.executemany(tx.q.clear_report, [{"message_id": message_id, "idx": i, "action": action} for i, action in owed])
    if report is not None:
        events.append(insert_event(tx, Event(EventType.REPORT, message_id, report.submitted_at,
                                             detail={"report_id": report.id, "class": report.message_class})))
    done = tx.execute(tx.q.sent_to_delete, {"message_id": message_id, "sent": SENT}).fetchone()
    if done and transitions.deleted_when_finished(delete_after_submit=True,
                                                  reports_owed=_reports_owed(tx, message_id)):
        _delete_messages(tx, [message_id])
    return events


def op_webhook_cursor(tx: Tx) -> int:
    """The webhook cursor; the first time, the newest event: webhooks get what happens from the
    moment they are configured, not the day of history the spool keeps."""
    tx.execute(tx.q.start_webhook_cursor)
    return int(tx.execute(tx.q.webhook_cursor).fetchone()[0])


def op_enqueue_webhooks(tx: Tx, after: int, upto: int, messages: Sequence[Message]) -> list[Event] | None:
    """Queue the webhook deliveries for the events after `after` up to `upto` and move the cursor
    there, in one step: a crash leaves either both or neither. None (and nothing written) when the
    cursor is no longer at `after`: another dispatcher queued these events already."""
    if tx.execute(tx.q.move_webhook_cursor, {"upto": upto, "after": after}).rowcount != 1:
        return None
    return [event for msg in messages for event in op_submit(tx, msg, ())]


# --------------------------------------------------------------------------------------------
# Outbound hooks (MAPI preprocessing): the pipeline's answer recorded.

def op_preprocessed(tx: Tx, message: Message, result: Preprocessed, now: float,
                    owner: str | None = None) -> tuple[list[Message], list[Event]]:
    """Record what the outbound hooks made of a message's active recipients, as the domain decides
    it (transitions.hooks_decided), in one step: a rejection fails them (an NDR follows), a hook's
    failure holds the message (the hooks are not done: they run again on release), drafts replace
    it — the first draft is the stored message (changed content gets a content row of its own; the
    submitted one is kept for `requeue`), each further draft becomes a new message that takes its
    recipients along. A hook's Hold keeps the drafts held: the hooks are done, and release sends
    them as they are (Postfix postsuper -H).
    Returns the messages to deliver now.

    Fenced (issue 11.4): with `owner`, when that node no longer holds every one of the message's
    active recipients (its lease ran out and another node took them), nothing is recorded."""
    active = {r.index: r for r in message.recipients if r.status is Status.ACTIVE}
    if owner is not None and not _holds_all(tx, owner, message.id, list(active)):
        return [], []
    _insert_history(tx, message.id, now, "outbound", result.history)
    decided = transitions.hooks_decided(message.id, result, active)
    if decided.hold is not None:
        return [], _hold(tx, message.id, decided.hold, now, active=True)
    if not decided.drafts:  # rejected
        tx.execute(tx.q.mark_preprocessed, {"message_id": message.id})
        return [], op_settle(tx, decided.failed, now, owner=owner)
    first, *others = decided.drafts
    kept = _apply_draft(tx, message, first, active, owner)
    children = [_split_off(tx, message, draft, active, now, owner) for draft in others]
    tx.execute(tx.q.mark_preprocessed, {"message_id": message.id})
    events = [insert_event(tx, Event(EventType.SUBMITTED, c.id, now, detail={"sender": c.sender, "size": c.size,
                                                                             "split_from": message.id}))
              for c in children]
    events += op_settle(tx, decided.failed, now, owner=owner) if decided.failed else _finish_if_done(tx, message.id,
                                                                                                     now)
    ready = [m for m in (kept, *children) if m.recipients]
    if decided.hold_drafts is None:
        return ready, events
    for m in ready:  # after the dropped ones settled: they were active too
        events += _hold(tx, m.id, decided.hold_drafts, now, active=True)
    return [], events


def _holds_all(tx: Tx, owner: str, message_id: str, indexes: Sequence[int]) -> bool:
    """Does node `owner` hold all these recipients of the message `active`?"""
    if not indexes:
        return True
    held = {idx for (idx,) in tx.execute(tx.q.indexes_held_by, {"message_id": message_id, "owner": owner})}
    return held.issuperset(indexes)


def _hold(tx: Tx, message_id: str, reason: str, now: float, *, active: bool) -> list[Event]:
    """Hold a message for a reason (a hook's verdict or error, a crashing transport): its
    recipients in delivery (`active`) or waiting are held until `queue release` or `requeue`."""
    key = {"message_id": message_id}
    tx.execute(tx.q.hold_message, key)
    rows = (_set_status(tx, "hold_active_recipients", transitions.hold_in_delivery(), key) if active
            else _set_status(tx, "hold_waiting_recipients", transitions.hold(), key)).fetchall()
    return [insert_event(tx, Event(EventType.HELD, message_id, now, recipient=address, detail={"reason": reason}))
            for address, _transport in rows]


def _apply_draft(tx: Tx, message: Message, draft: Draft, active: dict[int, Recipient],
                 owner: str | None) -> Message:
    """The stored message becomes the first draft: content, sender, recipients (renamed, added)."""
    q = tx.q
    if draft.content != message.content or draft.sender != message.sender:
        content_id = _insert_content(tx, draft.content)
        old = tx.execute(q.content_id_of, {"message_id": message.id}).fetchone()[0]
        tx.execute(q.replace_content, {"content_id": content_id, "sender": draft.sender, "size": len(draft.content),
                                       "message_id": message.id})
        _drop_content_if_unused(tx, old)
    recipients: list[Recipient] = []
    next_index = tx.execute(q.next_recipient_index, {"message_id": message.id}).fetchone()[0]
    for d in draft.recipients:
        if d.index is None:
            r = Recipient(d.address, d.addrtype.upper(), status=Status.ACTIVE, index=next_index,
                          next_attempt_at=message.submitted_at)
            next_index += 1
            tx.execute(q.insert_recipient, _recipient_row(message, r, owner))
            tx.execute(q.mark_added_recipient, {"message_id": message.id, "idx": r.index})
        else:
            r = active[d.index]
            if (d.address, d.addrtype.upper()) != (r.address, r.addrtype):
                r = dataclasses.replace(r, address=d.address, addrtype=d.addrtype.upper(), transport=None,
                                        nexthop=None)
                tx.execute(q.rename_recipient, {"address": r.address, "addrtype": r.addrtype,
                                                "message_id": message.id, "idx": r.index})
        recipients.append(r)
    return dataclasses.replace(message, sender=draft.sender, content=draft.content, recipients=recipients,
                               preprocessed=True)


def _split_off(tx: Tx, message: Message, draft: Draft, active: dict[int, Recipient], now: float,
               owner: str | None) -> Message:
    """A further draft becomes a new outbox message; its recipients move over with their state."""
    child = dataclasses.replace(message, id=new_id(now), sender=draft.sender, content=draft.content,
                                recipients=[], preprocessed=True, headers_prefix=b"",
                                meta={**message.meta, "split_from": message.id})
    for position, d in enumerate(draft.recipients):
        base = active[d.index] if d.index is not None else Recipient(d.address, next_attempt_at=now)
        child.recipients.append(dataclasses.replace(base, address=d.address, addrtype=d.addrtype.upper(),
                                                    index=position, status=Status.ACTIVE, transport=None,
                                                    nexthop=None))
        if d.index is not None:
            tx.execute(tx.q.delete_recipient, {"message_id": message.id, "idx": d.index})
    content_id = _insert_content(tx, child.content)
    _insert_message(tx, child, content_id, read=True)
    tx.executemany(tx.q.insert_recipient, [_recipient_row(child, r, owner) for r in child.recipients])
    tx.execute(tx.q.mark_preprocessed, {"message_id": child.id})
    _insert_history(tx, child.id, now, "outbound", [HookRecord("", "split", f"from {message.id}")])
    return child


# --------------------------------------------------------------------------------------------
# Reads, shaped for `queue list/show --json` and the HTTP API.


def _recipient_dict(row: Sequence[Any]) -> dict[str, Any]:
    (_mid, idx, address, addrtype, rtype, transport, nexthop, status, attempts, next_at, last_at, code,
     enhanced, text, remote, notify, orcpt) = row
    reply = Reply(code, enhanced or "", text or "").line() if code is not None else None
    return {"index": idx, "address": address, "addrtype": addrtype, "type": rtype, "transport": transport,
            "destination": nexthop, "status": status, "attempts": attempts, "next_attempt_at": next_at,
            "last_attempt_at": last_at, "last_reply": reply, "relay": remote, "notify": notify, "orcpt": orcpt}


def _message_info(row: Sequence[Any], recipients: list[dict[str, Any]]) -> MessageInfo:
    (message_id, mailbox, folder, sender, size, submitted_at, finished_at, message_class, priority, deliver_after,
     expires_at, held, origin, ret, envid, read, mdn, max_attempts, flags, resend_of, copy_of, copy_for,
     subject) = row
    return MessageInfo(message_id, mailbox, folder, sender, size, submitted_at, finished_at, message_class,
                       priority, deliver_after, expires_at, bool(held), origin, recipients, ret, envid,
                       bool(read), mdn, max_attempts, flags=tuple(flags.split()) if flags else (), resend_of=resend_of,
                       copy_of=copy_of, copy_for=copy_for, subject=subject)


def iter_messages(tx: Tx, folders: Sequence[str] = (OUTBOX,), mailbox: str | None = None,
                  page: int = 500, after: tuple[float, str] | None = None) -> Iterator[MessageInfo]:
    """Stream messages in submission order, a page at a time (a million cost disk, not RAM),
    from just past `after` (submitted_at, id)."""
    if not folders:
        return
    q = tx.q
    after = after if after is not None else (-1.0, "")
    listing = (q.expand("list_messages", folders=len(folders)) if mailbox is None
               else q.expand("list_mailbox_messages", folders=len(folders)))
    params: dict[str, Any] = {**q.spread(folders=folders), "mailbox": mailbox, "limit": page}
    while True:
        rows = tx.execute(listing, {**params, "after_at": after[0], "after_id": after[1]}).fetchall()
        if not rows:
            return
        yield from message_infos(tx, rows)
        after = (rows[-1][5], rows[-1][0])


def message_infos(tx: Tx, rows: Sequence[Sequence[Any]]) -> list[MessageInfo]:
    """The listing's MessageInfo of message rows (`list_messages`' columns), recipients read at once."""
    if not rows:
        return []
    q = tx.q
    recipients: dict[str, list[dict[str, Any]]] = {r[0]: [] for r in rows}
    for rrow in tx.execute(q.expand("recipients_of_messages", ids=len(recipients)), q.spread(ids=list(recipients))):
        recipients[rrow[0]].append(_recipient_dict(rrow))
    return [_message_info(row, recipients[row[0]]) for row in rows]


def get_message(tx: Tx, message_id: str) -> MessageInfo | None:
    key = {"message_id": message_id}
    row = tx.execute(tx.q.message_info, key).fetchone()
    if row is None:
        return None
    info = _message_info(row, [_recipient_dict(r) for r in tx.execute(tx.q.recipients_of, key).fetchall()])
    info.history = [{"time": t, "stage": stage, "hook": hook or None, "outcome": outcome, "detail": detail}
                    for t, stage, hook, outcome, detail in tx.execute(tx.q.history_of, key)]
    info.resends = [resend for (resend,) in tx.execute(tx.q.resends_of, key)]
    info.copies = [{"id": copy_id, "mailbox": mailbox, "folder": folder, "recipient": recipient}
                   for copy_id, mailbox, folder, recipient in tx.execute(tx.q.copies_of, key)]
    return info


def submitted_content(tx: Tx, message_id: str) -> tuple[str, bytes] | None:
    """A message's envelope sender and content as submitted, before any outbound hook changed them
    (what `queue resend` sends again: the hooks run on the resend as on any new message)."""
    row = tx.execute(tx.q.submitted_content, {"message_id": message_id}).fetchone()
    return None if row is None else (row[0], bytes(row[1]))


def get_content(tx: Tx, message_id: str) -> bytes | None:
    row = tx.execute(tx.q.content_of, {"message_id": message_id}).fetchone()
    return None if row is None else bytes(row[0] or b"") + bytes(row[1])


def queue_counts(tx: Tx) -> dict[str, int]:
    """Outbox recipients by status and (`messages`) outbox messages, as the store's triggers keep
    them with every write (issue 13.7): a read of a few rows, whatever the queue holds."""
    counts = {str(s): 0 for s in Status}
    counts["messages"] = 0
    for key, n in tx.execute(tx.q.kept_outbox_counts):
        counts[key] = int(n)
    return counts


def destination_counts(tx: Tx) -> list[tuple[str, str, str, int]]:
    """(transport, nexthop, status, recipients) of the pending recipients ('' for an unrouted one)."""
    return [(t, n, s, int(c)) for t, n, s, c in tx.execute(tx.q.kept_destination_counts)]


def scanned_queue_counts(tx: Tx) -> dict[str, int]:
    """`queue_counts` computed from the rows (a scan): what the kept counts must equal."""
    counts = {str(s): 0 for s in Status}
    for status, n in tx.execute(tx.q.count_outbox_by_status):
        counts[status] = n
    counts["messages"] = tx.execute(tx.q.count_outbox).fetchone()[0]
    return counts


def scanned_destination_counts(tx: Tx) -> list[tuple[str, str, str, int]]:
    """`destination_counts` computed from the rows (a scan)."""
    return [(t, n, s, c) for t, n, s, c in tx.execute(tx.q.count_pending_by_destination)]


def events_after(tx: Tx, after_id: int, limit: int = 1000) -> list[Event]:
    return _events(tx.execute(tx.q.events_after, {"after": after_id, "limit": limit}).fetchall())


def message_events(tx: Tx, message_id: str, after_id: int = 0, limit: int = 1000) -> list[Event]:
    return _events(tx.execute(tx.q.message_events, {"message_id": message_id, "after": after_id,
                                                    "limit": limit}).fetchall())


def _events(rows: Any) -> list[Event]:
    return [Event(EventType(t), mid, tm, recipient=r, mailbox=mb, folder=f,
                  detail=json.loads(d) if d else {}, id=i) for i, tm, t, mid, r, mb, f, d in rows]
