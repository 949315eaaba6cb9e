"""Prometheus metrics (issue 13.5): what each process of the daemon counts, and the one text that
`GET /metrics` serves from both.

Every series, with its labels (recipients are counted as Postfix's log lines count them: a message
to three recipients is three):

    msgspool_accepted_total{transport}             recipients committed at submission, by the
                                                   transport they were routed to (local: filed),
                                                   and those of the messages the spooler makes
                                                   (reports, read receipts, webhook deliveries)
    msgspool_delivered_total{transport}            outcomes recorded: delivered (or relayed),
    msgspool_deferred_total{transport}             deferred (a temporary failure, or waiting for a
    msgspool_failed_total{transport}               down destination), failed (bounced, or rejected
    msgspool_expired_total{transport}              by an outbound hook), expired
    msgspool_delivery_latency_seconds{transport}   histogram: submission to delivery by a transport
    msgspool_intake_latency_seconds                histogram: a submission's checks and durable
                                                   commit (what an SMTP client waits for its 250)
    msgspool_queue_recipients{status}              outbox recipients by status (the store's counts)
    msgspool_queue_messages                        messages in the outbox
    msgspool_destination_queue_recipients{transport,destination,status}
                                                   pending recipients (queued, active, deferred,
                                                   held) by destination, from the store
    msgspool_destination_up{transport,destination} 1 up, 0 down: the destinations delivery knows
    msgspool_destinations_down{transport}          how many of them are down
    msgspool_smtp_connections_total                SMTP sessions accepted by the listeners
    msgspool_smtp_connections_open                 SMTP sessions open now
    msgspool_connections_out_total{transport,destination}  connections opened by delivery
    msgspool_connections_out_open{transport,destination}   delivery's open connections now
    msgspool_commit_batch_size                     histogram: writes sharing one commit (group
                                                   commit), both processes' stores
    msgspool_hook_outcomes_total{stage,hook,outcome}  outbound (preprocess) and inbound
                                                   (postprocess) hooks: unchanged, changed, split,
                                                   rejected, held, error
    msgspool_webhook_backlog                       webhook deliveries not yet done (pending
                                                   recipients of the webhook transport)
    msgspool_delivery_process_up                   1 while the delivery process answers (serve
                                                   with delivery_process = true)
    msgspool_queue_figures_age_seconds             how old the store's figures above are
                                                   (StoreFigures: a large queue is not counted at
                                                   every scrape)

Series whose labels are known at start (transports, hooks, statuses) are there at zero from the
first scrape; a destination's appear with the destination (MX destinations are not known before
the first message to one).

Two processes, one answer. The daemon's intake process serves `/metrics`; the delivery process
(daemon.py) keeps its own registry and answers `{"op": "metrics"}` on the link (link.py) with its
samples, which intake adds to its own, name by name and label set by label set (counters,
histograms and gauges alike: each process counts only what it does, so a sum is the daemon's
figure). Chosen over prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR), measured
here with prometheus-client 0.26: an in-memory counter increment takes 0.45 us and a histogram
observation 1.0 us, against 1.0 us and 2.6 us for the mmap-backed values of multiprocess mode, and
multiprocess mode is process-wide state fixed when prometheus_client is imported (one directory
for every spooler of a process, and of every test), needs a file per process and metric type
cleaned at start and after each respawn of the delivery process, and cannot serve live gauges from
a collector. The price: a scrape costs one round trip on the link, and the delivery process's
counters start again from zero when it is respawned, which Prometheus's rate() and increase()
take as the counter reset they are.

The hot path pays a counter increment per outcome: children for known labels are resolved once
(`_Outcomes`), live figures (connections, destinations) are plain attributes read at scrape time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

__all__ = ["Metric", "Metrics", "StoreFigures", "counter", "exposition", "from_wire", "gauge", "merge",
           "store_families"]

from msgspool.domain.hooks import HookRecord
from msgspool.domain.message import Recipient, Settlement
from msgspool.domain.recipient import Status
from msgspool.ports import Admin

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # the classic text format every Prometheus reads
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                   14400.0, 86400.0, math.inf)
INTAKE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, math.inf)
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, math.inf)
OUTCOMES = {Status.DELIVERED: "delivered", Status.DEFERRED: "deferred", Status.FAILED: "failed",
            Status.EXPIRED: "expired"}
PENDING = ("queued", "active", "deferred", "held")
HOOK_STAGES = ("preprocess", "postprocess")
HOOK_OUTCOMES = ("unchanged", "changed", "split", "rejected", "held", "error")
NO_TRANSPORT = "none"  # a recipient no transport took (it failed at submission)
WEBHOOK_TRANSPORT = "webhook"
# (name, type, help, [(sample name, labels, value)]): a family as it crosses the link, in JSON's terms
WireFamily = list[Any]
Live = Callable[[], Iterable[Metric]]


class Metrics:
    """One process's figures: a registry of its own (never prometheus_client's global one, so that
    several spoolers in one process, as in the tests, each count their own)."""

    def __init__(self, transports: Iterable[str] = (), hooks: Iterable[tuple[str, str]] = ()) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.accepted = Counter("msgspool_accepted", "Recipients committed at submission, by transport routed to.",
                                ["transport"], registry=r)
        self.outcomes = {status: Counter(f"msgspool_{name}", f"Recipients' outcomes recorded as {name}, by transport.",
                                         ["transport"], registry=r) for status, name in OUTCOMES.items()}
        self.delivery_latency = Histogram("msgspool_delivery_latency_seconds",
                                          "Seconds from submission to delivery, by transport.", ["transport"],
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.intake_latency = Histogram("msgspool_intake_latency_seconds",
                                        "Seconds a submission takes to be checked and durably committed.",
                                        buckets=INTAKE_BUCKETS, registry=r)
        self.commit_batch = Histogram("msgspool_commit_batch_size", "Writes that shared one commit (group commit).",
                                      buckets=BATCH_BUCKETS, registry=r)
        self.hook_outcomes = Counter("msgspool_hook_outcomes", "What the hooks did, by stage, hook and outcome.",
                                     ["stage", "hook", "outcome"], registry=r)
        self._accepted: dict[str, Any] = {}
        self._outcomes: dict[Status, dict[str, Any]] = {status: {} for status in OUTCOMES}
        self._latency: dict[str, Any] = {}
        self._live: list[Live] = []
        self.know_transports(transports)
        self.know_hooks(hooks)

    def know_transports(self, names: Iterable[str]) -> None:
        """Pre-initialise every transport's series at zero (at start, and after a reload)."""
        for name in (*names, "local"):
            self._accepted.setdefault(name, self.accepted.labels(name))
            for status, counter in self.outcomes.items():
                self._outcomes[status].setdefault(name, counter.labels(name))
            self._latency.setdefault(name, self.delivery_latency.labels(name))

    def know_hooks(self, hooks: Iterable[tuple[str, str]]) -> None:
        """(stage, hook name) of the configured hooks: their outcomes at zero."""
        for stage, name in hooks:
            for outcome in HOOK_OUTCOMES:
                self.hook_outcomes.labels(stage, name, outcome)

    def add_live(self, collect: Live) -> None:
        """A function that makes families at scrape time from what a part of the process holds."""
        self._live.append(collect)

    # -- the hot path ------------------------------------------------------------------------

    def accept(self, transport: str | None) -> None:
        name = transport or NO_TRANSPORT
        child = self._accepted.get(name)
        if child is None:
            child = self._accepted[name] = self.accepted.labels(name)
        child.inc()

    def submitted(self, recipients: Iterable[Recipient]) -> None:
        """A submission's recipients, committed: each accepted, and those settled at once (filed
        into a local mailbox, or failed: no transport) counted with their outcome."""
        for r in recipients:
            self.accept(r.transport)
            if r.status in self._outcomes:
                self.outcome(r.status, r.transport)

    def settled(self, settlements: Sequence[Settlement]) -> None:
        """Outcomes the store recorded."""
        for s in settlements:
            if s.status in self._outcomes:  # not held (a hook's verdict) nor queued again
                self.outcome(s.status, s.transport)

    def outcome(self, status: Status, transport: str | None) -> None:
        by_transport = self._outcomes[status]
        name = transport or NO_TRANSPORT
        child = by_transport.get(name)
        if child is None:
            child = by_transport[name] = self.outcomes[status].labels(name)
        child.inc()

    def delivered_after(self, transport: str, seconds: float) -> None:
        child = self._latency.get(transport)
        if child is None:
            child = self._latency[transport] = self.delivery_latency.labels(transport)
        child.observe(seconds)

    def hooks_ran(self, stage: str, history: Iterable[HookRecord]) -> None:
        for record in history:
            self.hook_outcomes.labels(stage, record.hook, record.outcome).inc()

    # -- scraping ----------------------------------------------------------------------------

    def collect(self) -> list[Metric]:
        families = list(self.registry.collect())
        for live in self._live:
            families.extend(live())
        return families

    def snapshot(self) -> list[WireFamily]:
        """This process's families for the link (the delivery process's answer to `metrics`)."""
        return [[f.name, f.type, f.documentation, [[s.name, s.labels, s.value] for s in f.samples]]
                for f in self.collect()]


