"""The SMTP listener's protocol: parses and sequences the commands of RFC 5321 and never decides
policy (aiosmtpd's split): accept, relay or reject come from the policy object (policy.py).

Why not aiosmtpd: it runs one coroutine per command and one StreamReader read per line; measured
as a bare sink here it tops out near 2,000 messages/s on one core, below what msgspool must relay.
This is an `asyncio.Protocol` over one receive buffer: a pipelined group of commands (RFC 2920) is
parsed in one pass and answered in one write, and the message content is found with one
`bytes.find` per network read, never per line.

Extensions: PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152), ENHANCEDSTATUSCODES
(RFC 2034, codes from RFC 3463), SMTPUTF8 (RFC 6531), DSN (RFC 3461: its parameters are parsed
here, by domain/dsn.py, and travel with the envelope), FUTURERELEASE (RFC 4865: offered to the
clients the policy names, HOLDFOR/HOLDUNTIL parsed by domain/futurerelease.py into the envelope's
release time), STARTTLS (RFC 3207: offered when the listener has a TLS context, see tls.py; on
an implicit-TLS listener, RFC 8314, the session starts encrypted and STARTTLS is not offered),
AUTH (RFC 4954: PLAIN of RFC 4616 and LOGIN, offered when the policy allows them, which is after
TLS; the exchange is parsed here, the credentials are checked by the policy; MAIL's AUTH=
parameter, RFC 4954 §5, is accepted and not passed on, as §5 allows for an identity not trusted).

AUTH: the payload is decoded here and handed to the policy, never logged nor echoed. ``*`` as a
response cancels (``501 5.0.0``); a response that is not base64, or a PLAIN message without its
two NUL separators, is ``501 5.5.2``; a mechanism other than PLAIN or LOGIN is ``504 5.5.4``. While
the policy checks (a memory-hard hash, and a delay after failures) no further input is processed,
as during a commit: a pipelined MAIL after AUTH is answered once the AUTH is.

STARTTLS, the way Postfix does it since CVE-2011-0411: input pipelined after the STARTTLS command
(read in the same packet, before the handshake) is thrown away, never executed after the
handshake as if it had come encrypted; reading stops when the ``220`` goes out, so nothing the
client sends in clear can slip in between. After the handshake the session forgets what the
client said before (RFC 3207 §4.2: HELO/EHLO, any transaction, authentication); only its address
and trust, which come from the connection, stay.

Strictness, where the RFC leaves room (each chosen to be safe and what Postfix does):
- Only ``<CRLF>.<CRLF>`` ends the content; content with a bare LF is refused after the end of
  data with ``550 5.5.2`` (RFC 5321 §2.3.8; the SMTP smuggling fix, Postfix's
  ``smtpd_forbid_bare_newline = reject``), and so is content with a bare CR, which some next hops
  take for a line end. Content with NUL bytes is refused with ``550 5.6.0``.
  Commands ending in a bare LF are accepted (the risk lies in content, not commands).
- An EHLO/HELO name with a control character is refused (``501 5.5.4``): it is written into the
  Received: header.
- An address (MAIL FROM, RCPT TO) with a control character (C0, DEL, C1) or bytes that are not
  UTF-8 is refused as bad syntax (``501 5.1.7`` / ``501 5.1.3``): it would end up in headers,
  logs and the next hop's protocol lines.
- A command line longer than 2,048 bytes is answered ``500 5.5.2`` (§4.5.3.1.4 sets 512 as the
  floor and lets extensions raise it: SIZE, DSN's ORCPT and SMTPUTF8 addresses need more) and its
  remainder is skipped, never buffered.
- Content beyond the SIZE limit is read and thrown away, then answered ``552 5.3.4``. Content
  beyond `spill_threshold` bytes goes to an unnamed temporary file in `spill_dir` (the spool
  directory) as it arrives, so an open DATA phase holds at most about that much memory however
  large the message; the whole message is in memory only while it is checked and committed.
- After `hard_error_limit` bad commands, or `command_timeout` seconds of silence, the session ends
  with a 421 (Postfix: smtpd_hard_error_limit, smtpd_timeout). A DATA phase has a total deadline,
  `data_timeout` seconds from the 354, however often the client sends a byte; past it the session
  ends with ``421 4.4.2`` and nothing is stored.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import ssl
import tempfile
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, cast

from msgspool.domain import futurerelease
from msgspool.domain.dsn import DSNSyntaxError, MessageDSN, RecipientDSN, parse_mail_params, parse_rcpt_params
from msgspool.domain.futurerelease import FutureReleaseError
from msgspool.domain.outcome import Reply
from msgspool.smtpd.accept import Listener, listen
from msgspool.smtpd.tls import describe

log = logging.getLogger("msgspool.smtpd")

MAX_COMMAND_LINE = 2048
TLS_HANDSHAKE_TIMEOUT = 60.0  # seconds, or the command timeout when that is shorter

# Replies of the protocol itself (policy answers come from policy.py).
OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
BYE = Reply(221, "2.0.0", "Bye")
HELP = Reply(214, "2.0.0", "See RFC 5321; commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP QUIT VRFY HELP")
CANNOT_VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
NOT_RECOGNIZED = Reply(500, "5.5.2", "Error: command not recognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Error: line too long")
NUL_IN_COMMAND = Reply(500, "5.5.2", "Error: NUL character in command")
EXPN_DISABLED = Reply(502, "5.5.1", "Error: EXPN is not supported")
NEED_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "Error: no valid recipients")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")
BARE_LF = Reply(550, "5.5.2", "Error: bare <LF> received")
NUL_IN_DATA = Reply(550, "5.6.0", "Error: message contains NUL characters")
NEED_SMTPUTF8 = Reply(553, "5.6.7", "Error: must declare SMTPUTF8 to send unicode address")
TIMEOUT = Reply(421, "4.4.2", "Error: timeout exceeded")
DATA_TIMEOUT = Reply(421, "4.4.2", "Error: timeout exceeded for the message content")
BARE_CR = Reply(550, "5.5.2", "Error: bare <CR> received")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Error: too many errors")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down; try again later")
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Error: command not implemented")
TLS_ACTIVE = Reply(554, "5.5.1", "Error: TLS already active")
MAIL_IN_PROGRESS = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Error: already authenticated")
AUTH_MECHANISMS = ("PLAIN", "LOGIN")
UNSUPPORTED_MECHANISM = Reply(504, "5.5.4", "Error: unsupported authentication mechanism")
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_BAD_RESPONSE = Reply(501, "5.5.2", "Error: invalid authentication data")
LOCAL_ERROR = Reply(451, "4.3.0", "Error: local error in processing; try again later")


class Sessions:
    """The open sessions of a set of listeners, so that an orderly shutdown reaches them all:
    after `drain`, new sessions are greeted with 421 and open ones end after their transaction."""

    def __init__(self) -> None:
        self.live: weakref.WeakSet[SMTPServerProtocol] = weakref.WeakSet()
        self.draining = False
        self.limits: ServerLimits | None = None  # a reloaded configuration's, for new sessions
        self.accepted = 0  # connections accepted so far (the metrics' connections in)

    def drain(self) -> None:
        self.draining = True
        for session in list(self.live):
            session.drain()

    @property
    def open(self) -> int:
        return sum(1 for s in self.live if not s._ended)


_SKIPPED = b"<skipped>"  # identity marker: a line already answered
_PATH = re.compile(r"^\s*<([^<>]*)>(.*)$|^\s*([^<>\s]+)(.*)$", re.DOTALL)
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\U0010ffff-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\U0010ffff-]+)*"
_QUOTED = r'"(?:[^"\\\r\n]|\\[ -~])*"'
_LABEL = r"(?:[A-Za-z0-9\x80-\U0010ffff](?:[A-Za-z0-9\x80-\U0010ffff-]{0,61}[A-Za-z0-9\x80-\U0010ffff])?)"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[^\[\]\\\s]+\])"
_MAILBOX = re.compile(rf"^(?:{_DOT_ATOM}|{_QUOTED})@{_DOMAIN}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # C0, DEL, C1; surrogates: bytes not UTF-8
_XTEXT_PARAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*(=[!-<>-~\x80-\U0010ffff]+)?$")


@dataclass(slots=True)
class Session:
    """What the listener knows of one client connection. Plain data, read by the policy."""

    peer: tuple[Any, ...]
    helo: str | None = None
    esmtp: bool = False
    trusted: bool = False
    authenticated: bool = False
    transactions: int = 0
    admitted: bool = False  # counted by the policy's connection limits, to be released on disconnect
    tls: tuple[str, str] | None = None  # (protocol version, cipher) once the session is encrypted
    login: str | None = None  # the user an AUTH proved (authenticated is then true)
    senders: tuple[str, ...] = ()  # the envelope sender patterns that user owns (domain/users.py)


@dataclass(slots=True)
class Envelope:
    """One mail transaction: MAIL's sender and parameters, the accepted recipients."""

    sender: str | None = None
    mail_params: dict[str, str] = field(default_factory=dict)
    recipients: list[str] = field(default_factory=list)
    rcpt_params: list[dict[str, str]] = field(default_factory=list)
    smtputf8: bool = False
    body: str = "7BIT"
    dsn: MessageDSN | None = None  # RET / ENVID
    rcpt_dsn: list[RecipientDSN | None] = field(default_factory=list)  # NOTIFY / ORCPT per recipient
    release_at: float | None = None  # RFC 4865 HOLDFOR / HOLDUNTIL: not to be delivered before


