"""`msgspool serve`: the daemon. Takes the spool's lock, starts delivery, the SMTP listener, the HTTP
API and the control socket, and stops them in reverse order on SIGTERM/SIGINT.

The spool's lock (see runtime.py) makes sure only one process delivers from a spool directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from msgspool.config import Settings
from msgspool.errors import MsgspoolError
from msgspool.smtpd.policy import SpoolPolicy
from msgspool.smtpd.protocol import ServerLimits, start_server
from msgspool.spooler import control
from msgspool.spooler.runtime import Spooler
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
    if op == "flush":
        return {"ok": True, "flushed": await spooler.flush(ids or None)}
    if op in ("hold", "release", "delete"):
        done = await getattr(spooler, op)(list(ids or []))
        return {"ok": True, "ids": done}
    if op == "status":
        return {"ok": True, "status": spooler.status()}
    return {"ok": False, "error": f"unknown op {op!r}"}


async def start_smtp(spooler: Spooler, settings: Settings) -> asyncio.AbstractServer:
    """The SMTP listener on `settings.smtp_listen`, submitting into `spooler`."""
    host, port = split_hostport(settings.smtp_listen)
    policy = SpoolPolicy(spooler.intake, spooler.submit, hostname=settings.host_name,
                         trusted_networks=settings.trusted_networks)
    limits = ServerLimits(hostname=settings.host_name, max_message_size=settings.message_size_limit,
                          max_recipients=settings.recipient_limit, command_timeout=settings.smtpd_timeout)
    server = await _listen("SMTP", f"{host}:{port}", start_server(policy, host, port, limits))
    log.info("smtp listener on %s:%d", host, port)
    return server


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    spooler = Spooler(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    servers: list[Any] = []
    runner = None
    control_server = None
    try:
        await spooler.start(deliver=True)
        control_server = await _listen("the control socket", control.socket_path(settings.spool_path),
                                       control.serve(settings.spool_path, lambda r: control_handler(spooler, r)))
        servers.append(control_server)
        if settings.smtp_listen:
            servers.append(await start_smtp(spooler, settings))
        if settings.http_listen:
            from msgspool.web.app import start as start_http

            host, port = split_hostport(settings.http_listen, 8025)
            runner = await _listen("HTTP", f"{host}:{port}", start_http(spooler, host, port))
            log.info("http api on %s:%d", host, port)
        log.info("msgspool %s ready: spool %s, local domains %s, relay %s", _version(), settings.spool_path,
                 ",".join(settings.local_domains), settings.relay or "(MX)")
        if ready is not None:
            ready.set()
        await stopping.wait()
        log.info("stopping")
    finally:
        for server in servers:
            server.close()
        if runner is not None:
            await runner.cleanup()
        await spooler.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if control_server is not None:  # never another daemon's: a second `serve` fails on the lock
            with contextlib.suppress(FileNotFoundError):
                control.socket_path(settings.spool_path).unlink()


def _version() -> str:
    from importlib.metadata import version

    try:
        return version("msgspool")
    except Exception:
        return "dev"


def run(settings: Settings) -> None:
    """Run the daemon until SIGTERM/SIGINT; on uvloop when it is installed (measured faster)."""
    factory: Callable[[], asyncio.AbstractEventLoop]
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(settings))