def from_wire(families: Iterable[WireFamily]) -> list[Metric]:
    out = []
    for name, typ, documentation, samples in families:
        family = Metric(name, documentation, typ)
        for sample_name, labels, value in samples:
            family.add_sample(sample_name, labels, float(value))
        out.append(family)
    return out


def merge(*sources: Iterable[Metric]) -> list[Metric]:
    """The families of several processes as one: samples of the same name and labels added up.
    `_created` samples (when a counter was made) are left out: they cannot be added, and a
    respawned delivery process would make them jump."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for source in sources:
        for family in source:
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            samples = values[family.name]
            for s in family.samples:
                if s.name.endswith("_created") and family.type in ("counter", "histogram", "summary"):
                    continue
                key = (s.name, tuple(sorted(s.labels.items())))
                samples[key] = samples.get(key, 0.0) + s.value
    for name, family in merged.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(merged.values())


def gauge(name: str, documentation: str, labelnames: Sequence[str] = (),
          samples: Iterable[tuple[Sequence[str], float]] = ()) -> Metric:
    family = Metric(name, documentation, "gauge")
    for labels, value in samples:
        family.add_sample(name, dict(zip(labelnames, labels, strict=True)), value)
    return family


def counter(name: str, documentation: str, labelnames: Sequence[str] = (),
            samples: Iterable[tuple[Sequence[str], float]] = ()) -> Metric:
    family = Metric(name, documentation, "counter")
    for labels, value in samples:
        family.add_sample(f"{name}_total", dict(zip(labelnames, labels, strict=True)), value)
    return family


def store_families(counts: dict[str, int], by_destination: Sequence[tuple[str, str, str, int]]) -> list[Metric]:
    """The queue as the store counts it: by status, by destination, and the webhooks' backlog."""
    statuses = [(status, n) for status, n in counts.items() if status != "messages"]
    webhooks = sum(n for transport, _dest, status, n in by_destination if transport == WEBHOOK_TRANSPORT)
    return [
        gauge("msgspool_queue_recipients", "Outbox recipients by status.", ["status"],
              (((status,), n) for status, n in statuses)),
        gauge("msgspool_queue_messages", "Messages in the outbox.", (), [((), counts.get("messages", 0))]),
        gauge("msgspool_destination_queue_recipients", "Pending recipients by destination and status.",
              ["transport", "destination", "status"],
              (((transport, dest, status), n) for transport, dest, status, n in by_destination)),
        gauge("msgspool_webhook_backlog", "Webhook deliveries not done yet.", (), [((), webhooks)]),
    ]