class Policy(Protocol):
    """The decisions the listener asks for, each named after the protocol stage it serves."""

    def connect(self, session: Session) -> Reply | None: ...

    def future_release(self, session: Session) -> int:
        """The longest hold (RFC 4865 FUTURERELEASE) this client may ask for, seconds; 0: not offered."""
        ...

    def mail(self, session: Session, envelope: Envelope, sender: str, params: dict[str, str]) -> Reply | None: ...

    def rcpt(self, session: Session, envelope: Envelope, address: str,
             params: dict[str, str]) -> Reply | None: ...

    def data(self, session: Session, envelope: Envelope, content: bytes) -> Awaitable[Reply]: ...

    def auth(self, session: Session) -> Reply | None:
        """None when this client may authenticate now (AUTH is then offered in EHLO); else the reply
        refusing AUTH (538 5.7.11 before TLS, 502 when there are no accounts, 421 when locked out)."""
        ...

    def authenticate(self, session: Session, mechanism: str, authzid: str, user: str,
                     password: bytes) -> Awaitable[Reply]:
        """Check the credentials: 235 (and the session marked authenticated), 535, or 421."""
        ...

    def disconnect(self, session: Session) -> None: ...


@dataclass(frozen=True, slots=True)
class ServerLimits:
    hostname: str = "localhost"
    max_message_size: int = 10_240_000
    max_recipients: int = 1000
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    hard_error_limit: int = 20
    spill_threshold: int = 256 * 1024  # content bytes held in memory before they go to a file
    spill_dir: str | None = None  # where; None: the system's temporary directory


