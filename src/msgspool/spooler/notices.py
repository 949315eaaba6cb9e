"""What the delivery nodes of a shared spool tell each other (issue 11.6), over the store's Notifier
(ports.py; LISTEN/NOTIFY on PostgreSQL). On one machine the local link and control socket carry
the same hints, and a store without a Notifier makes every call here a no-op.

    kind     ids                 published after                    a node that hears it
    due      -                   release, requeue, a rescue, a      looks at the store now
                                 submission with no daemon here
    flush    - | transport       queue flush                        probes its down destinations (of that
             nexthop                                                transport and nexthop; '' any), looks now
    reports  -                   a submission with no daemon here   its reporter looks for reports owed
                                 that owes reports at once
    cancel   message ids         hold, requeue, delete              drops their queued jobs, gives them back
    nodes    -                   a node started or stopped          counts the live nodes again (its share
                                                                    of each destination's connections)
    down     transport nexthop   a destination found down           marks it down too, and only probes it
    up       transport nexthop   a destination found up again       marks it up, looks now (the backlog
                                                                    was released in the store)
    transports  name             a transport put offline or online  reads the offline transports again:
                                                                    defers their work, or releases it

A notice is a hint, never the only way work is found: each node also looks at the store at least
every `poll_interval`, renews its view of the nodes at every heartbeat, and a hold or delete
that another node's transaction already started cannot stop it (its outcome is recorded; a
deferral of a held message stays held). A notice sent while a node is not listening is lost;
the listener says `due` once after each (re)connection for that reason. Unknown kinds are ignored,
so a node of a newer version can add kinds without confusing older ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from msgspool.ports import Notifier
from msgspool.spooler.lease import NodeLease
from msgspool.spooler.scheduler import Scheduler

log = logging.getLogger("msgspool")
DUE, FLUSH, REPORTS, CANCEL, NODES, DOWN, UP = "due", "flush", "reports", "cancel", "nodes", "down", "up"
TRANSPORTS = "transports"


class Notices:
    """This process's end of the notices for everyone: `publish` (NoticeListener acts on them)."""

    def __init__(self, store: object) -> None:
        self.notifier = store if isinstance(store, Notifier) else None

    def publish(self, kind: str, ids: Sequence[str] = ()) -> None:
        """Tell the other nodes, with the store's next commit (nothing on a store of one machine)."""
        if self.notifier is not None:
            self.notifier.publish(kind, ids)

    def destination(self, transport: str, nexthop: str, down: bool) -> None:
        self.publish(DOWN if down else UP, (transport, nexthop))


class NoticeListener:
    """Where the scheduler runs (in `serve`, the delivery process; the intake process only
    publishes): acts on the other nodes' notices while delivery runs (`start` .. `stop`)."""

    def __init__(self, notices: Notices, scheduler: Scheduler, lease: NodeLease, reports: Callable[[], None]) -> None:
        self.notifier = notices.notifier
        self.scheduler, self.lease, self.reports = scheduler, lease, reports
        self._work: set[asyncio.Task[None]] = set()
        self._listening = False
        self._subscribed = False

    def start(self) -> None:
        """Act on the other nodes' notices from now on."""
        if self.notifier is None:
            return
        self._listening = True
        if not self._subscribed:
            self._subscribed = True
            self.notifier.subscribe(self.heard)

    def heard(self, kind: str, ids: list[str]) -> None:
        scheduler, lease = self.scheduler, self.lease
        if not self._listening or lease.owner is None or lease.lost:
            return  # not delivering (yet, or any more)
        if kind == DUE:
            scheduler.wakeup()
        elif kind == FLUSH:
            transport, nexthop = (ids[0] or None, ids[1] or None) if len(ids) == 2 else (None, None)
            scheduler.probe_down(transport, nexthop)
            scheduler.wakeup()
        elif kind == REPORTS:
            self.reports()
        elif kind == CANCEL:
            self._run(scheduler.cancel_elsewhere(ids))
        elif kind == NODES:
            self._run(lease.look())
        elif kind == TRANSPORTS:
            self._run(scheduler.read_offline())
        elif kind in (DOWN, UP) and len(ids) == 2:
            scheduler.heard_destination(ids[0], ids[1], kind == DOWN)

    def _run(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._work.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._work.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("acting on another node's notice failed", exc_info=task.exception())

    async def stop(self) -> None:
        """Stop acting on notices (delivery stops); what is under way is cancelled."""
        self._listening = False
        for task in list(self._work):
            task.cancel()
        await asyncio.gather(*self._work, return_exceptions=True)