class StoreFigures:
    """The queue figures of the store for the metrics, read again only when they are older than
    nine times what the last read took: scrapes keep the store's reader busy at most a tenth of the
    time, however large the queue, and concurrent scrapes share one read. Since the stores keep
    the counts with their writes (issue 13.7) a read takes well under a millisecond on SQLite with
    1,000,000 queued (the scans it replaced: `counts` 2.7 s and `destination_counts` 3.8 s), so the
    figures are as good as fresh at every scrape; the guard stays for a store that computes them.
    `msgspool_queue_figures_age_seconds` says how old the figures served are."""

    SHARE = 0.1

    def __init__(self, store: Admin, clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.clock = store, clock
        self._families: list[Metric] = []
        self._read_at = 0.0
        self._fresh_until = -math.inf
        self._reading: asyncio.Task[None] | None = None

    async def families(self) -> list[Metric]:
        if self.clock() >= self._fresh_until:
            if self._reading is None or self._reading.done():
                self._reading = asyncio.ensure_future(self._read())
            await asyncio.shield(self._reading)
        age = gauge("msgspool_queue_figures_age_seconds", "Seconds since the queue figures were read from the store.",
                    (), [((), max(0.0, self.clock() - self._read_at))])
        return [*self._families, age]

    async def _read(self) -> None:
        began = self.clock()
        families = store_families(await self.store.counts(), await self.store.destination_counts())
        self._read_at = self.clock()
        took = self._read_at - began
        self._families, self._fresh_until = families, self._read_at + took * (1 / self.SHARE - 1)


def exposition(families: Iterable[Metric]) -> bytes:
    """The text format of `families`, as prometheus_client writes it."""
    fixed = list(families)

    class _Fixed:
        def collect(self) -> Iterable[Metric]:
            return fixed

    return generate_latest(_Fixed())
