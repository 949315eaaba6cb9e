"""The spooler runtime: one object that owns the store, the transports, intake, the scheduler, the
event bus and the webhook dispatcher, and the operations on them (MAPI: the spooler session and
its status object).

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
from importlib.metadata import entry_points
from pathlib import Path
from typing import IO, Any

from msgspool import spooldir
from msgspool.compose import complete_headers, header_recipients, header_sender, strip_bcc
from msgspool.config import Settings
from msgspool.domain import status as status_row
from msgspool.domain.address import mailbox_key
from msgspool.domain.aliases import ALIAS_COMMAND
from msgspool.domain.dsn import MessageDSN, RecipientDSN, Ret, recipient_dsn
from msgspool.domain.events import Event, EventType
from msgspool.domain.health import ProbePolicy
from msgspool.domain.message import DEFAULT_CLASS, NORMAL, OUTBOX, SENT, Message
from msgspool.domain.recipient import RecipientType, Status
from msgspool.domain.retry import RetryPolicy
from msgspool.domain.routing import Router, TransportRoute
from msgspool.domain.suppression import OPERATOR, Suppression, suppression_key
from msgspool.domain.timefmt import iso
from msgspool.domain.webhooks import WEBHOOK_TRANSPORT, from_webhook
from msgspool.errors import (
    ConfigError,
    NotFound,
    NothingToResend,
    SpoolError,
    StorageFull,
    UnableToAbort,
    UnknownTransport,
)
from msgspool.logs import fields
from msgspool.ports import MailboxTransport, Store, Transport
from msgspool.spooler import control
from msgspool.spooler.aliases import load_aliases
from msgspool.spooler.background import start_supervised, stop_task
from msgspool.spooler.delays import DelayTimer
from msgspool.spooler.destinations import DestinationLimits
from msgspool.spooler.events import EventBus, Subscription
from msgspool.spooler.fetch import FetchService
from msgspool.spooler.hooks import LoadedHook, Postprocessor, Preprocessor, has_inbound_hooks, load_hooks
from msgspool.spooler.intake import Intake, Submission, due_now, mark_active
from msgspool.spooler.lease import NodeLease
from msgspool.spooler.link import RemoteDelivery
from msgspool.spooler.local import LocalDelivery
from msgspool.spooler.metrics import Metric, Metrics, counter, gauge
from msgspool.spooler.notices import CANCEL, DUE, FLUSH, NODES, REPORTS, TRANSPORTS, Notices
from msgspool.spooler.receipts import Receipts
from msgspool.spooler.reporter import Reporter
from msgspool.spooler.scheduler import IDLE_RECHECK, Scheduler
from msgspool.spooler.webhooks import WebhookDispatcher
from msgspool.views import message_json

log = logging.getLogger("msgspool")
delivery_log = logging.getLogger("msgspool.delivery")
LOCK_NAME = "msgspool.lock"
SERVE_LOCK_NAME = "serve.lock"
LOCK_ROLES = {LOCK_NAME: "delivering from", SERVE_LOCK_NAME: "serving"}
SENT_RETENTION = 7 * 86400.0
EVENT_RETENTION = 86400.0
HOUSEKEEPING_INTERVAL = 300.0
STATUS_WATCH_INTERVAL = 1.0  # seconds between looks for status table changes to push (watch_status)
ALIASES_TRANSPORT = "aliases"  # the built-in pipe transport of the aliases' |command members
SUPPRESSION_REFRESH = 1.0  # seconds between looks at the suppression list for intake's RCPT-time copy


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


def load_transports(settings: Settings) -> dict[str, Transport]:
    """The configured transports, in order: the built-in `smtp` one first, `webhook` when there are
    webhooks, `maildir` when the `maildir` setting names a path, then [[transports]] (a table of a
    built-in's name replaces it)."""
    factories = {ep.name: ep for ep in entry_points(group="msgspool.transports")}
    builtin: list[dict[str, Any]] = [{"name": "smtp", "type": "smtp"}]
    if settings.webhooks:
        # The name marks the events of webhook deliveries (domain/webhooks.py): it must be ours.
        if any(t.get("name") == WEBHOOK_TRANSPORT for t in settings.transports):
            raise ConfigError(f"transport {WEBHOOK_TRANSPORT}: the name is taken by the built-in one for webhooks")
        builtin.append({"name": WEBHOOK_TRANSPORT, "type": "webhook"})
    if settings.maildir:
        builtin.append({"name": "maildir", "type": "maildir", "path": settings.maildir})
    if settings.aliases and _aliases_have_commands(settings.aliases):
        # |command members of the aliases (local(8)'s delivery to a command): Delivered-To and
        # Return-Path on top, final delivery, as the `aliases_user` account.
        builtin.append({"name": ALIASES_TRANSPORT, "type": "pipe", "addrtypes": [ALIAS_COMMAND],
                        "command_from_recipient": True, "user": settings.aliases_user, "nexthop": "aliases",
                        "flags": "DRX"})
    declared = [*builtin, *settings.transports]
    transports: dict[str, Transport] = {}
    for options in declared:
        options = dict(options)
        name, kind = options.pop("name", None), options.pop("type", None)
        if not name or not kind:
            raise ConfigError(f"transport {options!r}: needs a name and a type")
        if kind not in factories:
            raise ConfigError(f"transport {name}: unknown type {kind!r} (known: {', '.join(sorted(factories))})")
        transport = factories[kind].load()(name, settings, options)
        if "addrtypes" in options:
            transport.addrtypes = frozenset(a.upper() for a in options["addrtypes"])
        transports[name] = transport
    return transports


def _aliases_have_commands(path: str) -> bool:
    """Whether the aliases need their pipe transport. A broken file says no here: it is reported
    where the aliases are loaded for routing (Spooler.start, reconfigure), not in a `sendmail`."""
    try:
        return load_aliases(path).has_commands
    except ConfigError:
        return False


def load_store(settings: Settings) -> Store:
    """The message store named by `settings.store`, from the `msgspool.stores` entry points."""
    factories = {ep.name: ep for ep in entry_points(group="msgspool.stores")}
    if settings.store not in factories:
        raise ConfigError(f"unknown store {settings.store!r} (known: {', '.join(sorted(factories))})")
    store: Store = factories[settings.store].load()(settings)
    return store


def build_router(settings: Settings, transports: dict[str, Transport]) -> Router:
    routes = [TransportRoute(t.name, t.addrtypes, t.nexthop, t.domains, local=isinstance(t, MailboxTransport))
              for t in transports.values()]
    return Router(settings.local_domains, routes)


def use_receive_folders(transports: dict[str, Transport], store: Store) -> None:
    """Transports that file into local mailboxes (a maildir) file by the store's receive folders."""
    for transport in transports.values():
        if isinstance(transport, MailboxTransport):
            transport.use_receive_folders(store.receive_folder)


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
    def __init__(self, settings: Settings, transports: dict[str, Transport] | None = None) -> None:
        self.settings = settings
        self.transports = transports if transports is not None else load_transports(settings)
        self.router = build_router(settings, self.transports)
        spool_path = settings.spool_path
        self.intake = Intake(self.router, hopcount_limit=settings.hopcount_limit, mailboxes=settings.mailboxes,
                             message_size_limit=settings.message_size_limit, queue_minfree=settings.queue_minfree,
                             free_space=lambda: spooldir.free_bytes(spool_path))
        self.store = load_store(settings)
        use_receive_folders(self.transports, self.store)
        self.metrics = Metrics(self.transports)
        self.metrics.add_live(self._live_metrics)
        self.store.on_commit = self.metrics.commit_batch.observe
        # The other nodes of a shared spool (PostgreSQL), told of work and changes (notices.py).
        self.notices = Notices(self.store)
        self.bus = EventBus()
        targets = settings.webhook_targets
        # Without webhooks, events go straight to the bus: the delivery path pays nothing for them.
        self.publish: Callable[[Sequence[Event]], None] = self._publish_for_webhooks if targets else self.bus.publish
        self.webhooks = WebhookDispatcher(self.store, self.intake, targets, publish=self.publish,
                                          deliver=lambda: self.scheduler.wakeup(),
                                          queued=self._generated) if targets else None
        self.retry = RetryPolicy(settings.min_backoff, settings.max_backoff, settings.max_lifetime,
                                 max_attempts=settings.max_attempts)
        # Hooks are built in `start`, and only by a process that routes: `sendmail` and API clients
        # leave hooks (and the DKIM keys they read) to the daemon, as Postfix's sendmail does.
        self.preprocessor: Preprocessor | None = None
        self.postprocessor: Postprocessor | None = None
        self.intake.defer_local = has_inbound_hooks(settings)
        self.lease = NodeLease(self.store, settings.lease_time, on_lost=self._lease_lost,
                               on_rescued=self._rescued, on_nodes=lambda _live: self.scheduler.resize(),
                               on_drain=self._drain_asked)
        self.scheduler = Scheduler(
            self.store, self.transports, self.intake, self.publish, retry=self.retry, may_start=self.lease.holds,
            nodes=lambda: self.lease.live_nodes,
            idle_recheck=settings.poll_interval if self.store.shared else IDLE_RECHECK,
            probe=ProbePolicy(settings.probe_min, settings.probe_max),
            limits=DestinationLimits(settings.destination_concurrency, settings.destination_recipient_limit,
                                     settings.connection_idle_time, settings.connection_reuse_limit),
            active_limit=settings.active_limit, warn_after=settings.delay_warning_time,
            suppression_time=settings.suppression_time, metrics=self.metrics)
        self.reporter = Reporter(self.store, self.intake, hostname=settings.host_name,
                                 postmaster=settings.postmaster, publish=self.publish,
                                 deliver=self._report_committed, retry=self.retry)
        self.scheduler.on_reports = self.reporter.poke
        self.scheduler.on_destination = self.notices.destination
        self.receipts = Receipts(self.store, self.intake, hostname=settings.host_name, publish=self.publish,
                                 deliver=self._hand_on, routing=lambda: self.routing)
        # Delay notices are off by default (Postfix delay_warning_time = 0h): then no timer runs.
        self.delay_timer = DelayTimer(self.store, self.reporter.poke) if settings.delay_warning_time > 0 else None
        if self.delay_timer is not None:
            self.scheduler.on_warning_later = self.delay_timer.expect
        # Told when this node lost its lease, after delivery stopped; None: delivery starts again
        # here as a new node. The daemon's delivery process exits instead (and is respawned).
        self.on_lease_lost: Callable[[], None] | None = None
        # Told when an operator asked this node to drain (`msgspool node drain --owner`): the
        # daemon stops as on SIGTERM. None: delivery here stops in order, the rest goes on.
        self.on_drain: Callable[[], None] | None = None
        self._draining: asyncio.Task[None] | None = None
        self._relaunch: asyncio.Task[None] | None = None
        self.delivering = False
        self.routing = False
        self.remote: RemoteDelivery | None = None  # set in the daemon's intake process
        # In the daemon's intake process: a delivery process is supervised, so while none runs
        # (restarting) hints are dropped; the next one reads the spool when it starts.
        self.delivery_process = False
        self.started_at: float | None = None
        self.fetch: FetchService | None = None  # the fetch accounts, in the daemon's intake process
        # Rows of the status table the daemon adds: its listeners (SMTP, HTTP, sendmail intake).
        self.listeners: list[Callable[[], dict[str, Any]]] = []
        self._housekeeping: asyncio.Task[None] | None = None
        self._status_watch: asyncio.Task[None] | None = None
        self._status_poked = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None
        self._suppressions: asyncio.Task[None] | None = None
        self._suppression_signature: tuple[int, float | None] | None = None
        self._lock: IO[str] | None = None

    async def start(self, *, deliver: bool = True, route: bool | None = None, lock_timeout: float = 0.0,
                    create: bool = True) -> None:
        """Open the store and, with `deliver`, run delivery here. `route` (default: `deliver`) routes
        recipients at submission: right for a process that runs with the delivering daemon's own
        settings, wrong for `sendmail` or an API client, whose settings may differ. Without
        `create`, a spool that was never made raises NoSpool instead of being made (the CLI)."""
        if deliver:
            self._lock = await take_lock(self.settings.spool_path, LOCK_NAME, lock_timeout)
        self.routing = deliver if route is None else route
        if self.routing:
            # Only a process that routes expands aliases (sendmail leaves both to the daemon, and a
            # typo in the aliases file must not stop it taking mail): a bad file stops `serve`, exit 2.
            self.intake.aliases = load_aliases(self.settings.aliases)
            self._build_hooks()  # a bad hook (an unsafe key file) stops `serve` at start: exit 2
        await self.store.open(create=create)
        if self.webhooks is not None and self.routing:
            # Fix the event webhooks start from before intake accepts anything: in `serve` the
            # delivery process, which dispatches, starts a moment after intake's listeners.
            await self.store.webhook_cursor()
        self.started_at = time.time()
        if deliver:
            # The delivery lock is held: on a spool of this machine alone no other node lives, so
            # what they held is rescued now, not a lease time later (a restart after kill -9
            # delivers at once). On a shared spool the others' leases decide.
            await self.lease.start(sole=not self.store.shared)
            self.notices.publish(NODES)  # the others' share of each destination shrinks now
            self.notices.listen(self.scheduler, self.lease, self.reporter.poke)
            await self.scheduler.start()
            self.delivering = True
            self.reporter.poke()  # owed before a crash or restart
            if self.webhooks is not None:
                await self.webhooks.start()
            if self.delay_timer is not None:
                self.delay_timer.start()
            self._housekeeping = start_supervised("housekeeping", self._housekeeping_loop)
            if self.settings.watchdog_interval > 0:
                interval = self.settings.watchdog_interval
                self._watchdog = start_supervised("watchdog", lambda: self.scheduler.watchdog_loop(interval))

    def _lease_lost(self) -> None:
        """The heartbeat found this node's lease ran out: stop delivering now, without recording
        anything more (the store refuses it anyway), then start again as a new node, or tell the
        owner of this spooler (`on_lease_lost`)."""
        self._relaunch = asyncio.ensure_future(self._after_lease_lost())

    async def _after_lease_lost(self) -> None:
        await self.scheduler.abandon()
        if self.on_lease_lost is not None:
            self.on_lease_lost()
            return
        try:
            await self.lease.start(sole=self._lock is not None and not self.store.shared)
            self.notices.publish(NODES)
            await self.scheduler.start()
        except Exception:
            log.exception("delivery could not start again as a new node")
            self.delivering = False
            return
        log.warning("delivery started again as node %s", self.lease.owner)

    def _rescued(self, _count: int) -> None:
        """The heartbeat gave back dead nodes' work: due now, here and on every other node."""
        self.scheduler.wakeup()
        self.notices.publish(DUE)

    def _drain_asked(self) -> None:
        """An operator asked this node to drain (the flag in its node row)."""
        if self.on_drain is not None:
            self.on_drain()
        elif self._draining is None:
            self._draining = asyncio.ensure_future(self._stop_delivery(self.settings.shutdown_timeout))

    def reconfigure(self, settings: Settings, transports: dict[str, Transport] | None = None) -> None:
        """MAPI ValidateState: a reloaded configuration for this process's submissions — routes and
        address types, local domains, intake's limits, hooks (`transports`: already built from
        `settings`). Everything is built first: a ConfigError leaves the running configuration as
        it was."""
        transports = transports if transports is not None else load_transports(settings)
        router = build_router(settings, transports)
        use_receive_folders(transports, self.store)
        hooks = load_hooks(settings) if self.routing else None
        aliases = load_aliases(settings.aliases) if self.routing else self.intake.aliases
        self.settings, self.transports, self.router = settings, transports, router
        self.metrics.know_transports(transports)
        self.intake.aliases = aliases
        self.intake.router = router
        self.intake.hopcount_limit = settings.hopcount_limit
        self.intake.message_size_limit = settings.message_size_limit
        self.intake.mailboxes = frozenset(mailbox_key(m) for m in settings.mailboxes)
        self.intake.defer_local = has_inbound_hooks(settings)
        self.scheduler.suppression_time = settings.suppression_time
        if hooks is not None:
            for pipeline in (self.preprocessor, self.postprocessor):
                if pipeline is not None:
                    pipeline.close()
            self._install_hooks(*hooks)

    def _build_hooks(self) -> None:
        self._install_hooks(*load_hooks(self.settings))

    def _install_hooks(self, outbound: list[LoadedHook], inbound: list[LoadedHook]) -> None:
        count = self.metrics.hooks_ran
        self.preprocessor = Preprocessor(outbound, count) if outbound else None
        self.postprocessor = Postprocessor(inbound, count) if inbound else None
        self.metrics.know_hooks([*((Preprocessor.STAGE, h.hook.name) for h in outbound),
                                 *((Postprocessor.STAGE, h.hook.name) for h in inbound)])
        self.scheduler.preprocessor = self.preprocessor
        # intake leaves local mail to the scheduler exactly when inbound hooks exist (defer_local)
        mailbox_transports = {t.name: t for t in self.transports.values() if isinstance(t, MailboxTransport)}
        self.scheduler.local = (LocalDelivery(self.intake, self.postprocessor, answer_once=self.store.answer_once,
                                              mailbox_transports=mailbox_transports)
                                if self.postprocessor else None)

    async def stop(self, drain: float = 0.0) -> None:
        """Stop; with `drain` seconds, delivery finishes the transactions in flight first."""
        await control.sent()  # a client's wakeups reach the daemon before its loop ends
        if self.webhooks is not None:
            await self.webhooks.stop()
        await stop_task(self._housekeeping)
        await stop_task(self._status_watch)
        await stop_task(self._watchdog)
        await stop_task(self._suppressions)
        if self._draining is not None:
            await self._draining
        await self._stop_delivery(drain)
        for transport in self.transports.values():
            await transport.close()
        for pipeline in (self.preprocessor, self.postprocessor):
            if pipeline is not None:
                pipeline.close()
        await self.store.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    async def _stop_delivery(self, drain: float) -> None:
        """Stop delivering (`stop`; or a drain the operator asked for, after which this spooler
        only submits): the node hands back what it holds and retires."""
        if not self.delivering:
            return
        await self.notices.stop()
        await stop_task(self._relaunch)
        if self.delay_timer is not None:
            await self.delay_timer.stop()
        await self.scheduler.stop(drain)
        await self.reporter.stop()
        await self.lease.stop()  # after the reporter: its writes are fenced by the lease
        self.delivering = False
        self.notices.publish(NODES)  # the others' shares grow back now
        self.notices.publish(DUE)  # and what this node gave back is theirs to send

    # -- the suppression list ------------------------------------------------------------------

    def watch_suppressions(self) -> None:
        """Keep intake's copy of the suppression list fresh (read again within SUPPRESSION_REFRESH
        of a change by any process or node), so that SMTP refuses a suppressed recipient at RCPT."""
        if self._suppressions is None:
            self._suppressions = start_supervised("suppressions", self._suppressions_loop)

    async def _suppressions_loop(self) -> None:
        while True:
            try:
                await self.refresh_suppressions()
            except Exception:
                log.exception("could not read the suppression list")
            await asyncio.sleep(SUPPRESSION_REFRESH)

    async def refresh_suppressions(self, *, force: bool = False) -> None:
        signature = await self.store.suppressions_signature()
        if force or signature != self._suppression_signature:
            entries = await self.store.suppressions(time.time())
            self.intake.suppressed = {e.address: e for e in entries}
            self._suppression_signature = signature

    async def suppressions(self) -> list[Suppression]:
        return await self.store.suppressions(time.time())

    async def suppress(self, address: str, reason: str, until: float | None) -> Suppression:
        """An operator's entry (`msgspool suppression add`, POST /api/suppressions)."""
        entry = Suppression(suppression_key(address), reason or "added by the operator", time.time(), until, OPERATOR)
        await self.store.suppress(entry)
        await self.refresh_suppressions(force=True)
        return entry

    async def unsuppress(self, address: str) -> bool:
        removed = await self.store.unsuppress(address)
        await self.refresh_suppressions(force=True)
        return removed

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
        if self.delivering:
            self.scheduler.wakeup()
            if self.webhooks is not None:  # a client's wakeup may be about events too
                self.webhooks.poke()
        elif self.remote is not None:
            self.remote.wakeup()
        elif not self.delivery_process:
            control.notify(self.settings.spool_path, {"op": "wakeup"})
            self.notices.publish(DUE)  # `sendmail` on a shared spool: whichever node is nearest

    def _generated(self, messages: Sequence[Message]) -> None:
        """Messages the spooler made and committed itself (reports, read receipts, webhook
        deliveries): accepted like a submission, for the metrics."""
        for message in messages:
            self.metrics.submitted(message.recipients)

    def _report_committed(self, message: Message) -> None:
        self._generated([message])
        self.poke()

    def _hand_on(self, message: Message) -> None:
        """A message committed here by a part of the spooler (an MDN): deliver what is pending; an
        address that failed at once (no such mailbox) is reported like any failure."""
        self._generated([message])
        if any(r.status.pending for r in message.recipients):
            self.poke()
        if any(r.report_owed for r in message.recipients):
            self.reports_owed()

    def reports_owed(self) -> None:
        """A commit outside delivery (a submission settling local or unroutable recipients at once)
        left reports owed: the one process that writes reports should look now. Only one does,
        so that no report is written twice."""
        if self.delivering:
            self.reporter.poke()
        elif self.remote is not None:
            self.remote.reports()
        elif not self.delivery_process:
            control.notify(self.settings.spool_path, {"op": "reports"})
            self.notices.publish(REPORTS)

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
        submitted = await self.store.submitted_content(message_id)
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
        log.info("%s: resent as %s to %d recipients", message_id, new_id, len(failed))
        return {"id": new_id, "resend_of": message_id, "recipients": [r["address"] for r in failed]}

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
        for message_id in ids:
            if await self.store.get(message_id) is None:
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
        rows += [self._transport_row(transport) for transport in self.transports.values()]
        return {"spooler": _spooler_complete(rows[0]), "transports": [status_row.complete(r) for r in rows[1:]],
                "listeners": [status_row.complete(row()) for row in self.listeners],
                "fetch": [_fetch_complete(r) for r in (self.fetch.rows() if self.fetch else [])]}

    def _transport_row(self, transport: Transport) -> dict[str, Any]:
        dests = [d for d in self.scheduler.destinations.values() if d.transport is transport]
        failing = [d for d in dests if d.health.down or d.failure is not None]
        reason = None
        if failing:  # MAPI's status row in FAILURE: say why (the transport's error first)
            worst = next((d for d in failing if d.failure is not None), failing[0])
            last = worst.failure or worst.health.last_reply
            reason = f"{worst.nexthop}: {last.line()}" if last else f"{worst.nexthop}: down"
        since = self.scheduler.offline.get(transport.name)
        if since is not None:
            reason = f"transport {transport.name} is offline (since {iso(since)})"
        sending = sum(len(d.inflight) for d in dests)
        counts = {key: sum(getattr(d, key) for d in dests) for key in ("delivered", "deferred", "failed")}
        counts.update(connections=sum(d.workers for d in dests), queued=sum(len(d.jobs) for d in dests),
                      transactions=sending, destinations_down=sum(d.health.down for d in dests))
        return {
            "name": transport.name, "kind": "transport", "addrtypes": sorted(transport.addrtypes),
            "status": "offline" if since is not None else "failure" if failing else "online", "reason": reason,
            "offline": since is not None, "offline_since": iso(since),
            "inbound": status_row.direction(False),
            "outbound": status_row.direction(since is None and self.delivering, sending > 0), "counts": counts,
            "destinations": [{
                "name": d.nexthop, "status": "down" if d.health.down else "up",
                "health": "down" if d.health.down else "up", "connections": d.workers,
                "queued": len(d.jobs), "delivered": d.delivered, "deferred": d.deferred, "failed": d.failed,
                "transactions": len(d.inflight),
                "last_error": d.failure.line() if d.failure else
                d.health.last_reply.line() if d.health.down and d.health.last_reply else None,
            } for d in dests]}

    async def status_table(self, *, backlog: bool = True) -> dict[str, Any]:
        """`status()`, completed by the delivery process's part when delivery runs in another one,
        the delivery nodes of the spool (`nodes`: the live ones, and the dead ones not yet pruned)
        and, with `backlog`, each destination's pending recipients in the store by status (also
        of destinations delivery has not touched since it started)."""
        table = self.status()
        table["nodes"] = await self.store.nodes(time.time())
        if self.remote is None and self.delivery_process:
            table["spooler"].update(status="failure", outbound=status_row.direction(True),
                                    status_string="the delivery process is starting")
            _spooler_complete(table["spooler"])
        if self.remote is not None:
            try:
                remote = await self.remote.status()
            except (ConnectionError, TimeoutError):
                table["spooler"].update(status="failure", delivery="not answering", outbound=status_row.direction(True),
                                        status_string="the delivery process is not answering")
                _spooler_complete(table["spooler"])
                remote = None
            if remote is not None:
                # The delivery process's event_subscribers is its forwarder to this process: 1 while
                # someone listens here, else 0.
                table["spooler"].update(
                    status=remote["spooler"]["status"], active=remote["spooler"]["active"],
                    stuck_returned=remote["spooler"].get("stuck_returned", 0), alarm=remote["spooler"].get("alarm"),
                    outbound=remote["spooler"].get("outbound", status_row.direction(True)), status_string="",
                    delivery={k: remote["spooler"].get(k) for k in ("pid", "commits", "committed_writes",
                                                                    "event_subscribers")})
                _spooler_complete(table["spooler"])
                table["transports"] = remote["transports"]
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

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            now = time.time()
            try:
                await self.store.purge(now - SENT_RETENTION, now - EVENT_RETENTION)
                await self.store.prune_suppressions(now)
            except Exception:
                log.exception("housekeeping failed")

    def _publish_for_webhooks(self, events: Sequence[Event]) -> None:
        """Publish, and tell the dispatcher (here, or in the delivery process) when some of the
        events may be for webhooks; those about webhook deliveries never are."""
        self.bus.publish(events)
        if not events or all(from_webhook(e) for e in events):
            return
        if self.delivering and self.webhooks is not None:
            self.webhooks.poke()
        elif self.remote is not None:
            self.remote.webhooks()
        elif not self.routing:  # `sendmail` or an API client: the daemon's dispatcher, if one runs
            control.notify(self.settings.spool_path, {"op": "wakeup"})


def _spooler_complete(row: dict[str, Any]) -> dict[str, Any]:
    """The spooler's row: its status string says whether it delivers and how much it holds."""
    if not row.get("status_string") and row["status"] == "online":
        row["status_string"] = f"delivering: {row['active']} recipients in hand"
    elif not row.get("status_string") and row["status"] == "offline":
        row["status_string"] = "not delivering in this process"
    return status_row.complete(row)


def _fetch_complete(row: dict[str, Any]) -> dict[str, Any]:
    """A fetch account's row (spooler/fetch.py): an inbound transport, enabled unless stopped."""
    row["inbound"] = status_row.direction(bool(row.get("inbound", True)))
    row["outbound"] = status_row.direction(False)
    row.setdefault("counts", {"fetched": row.get("fetched", 0)})
    return status_row.complete(row)


def add_backlog(transports: list[dict[str, Any]], counts: Sequence[tuple[str, str, str, int]]) -> None:
    """Each destination's pending recipients in the store (`backlog`: by status, and `total`),
    adding rows for destinations with a backlog that delivery holds nothing of (health unknown:
    reported as up, never seen down); each transport gets its `backlog` total in `counts`."""
    by_destination: dict[tuple[str, str], dict[str, int]] = {}
    for transport, nexthop, status, n in counts:
        by_destination.setdefault((transport, nexthop), {})[status] = n
    for row in transports:
        known = {d["name"]: d for d in row["destinations"]}
        for transport, nexthop in sorted(by_destination):
            if transport == row["name"] and nexthop and nexthop not in known:
                known[nexthop] = {"name": nexthop, "status": "up", "health": "unknown", "connections": 0,
                                  "queued": 0, "delivered": 0, "deferred": 0, "failed": 0, "transactions": 0,
                                  "last_error": None}
                row["destinations"].append(known[nexthop])
        for name, dest in known.items():
            backlog = dict(by_destination.get((row["name"], name), {}))
            backlog["total"] = sum(backlog.values())
            dest["backlog"] = backlog
        row.setdefault("counts", {})["backlog"] = sum(d["backlog"]["total"] for d in row["destinations"])
