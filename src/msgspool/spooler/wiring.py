"""The composition root: the one place where the runtime's object graph is built.

`build_parts(settings)` makes every part of a spooler with its collaborators passed to its
constructor, in the order they depend on each other; nothing is patched afterwards. Read top to
bottom, it is the picture of the runtime:

    transports ─ router ─ intake                 (routing and the one way in)
    metrics ─ store                              (the store tells the metrics each commit's size)
    signals                                      (parts that wake each other in a circle)
    notices ─ bus ─ hints                        (where hints of work go: here, the delivery
                                                  process, the daemon, the other nodes)
    webhooks, lease, reporter, delay timer,
    scheduler, receipts                          (the parts; each takes the signals it rings and
                                                  the ones it answers)
    notice listener                              (the other nodes' notices, to the scheduler)
    delivery                                     (starts and stops the delivering parts as a node)
    suppressions                                 (intake's RCPT-time copy of the list)

The circles — the scheduler owes reports to the reporter whose reports are mail for the
scheduler; the lease tells the scheduler how many nodes share a destination and the scheduler
asks the lease whether it may start; the lease tells delivery its node was lost — go through
`Signals`, made first (signals.py). `Spooler` (runtime.py) is the façade over these parts: the
operations of the Python API, the CLI and HTTP.

Also here: the factories of the configured transports and store (entry points).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from msgspool import spooldir
from msgspool.config import Settings
from msgspool.domain.aliases import ALIAS_COMMAND, ALIAS_FILE, AliasTable
from msgspool.domain.health import ProbePolicy
from msgspool.domain.retry import RetryPolicy
from msgspool.domain.routing import Router, TransportRoute
from msgspool.domain.webhooks import WEBHOOK_TRANSPORT
from msgspool.errors import ConfigError
from msgspool.ports import MailboxTransport, Store, Transport
from msgspool.spooler.aliases import configured_aliases
from msgspool.spooler.delays import DelayTimer
from msgspool.spooler.delivery import Delivery
from msgspool.spooler.destinations import DestinationLimits
from msgspool.spooler.events import EventBus
from msgspool.spooler.hints import Hints
from msgspool.spooler.hooks import has_inbound_hooks
from msgspool.spooler.intake import Intake
from msgspool.spooler.lease import NodeLease
from msgspool.spooler.metrics import Metrics
from msgspool.spooler.notices import NoticeListener, Notices
from msgspool.spooler.receipts import Receipts
from msgspool.spooler.reporter import Reporter
from msgspool.spooler.scheduler import IDLE_RECHECK, Scheduler
from msgspool.spooler.signals import Signal
from msgspool.spooler.suppressions import SuppressionList
from msgspool.spooler.webhooks import WebhookDispatcher

ALIASES_TRANSPORT = "aliases"  # the built-in pipe transport of the aliases' |command members
ALIASES_FILE_TRANSPORT = "aliases-file"  # the built-in file transport of their /file and /maildir/ members


@dataclasses.dataclass(frozen=True)
class Signals:
    """Wakeups between parts that would otherwise hold each other (signals.py): who rings each,
    and who answers."""

    due: Signal[[]] = dataclasses.field(default_factory=lambda: Signal("due"))
    """Work is due in this process's delivery: the scheduler reads the store. Rung by hints
    (a submission, a release), the webhook dispatcher (deliveries queued)."""
    reports: Signal[[]] = dataclasses.field(default_factory=lambda: Signal("reports"))
    """Reports may be owed: the reporter looks. Rung by the scheduler's settlements, the delay
    timer, hints (a submission that settled recipients at once)."""
    events: Signal[[]] = dataclasses.field(default_factory=lambda: Signal("events"))
    """Events were committed that webhooks may want: the dispatcher looks. Rung by hints."""
    nodes: Signal[[int]] = dataclasses.field(default_factory=lambda: Signal("nodes"))
    """The number of live nodes changed: destinations take their new share. Rung by the lease,
    answered by the scheduler."""
    lease_lost: Signal[[]] = dataclasses.field(default_factory=lambda: Signal("lease_lost"))
    rescued: Signal[[int]] = dataclasses.field(default_factory=lambda: Signal("rescued"))
    drain: Signal[[]] = dataclasses.field(default_factory=lambda: Signal("drain"))
    """The lease's news of this node (lost; dead nodes' work rescued; asked to drain): answered
    by delivery."""
    listeners: Signal[[bool]] = dataclasses.field(default_factory=lambda: Signal("listeners"))
    """The event bus gained its first listener or lost its last: hints tell the delivery process."""


@dataclasses.dataclass(frozen=True)
class Parts:
    """A spooler's object graph, as `build_parts` made it."""

    settings: Settings
    transports: dict[str, Transport]
    router: Router
    intake: Intake
    metrics: Metrics
    store: Store
    signals: Signals
    notices: Notices
    bus: EventBus
    hints: Hints
    retry: RetryPolicy
    webhooks: WebhookDispatcher | None
    lease: NodeLease
    reporter: Reporter
    delay_timer: DelayTimer | None
    scheduler: Scheduler
    receipts: Receipts
    delivery: Delivery
    suppressions: SuppressionList


