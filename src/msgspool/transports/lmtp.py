"""The LMTP transport: final delivery into a mailbox server over LMTP (RFC 2033; Dovecot, Cyrus).

Address type "SMTP", as the addresses are mail addresses; `domains` picks the ones it takes (the
domains whose mailboxes live on that server). Every recipient goes to the one configured server,
so its nexthop is that server and all of them share its connections. One transaction per message
with all its recipients: MAIL, a RCPT each (in one write with PIPELINING, RFC 2920), DATA, the
content, then one reply per accepted recipient (lmtp_client.py), each settled on its own:

    2xx  -> delivered (into the mailbox: a requested success report is written here)
    4xx  -> deferred, retried with backoff (e.g. Dovecot's 452 4.2.2 quota exceeded)
    5xx  -> failed, reported (e.g. Dovecot's 550 5.1.1 user doesn't exist)
    no connection, or lost before any reply -> the destination is marked down

A connection is reused for the next message after an RSET (Postfix's check that a cached session
is still alive, RFC 5321 §4.1.1.5); a server that closed it meanwhile (an idle timeout) gets a fresh
connection, not a deferral. A server that advertises DSN receives the DSN parameters (RFC 3461
§5.2) and reports from then on, as with SMTP; without DSN, LMTP is the last hop: `delivered`.

Options (from a [[transports]] table), defaults in brackets:

    socket             path of the server's Unix socket, e.g. "/run/dovecot/lmtp"
    host               or HOST[:PORT] over TCP [port 24]; "unix:/path" is a socket too
    helo_name          the LHLO name [the settings' host_name]
    connect_timeout, greeting_timeout, mail_timeout, rcpt_timeout, data_init_timeout,
    data_block_timeout, data_done_timeout
                       seconds [the settings' smtp_*_timeout: RFC 5321 §4.5.3.2]

Exactly one of `socket` and `host` is required.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

from msgspool.domain.address import SMTP
from msgspool.domain.dsn import Handoff
from msgspool.domain.message import Message, Recipient
from msgspool.domain.outcome import Reply
from msgspool.errors import ConfigError, DestinationUnavailable
from msgspool.transports.lmtp_client import UNIX, LMTPClient
from msgspool.transports.smtp import SMTPConnection, split_hostport
from msgspool.transports.smtp_client import ClientTimeouts, SMTPConnectionError

log = logging.getLogger("msgspool.lmtp")

DEFAULT_PORT = 24  # no port is assigned to LMTP over TCP (RFC 2033 §5 forbids 25); Postfix uses 24


class LMTPConnection(SMTPConnection):
    """One LMTP session, reused for several messages (RSET before each after the first)."""

    def __init__(self, client: LMTPClient, transport: LMTPTransport) -> None:
        super().__init__(client)
        self.transport = transport
        self.messages = 0

    @property
    def handoff(self) -> Handoff:
        return Handoff.DSN_RELAY if "DSN" in self.client.extensions else Handoff.FINAL

    async def send(self, message: Message, recipients: Sequence[Recipient]) -> list[Reply]:
        if self.messages:
            await self._reset()
        self.messages += 1
        return await super().send(message, recipients)

    async def _reset(self) -> None:
        """RSET the reused session; one the server has closed is opened again (nothing was sent)."""
        try:
            if self.client.usable and (await self.client.reset()).ok:
                return
        except SMTPConnectionError as err:
            log.info("%s: the reused LMTP session is gone (%s); connecting again", self.remote, err.reply.line())
        self.client.close()
        self.client = await self.transport.open_client()


class LMTPTransport:
    addrtypes = frozenset({SMTP})

    def __init__(self, name: str, settings: Any, options: dict[str, Any]) -> None:
        self.name = name
        self.domains: tuple[str, ...] = tuple(options.get("domains", ()))
        self.destination = _destination(name, options)
        self.helo_name: str = options.get("helo_name") or settings.host_name
        self.timeouts = _timeouts(name, settings, options)

    def nexthop(self, address: str) -> str:
        return self.destination

    async def connect(self, nexthop: str) -> LMTPConnection:
        return LMTPConnection(await self.open_client(), self)

    async def open_client(self) -> LMTPClient:
        """A new session with the server; DestinationUnavailable when there is none."""
        try:
            if self.destination.startswith(UNIX):
                return await LMTPClient.connect_unix(self.destination.removeprefix(UNIX), helo_name=self.helo_name,
                                                     timeouts=self.timeouts)
            host, port = split_hostport(self.destination, DEFAULT_PORT)
            return await LMTPClient.connect(host, port, helo_name=self.helo_name, timeouts=self.timeouts)
        except SMTPConnectionError as err:
            raise DestinationUnavailable(err.reply) from err

    async def close(self) -> None:
        return None  # connections are closed by whoever holds them


def _destination(name: str, options: dict[str, Any]) -> str:
    """The server as a nexthop: ``unix:/path`` or ``host:port``."""
    socket, host = str(options.get("socket", "")).strip(), str(options.get("host", "")).strip()
    if bool(socket) == bool(host):
        raise ConfigError(f"transport {name}: an LMTP transport needs exactly one of socket = \"/path\""
                          f" and host = \"HOST[:PORT]\"")
    if socket:
        return UNIX + socket
    if host.startswith(UNIX):
        return host
    host_only, port = split_hostport(host, DEFAULT_PORT)
    return f"[{host_only}]:{port}" if ":" in host_only else f"{host_only}:{port}"


def _timeouts(name: str, settings: Any, options: dict[str, Any]) -> ClientTimeouts:
    """The settings' SMTP client timeouts, each overridden by the option `<stage>_timeout`."""
    timeouts = ClientTimeouts(
        connect=settings.smtp_connect_timeout, greeting=settings.smtp_greeting_timeout,
        helo=settings.smtp_greeting_timeout, mail=settings.smtp_mail_timeout,
        rcpt=settings.smtp_rcpt_timeout, data_init=settings.smtp_data_init_timeout,
        data_block=settings.smtp_data_block_timeout, data_done=settings.smtp_data_done_timeout)
    overrides: dict[str, float] = {}
    for stage in (f.name for f in fields(ClientTimeouts)):
        if f"{stage}_timeout" in options:
            try:
                overrides[stage] = float(options[f"{stage}_timeout"])
            except (TypeError, ValueError):
                raise ConfigError(f"transport {name}: {stage}_timeout must be a number of seconds") from None
    if "greeting" in overrides and "helo" not in overrides:
        overrides["helo"] = overrides["greeting"]  # as for SMTP: LHLO waits as long as the greeting
    return replace(timeouts, **overrides)
