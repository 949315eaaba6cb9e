"""The spooler runtime: the operations on a spool — submit, flush, hold, delete, resend, offline,
read flags, the status table — over the parts the composition root builds (wiring.py), which
this object holds (MAPI: the spooler session and its status object).

`Spooler.start(deliver=True)` runs delivery in this process (the daemon, or an application that
embeds msgspool). With ``deliver=False`` the spooler only writes into the spool and wakes the
daemon that delivers, which is how `msgspool sendmail` and client applications submit.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import IO, Any

from msgspool import spooldir
from msgspool.compose import complete_headers, header_recipients, header_sender, strip_bcc
from msgspool.config import Settings
from msgspool.domain import status as status_row
from msgspool.domain.address import mailbox_key
from msgspool.domain.aliases import ALIAS_ONLY
from msgspool.domain.bounces import looks_like_report
from msgspool.domain.dsn import MessageDSN, RecipientDSN, Ret, recipient_dsn
from msgspool.domain.events import Event, EventType
from msgspool.domain.message import DEFAULT_CLASS, NORMAL, OUTBOX, SENT, Message
from msgspool.domain.recipient import RecipientType, Status
from msgspool.domain.suppression import Suppression
from msgspool.domain.webhooks import WEBHOOK_TRANSPORT as WEBHOOK_TRANSPORT  # re-exported for older imports
from msgspool.errors import (
    NotFound,
    NothingToResend,
    SpoolError,
    StorageFull,
    UnableToAbort,
    UnknownTransport,
)
from msgspool.logs import fields
from msgspool.ports import MailboxTransport, Transport
from msgspool.spooler import control
from msgspool.spooler.aliases import configured_aliases
from msgspool.spooler.background import start_supervised, stop_task
from msgspool.spooler.events import Subscription
from msgspool.spooler.fetch import FetchService
from msgspool.spooler.hooks import LoadedHook, Postprocessor, Preprocessor, has_inbound_hooks, load_hooks
from msgspool.spooler.intake import Submission, due_now, mark_active
from msgspool.spooler.link import RemoteDelivery
from msgspool.spooler.local import LocalDelivery
from msgspool.spooler.metrics import Metric, counter, gauge
from msgspool.spooler.notices import CANCEL, DUE, FLUSH, TRANSPORTS
from msgspool.spooler.status_table import add_backlog as add_backlog  # re-exported: the CLI imports it here
from msgspool.spooler.status_table import fetch_complete, merge_delivery, spooler_complete, transport_row
from msgspool.spooler.wiring import build_parts, build_router, load_transports, use_receive_folders
from msgspool.spooler.wiring import load_store as load_store  # re-exported: older imports name this module
from msgspool.views import message_json

log = logging.getLogger("msgspool")
delivery_log = logging.getLogger("msgspool.delivery")
LOCK_NAME = "msgspool.lock"
SERVE_LOCK_NAME = "serve.lock"
LOCK_ROLES = {LOCK_NAME: "delivering from", SERVE_LOCK_NAME: "serving"}
STATUS_WATCH_INTERVAL = 1.0  # seconds between looks for status table changes to push (watch_status)


def _addresses(in_flight: dict[str, list[tuple[int, str]]]) -> dict[str, list[str]]:
    return {message_id: [address for _, address in recipients] for message_id, recipients in in_flight.items()}


def _log_filed(message: Message) -> None:
    """The delivery line of each copy filed at submission, naming the copy's own id (the one id
    story, issue 13.2: the line starts with the queue id SMTP answered, `copy=` is the mailbox's)."""
    if not delivery_log.isEnabledFor(logging.INFO):
        return
    delay = round(max(0.0, time.time() - message.submitted_at), 3)
    for copy in message.filed:
        log_id = message.id if copy.copy_of is None else copy.copy_of
        folder = copy.folder or "its receive folder"
        delivery_log.info("%s: to=<%s>, relay=local, delay=%.2f, mailbox=%s, copy=%s, dsn=2.0.0, status=sent"
                          " (filed in %s)", log_id, copy.copy_for, delay, copy.mailbox, copy.id, folder,
                          extra=fields(queue_id=log_id, recipient=copy.copy_for, relay="local", delay=delay,
                                       mailbox=copy.mailbox, copy_id=copy.id, dsn="2.0.0", status="sent",
                                       reply=f"250 2.0.0 filed in {folder} of {copy.mailbox}"))



