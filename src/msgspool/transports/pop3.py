"""POP3 fetch (RFC 1939) with poplib: the ``pop3`` entry point of ``msgspool.fetchers``.

A session is one poll: connect (implicit TLS, or STLS per RFC 2595 before anything else is sent),
USER/PASS, UIDL for the unique ids (§7: the fetcher keeps the ones it filed, so a message is never
fetched twice, with ``after = "keep"`` too), LIST for the sizes, RETR for each new message, DELE for
each message once it is committed to the spool (``after = "delete"``), and QUIT — only then does the
server remove what DELE marked (§6, the UPDATE state). A session lost before QUIT deletes nothing:
the next poll finds those ids already filed and deletes them without filing them again.
"""

from __future__ import annotations

import poplib
import ssl
import threading
from typing import Any

from msgspool.domain.fetch import FetchAccount
from msgspool.errors import FetchError, LoginRefused
from msgspool.transports import fetch_account

# poplib refuses lines longer than 2048 bytes; RFC 5322 allows 998 and real mail sends longer
# (unwrapped HTML): a long line is mail, not an attack, while a line without end is bounded here.
MAX_LINE = 1 << 20


class _LongLines(poplib.POP3):
    def _getline(self) -> tuple[bytes, int]:
        line = self.file.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise poplib.error_proto("line too long")
        if not line:
            raise poplib.error_proto("-ERR EOF")
        octets = len(line)
        if line[-2:] == b"\r\n":
            return line[:-2], octets
        if line[:1] == b"\r":
            return line[1:-1], octets
        return line[:-1], octets


class _Plain(_LongLines):
    pass


class _Implicit(_LongLines, poplib.POP3_SSL):
    pass


def _text(err: BaseException) -> str:
    """The server's words (poplib and imaplib keep them as bytes), or the error's own."""
    arg = err.args[0] if err.args else None
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(err) or type(err).__name__


class POP3Session:
    def __init__(self, account: FetchAccount, pop: poplib.POP3) -> None:
        self.account, self.pop = account, pop
        self.leaves_copy = account.after == "keep"
        self.can_wait = False  # POP3 has no way to be told of new mail: polled on the interval
        self._numbers: dict[str, int] = {}
        self._sizes: dict[int, int] = {}

    def uids(self) -> list[str]:
        try:
            _resp, lines, _octets = self.pop.uidl()
            _resp, sizes, _octets = self.pop.list()
        except poplib.error_proto as err:
            raise FetchError(f"UIDL/LIST refused ({_text(err)}): a server without UIDL (RFC 1939 §7) cannot be"
                             " fetched from without fetching a message twice") from None
        self._numbers = {}
        for line in lines:
            number, _, uid = line.decode("ascii", "replace").partition(" ")
            self._numbers[uid.strip()] = int(number)
        self._sizes = {int(n): int(s) for n, _, s in (line.decode("ascii").partition(" ") for line in sizes)}
        return list(self._numbers)

    def size(self, uid: str) -> int | None:
        return self._sizes.get(self._numbers[uid])

    def retrieve(self, uid: str) -> bytes:
        _resp, lines, _octets = self._command(self.pop.retr, uid)
        return b"".join(line + b"\r\n" for line in lines)

    def done(self, uid: str) -> None:
        if self.account.after == "delete":
            self._command(self.pop.dele, uid)

    def wait(self, timeout: float, stop: threading.Event) -> bool | None:
        return None  # POP3 has no way to be told of new mail: polled on the interval

    def close(self) -> None:
        try:
            self.pop.quit()  # the UPDATE state: the messages marked deleted go now
        except (poplib.error_proto, OSError) as err:
            self.pop.close()
            raise FetchError(f"QUIT failed, nothing deleted this time: {_text(err)}") from None

    def _command(self, method: Any, uid: str) -> Any:
        try:
            return method(self._numbers[uid])
        except poplib.error_proto as err:
            raise FetchError(f"{method.__name__.upper().rstrip('_')} of {uid} refused: {_text(err)}") from None


class POP3Fetcher:
    """The account's sessions; `open` runs in the fetcher's thread."""

    def __init__(self, account: FetchAccount, settings: Any = None) -> None:
        self.account, self.name = account, account.name
        self.context = fetch_account.tls_context(account)

    def check(self) -> None:
        fetch_account.check(self.account)

    def open(self) -> POP3Session:
        a = self.account
        try:
            pop = self._connect()
        except (OSError, poplib.error_proto) as err:
            raise FetchError(f"cannot connect to {a.host}:{a.port}: {_text(err)}") from None
        try:
            if a.security == "starttls":
                pop.stls(self.context)  # RFC 2595 §4: before USER, so no password crosses in clear
            password = fetch_account.credentials(a).password()
            pop.user(a.user)
            pop.pass_(password)
        except poplib.error_proto as err:
            pop.close()
            if a.security == "starttls" and not isinstance(pop.sock, ssl.SSLSocket):
                raise FetchError(f"{a.host}:{a.port}: STLS refused: {_text(err)}") from None
            raise LoginRefused(f"{a.host}:{a.port} refused the login of {a.user}: {_text(err)}") from None
        except (OSError, ValueError) as err:
            pop.close()
            raise FetchError(f"{a.host}:{a.port}: {_text(err)}") from None
        return POP3Session(a, pop)

    def _connect(self) -> poplib.POP3:
        a = self.account
        if a.security == "tls":
            return _Implicit(a.host, a.port, timeout=a.timeout, context=self.context)
        return _Plain(a.host, a.port, timeout=a.timeout)
