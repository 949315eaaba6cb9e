"""`msgspool serve`: the daemon. Takes the spool's serve lock, starts delivery, the SMTP listener,
the HTTP API and the control socket, and stops them in reverse order on SIGTERM/SIGINT.

Two processes (setting `delivery_process`, on by default), so that both cores work:

    intake (this process)                      delivery (child: python -m msgspool.daemon deliver)
    SMTP + HTTP listeners, control socket      scheduler, destinations, transports
    commits submissions (group commit) ──────► claims due recipients from the store, settles them
                  └──────── link (link.py): wakeups, cancel, probe, status, events ────────┘

The store is the only shared state. The delivery lock (runtime.py) makes sure only one process
delivers from a spool directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from msgspool import spooldir
from msgspool.config import Settings
from msgspool.errors import ConfigError, MsgspoolError
from msgspool.listeners import LOW_ROOM, Row, http_row, sendmail_row, smtp_row
from msgspool.logs import configure as configure_logs
from msgspool.smtpd.accept import Listener
from msgspool.smtpd.auth import Authenticator
from msgspool.smtpd.limits import AuthFailures, ConnectionCounter, RateCounter
from msgspool.smtpd.policy import SpoolPolicy, parse_networks
from msgspool.smtpd.protocol import ServerLimits, Sessions, start_server
from msgspool.smtpd.tls import ServerTLS
from msgspool.spooler import bulk, control, metrics
from msgspool.spooler.fetch import FetchService, build_service, fetch_metrics
from msgspool.spooler.link import EventForwarder, Link, RemoteDelivery, events_of, message_from_wire
from msgspool.spooler.runtime import SERVE_LOCK_NAME, Spooler, take_lock
from msgspool.spooler.wiring import load_transports
from msgspool.transports.smtp import split_hostport

log = logging.getLogger("msgspool")
T = TypeVar("T")


async def _listen(what: str, where: object, start: Awaitable[T]) -> T:
    """A listener, or a clear error (not a traceback) when it cannot bind: port in use, path too long."""
    try:
        return await start
    except OSError as err:
        raise MsgspoolError(f"cannot listen for {what} on {where}: {err.strerror or err}") from err


async def control_handler(spooler: Spooler, request: dict[str, Any]) -> dict[str, Any]:
    op, ids = request.get("op"), request.get("ids")
    if op == "wakeup":
        spooler.poke()
        return {"ok": True}
    if op == "reports":
        spooler.reports_owed()
        return {"ok": True}
    if op == "flush":
        return {"ok": True, "flushed": await spooler.flush(ids or None, transport=request.get("transport"),
                                                           destination=request.get("destination"))}
    if op in ("hold", "release", "requeue", "delete"):
        done = await getattr(spooler, op)(list(ids or []))
        return {"ok": True, "ids": done}
    if op == "bulk":  # one chunk of a bulk action by selector (spooler/bulk.py)
        return {"ok": True, **await bulk.apply_chunk(spooler, str(request.get("action")), list(ids or []))}
    if op in ("read", "unread"):
        targets = await spooler.read_targets(list(ids or []))
        sent = await spooler.mark_read(list(ids or []), op == "read", mdn=request.get("mdn"))
        return {"ok": True, "ids": list(ids or []), "targets": targets, "mdn": sent}
    if op == "status":
        return {"ok": True, "status": await spooler.status_table()}
    if op == "resend":
        return {"ok": True, **await spooler.resend(str((ids or [""])[0]))}
    if op in ("offline", "online"):
        return {"ok": True, **await spooler.set_offline(str(request.get("transport")), op == "offline")}
    if op == "fetch":
        name = request.get("name")
        woken = spooler.fetch.poke(name) if spooler.fetch is not None else 0
        if name and not woken:
            return {"ok": False, "error": f"no fetch account {name}"}
        return {"ok": True, "accounts": woken}
    return {"ok": False, "error": f"unknown op {op!r}"}


@dataclasses.dataclass
class SMTPListeners:
    """The SMTP listeners of the daemon (plain with STARTTLS, implicit TLS), sharing one policy,
    one connection count and one TLS context."""

    servers: list[Listener]
    tls: ServerTLS | None
    policy: SpoolPolicy
    submission: SpoolPolicy | None = None  # the submission listener's copy of `policy`
    sessions: Sessions = dataclasses.field(default_factory=Sessions)
    names: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (name, HOST:PORT) of each server

    def status_rows(self) -> list[Row]:
        """The status table's row of each listener (listeners.py)."""
        return [smtp_row(name, address, self.sessions, _shed_of(server))
                for (name, address), server in zip(self.names, self.servers, strict=True)]

    def reconfigure(self, settings: Settings) -> None:
        """A reloaded configuration: trusted networks, FUTURERELEASE, connection and rate limits, AUTH
        settings at once (failures counted so far stay counted); size, recipient and time limits
        for sessions from now on; the certificate re-read. (`reload` refuses, before this, a
        configuration that turns TLS on or off.)"""
        policy = self.policy
        for each in (policy, self.submission):
            if each is not None:
                each.trusted = parse_networks(settings.trusted_networks)
                each.future_release_max = settings.future_release_max
        policy.connections.total_limit = settings.smtpd_connection_limit
        policy.connections.client_limit = settings.smtpd_client_connection_limit
        for counter, limit in ((policy.message_rate, settings.smtpd_client_message_rate_limit),
                               (policy.recipient_rate, settings.smtpd_client_recipient_rate_limit)):
            if counter is not None:
                counter.limit = limit
        self.sessions.limits = server_limits(settings)
        if policy.authenticator is not None:
            policy.authenticator.reconfigure(settings.local_domains, settings.smtpd_auth_allow_plaintext_loopback,
                                             settings.smtpd_auth_failure_limit, settings.smtpd_auth_failure_window,
                                             settings.smtpd_auth_failure_delay)
        if self.tls is not None:
            self.tls.cert_file, self.tls.key_file = settings.tls_cert_file, settings.tls_key_file
            self.tls.reload()

    def close(self) -> None:
        for server in self.servers:
            server.close()