async def take_lock(data_dir: Path, name: str, timeout: float = 0.0) -> IO[str]:
    """An exclusive lock on `name` in the data directory, waiting up to `timeout` seconds. One
    delivering process per spool (`msgspool.lock`): two would each take the other's active
    recipients for orphans of a crash. One `serve` per spool (`serve.lock`). The data directory
    is created (or tightened) private first: 0700, its spool files 0600."""
    spooldir.tighten(data_dir)  # a process that takes a lock starts on the spool: make it private first
    try:
        handle = spooldir.open_private(data_dir / name)
    except OSError as err:
        if err.errno in spooldir.NO_SPACE_ERRNOS:
            raise StorageFull(str(err)) from err
        raise
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as err:
            if time.monotonic() >= deadline:
                handle.close()
                raise SpoolError(f"another msgspool process is {LOCK_ROLES.get(name, 'using')} {data_dir}") from err
            await asyncio.sleep(0.05)
    try:
        os.ftruncate(handle.fileno(), 0)
        os.pwrite(handle.fileno(), f"{os.getpid()}\n".encode(), 0)
    except OSError as err:  # a full disk: the lock holds all the same, the pid is only for people to read
        log.warning("%s: pid not written: %s", data_dir / name, err)
    return handle


class Spooler:
    """The operations on a spool (the Python API; the CLI and HTTP call these), over the parts the
    composition root builds (wiring.py: `build_parts`). `on_lease_lost`, `on_drain` and
    `on_settled` are the owner's: the daemon's delivery process tells intake over its link."""

    def __init__(self, settings: Settings, transports: dict[str, Transport] | None = None, *,
                 on_lease_lost: Callable[[], None] | None = None, on_drain: Callable[[], None] | None = None,
                 on_settled: Callable[[int], None] | None = None) -> None:
        parts = build_parts(settings, transports, on_lease_lost=on_lease_lost, on_drain=on_drain,
                            on_settled=on_settled)
        self.parts = parts
        self.settings, self.transports, self.router = settings, parts.transports, parts.router
        self.intake, self.store, self.metrics, self.notices = parts.intake, parts.store, parts.metrics, parts.notices
        self.bus, self.hints, self.retry = parts.bus, parts.hints, parts.retry
        self.webhooks, self.lease, self.reporter = parts.webhooks, parts.lease, parts.reporter
        self.delay_timer, self.scheduler, self.receipts = parts.delay_timer, parts.scheduler, parts.receipts
        self.delivery, self.suppression_list = parts.delivery, parts.suppressions
        self.publish = parts.hints.publish
        self.metrics.add_live(self._live_metrics)
        # Hooks are built in `start`, and only by a process that routes: `sendmail` and API clients
        # leave hooks (and the DKIM keys they read) to the daemon, as Postfix's sendmail does.
        self.preprocessor: Preprocessor | None = None
        self.postprocessor: Postprocessor | None = None
        self.started_at: float | None = None
        self.fetch: FetchService | None = None  # the fetch accounts, in the daemon's intake process
        # Rows of the status table the daemon adds: its listeners (SMTP, HTTP, sendmail intake).
        self.listeners: list[Callable[[], dict[str, Any]]] = []
        self._status_watch: asyncio.Task[None] | None = None
        self._status_poked = asyncio.Event()
        self._lock: IO[str] | None = None

    @property
    def delivering(self) -> bool:
        """This process delivers now."""
        return self.hints.delivering

    @property
    def routing(self) -> bool:
        """This process routes recipients at submission (`start`)."""
        return self.hints.routing

    @property
    def remote(self) -> RemoteDelivery | None:
        """In the daemon's intake process: the delivery process that runs now (hints.attach)."""
        return self.hints.remote

    @property
    def delivery_process(self) -> bool:
        """This is the daemon's intake process, whose delivery runs in a child (hints.supervise)."""
        return self.hints.delivery_process

    async def start(self, *, deliver: bool = True, route: bool | None = None, lock_timeout: float = 0.0,
                    create: bool = True) -> None:
        """Open the store and, with `deliver`, run delivery here. `route` (default: `deliver`) routes
        recipients at submission: right for a process that runs with the delivering daemon's own
        settings, wrong for `sendmail` or an API client, whose settings may differ. Without
        `create`, a spool that was never made raises NoSpool instead of being made (the CLI)."""
        if deliver:
            self._lock = await take_lock(self.settings.spool_path, LOCK_NAME, lock_timeout)
        self.hints.route(deliver if route is None else route)
        if self.routing:
            # Only a process that routes expands aliases (sendmail leaves both to the daemon, and a
            # typo in the aliases file must not stop it taking mail): a bad file stops `serve`, exit 2.
            self.intake.use_aliases(configured_aliases(self.settings))
            self._install_hooks(*load_hooks(self.settings))  # a bad hook (an unsafe key file) stops `serve`: exit 2
        await self.store.open(create=create)
        if self.webhooks is not None and self.routing:
            # Fix the event webhooks start from before intake accepts anything: in `serve` the
            # delivery process, which dispatches, starts a moment after intake's listeners.
            await self.store.webhook_cursor()
        self.started_at = time.time()
        if deliver:
            # The delivery lock is held: on a spool of this machine alone no other node lives.
            await self.delivery.start(sole=not self.store.shared)

    def reconfigure(self, settings: Settings, transports: dict[str, Transport] | None = None) -> None:
        """MAPI ValidateState: a reloaded configuration for this process's submissions — routes and
        address types, local domains, intake's limits, hooks (`transports`: already built from
        `settings`). Everything is built first: a ConfigError leaves the running configuration as
        it was."""
        transports = transports if transports is not None else load_transports(settings)
        router = build_router(settings, transports)
        use_receive_folders(transports, self.store)
        hooks = load_hooks(settings) if self.routing else None
        aliases = configured_aliases(settings) if self.routing else self.intake.aliases
        self.settings, self.transports, self.router = settings, transports, router
        self.metrics.know_transports(transports)
        self.intake.use_aliases(aliases)
        self.intake.reconfigure(router, hopcount_limit=settings.hopcount_limit,
                                message_size_limit=settings.message_size_limit, mailboxes=settings.mailboxes,
                                defer_local=has_inbound_hooks(settings))
        self.scheduler.reconfigure(suppression_time=settings.suppression_time)
        if hooks is not None:
            for pipeline in (self.preprocessor, self.postprocessor):
                if pipeline is not None:
                    pipeline.close()
            self._install_hooks(*hooks)

    def _install_hooks(self, outbound: list[LoadedHook], inbound: list[LoadedHook]) -> None:
        count = self.metrics.hooks_ran
        self.preprocessor = Preprocessor(outbound, count) if outbound else None
        self.postprocessor = Postprocessor(inbound, count) if inbound else None
        self.metrics.know_hooks([*((Preprocessor.STAGE, h.hook.name) for h in outbound),
                                 *((Postprocessor.STAGE, h.hook.name) for h in inbound)])
        # intake leaves local mail to the scheduler exactly when inbound hooks exist (defer_local)
        mailbox_transports = {t.name: t for t in self.transports.values() if isinstance(t, MailboxTransport)}
        local = (LocalDelivery(self.intake, self.postprocessor, answer_once=self.store.answer_once,
                               mailbox_transports=mailbox_transports) if self.postprocessor else None)
        self.scheduler.use_hooks(self.preprocessor, local)

    async def stop(self, drain: float = 0.0) -> None:
        """Stop; with `drain` seconds, delivery finishes the transactions in flight first."""
        await control.sent()  # a client's wakeups reach the daemon before its loop ends
        await stop_task(self._status_watch)
        await self.suppression_list.stop()
        await self.delivery.stop(drain)
        for transport in self.transports.values():
            await transport.close()
        for pipeline in (self.preprocessor, self.postprocessor):
            if pipeline is not None:
                pipeline.close()
        await self.store.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- the suppression list (spooler/suppressions.py) ------------------------------------------

    def _maybe_report(self, message: Message) -> None:
        """A message from the null sender for local addresses may be a delivery status report that
        came back later for one of their messages: its hard bounces suppress (spooler/bounces.py)."""
        if message.sender or not self.routing or self.settings.suppression_time <= 0 \
                or not looks_like_report(message.content):
            return
        local = (r.address for r in message.recipients if self.router.is_local(r.address, r.addrtype))
        owners = list(dict.fromkeys(local))
        if owners:
            self.suppression_list.report_received(message.content, owners, self.transports,
                                                  self.settings.suppression_time)

    def watch_suppressions(self) -> None:
        """Keep intake's copy of the suppression list fresh (read again within a second of a
        change by any process or node), so that SMTP refuses a suppressed recipient at RCPT."""
        self.suppression_list.watch()

    async def refresh_suppressions(self, *, force: bool = False) -> None:
        await self.suppression_list.refresh(force=force)

    async def suppressions(self) -> list[Suppression]:
        return await self.suppression_list.entries()

    async def suppress(self, address: str, reason: str, until: float | None) -> Suppression:
        """An operator's entry (`msgspool suppression add`, POST /api/suppressions)."""
        return await self.suppression_list.add(address, reason, until)

    async def unsuppress(self, address: str) -> bool:
        return await self.suppression_list.remove(address)

    async def __aenter__(self) -> Spooler:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


    # -- submission -------------------------------------------------------------------------

    async def submit(self, sub: Submission) -> str:
        """Commit a message durably and return its queue id (raises SubmitError); see `commit`."""
        return (await self.commit(sub)).id

    async def commit(self, sub: Submission) -> Message:
        """Commit a message durably and return it as committed (raises SubmitError): its
        recipients' states say which failed at once (the suppression list, an alias loop).

        Recipients due now are committed as `active` and handed straight to delivery — the
        scheduler here, or the delivery process over the link — so the fresh message is never read
        back from the store; should delivery die first, the rescue of its node's work (its lease
        runs out, or the next start under the delivery lock ends it) makes them due again."""
        started = time.perf_counter()
        message, copies = self.intake.build(sub, route=self.routing)
        message.filed = (*copies, *(c for _part, part_copies in message.parts for c in part_copies))
        due = due_now(message)
        remote = self.remote
        handed = due > 0 and self._reserve(due)
        owner = None
        if handed:
            mark_active(message)
            owner = self.store.owner if self.delivering else remote.owner if remote is not None else None
        try:
            events = await self.store.submit(message, copies, owner=owner)
        except BaseException:
            if handed and self.delivering:
                self.scheduler.unreserve(due)
            raise
        self.metrics.intake_latency.observe(time.perf_counter() - started)
        _log_filed(message)
        self.metrics.submitted(message.recipients)
        for part, _copies in message.parts:
            self.metrics.submitted(part.recipients)
        self.publish(events)
        if any(r.report_owed for r in message.recipients):
            self.reports_owed()
        self._maybe_report(message)
        active = sum(1 for r in message.recipients if r.status is Status.ACTIVE)
        if handed and active < due and self.delivering:  # failed at the commit (suppressed), or not handed
            self.scheduler.unreserve(due - active)
        if handed and not active:
            # The store refused the hand-over (that node's lease ran out): it waits, queued, for a live
            # node — or every recipient failed at the commit (the suppression list).
            if any(r.status.pending for r in message.recipients):
                self.poke()
        elif handed and self.delivering:
            self.scheduler.dispatch(message, fresh=True)
        elif handed and remote is not None and remote is self.remote:
            remote.dispatch(message, active)
        elif handed:
            # The delivery process it was handed to died during the commit: take it back, unless
            # the next one has claimed it already (it rescues the dead node's rows when it starts).
            await self.store.unclaim([(message.id, r.index) for r in message.recipients if r.status is Status.ACTIVE],
                                     time.time(), owner=owner)
            self.poke()
        elif any(r.status.pending for r in message.recipients):
            self.poke()
        if any(r.status.pending for part, _copies in message.parts for r in part.recipients):
            self.poke()  # parts split off by expansion (an owner-NAME sender) are committed queued
        return message

    def _reserve(self, count: int) -> bool:
        if self.delivering:
            return self.scheduler.reserve(count)
        return self.remote is not None and self.remote.room(count)

    async def send(self, message: EmailMessage | bytes, *, sender: str | None = None,
                   recipients: Sequence[str] | None = None, mailbox: str = "", priority: int = NORMAL,
                   deliver_after: float | None = None, expires_at: float | None = None,
                   max_attempts: int | None = None, delete_after_submit: bool = False,
                   message_class: str = DEFAULT_CLASS, notify: RecipientDSN | None = None,
                   dsn: MessageDSN | None = None) -> str:
        """Submit an `email.message.EmailMessage` (or RFC 5322 bytes). Without `recipients` they come
        from To/Cc/Bcc (and Bcc is removed); without `sender`, from the From: address. `notify` is
        every recipient's RFC 3461 request (e.g. ``RecipientDSN(frozenset({Notify.SUCCESS}))``),
        `dsn` the message's (RET, ENVID). `deliver_after` holds the message until then (POSIX time),
        `expires_at` gives up on it then, `max_attempts` caps each recipient's attempts (None: the
        `max_attempts` setting; 0: no cap)."""
        content = message.as_bytes(policy=SMTP_POLICY) if isinstance(message, EmailMessage) else message
        if recipients is None:
            recipients = header_recipients(content)
            content = strip_bcc(content)
        if sender is None:
            sender = header_sender(content)
        content = complete_headers(content, sender, None, self.settings.host_name)
        return await self.submit(Submission(
            sender=sender, recipients=list(recipients), content=content, mailbox=mailbox, priority=priority,
            deliver_after=deliver_after, expires_at=expires_at, max_attempts=max_attempts,
            delete_after_submit=delete_after_submit,
            message_class=message_class, dsn=dsn, recipient_dsn=[notify] * len(recipients) if notify else None))

    async def message(self, message_id: str) -> dict[str, Any]:
        """A message with the status of every recipient (the JSON of `queue show`)."""
        info = await self.store.get(message_id)
        if info is None:
            raise NotFound(message_id)
        return message_json(info)

    async def folder(self, mailbox: str, folder: str = "inbox", limit: int = 1000) -> list[dict[str, Any]]:
        """The messages of one folder of a local mailbox, oldest first (MAPI GetContentsTable)."""
        return [message_json(info) for info in await self.store.list_messages((folder,), mailbox_key(mailbox), limit)]

    async def content(self, message_id: str) -> bytes:
        """A stored message's RFC 5322 content, as filed (local copies start with Return-Path:)."""
        data = await self.store.content(message_id)
        if data is None:
            raise NotFound(message_id)
        return data

    async def set_receive_folder(self, mailbox: str, message_class: str, folder: str) -> None:
        """File inbound messages of `message_class` (and its subclasses) into `folder` of `mailbox`
        (MAPI IMsgStore::SetReceiveFolder); "IPM.Note" goes to "inbox" unless told otherwise."""
        await self.store.set_receive_folder(mailbox_key(mailbox), message_class, folder)

    def events(self, *, types: Sequence[EventType] | None = None,
               mailbox: str | None = None) -> Subscription:
        """Events as they happen: ``async for event in spooler.events(types=[EventType.NEW_MAIL])``."""
        return self.bus.subscribe(types=types, mailbox=mailbox)

    async def sync_events(self) -> None:
        """Return once every event committed from now on reaches this bus: at once in one process;
        with a delivery process, after a round trip on the link, which it handles in order, so the
        `events on` sent when this bus gained its first listener has been seen. A stream that
        resumes from the store reads it after this, so no event of the other process falls between."""
        if self.remote is not None and self.bus.listened:
            try:
                await self.remote.sync()
            except (ConnectionError, TimeoutError):
                log.warning("delivery process did not answer; its events may come late")

    def on(self, callback: Callable[[Event], object], *, types: Sequence[EventType] | None = None,
           mailbox: str | None = None) -> Callable[[], None]:
        """Call `callback(event)` in the event loop for each matching event; returns an unsubscribe."""
        return self.bus.on(callback, types=types, mailbox=mailbox)

    def poke(self) -> None:
        """Tell whoever delivers that there is work: ourselves, or the daemon of this spool."""
        self.hints.poke()

    def reports_owed(self) -> None:
        """Reports are owed: the one process that writes reports should look now (hints.py)."""
        self.hints.reports_owed()

    async def _cancel(self, ids: Sequence[str]) -> None:
        """Drop the messages' queued jobs from memory, here or in the delivery process, which gives
        their recipients back to the store; after the store step that changed the messages."""
        if self.delivering:
            await self.scheduler.cancel(ids)
        elif self.remote is not None:
            self.remote.cancel(ids)

    def probe_down_destinations(self, transport: str | None = None, nexthop: str | None = None) -> None:
        """Probe every destination that is down now (flush; or those of one transport and/or
        nexthop), here or in the delivery process."""
        if self.delivering:
            self.scheduler.probe_down(transport, nexthop)
        elif self.remote is not None:
            self.remote.probe(transport, nexthop)

    # -- operations (MAPI FlushQueues, AbortSubmit; Postfix postqueue/postsuper) --------------

    async def flush(self, ids: Sequence[str] | None = None, *, transport: str | None = None,
                    destination: str | None = None) -> int:
        """Retry now (MAPI FlushQueues; Postfix `postqueue -f`, `-i ID`, `-s SITE`): the deferred
        recipients of `ids`, or all of them, or those routed to `transport` and/or the destination
        `destination` (a nexthop as `status` lists it); the matching destinations that are down
        are probed at once. Returns how many recipients became due."""
        if ids:
            await self._require(ids)
        if transport is not None:
            self._require_transport(transport)
        route = () if transport is None and destination is None else (transport or "", destination or "")
        count = await self.store.flush(ids or None, time.time(), transport=transport, nexthop=destination)
        self.probe_down_destinations(transport, destination)
        self.poke()
        self.notices.publish(FLUSH, route)
        return count

    async def resend(self, message_id: str) -> dict[str, Any]:
        """MAPI MSGFLAG_RESEND (a resend of an undelivered message): a new message with the same
        content and sender as submitted, to only the recipients that failed or expired (with
        their type, address type and DSN requests), linked to the original: its `resend_of` names
        the original, and the original's `resends` (and each one's history) name it. It goes
        through the outbound hooks and routing as any new message, due now, with a lifetime of
        its own. Raises NotFound, or NothingToResend when no recipient failed."""
        info = await self.store.get(message_id)
        if info is None:
            raise NotFound(message_id)
        failed = [r for r in info.recipients if r["status"] in (Status.FAILED, Status.EXPIRED)]
        # A command or file of the aliases file: only that file may name one (intake refuses it from
        # anyone else), and it may say otherwise by now. Left out: resend to the alias instead.
        skipped = [r for r in failed if str(r["addrtype"]).upper() in ALIAS_ONLY]
        failed = [r for r in failed if r not in skipped]
        submitted = await self.store.submitted_content(message_id)
        if skipped and not failed:
            raise NothingToResend(f"message {message_id}: what failed is {_aliased(skipped)}, which only the aliases"
                                  " file may name; send to the alias again instead")
        if not failed or submitted is None:
            raise NothingToResend(f"message {message_id}: no recipient failed or expired; nothing to resend")
        sender, content = submitted
        dsn = MessageDSN(Ret(info.ret) if info.ret else None, info.envid) if info.ret or info.envid else None
        new_id = await self.submit(Submission(
            sender=sender, recipients=[r["address"] for r in failed], content=content,
            addrtypes=[r["addrtype"] for r in failed], types=[RecipientType(r["type"]) for r in failed],
            message_class=info.message_class, priority=info.priority, max_attempts=info.max_attempts,
            origin="resend", resend_of=message_id, dsn=dsn,
            recipient_dsn=[recipient_dsn(r["notify"], r["orcpt"]) for r in failed]))
        log.info("%s: resent as %s to %d recipients%s", message_id, new_id, len(failed),
                 f"; not to {_aliased(skipped)} (the aliases file's)" if skipped else "")
        return {"id": new_id, "resend_of": message_id, "recipients": [r["address"] for r in failed],
                "skipped": [r["address"] for r in skipped]}

    async def set_offline(self, transport: str, offline: bool = True) -> dict[str, Any]:
        """Put a transport offline (MAPI STATUS_OFFLINE; Postfix `defer_transports`) or online
        again, for every node of the spool and across restarts. Offline, it takes no work: its
        due recipients wait as `deferred` ("transport NAME is offline"), no attempt counted;
        delay notices and the lifetime run on as for any deferral. Online, what waited for it is
        due at once. A `transport_status` event tells of the change."""
        # `online` also clears the flag of a transport the configuration no longer has.
        if offline or transport not in await self.store.offline_transports():
            self._require_transport(transport)
        now = time.time()
        changed = await self.store.set_transport_offline(transport, offline, now)
        released = 0 if offline else await self.store.release_transport(transport, now)
        if self.delivering:
            await self.scheduler.read_offline()
        elif self.remote is not None:
            self.remote.transports()
        self.notices.publish(TRANSPORTS, [transport])
        status = "offline" if offline else "online"
        if changed:
            log.info("transport %s: %s (by the operator)%s", transport, status,
                     f"; released {released} waiting recipients" if released else "")
            event = Event(EventType.TRANSPORT_STATUS, None, now, detail={
                "transport": transport, "status": status, "released": released, "reason": "operator"})
            self.publish(await self.store.record_events([event]))
        return {"transport": transport, "status": status, "changed": changed, "released": released}

    async def hold(self, ids: Sequence[str]) -> list[str]:
        """Hold messages. Recipients a transport has in a transaction go on (their outcome is
        recorded; a deferral stays held): then UnableToAbort says which, after holding the rest."""
        await self._require(ids)
        in_flight = await self._abort(ids)
        try:
            found = await self.store.hold(ids, time.time())
        finally:
            await self._cancel(ids)
            self.notices.publish(CANCEL, ids)
        if in_flight:
            held = {}
            for message_id in in_flight:
                info = await self.store.get(message_id)
                held[message_id] = [r["address"] for r in (info.recipients if info else []) if r["status"] == "held"]
            raise UnableToAbort("hold", [i for i in found if i not in in_flight], _addresses(in_flight), held)
        return found

    async def release(self, ids: Sequence[str]) -> list[str]:
        await self._require(ids)
        found = await self.store.release(ids, time.time())
        self.poke()
        self.notices.publish(DUE)
        return found

    async def requeue(self, ids: Sequence[str]) -> list[str]:
        """Run the messages through the outbound hooks again, from their content as submitted
        (after a configuration change; Postfix `postsuper -r`). Held and deferred recipients are
        due now, and so are those that waited in memory for a connection."""
        await self._require(ids)
        # The store first: recipients given back by the cancel must find the message requeued,
        # or they could be claimed and sent as the hooks left it before.
        found = await self.store.requeue(ids, time.time())
        await self._cancel(found)
        self.poke()
        self.notices.publish(CANCEL, found)
        self.notices.publish(DUE)
        return found

    async def delete(self, ids: Sequence[str], *, mdn: bool | None = None) -> list[str]:
        """Delete messages. One filed into a mailbox that is deleted unread and asked for a read
        receipt is answered with a `deleted` MDN (MAPI's nonread report); `mdn` as in `mark_read`.

        MAPI AbortSubmit: a message a transport has in a transaction cannot be taken back. Its
        other recipients are cancelled, the ones in flight go on, and UnableToAbort says which
        (after deleting every other message asked for)."""
        await self._require(ids)
        in_flight = await self._abort(ids)
        try:
            whole = [i for i in ids if i not in in_flight]
            answered = await self.receipts.delete(whole, mdn)
            rest = [i for i in whole if i not in answered]
            deleted = set(answered) | set(await self.store.delete(rest) if rest else [])
            cancelled = await self.store.cancel_recipients(
                {m: [index for index, _ in v] for m, v in in_flight.items()}, time.time()) if in_flight else {}
        finally:
            await self._cancel(ids)
            self.notices.publish(CANCEL, ids)
        found = [i for i in ids if i in deleted]
        if in_flight:
            raise UnableToAbort("abort", found, _addresses(in_flight), cancelled)
        return found

    async def _abort(self, ids: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
        """Stop transactions of these messages from starting (until `_cancel`), here or in the
        delivery process; per message, the recipients (index, address) in a transaction now."""
        if self.delivering:
            return self.scheduler.abort(ids)
        if self.remote is not None:
            try:
                return await self.remote.abort(ids)
            except (ConnectionError, TimeoutError):  # it died: nothing of it is in flight any more
                return {}
        return {}

    # -- mailbox messages (MAPI IMessage::SetReadFlag) ---------------------------------------

    async def mark_read(self, ids: Sequence[str], read: bool = True, *, mdn: bool | None = None) -> list[str]:
        """Mark messages read (or unread) and return the queue ids of the read receipts (RFC 8098
        MDNs) this sent. A message filed into a mailbox that asked for one is answered once, when
        first marked read: with `mdn` None only when RFC 8098 §2.1 needs no consent of the user,
        with True when the user consents, never with False (recorded: none is sent later).
        Either id will do (issue 13.2): a submission's queue id stands for the copies filed for
        its local recipients; see `read_targets`."""
        targets = await self.read_targets(ids)
        return await self.receipts.mark_read([t["id"] for copies in targets.values() for t in copies], read, mdn)

    async def read_targets(self, ids: Sequence[str]) -> dict[str, list[dict[str, str]]]:
        """Per id, the mailbox messages marking it read acts on: a message filed in a mailbox is
        itself; a submission (the id SMTP answered "queued as", in the outbox or Sent Items) stands
        for the copies filed for its local recipients — none when it has no local recipient.
        Each target is {id, mailbox}. NotFound for an unknown id."""
        targets: dict[str, list[dict[str, str]]] = {}
        for message_id in ids:
            info = await self.store.get(message_id)
            if info is None:
                raise NotFound(message_id)
            copies = [{"id": c["id"], "mailbox": c["mailbox"]} for c in info.copies or ()]
            # A mailbox's own sent message without local copies is still its own to flag.
            source = info.copy_of is None and info.folder in (OUTBOX, SENT) and bool(copies or not info.mailbox)
            targets[message_id] = copies if source else [{"id": message_id, "mailbox": info.mailbox}]
        return targets

    async def mark_unread(self, ids: Sequence[str]) -> None:
        """Clear the read flag; never sends anything."""
        await self.mark_read(ids, False)

    def _require_transport(self, name: str) -> None:
        if name not in self.transports:
            raise UnknownTransport(f"no transport {name} (known: {', '.join(self.transports)})")

    async def _require(self, ids: Sequence[str]) -> None:
        """NotFound for the first of `ids` not stored; one read however many (a bulk chunk of 500
        read each message whole before, five statements apiece, only to know it was there)."""
        if not ids:
            return
        found = await self.store.existing(ids)
        for message_id in ids:
            if message_id not in found:
                raise NotFound(message_id)

    def status(self) -> dict[str, Any]:
        """The status table of this process (MAPI's; domain/status.py): the spooler's row, one per
        transport with its destinations, one per listener the daemon registered (`listeners`)
        and one per fetch account. Every row has status, inbound, outbound, counts,
        status_string and status_code."""
        active = self.scheduler.active
        rows: list[dict[str, Any]] = [{
            "name": "spooler", "kind": "spooler", "status": "online" if self.delivering else "offline",
            "pid": os.getpid(), "started_at": self.started_at, "active": active,
            "commits": self.store.commit_stats[0], "committed_writes": self.store.commit_stats[1],
            "event_subscribers": self.bus.listeners, "stuck_returned": self.scheduler.stuck_returned,
            "alarm": (f"watchdog gave back {self.scheduler.stuck_returned} stuck recipients"
                      if self.scheduler.stuck_returned else None),
            "inbound": status_row.direction(True), "outbound": status_row.direction(self.delivering, active > 0)}]
        rows += [transport_row(t, self.scheduler.destinations.values(), self.scheduler.offline.get(t.name),
                               self.delivering) for t in self.transports.values()]
        return {"spooler": spooler_complete(rows[0]), "transports": [status_row.complete(r) for r in rows[1:]],
                "listeners": [status_row.complete(row()) for row in self.listeners],
                "fetch": [fetch_complete(r) for r in (self.fetch.rows() if self.fetch else [])]}

    async def status_table(self, *, backlog: bool = True) -> dict[str, Any]:
        """`status()`, completed by the delivery process's part when delivery runs in another one,
        the delivery nodes of the spool (`nodes`: the live ones, and the dead ones not yet pruned)
        and, with `backlog`, each destination's pending recipients in the store by status (also
        of destinations delivery has not touched since it started)."""
        table = self.status()
        table["nodes"] = await self.store.nodes(time.time())
        await merge_delivery(table, self.remote, self.delivery_process)
        if backlog:
            add_backlog(table["transports"], await self.store.destination_counts())
        return table

    def watch_status(self, interval: float = STATUS_WATCH_INTERVAL) -> None:
        """Push the status table's changes as `transport_status` events (MAPI's status table
        notifications): every `interval` the rows of the spooler, the listeners and the fetch
        accounts are compared with the last look, and each whose state or enabled directions
        changed is told (`{"row", "kind", "name", "status", "previous", "status_code",
        "status_string"}`). Transport rows tell their own changes: a destination down or up
        again (Scheduler), offline or online (`set_offline`). Sessions and transactions that
        merely start and end are not news."""
        if self._status_watch is None:
            self._status_watch = start_supervised("status-watch", lambda: self._status_loop(interval))

    def poke_status(self) -> None:
        """A row may have changed now (the delivery process died or is ready): look at once."""
        self._status_poked.set()

    async def _status_loop(self, interval: float) -> None:
        seen: dict[str, tuple[str, int]] | None = None
        while True:
            self._status_poked.clear()
            table = await self.status_table(backlog=False)
            rows = [table["spooler"], *table["listeners"], *table["fetch"]]
            if seen is not None:
                now = time.time()
                events = [Event(EventType.TRANSPORT_STATUS, None, now, detail={
                    "row": status_row.key(row), "kind": row["kind"], "name": row["name"], "status": row["status"],
                    "previous": seen.get(status_row.key(row), (None,))[0], "status_code": row["status_code"],
                    "status_string": row["status_string"]}) for row in status_row.changes(seen, rows)]
                if events:
                    self.publish(await self.store.record_events(events))
            seen = status_row.snapshot(rows)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_poked.wait(), interval)

    def _live_metrics(self) -> list[Metric]:
        """The destinations delivery knows here (none in the daemon's intake process)."""
        dests = list(self.scheduler.destinations.values())
        down = dict.fromkeys(self.transports, 0)
        for d in dests:
            down[d.transport.name] = down.get(d.transport.name, 0) + d.health.down
        where = ["transport", "destination"]
        return [
            gauge("msgspool_destination_up", "1 while a destination is up, 0 while it is down.", where,
                  (((d.transport.name, d.nexthop), 0 if d.health.down else 1) for d in dests)),
            gauge("msgspool_destinations_down", "Destinations down, by transport.", ["transport"],
                  (((name,), n) for name, n in down.items())),
            counter("msgspool_connections_out", "Connections opened to destinations (deliveries and probes).",
                    where, (((d.transport.name, d.nexthop), d.connections_opened) for d in dests)),
            gauge("msgspool_connections_out_open", "Connections open to destinations now.", where,
                  (((d.transport.name, d.nexthop), d.connections_open) for d in dests)),
        ]


def _aliased(recipients: Sequence[dict[str, Any]]) -> str:
    """The command and file members of an alias, each with the alias it came from (its ORCPT)."""
    def one(r: dict[str, Any]) -> str:
        orcpt = str(r.get("orcpt") or "")
        alias = orcpt.split(";", 1)[1] if ";" in orcpt else ""
        return f"{r['address']!r}" + (f" (of {alias})" if alias else "")

    return ", ".join(one(r) for r in recipients)

