"""Fetch accounts at run time: POP3 and IMAP mailboxes polled into local mailboxes (MAPI: the
transport provider receives a message from its messaging system; fetchmail's job).

Each account of the `fetch` setting gets a `Fetcher`, run by `serve` in its intake process — the one
that takes mail in, beside the SMTP listener. A poll is:

    open a session (inbound transport: transports/pop3.py, imap.py), in a thread
    list the unique ids there; drop the ones recorded for the account (Store.fetched_uids)
    for each new one: retrieve it, submit it to the account's mailbox through intake
        (recorded with its id in the same commit), then tell the server (delete, flag, move)
    tell the server again about ids recorded earlier that are still there (a crash came between)
    forget the recorded ids the server no longer lists
    IMAP with IDLE: wait on the session until new mail or the interval; else close, sleep the interval

A submitted message is local mail like any other: intake files it (through the inbound hooks when
there are some — sieve and the rest — in the delivering process) with its `new_mail` event. A
message intake refuses (too big, a loop) stays on the server and is skipped while `serve` runs,
with one log line. An account that fails (server down, wrong password) logs, shows `failure` in
the status table, and tries again after a pause that grows with each failure up to BACKOFF_MAX;
the other accounts go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from msgspool.domain.fetch import (
    FETCH_ACCOUNT,
    FETCH_SOURCE,
    FETCH_UID,
    FetchAccount,
    envelope_sender,
    gone_uids,
    new_uids,
    received_header,
)
from msgspool.errors import AlreadyFetched, ConfigError, LoginRefused, MsgspoolError, SubmitError
from msgspool.ports import Fetched, InboundSession, InboundTransport
from msgspool.spooler import metrics
from msgspool.spooler.background import stop_task
from msgspool.spooler.intake import Submission

log = logging.getLogger("msgspool.fetch")
BACKOFF_MIN = 5.0  # seconds before the first retry of a failed account (or its interval, if shorter)
BACKOFF_MAX = 1800.0
ORIGIN = "fetch"
StatusReport = Callable[[str, str, "str | None"], Awaitable[None]]  # (account, status, reason)
STOP_WAIT = 5.0


def load_fetchers(accounts: Sequence[FetchAccount], settings: Any) -> dict[str, InboundTransport]:
    factories = {ep.name: ep for ep in entry_points(group="msgspool.fetchers")}
    found: dict[str, InboundTransport] = {}
    for account in accounts:
        if account.protocol not in factories:
            raise ConfigError(f"fetch {account.name}: no fetcher for {account.protocol}")
        found[account.name] = factories[account.protocol].load()(account, settings)
    return found


class Fetcher:
    """One account's loop, and its row in the status table."""

    def __init__(self, account: FetchAccount, transport: InboundTransport, store: Fetched,
                 submit: Callable[[Submission], Awaitable[str]], *, hostname: str, size_limit: int = 0,
                 on_status: StatusReport | None = None) -> None:
        self.account, self.transport, self.store, self.submit = account, transport, store, submit
        self.on_status = on_status  # told when the account goes online or into failure
        self.hostname, self.size_limit = hostname, size_limit
        self.status = "offline"  # online | failure | offline (not connected yet, or stopped)
        self.last_error: str | None = None
        self.last_poll_at: float | None = None
        self.fetched = 0
        self.failures = 0
        self.idling = False
        self.refused: set[str] = set()  # ids intake refused: left on the server, skipped while we run
        self._stop = threading.Event()
        self._wake = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self._session()
                delay = self.account.interval
            except Exception as err:  # never stops the other accounts, nor this one
                delay = await self._failed(err)
            if self._stop.is_set():
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def poke(self) -> None:
        """Poll now (`msgspool fetch` or a test), without waiting for the interval."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()  # ends an IDLE wait within a moment
        self._wake.set()

    async def _changed(self, status: str) -> None:
        if status == self.status:
            return
        self.status = status
        if self.on_status is not None:
            try:
                await self.on_status(self.account.name, status, self.last_error)
            except Exception:  # news only: the state itself is in the status table
                log.exception("fetch %s: could not record its transport_status event", self.account.name)

    async def _failed(self, err: Exception) -> float:
        self.failures += 1
        self.idling = False
        self.last_error = str(err) if isinstance(err, MsgspoolError) else f"{type(err).__name__}: {err}"
        first = min(BACKOFF_MIN, self.account.interval)
        delay: float = min(max(first * 2.0 ** (self.failures - 1), 0.1), BACKOFF_MAX)
        what = "login refused" if isinstance(err, LoginRefused) else "failed"
        log.warning("fetch %s: status=failure %s (%s); next try in %.0f s", self.account.name, what, err, delay)
        await self._changed("failure")
        return delay

    async def once(self) -> int:
        """One session, one poll, no waiting: how many messages were filed. Raises what failed."""
        try:
            return await self._session(wait=False)
        except Exception as err:
            await self._failed(err)
            raise

    async def _session(self, *, wait: bool = True) -> int:
        session = await asyncio.to_thread(self.transport.open)
        try:
            filed = await self._serve(session, wait)
        except asyncio.CancelledError:
            raise  # a call of this session may still run in its thread: the session is not ours to end
        except Exception:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(session.close)
            raise
        await asyncio.to_thread(session.close)
        return filed

    async def _serve(self, session: InboundSession, wait: bool) -> int:
        filed = 0
        while True:
            filed += await self.poll(session)
            if self.failures or self.status != "online":
                log.info("fetch %s: status=online %s", self.account.name, self.account.source)
            self.failures, self.last_error = 0, None
            await self._changed("online")
            if not wait or not session.can_wait or self._stop.is_set():
                return filed
            self.idling = True
            woken = await asyncio.to_thread(session.wait, self.account.interval, self._stop)
            self.idling = False
            if woken is None or self._stop.is_set():
                return filed

    async def poll(self, session: InboundSession) -> int:
        """One look at the maildrop; returns how many messages were filed."""
        present = await asyncio.to_thread(session.uids)
        seen = await self.store.fetched_uids(self.account.name)
        filed = 0
        for uid in new_uids(present, seen):
            if self._stop.is_set():  # the rest waits for the next start; the session still ends in order
                break
            if uid in self.refused or not await self._fits(session, uid):
                continue
            content = await asyncio.to_thread(session.retrieve, uid)
            if await self._file(uid, content):
                await asyncio.to_thread(session.done, uid)  # only now: the message is in the spool
                filed += 1
                self.fetched += 1
        if not session.leaves_copy:  # filed before, still there: the session ended before the server acted
            for uid in present:
                if uid in seen:
                    await asyncio.to_thread(session.done, uid)
        await self.store.forget_fetched(self.account.name, gone_uids(present, seen))
        self.last_poll_at = time.time()
        return filed

    async def _fits(self, session: InboundSession, uid: str) -> bool:
        if not self.size_limit:
            return True
        size = await asyncio.to_thread(session.size, uid)  # IMAP asks the server
        if size is not None and size > self.size_limit:
            self.refused.add(uid)
            log.warning("fetch %s: id %s not fetched: %d bytes, more than message_size_limit; left on the server",
                        self.account.name, uid, size)
            return False
        return True

    async def _file(self, uid: str, content: bytes) -> bool:
        a = self.account
        now = time.time()
        content = received_header(a, uid, self.hostname, now) + content
        sender = envelope_sender(content)
        sub = Submission(sender, [a.mailbox], content, origin=ORIGIN,
                         meta={FETCH_ACCOUNT: a.name, FETCH_UID: uid, FETCH_SOURCE: a.source})
        try:
            queue_id = await self.submit(sub)
        except AlreadyFetched:  # another node of the spool polls this account too, and filed it first
            log.info("fetch %s: id %s was filed by another node; its after-step is that node's", a.name, uid)
            return False
        except SubmitError as err:
            self.refused.add(uid)
            log.warning("fetch %s: id %s refused by intake: %s; left on the server", a.name, uid, err.reply.line())
            return False
        log.info("%s: fetch=%s uid=%s from=<%s> size=%d mailbox=%s", queue_id, a.name, uid, sender, len(content),
                 a.mailbox)
        return True

    def row(self) -> dict[str, Any]:
        a = self.account
        return {"name": a.name, "kind": "fetch", "protocol": a.protocol, "source": a.source, "mailbox": a.mailbox,
                "status": self.status, "inbound": True, "outbound": False, "idle": self.idling,
                "fetched": self.fetched, "last_poll_at": self.last_poll_at, "reason": self.last_error,
                "after": a.after, "interval": a.interval}


async def _status_changed(spooler: Any, _name: str, _status: str, _reason: str | None) -> None:
    """An account went online or into failure: the status watch (Spooler.watch_status) looks now,
    and tells it as a `transport_status` event of the account's row."""
    spooler.poke_status()