def valid_mailbox(address: str) -> bool:
    """RFC 5321 §4.1.2 Mailbox (RFC 6531 widens atoms and labels to UTF-8), free of control characters."""
    return len(address) <= 320 and _MAILBOX.match(address) is not None and _CONTROL.search(address) is None


def printable(text: str) -> str:
    """`text` fit to echo in a reply or a log line: each control character becomes ``?``."""
    return _CONTROL.sub("?", text)


def parse_path(arg: str, keyword: str) -> tuple[str, str] | None:
    """``FROM:<a@b> X=Y`` -> ("a@b", "X=Y"); None when it is not that shape. A source route
    (``<@relay:a@b>``) is dropped, as §4.1.2 allows; a missing pair of brackets is tolerated."""
    head, colon, rest = arg.partition(":")
    if not colon or head.strip().upper() != keyword:
        return None
    m = _PATH.match(rest)
    if m is None:
        return None
    address, params = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
    if address.startswith("@") and ":" in address:
        address = address.split(":", 1)[1]
    if params and not params[0].isspace():
        return None
    return address, params.strip()


def parse_params(text: str) -> dict[str, str] | str:
    """ESMTP parameters ``KEY[=VALUE] ...`` -> {KEY upper: VALUE}, or what is wrong with them: bad
    syntax, or a keyword given twice (each may appear once: RFC 1870 SIZE, RFC 3461 §4.1-4.4 for
    NOTIFY, ORCPT, RET and ENVID; which of two would count is undefined, so neither does)."""
    params: dict[str, str] = {}
    for item in text.split():
        if not _XTEXT_PARAM.match(item):
            return "Syntax error in parameters"
        key, _, value = item.partition("=")
        key = key.upper()
        if key in params:
            return f"Error: duplicate {key} parameter"
        params[key] = value
    return params