def _shed_of(server: Listener) -> Callable[[], int]:
    return lambda: server.shed


async def start_smtp(spooler: Spooler, settings: Settings) -> SMTPListeners:
    """The SMTP listeners on `settings.smtp_listen`, `settings.smtps_listen` and
    `settings.submission_listen`, submitting into `spooler`."""
    tls = ServerTLS.load(settings.tls_cert_file, settings.tls_key_file)
    if settings.smtps_listen and tls is None:
        raise ConfigError("smtps_listen needs a certificate: set tls_cert_file and tls_key_file")
    connections = ConnectionCounter(settings.smtpd_connection_limit, settings.smtpd_client_connection_limit,
                                    settings.host_name)
    authenticator = Authenticator(
        spooler.store.user, AuthFailures(settings.smtpd_auth_failure_limit, settings.smtpd_auth_failure_window,
                                         settings.smtpd_auth_failure_delay, time.monotonic),
        local_domains=settings.local_domains, allow_plaintext_loopback=settings.smtpd_auth_allow_plaintext_loopback)
    policy = SpoolPolicy(spooler.intake, spooler.submit, hostname=settings.host_name,
                         trusted_networks=settings.trusted_networks, future_release_max=settings.future_release_max,
                         connections=connections,
                         message_rate=RateCounter(settings.smtpd_client_message_rate_limit, time.monotonic),
                         recipient_rate=RateCounter(settings.smtpd_client_recipient_rate_limit, time.monotonic),
                         authenticator=authenticator)
    submission = policy.for_submission()
    limits = server_limits(settings)
    _raise_file_limit(settings.smtpd_connection_limit)
    listeners = SMTPListeners([], tls, policy, submission)
    context = tls.context if tls is not None else None
    try:
        if settings.smtp_listen:
            host, port = split_hostport(settings.smtp_listen)
            listeners.servers.append(await _listen("SMTP", f"{host}:{port}",
                                                   start_server(policy, host, port, limits, tls=context,
                                                                sessions=listeners.sessions)))
            listeners.names.append(("smtp", f"{host}:{port}"))
            log.info("smtp listener on %s:%d%s", host, port, " (STARTTLS)" if tls is not None else "")
        if settings.smtps_listen:
            host, port = split_hostport(settings.smtps_listen, 465)
            listeners.servers.append(await _listen("SMTPS", f"{host}:{port}", start_server(
                policy, host, port, limits, tls=context, implicit_tls=True, sessions=listeners.sessions)))
            listeners.names.append(("smtps", f"{host}:{port}"))
            log.info("smtps listener (implicit TLS) on %s:%d", host, port)
        if settings.submission_listen:
            host, port = split_hostport(settings.submission_listen, 587)
            listeners.servers.append(await _listen("submission", f"{host}:{port}", start_server(
                submission, host, port, limits, tls=context, sessions=listeners.sessions)))
            listeners.names.append(("submission", f"{host}:{port}"))
            log.info("submission listener (AUTH required) on %s:%d%s", host, port,
                     " (STARTTLS)" if tls is not None else "")
    except BaseException:
        listeners.close()
        raise
    return listeners


