"""What the SQL stores share: their async face (the `Store` roles, ports.py) over two engine
hooks, `_write` (a step in the next group commit) and `read` (a step on a reader connection).

SQLiteStore (stores/sqlite.py) and PostgresStore (stores/postgresql.py) subclass `SQLStore` and
differ only in how a step reaches the database; the steps themselves are stores/ops.py's.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from msgspool.domain.events import Event
from msgspool.domain.hooks import Preprocessed
from msgspool.domain.message import MailboxInfo, Message, MessageInfo, PendingReport, ReadReceipt, Settlement
from msgspool.domain.selector import Selector
from msgspool.domain.suppression import Suppression
from msgspool.domain.tokens import NewToken, Token
from msgspool.domain.users import User
from msgspool.stores.credentials import (
    any_token,
    find_token,
    find_user,
    list_tokens,
    list_users,
    op_add_user,
    op_create_token,
    op_delete_user,
    op_revoke_token,
)
from msgspool.stores.ops import (
    CHUNK,
    MESSAGE_CHUNK,
    Tx,
    active_recipients,
    destination_counts,
    events_after,
    fetched_uids,
    get_content,
    get_message,
    insert_event,
    iter_messages,
    list_mailboxes,
    list_nodes,
    mailbox_folders,
    message_events,
    next_delay_warning,
    next_due,
    offline_transports,
    op_answer_once,
    op_cancel_recipients,
    op_claim,
    op_delete,
    op_drain_node,
    op_enqueue_webhooks,
    op_flush,
    op_forget_fetched,
    op_heartbeat,
    op_hold,
    op_mark_delay_warnings,
    op_preprocessed,
    op_purge,
    op_register_node,
    op_release,
    op_release_destination,
    op_release_transport,
    op_reported,
    op_requeue,
    op_rescue,
    op_retire_node,
    op_return_stuck,
    op_send_receipt,
    op_set_read,
    op_set_receive_folder,
    op_set_transport_offline,
    op_settle_many,
    op_submit_many,
    op_unclaim,
    op_webhook_cursor,
    pending_reports,
    queue_counts,
    receive_folder,
    rescue_due,
    submitted_content,
    waiting_destinations,
)
from msgspool.stores.search import existing_messages, matching_messages, messages_by_ids, search_messages
from msgspool.stores.suppressions import (
    in_force,
    list_suppressions,
    op_prune_suppressions,
    op_suppress,
    op_suppress_bounce,
    op_unsuppress,
    relayed_to,
    signature,
)

T = TypeVar("T")


class _Job:
    """One write of a group commit: `fn(tx)`, or an `item` for `many(tx, items)`, which a run of
    jobs of the same `many` shares (`run_jobs`)."""

    __slots__ = ("durable", "fn", "future", "item", "many")

    def __init__(self, fn: Callable[[Any], Any] | None, durable: bool, future: asyncio.Future[Any] | None,
                 many: Callable[[Any, list[Any]], list[Any]] | None = None, item: Any = None) -> None:
        self.fn, self.durable, self.future, self.many, self.item = fn, durable, future, many, item


def run_jobs(tx: Any, jobs: Sequence[_Job]) -> list[tuple[bool, Any]]:
    """Run a batch's jobs in order in one transaction, each run of consecutive jobs with the same
    `many` as one call of it (op_submit_many, op_settle_many: one statement per table for the
    submissions or outcomes of a whole batch, where the engine has the many-rows statements). An
    exception fails the batch; the engines then run each job alone, so it stays its own."""
    out: list[tuple[bool, Any]] = []
    for many, run in itertools.groupby(jobs, key=lambda job: job.many):
        if many is not None:
            out += [(True, result) for result in many(tx, [job.item for job in run])]
            continue
        for job in run:
            assert job.fn is not None
            out.append((True, job.fn(tx)))
    return out


def _resolve(jobs: list[_Job], results: list[tuple[bool, Any]]) -> None:
    for job, (ok, value) in zip(jobs, results, strict=True):
        future = job.future
        if future is None or future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class SQLStore(ABC):
    """The store's API over an engine: every method is a coroutine running one step of ops.py
    (or credentials.py) as a write, sharing its commit with whatever else is queued, or a read."""

    shared = False  # may nodes on other machines share the spool? (ports.Leases.shared)

    def __init__(self, *, commit_batch: int = 512, crash_limit: int = 0,
                 on_commit: Callable[[int], None] | None = None) -> None:
        self.commit_batch = commit_batch
        self.crash_limit = crash_limit
        self.owner: str | None = None  # the delivery run this store claims for (Store.owner)
        # Told the number of writes of each commit (the metrics' commit batch sizes); may be
        # called from the store's commit thread.
        self.on_commit = on_commit

    def _committed(self, writes: int) -> None:
        if self.on_commit is not None:
            self.on_commit(writes)

    @abstractmethod
    async def open(self, *, create: bool = True) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def _write(self, fn: Callable[[Tx], T], durable: bool = True) -> asyncio.Future[T]:
        """Run `fn` in the next group commit; the future resolves after its COMMIT."""

    @abstractmethod
    def _write_item(self, many: Callable[[Tx, list[Any]], list[T]], item: Any,
                    durable: bool = True) -> asyncio.Future[T]:
        """Write `item` in the next group commit, by one call of `many` for it and the items of
        the same `many` queued next to it; the future resolves with its own result after COMMIT."""

    @abstractmethod
    def read(self, fn: Callable[[Tx], T]) -> asyncio.Future[T]:
        """Run `fn` on a reader connection (never behind a commit)."""

    @property
    @abstractmethod
    def commit_stats(self) -> tuple[int, int]:
        """(commits, jobs committed): how well group commit batches."""

    async def submit(self, msg: Message, copies: Sequence[Message] = (), *, owner: str | None = None) -> list[Event]:
        owner = owner if owner is not None else self.owner
        return await self._write_item(op_submit_many, (msg, copies, owner))

    async def claim(self, now: float, limit: int, *, whole_messages: bool = False) -> list[Message]:
        owner = self.owner
        return await self._write(lambda c: op_claim(c, now, limit, whole_messages, owner), durable=False)

    async def settle(self, settlements: Sequence[Settlement], now: float) -> list[Event]:
        owner = self.owner
        return await self._write_item(op_settle_many, (settlements, now, self.crash_limit, owner), durable=False)

    async def unclaim(self, recipients: Sequence[tuple[str, int]], now: float, *,
                      owner: str | None = None) -> list[Event]:
        owner = owner if owner is not None else self.owner
        return await self._write(lambda c: op_unclaim(c, recipients, now, owner), durable=False)

    async def cancel_recipients(self, keep: dict[str, list[int]], now: float) -> dict[str, list[str]]:
        return await self._write(lambda c: op_cancel_recipients(c, keep, now))

    async def active_recipients(self, owner: str | None = None) -> list[tuple[str, int, str | None]]:
        return await self.read(lambda c: active_recipients(c, owner))

    async def return_stuck(self, rows: Sequence[tuple[str, int, str | None]], now: float) -> list[Event]:
        return await self._write(lambda c: op_return_stuck(c, rows, now), durable=False)

    async def release_destination(self, transport: str, nexthop: str, now: float) -> int:
        return await self._chunked(lambda c: op_release_destination(c, transport, nexthop, now), durable=False)

    async def release_transport(self, transport: str, now: float) -> int:
        return await self._chunked(lambda c: op_release_transport(c, transport, now), durable=False)

    async def offline_transports(self) -> dict[str, float]:
        return await self.read(offline_transports)

    async def set_transport_offline(self, name: str, offline: bool, now: float) -> bool:
        return await self._write(lambda c: op_set_transport_offline(c, name, offline, now))

    async def next_due(self) -> float | None:
        return await self.read(next_due)

    async def mark_delay_warnings(self, now: float) -> int:
        return await self._chunked(lambda c: op_mark_delay_warnings(c, now), durable=False)

    async def next_delay_warning(self) -> float | None:
        return await self.read(next_delay_warning)

    async def waiting_destinations(self) -> list[tuple[str, str]]:
        return await self.read(waiting_destinations)

    async def record_events(self, events: Sequence[Event]) -> list[Event]:
        return await self._write(lambda c: [insert_event(c, e) for e in events], durable=False)

    async def hold(self, ids: Sequence[str], now: float) -> list[str]:
        return await self._write(lambda c: op_hold(c, ids, now))

    async def release(self, ids: Sequence[str], now: float) -> list[str]:
        return await self._write(lambda c: op_release(c, ids, now))

    async def flush(self, ids: Sequence[str] | None, now: float, *, transport: str | None = None,
                    nexthop: str | None = None) -> int:
        if ids is not None:
            return await self._write(lambda c: op_flush(c, ids, now))
        return await self._chunked(lambda c: op_flush(c, None, now, transport=transport, nexthop=nexthop),
                                   durable=True)

    async def _chunked(self, op: Callable[[Tx], int], *, durable: bool, chunk: int = CHUNK) -> int:
        """Repeat a write that changes at most `chunk` rows per transaction until it is done."""
        total = 0
        while True:
            n = await self._write(op, durable)
            total += n
            if n < chunk:
                return total

    async def delete(self, ids: Sequence[str]) -> list[str]:
        return await self._write(lambda c: op_delete(c, ids))

    async def fetched_uids(self, account: str) -> set[str]:
        return await self.read(lambda c: fetched_uids(c, account))

    async def forget_fetched(self, account: str, uids: Sequence[str]) -> int:
        if not uids:
            return 0
        return await self._write(lambda c: op_forget_fetched(c, account, uids), durable=False)

    async def webhook_cursor(self) -> int:
        return await self._write(op_webhook_cursor)

    async def enqueue_webhooks(self, after: int, upto: int, messages: Sequence[Message]) -> list[Event] | None:
        # Durable when it queues deliveries; moving the cursor past skipped events alone may be
        # forgotten by a power loss: they are skipped again.
        return await self._write(lambda c: op_enqueue_webhooks(c, after, upto, messages), durable=bool(messages))

    async def purge(self, sent_before: float, events_before: float) -> int:
        return await self._write(lambda c: op_purge(c, sent_before, events_before), durable=False)

    async def set_read(self, ids: Sequence[str], read: bool, now: float) -> list[Event]:
        return await self._write(lambda c: op_set_read(c, ids, read, now))

    async def send_receipt(self, receipt: ReadReceipt, now: float) -> list[Event]:
        return await self._write(lambda c: op_send_receipt(c, receipt, now))

    async def pending_reports(self, limit: int = 100) -> list[PendingReport]:
        return await self.read(lambda c: pending_reports(c, limit))

    async def reported(self, message_id: str, owed: Sequence[tuple[int, str]], report: Message | None,
                       copies: Sequence[Message] = ()) -> list[Event]:
        owner, now = self.owner, time.time()
        return await self._write(lambda c: op_reported(c, message_id, owed, report, copies, owner, now))

    # leases (ports.Leases)
    def _lease_clock(self, tx: Tx, now: float) -> float:
        """`now` on the clock leases are set and judged by: this one's (a store of one machine);
        a shared store moves it onto a clock every node shares (PostgresStore)."""
        return now

    async def register_node(self, owner: str, host: str, pid: int, now: float, lease_time: float, *,
                            sole: bool = False) -> None:
        await self._write(lambda c: op_register_node(c, owner, host, pid, self._lease_clock(c, now), lease_time,
                                                     sole))

    async def heartbeat(self, owner: str, now: float, lease_time: float) -> bool:
        return await self._beat(lambda c: op_heartbeat(c, owner, self._lease_clock(c, now), lease_time))

    def _beat(self, fn: Callable[[Tx], T]) -> asyncio.Future[T]:
        """A heartbeat's write. Here the group commit's (SQLite's commits are short and local); a
        store whose commits can wait on other machines' locks gives it a connection of its own."""
        return self._write(fn, durable=False)

    async def rescue(self, now: float) -> int:
        if not await self.read(lambda c: rescue_due(c, self._lease_clock(c, now))):  # commonly: no write at all
            return 0
        return await self._chunked(lambda c: op_rescue(c, self._lease_clock(c, now)), durable=False)

    async def retire_node(self, owner: str, now: float) -> int:
        return await self._write(lambda c: op_retire_node(c, owner, self._lease_clock(c, now)), durable=False)

    async def nodes(self, now: float) -> list[dict[str, Any]]:
        return await self.read(lambda c: list_nodes(c, self._lease_clock(c, now)))

    async def drain_node(self, owner: str, now: float) -> bool:
        return await self._write(lambda c: op_drain_node(c, owner, now))

    async def preprocessed(self, message: Message, result: Preprocessed,
                           now: float) -> tuple[list[Message], list[Event]]:
        owner = self.owner
        return await self._write(lambda c: op_preprocessed(c, message, result, now, owner))

    async def requeue(self, ids: Sequence[str], now: float) -> list[str]:
        return await self._write(lambda c: op_requeue(c, ids, now))

    async def answer_once(self, key: tuple[str, ...], now: float, period: float) -> bool:
        return await self._write(lambda c: op_answer_once(c, key, now, period))

    async def set_receive_folder(self, mailbox: str, message_class: str, folder: str) -> None:
        await self._write(lambda c: op_set_receive_folder(c, mailbox, message_class, folder))

    async def receive_folder(self, mailbox: str, message_class: str) -> str:
        return await self.read(lambda c: receive_folder(c, mailbox, message_class))

    async def mailbox_folders(self, mailbox: str) -> list[str] | None:
        return await self.read(lambda c: mailbox_folders(c, mailbox))

    async def list_mailboxes(self, limit: int, *, after: str = "") -> list[MailboxInfo]:
        return await self.read(lambda c: list_mailboxes(c, limit, after))

    async def get(self, message_id: str) -> MessageInfo | None:
        return await self.read(lambda c: get_message(c, message_id))

    async def existing(self, ids: Sequence[str]) -> set[str]:
        return await self.read(lambda c: existing_messages(c, ids))

    async def messages(self, ids: Sequence[str]) -> list[MessageInfo]:
        return await self.read(lambda c: messages_by_ids(c, ids))

    async def content(self, message_id: str) -> bytes | None:
        return await self.read(lambda c: get_content(c, message_id))

    async def submitted_content(self, message_id: str) -> tuple[str, bytes] | None:
        return await self.read(lambda c: submitted_content(c, message_id))

    async def list_messages(self, folders: Sequence[str], mailbox: str | None, limit: int, *,
                            after: tuple[float, str] | None = None) -> list[MessageInfo]:
        return await self.read(lambda c: list(itertools.islice(
            iter_messages(c, folders, mailbox, page=min(limit, 500) or 1, after=after), limit)))

    async def matching(self, where: Selector, now: float, *, after: str = "", limit: int = MESSAGE_CHUNK) -> list[str]:
        return await self.read(lambda c: matching_messages(c, where, now, after, limit))

    async def search(self, where: Selector, now: float, *, after: str = "", limit: int = 1000,
                     newest_first: bool = False) -> tuple[list[MessageInfo], str | None]:
        def page(c: Tx) -> tuple[list[MessageInfo], str | None]:
            ids, cursor = search_messages(c, where, now, after, limit, newest_first=newest_first)
            infos = messages_by_ids(c, ids)
            return infos[::-1] if newest_first else infos, cursor

        return await self.read(page)

    async def counts(self) -> dict[str, int]:
        return await self.read(queue_counts)

    async def destination_counts(self) -> list[tuple[str, str, str, int]]:
        return await self.read(destination_counts)

    async def events_after(self, after_id: int, limit: int = 1000) -> list[Event]:
        return await self.read(lambda c: events_after(c, after_id, limit))

    async def message_events(self, message_id: str, *, after: int = 0, limit: int = 1000) -> list[Event]:
        return await self.read(lambda c: message_events(c, message_id, after, limit))

    async def suppressions(self, now: float) -> list[Suppression]:
        return await self.read(lambda c: list_suppressions(c, now))

    async def suppressed(self, addresses: Sequence[str], now: float) -> dict[str, Suppression]:
        return await self.read(lambda c: in_force(c, addresses, now))

    async def suppressions_signature(self) -> tuple[int, float | None]:
        return await self.read(signature)

    async def suppress(self, entry: Suppression) -> None:
        await self._write(lambda c: op_suppress(c, entry))

    async def suppress_bounce(self, entry: Suppression) -> None:
        await self._write(lambda c: op_suppress_bounce(c, entry))

    async def relayed_to(self, sender: str, recipient: str, since: float) -> list[tuple[str, str]]:
        return await self.read(lambda c: relayed_to(c, sender, recipient, since))

    async def unsuppress(self, address: str) -> bool:
        return await self._write(lambda c: op_unsuppress(c, address))

    async def prune_suppressions(self, now: float) -> int:
        return await self._write(lambda c: op_prune_suppressions(c, now), durable=False)

    async def token(self, token_id: str) -> tuple[Token, str] | None:
        return await self.read(lambda c: find_token(c, token_id))

    async def has_tokens(self) -> bool:
        return await self.read(any_token)

    async def user(self, name: str) -> tuple[User, str] | None:
        return await self.read(lambda c: find_user(c, name))

    # The CLI's management of tokens and users (Credentials), each in a commit of its own.

    async def tokens(self) -> list[Token]:
        return await self.read(list_tokens)

    async def create_token(self, new: NewToken) -> None:
        await self._write(lambda c: op_create_token(c, new))

    async def revoke_token(self, id_or_name: str) -> Token | None:
        return await self._write(lambda c: op_revoke_token(c, id_or_name))

    async def users(self) -> list[User]:
        return await self.read(list_users)

    async def add_user(self, user: User, password_hash: str, *, replace: bool = False) -> bool:
        return await self._write(lambda c: op_add_user(c, user, password_hash, replace=replace))

    async def delete_user(self, name: str) -> bool:
        return await self._write(lambda c: op_delete_user(c, name))

