"""The control socket: how the CLI reaches a running daemon (Postfix's public/qmgr FIFO and
postqueue's showq socket in one). A unix stream socket `control.sock` in the data directory;
one JSON request per line, one JSON answer per line.

    {"op": "wakeup"}                            new work was written into the spool
    {"op": "reports"}                           reports were left owed: write them
    {"op": "flush", "ids": [...] | null,        retry now (all, the messages, or one transport /
     "transport": T, "destination": D}           destination)
    {"op": "hold" | "release" | "delete", "ids": [...]}
    {"op": "bulk", "action": A, "ids": [...]}   one chunk of a bulk action (spooler/bulk.py) ->
                                                {"ids": taken, "in_flight": {id: [addresses]}, "flushed"}
    {"op": "read" | "unread", "ids": [...], "mdn": true|false|null}   -> {"ids", "mdn": [MDN ids]}
    {"op": "status"}                            the live status table
    {"op": "resend", "ids": [ID]}               -> {"id": NEW, "resend_of": ID, "recipients": [...]}
    {"op": "offline" | "online", "transport": NAME}  -> {"transport", "status", "changed", "released"}

When no daemon listens, the CLI changes the spool directly; the daemon then finds the change when
it starts. Either way there is one set of store operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from msgspool import spooldir
from msgspool.errors import UnableToAbort

SOCKET_NAME = "control.sock"
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


def request(data_dir: Path, message: dict[str, Any], timeout: float = 30.0) -> dict[str, Any] | None:
    """Send one request to the daemon; None when no daemon listens on this spool."""
    path = socket_path(data_dir)
    if not path.exists():
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError:
            return None
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data) if data else None


_queued: set[tuple[str, str]] = set()  # notifications scheduled in this process and not yet sent
_sending: set[asyncio.Task[None]] = set()


def notify(data_dir: Path, message: dict[str, Any]) -> None:
    """Best effort: tell the daemon, if one runs; never fails, never blocks an event loop.

    Called from a running event loop (an application submitting with ``deliver=False``), the
    notification is sent by a task, and one still waiting to be sent stands for any number of
    equal ones: the daemon reads the spool after it, so it sees every commit made before."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        with contextlib.suppress(OSError, ValueError):
            request(data_dir, message, timeout=2.0)
        return
    key = (str(data_dir), json.dumps(message, sort_keys=True))
    if key in _queued:
        return
    _queued.add(key)
    task = loop.create_task(_notify(data_dir, message, key))
    _sending.add(task)
    task.add_done_callback(_sending.discard)


async def sent() -> None:
    """Wait for the notifications this process scheduled (before its event loop ends)."""
    if _sending:
        await asyncio.gather(*list(_sending), return_exceptions=True)


async def _notify(data_dir: Path, message: dict[str, Any], key: tuple[str, str]) -> None:
    _queued.discard(key)  # from here on, a later commit needs a notification of its own
    with contextlib.suppress(OSError, ValueError, TimeoutError):
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(socket_path(data_dir))), 2.0)
        try:
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()
            await asyncio.wait_for(reader.readline(), 2.0)
        finally:
            writer.close()


async def serve(data_dir: Path, handler: Handler) -> asyncio.AbstractServer:
    path = socket_path(data_dir)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    answer = await handler(json.loads(line))
                except Exception as err:  # reported to the client, never fatal to the daemon
                    answer = {"ok": False, "error": str(err), "kind": type(err).__name__}
                    if isinstance(err, UnableToAbort):
                        answer.update(err.detail())
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_unix_server(session, path=str(path))
    os.chmod(path, spooldir.FILE_MODE)  # its directory is private too; the socket is, whatever the umask
    return server
