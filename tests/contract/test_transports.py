"""The transport contract: what the spooler relies on from every transport (ports.py `Transport` and
`Connection`), checked the same way for each built-in one and for a third-party one.

The contract:
  * `nexthop(address)` is stable: the same for the same address, also from a transport built
    again from the same settings (the spool stores it, and a restarted daemon must find it).
  * `connect(nexthop)` on a dead peer raises DestinationUnavailable, with a reply that is not 2xx
    (destination health hangs on it); a transport with no peer that can be down says so.
  * `send(message, recipients)` gives one Reply per recipient, in order, and the peer really got
    the message for each of them.
  * A connection carries a second message after the first (the spooler reuses it while `usable`).
  * `close()` of a connection, and of the transport, may be called twice.

Every transport is built the way the daemon builds it: from [[transports]] settings by its entry
point (`load_transports`), so the contract also proves it is registered. The third-party one
(`LineTransport` below) is registered as a plug-in would be: by a distribution on sys.path whose
entry_points.txt names it in the `msgspool.transports` group.

To add a transport: write an async context manager `live_NAME(tmp, monkeypatch)` that starts a
real peer and yields a `Peer`, and a `dead_NAME(tmp, monkeypatch)` returning a `Peer` whose peer is
gone (or None when the transport has none), then add both to `CASES`.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from msgspool.config import Settings
from msgspool.domain.message import Message, Recipient
from msgspool.domain.outcome import Reply
from msgspool.domain.webhooks import WEBHOOK
from msgspool.errors import DestinationUnavailable
from msgspool.ports import Transport
from msgspool.spooler.runtime import WEBHOOK_TRANSPORT, load_transports
from tests.support import dovecot
from tests.support.receiver import Receiver
from tests.support.sink import Sink, free_port

CONTENT = b"From: app@example.org\r\nSubject: contract\r\n\r\nThe transport contract.\r\n"


@dataclass
class Peer:
    """A transport's settings and what its peer has seen."""

    settings: dict[str, Any]  # Settings overrides, [[transports]] (or [[webhooks]]) included
    name: str  # the transport's name among the loaded ones
    addresses: list[str]  # two recipients the peer takes
    addrtype: str = "SMTP"
    received: Callable[[], int] = lambda: 0  # deliveries (message x recipient) the peer has seen


def build(tmp: Path, peer: Peer) -> Transport:
    settings = Settings(data_dir=str(tmp / "spool"), smtp_listen="", http_listen="", hostname="contract.test",
                        smtp_connect_timeout=5.0)
    settings.merge(peer.settings, "contract test")
    return load_transports(settings)[peer.name]


def message(peer: Peer, n: int = 1) -> Message:
    return Message(id=f"CONTRACT{n}", sender="app@example.org", content=CONTENT, submitted_at=time.time(),
                   recipients=[Recipient(a, addrtype=peer.addrtype, index=i) for i, a in enumerate(peer.addresses)])


def maildir_files(root: Path) -> int:
    return sum(1 for _ in root.glob("**/new/*"))


# -- the built-in transports ------------------------------------------------------------------

@asynccontextmanager
async def live_smtp(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Peer]:
    sink = Sink().start()
    try:
        yield Peer({"relay": sink.address}, "smtp", ["b@example.com", "c@example.net"],
                   received=lambda: sum(len(m.recipients) for m in sink.messages))
    finally:
        sink.stop()