def build_parts(settings: Settings, transports: dict[str, Transport] | None = None, *,
                on_lease_lost: Callable[[], None] | None = None, on_drain: Callable[[], None] | None = None,
                on_settled: Callable[[int], None] | None = None) -> Parts:
    """Every part of a spooler for `settings` (`transports`: already built, e.g. by a test).
    `on_lease_lost` and `on_drain`: what the owner of the spooler does when its node lost its
    lease or was asked to drain (default: start again as a new node; stop delivering here).
    `on_settled`: told the delivery window after each settlement (the daemon's link)."""
    transports = transports if transports is not None else load_transports(settings)
    router = build_router(settings, transports)
    spool_path = settings.spool_path
    intake = Intake(router, hopcount_limit=settings.hopcount_limit, mailboxes=settings.mailboxes,
                    message_size_limit=settings.message_size_limit, queue_minfree=settings.queue_minfree,
                    free_space=lambda: spooldir.free_bytes(spool_path), defer_local=has_inbound_hooks(settings))
    metrics = Metrics(transports)
    store = load_store(settings, on_commit=metrics.commit_batch.observe)
    use_receive_folders(transports, store)
    signals = Signals()
    # The other nodes of a shared spool (PostgreSQL), told of work and changes (notices.py).
    notices = Notices(store)
    bus = EventBus(on_listeners=signals.listeners)
    targets = settings.webhook_targets
    hints = Hints(spool_path, notices, bus, metrics, signals, webhooks=bool(targets))
    retry = RetryPolicy(settings.min_backoff, settings.max_backoff, settings.max_lifetime,
                        max_attempts=settings.max_attempts)
    webhooks = WebhookDispatcher(store, intake, targets, publish=hints.publish, deliver=signals.due,
                                 queued=hints.generated, poked_by=signals.events) if targets else None
    lease = NodeLease(store, settings.lease_time, on_lost=signals.lease_lost, on_rescued=signals.rescued,
                      on_nodes=signals.nodes, on_drain=signals.drain)
    reporter = Reporter(store, intake, hostname=settings.host_name, postmaster=settings.postmaster,
                        publish=hints.publish, deliver=hints.report_committed, retry=retry, poked_by=signals.reports)
    # Delay notices are off by default (Postfix delay_warning_time = 0h): then no timer runs.
    delay_timer = DelayTimer(store, signals.reports) if settings.delay_warning_time > 0 else None
    scheduler = Scheduler(
        store, transports, intake, hints.publish, retry=retry, may_start=lease.holds,
        nodes=lambda: lease.live_nodes, idle_recheck=settings.poll_interval if store.shared else IDLE_RECHECK,
        probe=ProbePolicy(settings.probe_min, settings.probe_max),
        limits=DestinationLimits(settings.destination_concurrency, settings.destination_recipient_limit,
                                 settings.connection_idle_time, settings.connection_reuse_limit),
        active_limit=settings.active_limit, warn_after=settings.delay_warning_time,
        suppression_time=settings.suppression_time, metrics=metrics, on_destination=notices.destination,
        on_settled=on_settled, on_reports=signals.reports,
        on_warning_later=delay_timer.expect if delay_timer is not None else None,
        woken_by=signals.due, resized_by=signals.nodes)
    receipts = Receipts(store, intake, hostname=settings.host_name, publish=hints.publish, deliver=hints.hand_on,
                        routing=lambda: hints.routing)
    listener = NoticeListener(notices, scheduler, lease, reports=signals.reports)
    delivery = Delivery(settings, store, hints, notices, listener, lease, scheduler, reporter, webhooks=webhooks,
                        delay_timer=delay_timer, lease_lost=signals.lease_lost, rescued=signals.rescued,
                        drain=signals.drain, on_lease_lost=on_lease_lost, on_drain=on_drain)
    return Parts(settings=settings, transports=transports, router=router, intake=intake, metrics=metrics,
                 store=store, signals=signals, notices=notices, bus=bus, hints=hints, retry=retry,
                 webhooks=webhooks, lease=lease, reporter=reporter, delay_timer=delay_timer, scheduler=scheduler,
                 receipts=receipts, delivery=delivery, suppressions=SuppressionList(store, intake))


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
    aliases = _aliases_for_transports(settings)
    if aliases.has_commands:
        # |command members of the aliases (local(8)'s delivery to a command): Delivered-To and
        # Return-Path on top, final delivery, as the `aliases_user` account.
        builtin.append({"name": ALIASES_TRANSPORT, "type": "pipe", "addrtypes": [ALIAS_COMMAND],
                        "command_from_recipient": True, "user": settings.aliases_user, "nexthop": "aliases",
                        "flags": "DRX"})
    if aliases.has_files:
        # /file and /maildir/ members (local(8)'s delivery to a file), as the `aliases_user` account.
        builtin.append({"name": ALIASES_FILE_TRANSPORT, "type": "file", "addrtypes": [ALIAS_FILE],
                        "user": settings.aliases_user})
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


def _aliases_for_transports(settings: Settings) -> AliasTable:
    """The aliases, to know whether they need their pipe and file transports. A broken file has
    none here: it is reported where the aliases are loaded for routing (Spooler.start,
    reconfigure), not in a `sendmail`."""
    try:
        return configured_aliases(settings)
    except ConfigError:
        return AliasTable()


def load_store(settings: Settings, *, on_commit: Callable[[int], None] | None = None) -> Store:
    """The message store named by `settings.store`, from the `msgspool.stores` entry points
    (`on_commit`: told the number of writes of each commit, maybe from the store's thread)."""
    factories = {ep.name: ep for ep in entry_points(group="msgspool.stores")}
    if settings.store not in factories:
        raise ConfigError(f"unknown store {settings.store!r} (known: {', '.join(sorted(factories))})")
    factory = factories[settings.store].load()
    store: Store = factory(settings, on_commit=on_commit) if on_commit is not None else factory(settings)
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