def smtp_metrics(sessions: Sessions | None) -> list[metrics.Metric]:
    """The SMTP listeners' connections (at zero without a listener)."""
    return [metrics.counter("msgspool_smtp_connections", "SMTP connections accepted by the listeners.", (),
                    [((), sessions.accepted if sessions else 0)]),
            metrics.gauge("msgspool_smtp_connections_open", "SMTP sessions open now.", (),
                  [((), sessions.open if sessions else 0)])]


def server_limits(settings: Settings) -> ServerLimits:
    return ServerLimits(hostname=settings.host_name, max_message_size=settings.message_size_limit,
                        max_recipients=settings.recipient_limit, command_timeout=settings.smtpd_timeout,
                        data_timeout=settings.smtpd_data_timeout, spill_dir=str(settings.spool_path))


def _raise_file_limit(connections: int) -> None:
    """Raise the soft file descriptor limit to the hard one, so that the connection limit, not
    the descriptors, is what a flood of clients runs into (each session is one descriptor, and
    the store, the link and the delivery side need theirs). An accept that still fails for lack of
    descriptors is retried by the event loop a moment later; the process goes on."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if connections == 0 or connections + 100 > soft:
        log.warning("smtpd_connection_limit %s against %s file descriptors: a flood of clients may use them up",
                    connections or "(none)", soft)


async def serve(settings: Settings, ready: asyncio.Event | None = None,
                reload: Callable[[], Settings] | None = None) -> None:
    lock = await take_lock(settings.spool_path, SERVE_LOCK_NAME)
    try:
        await _serve(settings, ready, reload)
    finally:
        lock.close()


class Shutdown:
    """How the daemon stops (MAPI StoreLogoff: orderly or abort). The first SIGTERM/SIGINT (or
    `msgspool stop`) asks for an orderly stop; a second one (or `msgspool stop --abort`) aborts."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.aborting = asyncio.Event()

    def signal(self) -> None:
        if self.stopping.is_set():
            self.abort()
        else:
            log.info("stopping: finishing sessions and transactions in flight (a second signal aborts)")
            self.stopping.set()

    def abort(self) -> None:
        if not self.aborting.is_set():
            log.info("aborting: in-flight work is cancelled, and retried at the next start")
        self.stopping.set()
        self.aborting.set()

    async def wait(self, condition: Callable[[], bool], timeout: float) -> None:
        """Until `condition()` holds, the timeout passes, or an abort."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition() and not self.aborting.is_set() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)


def check_transports(transports: dict[str, Any]) -> None:
    """A transport's optional `check()`: what only the daemon's own user can check (e.g. that a relay
    password file is readable), at start rather than at the first delivery. Raises ConfigError."""
    for transport in transports.values():
        check = getattr(transport, "check", None)
        if callable(check):
            check()


# Settings a reload cannot change in a running daemon (its listeners, its spool): kept, and logged.
# log_format too: the intake process's log is set up once, and both processes' lines must agree.
RESTART_ONLY = ("data_dir", "store", "smtp_listen", "smtps_listen", "submission_listen", "http_listen",
                "delivery_process", "log_format")


async def _serve(settings: Settings, ready: asyncio.Event | None,
                 read_settings: Callable[[], Settings] | None = None) -> None:
    shutdown = Shutdown()
    # Without a delivery process, this one delivers: asked to drain (`msgspool node drain
    # --owner`), it stops as on SIGTERM.
    spooler = Spooler(settings, on_drain=None if settings.delivery_process else shutdown.signal)
    check_transports(spooler.transports)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown.signal)
    servers: list[Any] = []
    sessions: Sessions | None = None
    runner = None
    control_server = None
    delivery: DeliveryProcess | None = None
    smtp: SMTPListeners | None = None
    fetch: FetchService | None = None
    reloading = asyncio.Lock()

    async def reload() -> dict[str, Any]:
        """MAPI ValidateState (SIGHUP, `msgspool reload`): read the configuration again and use it —
        routes and address types, local domains, hooks, limits, TLS certificate; the delivery
        process is replaced by one with the new configuration after it finished what it has in
        flight. A configuration that cannot be used is refused, and the running one stays."""
        async with reloading:
            old = spooler.settings
            try:
                if read_settings is None:
                    raise ConfigError("this daemon was started without a configuration to read again")
                new = read_settings()
                fixed = [k for k in RESTART_ONLY if getattr(new, k, None) != getattr(old, k, None)]
                if fixed:
                    log.warning("reload: %s can only change with a restart; kept as they were", ", ".join(fixed))
                    new = dataclasses.replace(new, **{k: getattr(old, k) for k in fixed})
                if smtp is not None and (smtp.tls is None) != (not new.tls_cert_file):
                    raise ConfigError("turning TLS on or off needs a restart of msgspool serve")
                transports = load_transports(new)
                check_transports(transports)
                spooler.reconfigure(new, transports)
            except Exception as err:  # a bad file, a bad value, a hook that cannot load: nothing changed
                log.error("configuration not reloaded, the running one stays: %s", err)
                return {"ok": False, "error": f"configuration not reloaded: {err}"}
            await reload_fetch(new)
            if smtp is not None:
                smtp.reconfigure(new)
            if delivery is not None:
                delivery.reconfigure(new)
            log.info("configuration reloaded")
            return {"ok": True}

    async def reload_fetch(new: Settings) -> None:
        """Changed [[fetch]] accounts: the removed and changed ones end their sessions, the new and
        changed ones start, the others go on undisturbed (FetchService.adopt). A new set that
        cannot start (an unreadable password file) is logged and the running one stays."""
        nonlocal fetch
        if new.fetch == old_fetch[0]:
            return
        try:
            replacement = build_service(spooler, new) if new.fetch else None
        except ConfigError as err:
            log.error("fetch accounts not reloaded, the running ones stay: %s", err)
            return
        if fetch is not None and replacement is not None:
            started = await fetch.adopt(replacement)
        else:
            if fetch is not None:
                await fetch.stop()
            fetch = spooler.fetch = replacement
            if replacement is not None:
                replacement.start()
            started = [a.name for a in new.fetch_accounts]
        old_fetch[0] = new.fetch
        log.info("fetch accounts reloaded: %s (started: %s)", ", ".join(a.name for a in new.fetch_accounts) or "none",
                 ", ".join(started) or "none")

    old_fetch = [settings.fetch]
    reloads: set[asyncio.Task[dict[str, Any]]] = set()

    def hangup() -> None:
        log.info("SIGHUP: reloading the configuration")
        task = asyncio.ensure_future(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, hangup)  # never the default, which would end the daemon
    try:
        if settings.delivery_process and settings.store == "memory":
            raise ConfigError('store = "memory" lives in one process: serve it with delivery_process = false')
        if settings.delivery_process:
            await spooler.start(deliver=False, route=True)
            await _check_http_exposure(spooler, settings)
            delivery = DeliveryProcess(settings, spooler, on_drain=shutdown.signal)
            await delivery.start()
        else:
            await spooler.start(deliver=True)
            await _check_http_exposure(spooler, settings)
        if settings.fetch:  # checked before anything listens; started once everything does
            fetch = build_service(spooler, settings)
            spooler.fetch = fetch

        async def handle(request: dict[str, Any]) -> dict[str, Any]:
            if request.get("op") == "reload":
                return await reload()
            if request.get("op") == "stop":
                shutdown.abort() if request.get("abort") else shutdown.signal()
                return {"ok": True, "pid": os.getpid()}
            return await control_handler(spooler, request)

        control_server = await _listen("the control socket", control.socket_path(settings.spool_path),
                                       control.serve(settings.spool_path, handle))
        servers.append(control_server)
        if settings.smtp_listen or settings.smtps_listen or settings.submission_listen:
            await spooler.refresh_suppressions()  # SMTP refuses a suppressed recipient at RCPT from the start
            spooler.watch_suppressions()
            smtp = await start_smtp(spooler, settings)
            sessions = smtp.sessions
            servers.append(smtp)
            spooler.listeners += smtp.status_rows()
        spooler.metrics.add_live(lambda: smtp_metrics(sessions))
        spooler.metrics.add_live(lambda: fetch_metrics(spooler.fetch))
        if settings.http_listen:
            from msgspool.web.app import HTTP_COUNTS
            from msgspool.web.app import start as start_http

            host, port = split_hostport(settings.http_listen, 8025)
            runner = await _listen("HTTP", f"{host}:{port}", start_http(spooler, host, port))
            spooler.listeners.append(http_row(f"{host}:{port}", runner.app[HTTP_COUNTS], lambda: spooler.bus.listeners))
            log.info("http api on %s:%d", host, port)
        if fetch is not None:
            fetch.start()
        spooler.listeners.append(sendmail_row(str(settings.spool_path), lambda: spooler.intake.check_space(LOW_ROOM),
                                              lambda: spooldir.free_bytes(settings.spool_path)))
        spooler.watch_status()  # transport_status events for the rows that change
        log.info("msgspool %s ready: spool %s, local domains %s, relay %s", _version(), settings.spool_path,
                 ",".join(settings.local_domains), settings.relay or "(MX)")
        if ready is not None:
            ready.set()
        await shutdown.stopping.wait()
        if fetch is not None:  # first: no new mail taken in while the rest winds down
            await fetch.stop()
        # Orderly: new SMTP sessions get 421, open ones finish their transaction (the listeners
        # stay open meanwhile, so a client is told rather than refused).
        if sessions is not None:
            sessions.drain()
            await shutdown.wait(lambda: sessions.open == 0, settings.shutdown_timeout)
        if delivery is not None:  # while the listeners still answer 421
            await delivery.stop(shutdown.aborting, settings.shutdown_timeout)
    finally:
        if fetch is not None:
            await fetch.stop()
        for server in servers:
            server.close()
        if runner is not None:
            await runner.cleanup()
        if delivery is not None:
            await delivery.stop(shutdown.aborting, settings.shutdown_timeout)
        await spooler.stop(drain=0.0 if shutdown.aborting.is_set() or delivery is not None
                           else settings.shutdown_timeout)
        log.info("stopped")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if control_server is not None:  # never another daemon's: a second `serve` fails on the lock
            with contextlib.suppress(FileNotFoundError):
                control.socket_path(settings.spool_path).unlink()


async def _check_http_exposure(spooler: Spooler, settings: Settings) -> None:
    """Before any listener starts: an HTTP API open to other hosts without a token stops `serve`."""
    if settings.http_listen:
        from msgspool.web.access import check_exposure

        await check_exposure(spooler.store, *split_hostport(settings.http_listen, 8025))


class DeliveryProcess:
    """The delivery half of the daemon, a child process on the other end of a `Link` (link.py).
    Started with the daemon's settings; respawned at once if it dies (Postfix's master restarts
    qmgr the same way) from a standby that has Python started already, with a growing pause only
    while it keeps dying before it is ready or within a second of it (a crash loop, not a kill); told to stop by
    closing the link. It exits by itself when the link closes, so a killed daemon leaves no
    deliverer behind for long.

    Ownership (issues 10.1, 11.4): each child is a delivery node of its own (spooler/lease.py).
    Intake hands fresh work over only after the child said `ready`, that is after it registered
    and rescued what dead nodes held, and commits each hand-over as that node's (`owner`); the
    store refuses a hand-over to a node whose lease ran out, and one that completes after its
    node died is taken back by intake (Spooler.submit). So the rescue a new node does when it
    starts never takes work that a live process holds. A child that finds its lease lost exits
    (code 3), and is respawned as a new node."""

    RESTART_DELAYS = (0.0, 0.5, 2.0, 10.0)  # by how many times in a row it died young
    YOUNG = 1.0  # seconds after it was ready: a run that lived longer was healthy, restarted at once

    def __init__(self, settings: Settings, spooler: Spooler, *, on_drain: Callable[[], None] = lambda: None) -> None:
        self.settings, self.spooler = settings, spooler
        self.on_drain = on_drain  # the child's node was asked to drain: the daemon stops as on SIGTERM
        self.process: asyncio.subprocess.Process | None = None
        self.link: Link | None = None
        self.ready_at: float | None = None
        self._stopping = False
        self._started = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._standby: tuple[asyncio.subprocess.Process, socket.socket] | None = None
        self._reloading = False
        self._standby_task: asyncio.Task[None] | None = None

    async def start(self, wait: float = 10.0) -> None:
        """Spawn the child and wait (up to `wait` seconds) until it runs: the listeners open after
        it, so that the status table is complete from the first session on. Intake works without
        it (what it commits waits in the spool), so a slow start is logged, not fatal."""
        self.spooler.hints.supervise()
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="msgspool-delivery-supervisor")
        try:
            await asyncio.wait_for(self._started.wait(), wait)
        except TimeoutError:
            log.warning("delivery process not ready after %.0f s; accepting mail for it meanwhile", wait)

    async def _prepare(self) -> tuple[asyncio.subprocess.Process, socket.socket]:
        """A delivery process that has started Python and imported msgspool, waiting for its
        configuration on stdin: the standby that replaces a dead one in a fraction of a second
        (Python's start-up takes most of a second on a busy machine)."""
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "msgspool.daemon", "deliver", str(theirs.fileno()),
                stdin=asyncio.subprocess.PIPE, pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return process, ours

    async def _spawn(self) -> None:
        standby, self._standby = self._standby, None
        if standby is not None and standby[0].returncode is not None:
            standby[1].close()
            standby = None
        self.process, ours = standby or await self._prepare()
        self.ready_at = None
        config = {"settings": dataclasses.asdict(self.settings), "log_level": logging.getLogger("msgspool").level,
                  "delivery_log_level": logging.getLogger("msgspool.delivery").level}
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(config).encode())
        self.process.stdin.close()
        self.link = await Link.over(ours, self._handle)

    async def _keep_standby(self) -> None:
        """After a delivery process said ready: prepare the next one (not before: the two would
        compete for the CPU while the first one starts)."""
        if self._standby is None and not self._stopping:
            try:
                self._standby = await self._prepare()
            except OSError as err:
                log.warning("cannot start a standby delivery process: %s", err)
        if self._stopping:
            self._drop_standby()

    def _drop_standby(self) -> None:
        """A standby that gets no configuration (its stdin closes empty) exits at once."""
        standby, self._standby = self._standby, None
        if standby is not None:
            if standby[0].stdin is not None:
                standby[0].stdin.close()
            standby[1].close()

    def reconfigure(self, settings: Settings) -> None:
        """A reloaded configuration: the running delivery process finishes what it has in flight
        and exits (the link closes), and the one that replaces it starts with `settings`."""
        self.settings = settings
        self._reloading = True
        self.spooler.hints.attach(None)  # from now on intake commits new mail for the next process
        if self.link is not None:
            self.link.close()

    def _ready(self, owner: str) -> None:
        """The child registered as node `owner` and runs: hand-overs may begin, committed as its own."""
        assert self.link is not None and self.process is not None
        remote = RemoteDelivery(self.link, window=self.settings.active_limit, owner=owner)
        self.spooler.hints.attach(remote)  # told at once whether anyone here listens to events
        remote.wakeup()  # whatever was committed while no deliverer ran
        self._started.set()
        self.ready_at = asyncio.get_running_loop().time()
        self._standby_task = asyncio.ensure_future(self._keep_standby())
        self.spooler.poke_status()
        log.info("delivery process %d started", self.process.pid)

    async def _handle(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if "ready" in message:
            self._ready(str(message["ready"]))
            return None
        if "drain" in message:
            log.warning("delivery node %s was asked to drain: stopping as on SIGTERM", message["drain"])
            self.on_drain()
            return None
        if self.spooler.remote is not None:
            self.spooler.remote.reported(message)
        # To the bus only: these events were the delivery process's, its dispatcher knows of them.
        self.spooler.bus.publish(events_of(message))
        return None

    async def _supervise(self) -> None:
        """Respawn the child whenever it dies; never dies itself (an error is logged and retried)."""
        young = 0
        loop = asyncio.get_running_loop()
        while True:
            code: object = "?"
            pid = self.process.pid if self.process is not None else None
            try:
                if self.link is not None and self.process is not None:
                    await self.link.run()
                    self.link.close()
                    code = await self.process.wait()
            except Exception:
                log.exception("supervising the delivery process failed")
                self._kill()
            self.spooler.hints.attach(None)
            self.spooler.poke_status()  # the spooler's row is in failure until the next one is ready
            if self._stopping:
                return
            if self._reloading:
                self._reloading, young, delay = False, 0, 0.0
                log.info("delivery process %s finished; starting one with the new configuration", pid)
            else:
                healthy = self.ready_at is not None and loop.time() - self.ready_at >= self.YOUNG
                young = 0 if healthy else young + 1
                delay = self.RESTART_DELAYS[min(young, len(self.RESTART_DELAYS)) - 1] if young else 0.0
                log.error("delivery process %s exited with %s; restarting%s", pid, code,
                          f" in {delay:.1f} s" if delay else "")
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                await self._spawn()
            except Exception:
                log.exception("cannot start the delivery process")
                self.link = None

    def _kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def stop(self, abort: asyncio.Event | None = None, drain: float = 0.0) -> None:
        """Close the link: the child finishes its transactions in flight (up to `drain` seconds)
        and exits. On `abort` (now or while it drains) it is told SIGTERM: it cancels at once."""
        self._stopping = True
        if self._standby_task is not None:
            await asyncio.gather(self._standby_task, return_exceptions=True)
        self._drop_standby()
        if self.link is not None:
            self.link.close()
        process = self.process
        if process is not None and process.returncode is None:
            aborted = asyncio.ensure_future((abort or asyncio.Event()).wait())
            exited = asyncio.ensure_future(process.wait())
            await asyncio.wait({aborted, exited}, timeout=drain + 5.0, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(asyncio.shield(exited), 10.0)
                except TimeoutError:
                    process.kill()
            await exited
            aborted.cancel()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self.spooler.hints.attach(None)


LEASE_LOST_EXIT = 3  # the delivery process's exit code when it found its lease lost


async def deliver(fd: int, config: dict[str, Any]) -> int:
    """The delivery process: run the scheduler until the link to the intake process closes (0),
    or until it finds its lease lost (LEASE_LOST_EXIT: intake respawns it as a new node)."""
    settings = Settings(**config["settings"])
    link: Link | None = None  # made once delivery runs (below)
    aborting = drain_asked = False

    def abort() -> None:  # SIGTERM from intake's abort: cancel what is in flight at once
        nonlocal aborting
        aborting = True
        spooler.scheduler.abort_drain()
        if link is not None:
            link.close()

    def settled(active: int) -> None:  # the window after each settlement: intake's credit for hand-overs
        if link is not None:
            link.send({"active": active})

    def drain() -> None:
        # Asked to drain (`msgspool node drain --owner`): the whole daemon stops in order, as on
        # SIGTERM — intake closes the link, and this process drains and exits (not respawned).
        nonlocal drain_asked
        drain_asked = True
        if link is not None:
            link.send({"drain": spooler.lease.owner})

    # A lost lease: delivery stopped already; the link's end tells intake to respawn this process.
    spooler = Spooler(settings, on_lease_lost=abort, on_drain=drain, on_settled=settled)
    # The old deliverer of a daemon killed a moment ago may still hold the lock until it notices.
    await spooler.start(deliver=True, lock_timeout=30.0)
    forwarder: EventForwarder | None = None
    unsubscribe: Callable[[], None] | None = None

    async def handle(message: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal forwarder, unsubscribe
        assert link is not None
        op = message.get("op")
        if op == "dispatch":
            spooler.scheduler.adopt(message_from_wire(message["message"]))
        elif op == "wakeup":
            spooler.poke()
        elif op == "webhooks" and spooler.webhooks is not None:
            spooler.webhooks.poke()
        elif op == "reports":
            spooler.reporter.poke()
        elif op == "abort":
            return {"in_flight": spooler.scheduler.abort(message.get("ids") or [])}
        elif op == "cancel":
            await spooler.scheduler.cancel(message.get("ids") or [])
        elif op == "transports":
            await spooler.scheduler.read_offline()
        elif op == "probe":
            spooler.probe_down_destinations(message.get("transport"), message.get("nexthop"))
        elif op == "events":
            if message.get("on") and unsubscribe is None:
                forwarder = EventForwarder(link)
                unsubscribe = spooler.on(forwarder)
            elif not message.get("on") and unsubscribe is not None:
                unsubscribe()
                unsubscribe = None
        elif op == "status":
            return spooler.status()
        elif op == "metrics":
            return {"families": spooler.metrics.snapshot()}
        return None

    link = await Link.over(socket.socket(fileno=fd), handle)
    link.send({"ready": spooler.store.owner})  # registered, dead nodes' work rescued: hand-overs may begin
    if drain_asked:  # while the link was being made
        link.send({"drain": spooler.lease.owner})
    if aborting:
        link.close()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, abort)
    try:
        await link.run()
    finally:  # the link closed: intake stops (orderly, or killed); finish what is in flight first
        await spooler.stop(drain=0.0 if aborting else settings.shutdown_timeout)
    return LEASE_LOST_EXIT if spooler.lease.lost else 0


def deliver_main(argv: list[str]) -> int:
    raw = sys.stdin.read()  # a standby waits here, imports done, until it is needed
    if not raw:
        return 0  # a standby that was not needed: the daemon stops
    config = json.loads(raw)
    configure_logs(config["settings"].get("log_format", "text"), logging.WARNING, sys.stderr)
    logging.getLogger("msgspool").setLevel(config.get("log_level") or logging.INFO)
    logging.getLogger("msgspool.delivery").setLevel(config.get("delivery_log_level") or logging.NOTSET)
    code = 0

    async def main() -> None:
        nonlocal code
        code = await deliver(int(argv[0]), config)

    _run_loop(main())
    return code


def _version() -> str:
    from importlib.metadata import version

    try:
        return version("msgspool")
    except Exception:
        return "dev"


def run(settings: Settings, reload: Callable[[], Settings] | None = None) -> None:
    """Run the daemon until SIGTERM/SIGINT; `reload` reads the configuration again (SIGHUP)."""
    _run_loop(serve(settings, reload=reload))


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """On uvloop when it is installed (measured faster)."""
    factory: Callable[[], asyncio.AbstractEventLoop]
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


if __name__ == "__main__" and sys.argv[1:2] == ["deliver"]:
    sys.exit(deliver_main(sys.argv[2:]))