class SMTPServerProtocol(asyncio.Protocol):
    """One SMTP session. Commands are handled synchronously from the receive buffer; only the
    commit after DATA awaits, and while it runs no further input is processed."""

    def __init__(self, policy: Policy, limits: ServerLimits, tls: ssl.SSLContext | None = None,
                 sessions: Sessions | None = None) -> None:
        if sessions is not None and sessions.limits is not None:
            limits = sessions.limits
        self.policy, self.limits, self.tls = policy, limits, tls
        self.sessions = sessions
        self.transport: asyncio.Transport | None = None
        self.session = Session(peer=("", 0))
        self.envelope = Envelope()
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._in_data = False
        self._data_scanned = 0  # bytes of _buffer already searched for the end of data
        self._data_discarded = 0  # content bytes thrown away because the message is too big
        self._spill: IO[bytes] | None = None  # content so far, when it outgrew spill_threshold
        self._spilled = 0
        self._spill_failed = False
        self._skipping_line = False  # inside an overlong command line
        self._busy = False  # a commit is running; input waits
        self._closing = False
        self._paused = False
        self._errors = 0
        self._timer: asyncio.TimerHandle | None = None
        self._data_timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self._task: asyncio.Task[None] | None = None
        self._ended = False
        self._draining = False
        self._auth_step: Callable[[str], None] | None = None  # AUTH waits for a response line

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        self.session.peer = transport.get_extra_info("peername") or ("", 0)
        self.session.tls = describe(transport.get_extra_info("ssl_object"))  # an implicit-TLS listener
        if self.sessions is not None:
            self.sessions.live.add(self)
            self.sessions.accepted += 1
            self._draining = self.sessions.draining
        refusal = SHUTTING_DOWN if self._draining else self.policy.connect(self.session)
        if refusal is not None:
            self._reply(refusal)
            self._close()
            return
        self._reply(Reply(220, "", f"{self.limits.hostname} ESMTP msgspool"))
        self._flush()
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._busy:
            if len(self._buffer) > 4 * MAX_COMMAND_LINE + self.limits.spill_threshold and not self._paused:
                self._paused = True
                assert self.transport is not None
                self.transport.pause_reading()
            return
        self._arm_timer()
        self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ended:  # a failed TLS handshake may tell twice
            return
        self._ended = True
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        self._stop_data_timer()
        self._drop_spill()
        # A commit already under way finishes (the message is then in the spool and will be sent,
        # as with any MTA whose client vanished before reading the 250); nothing else is kept.
        self.policy.disconnect(self.session)

    # -- the input loop -----------------------------------------------------------------------

    def _process(self) -> None:
        while not self._busy and not self._closing:
            if self._in_data:
                if not self._take_data():
                    break
                continue
            line = self._take_line()
            if line is None:
                break
            if self._auth_step is not None:
                step, self._auth_step = self._auth_step, None
                if line is not _SKIPPED:
                    step(line.decode("ascii", "replace").strip())
                else:
                    self._error(AUTH_BAD_RESPONSE)
            elif line is not _SKIPPED:
                self._command(line)
        self._flush()

    def _take_line(self) -> bytes | None:
        buf = self._buffer
        end = buf.find(b"\n")
        if end < 0:
            if len(buf) > MAX_COMMAND_LINE:
                buf.clear()
                if not self._skipping_line:
                    self._skipping_line = True
                    self._error(LINE_TOO_LONG)
            return None
        line = bytes(buf[:end])
        del buf[: end + 1]
        if self._skipping_line:  # the tail of an overlong line: already answered
            self._skipping_line = False
            return _SKIPPED
        if len(line) > MAX_COMMAND_LINE:
            self._error(LINE_TOO_LONG)
            return _SKIPPED
        return line[:-1] if line.endswith(b"\r") else line

    def drain(self) -> None:
        """Orderly shutdown: a session between transactions is told 421 now; one in a transaction
        finishes it (up to its 250 after DATA, RFC 5321 §3.8) and is told then."""
        self._draining = True
        if not self._busy and not self._in_data and self.envelope.sender is None and not self._closing:
            self._reply(SHUTTING_DOWN)
            self._close()

    def _command(self, raw: bytes) -> None:
        if self._draining and self.envelope.sender is None:
            self._reply(SHUTTING_DOWN)
            self._close()
            return
        if b"\x00" in raw:
            self._error(NUL_IN_COMMAND)
            return
        text = raw.decode("utf-8", "surrogateescape")
        verb, _, arg = text.partition(" ")
        handler = _COMMANDS.get(verb.upper())
        if handler is None:
            self._error(NOT_RECOGNIZED)
            return
        handler(self, arg.strip())

    def _take_data(self) -> bool:
        """Consume content; True when the end of data was found (and its commit started)."""
        buf = self._buffer
        if self._data_scanned == 0 and buf.startswith(b".\r\n"):  # an empty message
            end, content_end = 0, 0
        else:
            end = buf.find(b"\r\n.\r\n", max(0, self._data_scanned - 4))
            if end < 0:
                self._data_scanned = len(buf)
                self._bound_content()
                return False
            content_end = end + 2
            end += 2
        content = self._spilled_content() + bytes(buf[:content_end])
        del buf[: end + 3]
        discarded, self._data_discarded = self._data_discarded, 0
        self._in_data = False
        self._data_scanned = 0
        self._stop_data_timer()
        self._finish_data(content, discarded)
        return True

    def _bound_content(self) -> None:
        """Keep a DATA phase's memory bounded: content beyond the size limit is thrown away, content
        beyond the spill threshold goes to a file. The last 4 bytes stay: the end-of-data sequence
        may straddle two reads."""
        keep = 4
        buf = self._buffer
        if len(buf) <= keep:
            return
        if self._data_discarded or self._spilled + len(buf) > self.limits.max_message_size + keep:
            cut = len(buf) - keep
            self._data_discarded += self._spilled + cut
            self._drop_spill()
            del buf[:cut]
            self._data_scanned = len(buf)
        elif len(buf) > self.limits.spill_threshold + keep and not self._spill_failed:
            cut = len(buf) - keep
            try:
                if self._spill is None:
                    # Unnamed (O_TMPFILE): gone with the session or the process. Closed by _drop_spill.
                    self._spill = tempfile.TemporaryFile(dir=self.limits.spill_dir)  # noqa: SIM115
                self._spill.write(buf[:cut])
            except OSError as err:  # a full disk: this message stays in memory (up to the size limit)
                log.warning("content from [%s] kept in memory: cannot spill to %s: %s", self.session.peer[0],
                            self.limits.spill_dir or tempfile.gettempdir(), err)
                buf[:0] = self._spilled_content()
                self._spill_failed = True  # for the rest of this message
                self._data_scanned = len(buf)
                return
            self._spilled += cut
            del buf[:cut]
            self._data_scanned = len(buf)

    def _spilled_content(self) -> bytes:
        if self._spill is None:
            return b""
        self._spill.seek(0)
        content = self._spill.read(self._spilled)
        self._drop_spill()
        return content

    def _drop_spill(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None
        self._spilled = 0
        self._spill_failed = False

    def _finish_data(self, content: bytes, discarded: int) -> None:
        envelope, self.envelope = self.envelope, Envelope()
        if discarded or len(content) > self.limits.max_message_size:
            self._reply(TOO_BIG)
            return
        crlf = content.count(b"\r\n")
        if content.count(b"\n") != crlf:
            self._reply(BARE_LF)
            return
        if content.count(b"\r") != crlf:
            self._reply(BARE_CR)
            return
        if b"\x00" in content:
            self._reply(NUL_IN_DATA)
            return
        # §4.5.2: a line starting with a period had one more added by the client.
        content = content.replace(b"\r\n..", b"\r\n.")
        if content.startswith(b".."):
            content = content[1:]
        self._busy = True
        self._task = asyncio.ensure_future(self._commit(envelope, content))

    async def _commit(self, envelope: Envelope, content: bytes) -> None:
        try:
            reply = await self.policy.data(self.session, envelope, content)
        except Exception:
            log.exception("commit failed; the client gets a temporary error")
            reply = LOCAL_ERROR
        self.session.transactions += 1
        self._busy = False
        if self._closing:
            return
        self._reply(reply)
        if self._draining:
            self._reply(SHUTTING_DOWN)
            self._close()
            return
        self._resume()

    def _resume(self) -> None:
        """After an await (a commit, a credentials check): on with the input that waited."""
        if self._paused:
            self._paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        self._arm_timer()
        self._process()

    # -- output -------------------------------------------------------------------------------

    def _reply(self, reply: Reply) -> None:
        self._out.append(reply.wire())

    def _error(self, reply: Reply) -> None:
        self._reply(reply)
        self._errors += 1
        if self._errors >= self.limits.hard_error_limit:
            self._reply(TOO_MANY_ERRORS)
            self._close()

    def _refuse(self, reply: Reply) -> None:
        """A policy's refusal: permanent ones count toward the error limit, as Postfix counts them."""
        if reply.code >= 500:
            self._error(reply)
        else:
            self._reply(reply)

    def _flush(self) -> None:
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def _close(self) -> None:
        self._flush()
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def _arm_timer(self) -> None:
        """Note activity. The idle timer is lazy: re-armed only when it fires early, so a busy
        session costs one clock read per network read instead of a timer cancel and create."""
        loop = asyncio.get_running_loop()
        self._last_activity = loop.time()
        if self._timer is None:
            self._timer = loop.call_at(self._last_activity + self.limits.command_timeout, self._check_idle)

    def _check_idle(self) -> None:
        loop = asyncio.get_running_loop()
        due = self._last_activity + self.limits.command_timeout
        if loop.time() < due or self._busy:
            self._timer = loop.call_at(max(due, loop.time() + 0.01), self._check_idle)
            return
        self._timer = None
        self._timed_out()

    def _stop_data_timer(self) -> None:
        if self._data_timer is not None:
            self._data_timer.cancel()
            self._data_timer = None

    def _data_timed_out(self) -> None:
        """The DATA deadline passed: whatever came of the content is dropped with the session."""
        self._data_timer = None
        if not self._in_data or self._closing:
            return
        log.warning("timeout after DATA from [%s]: %d bytes in %.0f s", self.session.peer[0],
                    self._spilled + len(self._buffer) + self._data_discarded, self.limits.data_timeout)
        self._buffer.clear()
        self._drop_spill()
        self._in_data = False
        self._reply(Reply(DATA_TIMEOUT.code, DATA_TIMEOUT.enhanced, f"{self.limits.hostname} {DATA_TIMEOUT.text}"))
        self._close()

    def _timed_out(self) -> None:
        if self._busy or self._closing:
            return
        self._reply(Reply(TIMEOUT.code, TIMEOUT.enhanced, f"{self.limits.hostname} {TIMEOUT.text}"))
        self._close()

    # -- commands (RFC 5321 §4.1.1) -----------------------------------------------------------

    def smtp_ehlo(self, arg: str) -> None:
        if not arg or _CONTROL.search(arg):  # it goes into the Received: header
            self._error(Reply(501, "5.5.4", "Syntax: EHLO hostname"))
            return
        self.session.helo, self.session.esmtp = arg, True
        self.envelope = Envelope()
        keywords = [self.limits.hostname, "PIPELINING", f"SIZE {self.limits.max_message_size}", "8BITMIME",
                    "ENHANCEDSTATUSCODES", "SMTPUTF8", "DSN"]
        if self.tls is not None and self.session.tls is None:
            keywords.append("STARTTLS")
        if not self.session.authenticated and self.policy.auth(self.session) is None:
            keywords.append("AUTH " + " ".join(AUTH_MECHANISMS))
        hold_max = self.policy.future_release(self.session)
        if hold_max > 0:
            keywords.append(futurerelease.ehlo_keyword(hold_max, time.time()))
        self._reply(Reply(250, "", "\n".join(keywords)))

    def smtp_helo(self, arg: str) -> None:
        if not arg or _CONTROL.search(arg):  # it goes into the Received: header
            self._error(Reply(501, "5.5.4", "Syntax: HELO hostname"))
            return
        self.session.helo, self.session.esmtp = arg, False
        self.envelope = Envelope()
        self._reply(Reply(250, "", self.limits.hostname))

    def _path_and_params(self, arg: str, command: str) -> tuple[str, dict[str, str]] | None:
        """``FROM:<path> KEY=VALUE ...`` -> (path, params); answers the syntax error itself. ESMTP
        parameters need EHLO (RFC 5321 §4.1.1.11)."""
        parsed = parse_path(arg, command.split()[1])
        if parsed is None:
            self._error(Reply(501, "5.5.4", f"Syntax: {command}:<address>"))
            return None
        path, param_text = parsed
        params = parse_params(param_text)
        if isinstance(params, str) or (params and not self.session.esmtp):
            self._error(Reply(501, "5.5.4", params if isinstance(params, str) else "Syntax error in parameters"))
            return None
        return path, params

    def smtp_mail(self, arg: str) -> None:
        if self.session.helo is None:
            self._error(NEED_HELO)
            return
        if self.envelope.sender is not None:
            self._error(NESTED_MAIL)
            return
        parsed = self._path_and_params(arg, "MAIL FROM")
        if parsed is None:
            return
        sender, params = parsed
        hold_max = self.policy.future_release(self.session)
        refusal = self._mail_params(params, hold_max)
        if refusal is None and sender and not valid_mailbox(sender):
            refusal = Reply(501, "5.1.7", f"<{printable(sender)}>: Bad sender address syntax")
        if refusal is None and not sender.isascii() and "SMTPUTF8" not in params:
            refusal = NEED_SMTPUTF8
        dsn, release_at = None, None
        if refusal is None:
            dsn, release_at, refusal = self._mail_extensions(params, hold_max)
        if refusal is None:
            refusal = self.policy.mail(self.session, self.envelope, sender, params)
        if refusal is not None:
            self._refuse(refusal)
            return
        self.envelope.sender, self.envelope.mail_params, self.envelope.dsn = sender, params, dsn
        self.envelope.release_at = release_at
        self.envelope.smtputf8 = "SMTPUTF8" in params
        self.envelope.body = params.get("BODY", "7BIT").upper()
        self._reply(SENDER_OK)

    def _mail_extensions(self, params: dict[str, str],
                         hold_max: int) -> tuple[MessageDSN | None, float | None, Reply | None]:
        """The DSN (RFC 3461) and FUTURERELEASE (RFC 4865) parameters, parsed by the domain:
        (RET/ENVID, release time, None), or the reply refusing them."""
        try:
            dsn = parse_mail_params(params) if "RET" in params or "ENVID" in params else None
            release_at = futurerelease.release_time(params, time.time(), hold_max) if hold_max > 0 else None
        except (DSNSyntaxError, FutureReleaseError) as err:
            return None, None, err.reply
        return dsn, release_at, None

    def _mail_params(self, params: dict[str, str], hold_max: int) -> Reply | None:
        for key, value in params.items():
            if key == "SIZE":
                if not value.isdigit():
                    return Reply(501, "5.5.4", "Bad SIZE parameter")
                if int(value) > self.limits.max_message_size:
                    return TOO_BIG
            elif key == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    return Reply(501, "5.5.4", "Bad BODY parameter")
            elif key == "SMTPUTF8":
                if value:
                    return Reply(501, "5.5.4", "SMTPUTF8 takes no value")
            elif key == "AUTH":  # RFC 4954 §5: accepted wherever AUTH is offered; the identity is not relayed
                if not value:
                    return Reply(501, "5.5.4", "Bad AUTH parameter")
            elif key not in ("RET", "ENVID") and not (hold_max > 0 and key in futurerelease.PARAMETERS):
                # RFC 5321 §4.1.1.11: a parameter of an extension not offered is unrecognized.
                return Reply(555, "5.5.4", f"Unsupported option: {key}")
        return None

    def smtp_rcpt(self, arg: str) -> None:
        if self.envelope.sender is None:
            self._error(NEED_MAIL)
            return
        parsed = self._path_and_params(arg, "RCPT TO")
        if parsed is None:
            return
        address, params = parsed
        unknown = set(params) - {"NOTIFY", "ORCPT"}
        if unknown:
            self._error(Reply(555, "5.5.4", f"Unsupported option: {min(unknown)}"))
            return
        try:
            dsn = parse_rcpt_params(params, smtputf8=self.envelope.smtputf8) if params else None
        except DSNSyntaxError as err:
            self._error(err.reply)
            return
        if not (valid_mailbox(address) or address.lower() == "postmaster"):
            self._error(Reply(501, "5.1.3", f"<{printable(address)}>: Bad recipient address syntax"))
            return
        if not address.isascii() and not self.envelope.smtputf8:
            self._error(NEED_SMTPUTF8)
            return
        if len(self.envelope.recipients) >= self.limits.max_recipients:
            self._reply(TOO_MANY_RECIPIENTS)
            return
        refusal = self.policy.rcpt(self.session, self.envelope, address, params)
        if refusal is not None:
            self._refuse(refusal)
            return
        self.envelope.recipients.append(address)
        self.envelope.rcpt_params.append(params)
        self.envelope.rcpt_dsn.append(dsn)
        self._reply(RECIPIENT_OK)

    def smtp_data(self, arg: str) -> None:
        if arg:
            self._error(Reply(501, "5.5.4", "Syntax: DATA"))
        elif self.envelope.sender is None:
            self._error(NEED_MAIL)
        elif not self.envelope.recipients:
            # With PIPELINING the client sent DATA before seeing its RCPTs fail (RFC 2920 §3.1).
            self._error(NO_VALID_RECIPIENTS if self.session.esmtp else NEED_RCPT)
        else:
            self._reply(START_DATA)
            self._in_data = True
            self._data_scanned = 0
            self._data_timer = asyncio.get_running_loop().call_later(self.limits.data_timeout, self._data_timed_out)

    def smtp_starttls(self, arg: str) -> None:
        if arg:
            self._error(Reply(501, "5.5.4", "Syntax: STARTTLS"))
        elif self.tls is None:
            self._error(NOT_IMPLEMENTED)
        elif self.session.tls is not None:
            self._error(TLS_ACTIVE)
        elif self.envelope.sender is not None:
            self._error(MAIL_IN_PROGRESS)
        else:
            self._reply(READY_FOR_TLS)
            if self._buffer or self._skipping_line:
                log.warning("[%s] sent %d bytes pipelined after STARTTLS: discarded", self.session.peer[0],
                            len(self._buffer))
            self._buffer.clear()
            self._skipping_line = False
            self._busy = True
            assert self.transport is not None
            self.transport.pause_reading()  # start_tls resumes it, for the handshake
            self._task = asyncio.ensure_future(self._start_tls(self.tls))

    async def _start_tls(self, context: ssl.SSLContext) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(self.transport, self, context, server_side=True,
                                             ssl_handshake_timeout=min(TLS_HANDSHAKE_TIMEOUT,
                                                                       self.limits.command_timeout))
        except (OSError, RuntimeError) as err:  # ssl.SSLError, a reset, the handshake timeout
            log.info("TLS handshake with [%s] failed: %s", self.session.peer[0], err or type(err).__name__)
            self.transport.abort()
            self.connection_lost(err)
            return
        if transport is None or self._closing:
            return
        self.transport = transport
        self.session.tls = describe(transport.get_extra_info("ssl_object"))
        self.session.helo, self.session.esmtp, self.session.authenticated = None, False, False
        self.session.login, self.session.senders = None, ()
        self.envelope = Envelope()
        self._busy = False
        self._arm_timer()
        self._process()  # what the client sent once encrypted, before this ran

    def smtp_auth(self, arg: str) -> None:
        if not self.session.esmtp:
            self._error(NEED_HELO)
            return
        if self.session.authenticated:
            self._error(ALREADY_AUTHENTICATED)
            return
        if self.envelope.sender is not None:
            self._error(MAIL_IN_PROGRESS)
            return
        refusal = self.policy.auth(self.session)
        if refusal is not None:
            self._refuse(refusal)
            if refusal.code == 421:
                self._close()
            return
        mechanism, _, initial = arg.partition(" ")
        mechanism, initial = mechanism.upper(), initial.strip()
        if mechanism not in AUTH_MECHANISMS:
            self._error(UNSUPPORTED_MECHANISM if mechanism else Reply(501, "5.5.4", "Syntax: AUTH mechanism"))
        elif mechanism == "PLAIN":
            self._auth_respond(initial, b"", self._auth_plain)
        else:
            self._auth_respond(initial, b"VXNlcm5hbWU6", self._auth_login_user)  # "Username:"

    def _auth_respond(self, initial: str, challenge: bytes, step: Callable[[str], None]) -> None:
        """Feed `step` the initial response (RFC 4954 §4; ``=`` is an empty one), or ask for one."""
        if initial:
            step("" if initial == "=" else initial)
            return
        self._out.append(b"334 " + challenge + b"\r\n")
        self._auth_step = step

    def _auth_decode(self, response: str) -> bytes | None:
        """A response line decoded; None (and the reply sent) when it cancels or is not base64."""
        if response == "*":
            self._reply(AUTH_CANCELLED)
            return None
        try:
            return base64.b64decode(response, validate=True)
        except (binascii.Error, ValueError):
            self._error(AUTH_BAD_RESPONSE)
            return None

    def _auth_plain(self, response: str) -> None:
        decoded = self._auth_decode(response)
        if decoded is None:
            return
        parts = decoded.split(b"\x00")
        if len(parts) != 3:  # RFC 4616 §2: [authzid] NUL authcid NUL passwd
            self._error(AUTH_BAD_RESPONSE)
            return
        self._auth_check("PLAIN", parts[0], parts[1], parts[2])

    def _auth_login_user(self, response: str) -> None:
        decoded = self._auth_decode(response)
        if decoded is not None:
            self._out.append(b"334 UGFzc3dvcmQ6\r\n")  # "Password:"
            self._auth_step = lambda answer: self._auth_login_password(decoded, answer)

    def _auth_login_password(self, user: bytes, response: str) -> None:
        decoded = self._auth_decode(response)
        if decoded is not None:
            self._auth_check("LOGIN", b"", user, decoded)

    def _auth_check(self, mechanism: str, authzid: bytes, user: bytes, password: bytes) -> None:
        self._busy = True
        self._task = asyncio.ensure_future(self._authenticate(
            mechanism, authzid.decode("utf-8", "replace"), user.decode("utf-8", "replace"), password))

    async def _authenticate(self, mechanism: str, authzid: str, user: str, password: bytes) -> None:
        try:
            reply = await self.policy.authenticate(self.session, mechanism, authzid, user, password)
        except Exception:
            log.exception("authentication check failed; the client gets a temporary error")
            reply = Reply(454, "4.7.0", "Temporary authentication failure")
        self._busy = False
        if self._closing:
            return
        self._refuse(reply)
        if reply.code == 421:
            self._close()
            return
        self._resume()

    def smtp_rset(self, arg: str) -> None:
        self.envelope = Envelope()
        self._reply(OK)

    def smtp_noop(self, arg: str) -> None:
        self._reply(OK)

    def smtp_quit(self, arg: str) -> None:
        self._reply(BYE)
        self._close()

    def smtp_vrfy(self, arg: str) -> None:
        if not arg:
            self._error(Reply(501, "5.5.4", "Syntax: VRFY address"))
        else:
            self._reply(CANNOT_VRFY)

    def smtp_expn(self, arg: str) -> None:
        self._error(EXPN_DISABLED)

    def smtp_help(self, arg: str) -> None:
        self._reply(HELP)


_COMMANDS: dict[str, Callable[[SMTPServerProtocol, str], None]] = {
    "EHLO": SMTPServerProtocol.smtp_ehlo, "HELO": SMTPServerProtocol.smtp_helo,
    "MAIL": SMTPServerProtocol.smtp_mail, "RCPT": SMTPServerProtocol.smtp_rcpt,
    "DATA": SMTPServerProtocol.smtp_data, "RSET": SMTPServerProtocol.smtp_rset,
    "NOOP": SMTPServerProtocol.smtp_noop, "QUIT": SMTPServerProtocol.smtp_quit,
    "VRFY": SMTPServerProtocol.smtp_vrfy, "EXPN": SMTPServerProtocol.smtp_expn,
    "HELP": SMTPServerProtocol.smtp_help, "STARTTLS": SMTPServerProtocol.smtp_starttls,
    "AUTH": SMTPServerProtocol.smtp_auth,
}


async def start_server(policy: Policy, host: str, port: int, limits: ServerLimits, *,
                       tls: ssl.SSLContext | None = None, implicit_tls: bool = False,
                       sessions: Sessions | None = None) -> Listener:
    """A listener; with `tls` it offers STARTTLS, or with `implicit_tls` every session starts with
    the TLS handshake (RFC 8314 §3.3, port 465) and is greeted only once it is encrypted. When the
    process is out of descriptors, new clients get ``421 4.7.0`` (accept.py)."""
    refusal = Reply(421, "4.7.0", f"{limits.hostname} Error: too many connections; try again later").wire()
    if implicit_tls:
        assert tls is not None
        return await listen(host, port, lambda: SMTPServerProtocol(policy, limits, tls, sessions), refusal=b"",
                            tls=tls, handshake_timeout=min(TLS_HANDSHAKE_TIMEOUT, limits.command_timeout))
    return await listen(host, port, lambda: SMTPServerProtocol(policy, limits, tls, sessions), refusal=refusal)