def build_service(spooler: Any, settings: Any) -> FetchService:
    """The fetchers of `settings.fetch` for this spooler; ConfigError when an account's mailbox is not
    a local one intake accepts, or its password file cannot be read (`serve` stops, exit 2)."""
    accounts = settings.fetch_accounts
    transports = load_fetchers(accounts, settings)
    fetchers = []
    for account in accounts:
        if not spooler.router.is_local(account.mailbox, "SMTP"):
            raise ConfigError(f"fetch {account.name}: mailbox {account.mailbox} is not in a local domain")
        refusal = spooler.intake.check_recipient(account.mailbox)
        if refusal is not None:
            raise ConfigError(f"fetch {account.name}: mailbox {account.mailbox}: {refusal.line()}")
        fetchers.append(Fetcher(account, transports[account.name], spooler.store, spooler.submit,
                                hostname=settings.host_name, size_limit=settings.message_size_limit,
                                on_status=functools.partial(_status_changed, spooler)))
    service = FetchService(fetchers)
    service.check()
    return service


class FetchService:
    """Every account's Fetcher, started and stopped by `serve`."""

    def __init__(self, fetchers: Sequence[Fetcher]) -> None:
        self.fetchers = list(fetchers)
        self._tasks: dict[Fetcher, asyncio.Task[None]] = {}

    def check(self) -> None:
        for fetcher in self.fetchers:
            fetcher.transport.check()

    def start(self) -> None:
        for fetcher in self.fetchers:
            self._start(fetcher)

    def _start(self, fetcher: Fetcher) -> None:
        self._tasks[fetcher] = asyncio.create_task(fetcher.run(), name=f"msgspool-fetch-{fetcher.account.name}")

    def poke(self, name: str | None = None) -> int:
        chosen = [f for f in self.fetchers if name is None or f.account.name == name]
        for fetcher in chosen:
            fetcher.poke()
        return len(chosen)

    async def stop(self) -> None:
        """Ask every account to stop — an IDLE ends within WAIT_SLICE, a poll after the call it is
        in — and wait up to STOP_WAIT for them to end their sessions (POP3 QUIT: the DELEs of what
        was filed take effect); then cancel what still runs (it is fetched again and not filed)."""
        await self._stop(self.fetchers)

    async def _stop(self, fetchers: Sequence[Fetcher]) -> None:
        for fetcher in fetchers:
            fetcher.stop()
        tasks = [task for f in fetchers if (task := self._tasks.pop(f, None)) is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_WAIT)
        for task in tasks:
            await stop_task(task)
        for fetcher in fetchers:
            fetcher.status = "offline"

    async def adopt(self, new: FetchService) -> list[str]:
        """A reload's accounts (`new`, not started): an account whose settings are the same keeps
        its running Fetcher — its session, its IDLE, its counts (a password file is read at each
        login, so a changed password is used from the next one); the others end their sessions as
        in `stop`, and the new and changed ones start. Returns the names of the accounts started."""
        running = {f.account: f for f in self.fetchers}
        chosen = [running.get(f.account, f) for f in new.fetchers]
        await self._stop([f for f in self.fetchers if f not in chosen])
        started = [f for f in chosen if f not in self.fetchers]
        self.fetchers = chosen
        for fetcher in started:
            self._start(fetcher)
        return [f.account.name for f in started]

    def rows(self) -> list[dict[str, Any]]:
        return [f.row() for f in self.fetchers]


def fetch_metrics(service: FetchService | None) -> list[metrics.Metric]:
    """Each account's messages filed since serve started, and whether its last session worked."""
    fetchers = service.fetchers if service is not None else []
    return [metrics.counter("msgspool_fetched", "Messages fetch accounts filed into local mailboxes.", ("account",),
                            [((f.account.name,), f.fetched) for f in fetchers]),
            metrics.gauge("msgspool_fetch_up", "1 while the fetch account's sessions work, 0 in failure or stopped.",
                          ("account",), [((f.account.name,), int(f.status == "online")) for f in fetchers])]