def dead_smtp(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Peer:
    return Peer({"relay": f"127.0.0.1:{free_port()}"}, "smtp", ["b@example.com"])


@asynccontextmanager
async def live_http(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Peer]:
    receiver = Receiver().start()
    try:
        yield Peer({"transports": [{"name": "posts", "type": "http", "timeout": 5}]}, "posts",
                   [receiver.url("/a"), receiver.url("/b")], addrtype="HTTP", received=lambda: len(receiver.posts))
    finally:
        receiver.stop()


def dead_http(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Peer:
    return Peer({"transports": [{"name": "posts", "type": "http", "timeout": 5}]}, "posts",
                [f"http://127.0.0.1:{free_port()}/a"], addrtype="HTTP")


def _webhooks(*urls: str) -> dict[str, Any]:
    return {"webhooks": [{"url": url, "secret": "contract-secret"} for url in urls]}


@asynccontextmanager
async def live_webhook(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Peer]:
    receiver = Receiver().start()
    urls = [receiver.url("/a"), receiver.url("/b")]
    try:
        yield Peer(_webhooks(*urls), WEBHOOK_TRANSPORT, urls, addrtype=WEBHOOK, received=lambda: len(receiver.posts))
    finally:
        receiver.stop()


def dead_webhook(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Peer:
    url = f"http://127.0.0.1:{free_port()}/a"
    return Peer(_webhooks(url), WEBHOOK_TRANSPORT, [url], addrtype=WEBHOOK)


@asynccontextmanager
async def live_lmtp(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Peer]:
    with dovecot.start({"alice": "a", "bob": "b"}) as server:
        yield Peer({"transports": [{"name": "mailboxes", "type": "lmtp", "socket": str(server.lmtp_socket)}]},
                   "mailboxes", ["alice@example.org", "bob@example.org"],
                   received=lambda: maildir_files(server.directory / "home"))


def dead_lmtp(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Peer:
    return Peer({"transports": [{"name": "mailboxes", "type": "lmtp", "host": f"127.0.0.1:{free_port()}"}]},
                "mailboxes", ["alice@example.org"])


@asynccontextmanager
async def live_maildir(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Peer]:
    root = tmp / "mail"
    yield Peer({"transports": [{"name": "maildir", "type": "maildir", "path": f"{root}/%d/%u"}]}, "maildir",
               ["alice@localhost", "bob@localhost"], received=lambda: maildir_files(root))


@asynccontextmanager
async def live_pipe(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Peer]:
    out = tmp / "piped"
    out.touch()
    yield Peer({"transports": [_pipe(["tee", "-a", str(out)])]}, "command", ["alice@example.org", "bob@example.org"],
               received=lambda: out.read_bytes().count(b"The transport contract."))


@asynccontextmanager
async def live_file(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Peer]:
    # the aliases' file transport: a maildir and an mbox file, each named by its recipient's address
    box, file = tmp / "box", tmp / "archive.mbox"
    yield Peer({"transports": [{"name": "files", "type": "file", "user": pwd.getpwuid(os.geteuid()).pw_name,
                                "addrtypes": ["ALIAS-FILE"]}]}, "files", [f"{box}/", str(file)],
               addrtype="ALIAS-FILE",
               received=lambda: maildir_files(box) + (file.read_bytes().count(b"\nFrom ") + 1 if file.exists() else 0))


def dead_pipe(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Peer:
    return Peer({"transports": [_pipe([str(tmp / "no-such-command")])]}, "command", ["alice@example.org"])


def _pipe(argv: list[str]) -> dict[str, Any]:
    # as root the pipe transport wants an account to run as: this one's, whichever it is
    return {"name": "command", "type": "pipe", "argv": argv, "user": pwd.getpwuid(os.geteuid()).pw_name}


# -- a third-party transport, registered as a plug-in ----------------------------------------

class LineConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remote: str) -> None:
        self.reader, self.writer, self.remote = reader, writer, remote

    @property
    def usable(self) -> bool:
        return not self.writer.is_closing()

    async def send(self, message: Message, recipients: Sequence[Recipient]) -> list[Reply]:
        replies = []
        for r in recipients:
            self.writer.write(f"MSG {r.address} {len(message.content)}\n".encode() + message.content)
            line = (await self.reader.readline()).decode()
            if not line.endswith("\n"):
                raise DestinationUnavailable(Reply(421, "4.4.2", "lost connection with the line server"))
            replies.append(Reply.parse(int(line[:3]), line[4:].strip()))
        return replies

    async def close(self) -> None:
        self.writer.close()


class LineTransport:
    """A transport from outside msgspool: one line per recipient to a tiny TCP server."""

    addrtypes = frozenset({"LINE"})

    def __init__(self, name: str, settings: Any, options: dict[str, Any]) -> None:
        self.name, self.domains, self.server = name, (), str(options["server"])

    def nexthop(self, address: str) -> str:
        return self.server

    async def connect(self, nexthop: str) -> LineConnection:
        host, port = nexthop.rsplit(":", 1)
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError as err:
            raise DestinationUnavailable(Reply(421, "4.4.1", f"{nexthop}: {err.strerror}")) from err
        return LineConnection(reader, writer, nexthop)

    async def close(self) -> None:
        return None


def register_plugin(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `pip install msgspool-line` would leave: a distribution whose entry point names the class."""
    info = tmp / "site" / "msgspool_line-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: msgspool-line\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[msgspool.transports]\nline = {__name__}:LineTransport\n")
    monkeypatch.syspath_prepend(str(tmp / "site"))


@dataclass
class LineServer:
    messages: list[tuple[str, bytes]] = field(default_factory=list)

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            _, address, size = line.decode().split()
            self.messages.append((address, await reader.readexactly(int(size))))
            writer.write(f"250 2.0.0 {address} taken\n".encode())
        writer.close()


@asynccontextmanager
async def live_line(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Peer]:
    register_plugin(tmp, monkeypatch)
    peer = LineServer()
    server = await asyncio.start_server(peer.session, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Peer({"transports": [{"name": "lines", "type": "line", "server": f"127.0.0.1:{port}"}]}, "lines",
                   ["one", "two"], addrtype="LINE", received=lambda: len(peer.messages))
    finally:
        server.close()


def dead_line(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Peer:
    register_plugin(tmp, monkeypatch)
    return Peer({"transports": [{"name": "lines", "type": "line", "server": f"127.0.0.1:{free_port()}"}]}, "lines",
                ["one"], addrtype="LINE")


# -- the contract -----------------------------------------------------------------------------

Live = Callable[[Path, pytest.MonkeyPatch], AbstractAsyncContextManager[Peer]]
Dead = Callable[[Path, pytest.MonkeyPatch], Peer] | None

CASES: dict[str, tuple[Live, Dead]] = {
    "smtp": (live_smtp, dead_smtp),
    "http": (live_http, dead_http),
    "webhook": (live_webhook, dead_webhook),
    "lmtp": (live_lmtp, dead_lmtp),
    "maildir": (live_maildir, None),  # writes to local disk: no peer that can be down
    "pipe": (live_pipe, dead_pipe),
    "file": (live_file, None),  # writes to local disk: no peer that can be down
    "third-party": (live_line, dead_line),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[Live, Dead]:
    return CASES[request.param]


async def test_nexthop_is_stable(case: tuple[Live, Dead], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live, _ = case
    async with live(tmp_path, monkeypatch) as peer:
        transport, again = build(tmp_path, peer), build(tmp_path, peer)
        for address in peer.addresses:
            nexthop = transport.nexthop(address)
            assert isinstance(nexthop, str) and nexthop
            assert transport.nexthop(address) == nexthop == again.nexthop(address)
        await transport.close()
        await again.close()


async def test_connect_to_a_dead_peer_raises_destination_unavailable(
        case: tuple[Live, Dead], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, dead = case
    if dead is None:
        pytest.skip("this transport has no peer that can be down")
    peer = dead(tmp_path, monkeypatch)
    transport = build(tmp_path, peer)
    with pytest.raises(DestinationUnavailable) as caught:
        conn = await transport.connect(transport.nexthop(peer.addresses[0]))
        await conn.send(message(peer), message(peer).recipients)  # an HTTP origin may be found dead here
    assert isinstance(caught.value.reply, Reply) and not caught.value.reply.ok
    await transport.close()


async def test_send_gives_one_reply_per_recipient(case: tuple[Live, Dead], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    live, _ = case
    async with live(tmp_path, monkeypatch) as peer:
        transport = build(tmp_path, peer)
        msg = message(peer)
        conn = await transport.connect(transport.nexthop(peer.addresses[0]))
        try:
            replies = await conn.send(msg, msg.recipients)
        finally:
            await conn.close()
            await transport.close()
        assert len(replies) == len(peer.addresses) == 2
        assert all(isinstance(r, Reply) and r.ok for r in replies), replies
        await _eventually(peer.received, 2)


async def test_a_connection_carries_two_messages(case: tuple[Live, Dead], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    live, _ = case
    async with live(tmp_path, monkeypatch) as peer:
        transport = build(tmp_path, peer)
        conn = await transport.connect(transport.nexthop(peer.addresses[0]))
        try:
            for n in (1, 2):
                msg = message(peer, n)
                assert all(r.ok for r in await conn.send(msg, msg.recipients))
                assert conn.usable
        finally:
            await conn.close()
            await transport.close()
        await _eventually(peer.received, 4)


async def test_close_may_be_called_twice(case: tuple[Live, Dead], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    live, _ = case
    async with live(tmp_path, monkeypatch) as peer:
        transport = build(tmp_path, peer)
        conn = await transport.connect(transport.nexthop(peer.addresses[0]))
        msg = message(peer)
        await conn.send(msg, msg.recipients)
        await conn.close()
        await conn.close()
        await transport.close()
        await transport.close()


async def _eventually(count: Callable[[], int], wanted: int, timeout: float = 5.0) -> None:
    """The peer saw `wanted` deliveries (a threaded sink may count a moment after its reply)."""
    deadline = time.monotonic() + timeout
    while count() < wanted and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert count() == wanted

