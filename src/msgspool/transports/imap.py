"""IMAP fetch (RFC 3501; RFC 9051 keeps what is used here) with imaplib: the ``imap`` entry point of
``msgspool.fetchers``.

A session: connect (implicit TLS, or STARTTLS before LOGIN, §6.2.1), LOGIN, SELECT the folder, and
then, as often as the server has news: UID SEARCH UNDELETED for the messages there, each known by
``UIDVALIDITY:UID`` (§2.3.1.1: a UID means the same message only under the same UIDVALIDITY), UID
FETCH BODY.PEEK[] for each new one (PEEK: \\Seen is not set by reading, §6.4.5), and once it is
committed to the spool the account's ``after``:

    delete       UID STORE +FLAGS.SILENT (\\Deleted), then UID EXPUNGE (RFC 4315 UIDPLUS) or EXPUNGE
    flag         UID STORE +FLAGS.SILENT (\\Seen): the message stays, read
    move:FOLDER  UID MOVE (RFC 6851) when offered, else UID COPY + \\Deleted + expunge as above;
                 a FOLDER the server does not have ([TRYCREATE]) is created once; its levels
                 separated by "/", written with the server's hierarchy delimiter (LIST "" "")

When UIDVALIDITY changes (the folder was recreated), every message there is new again: it is fetched
once more. No Message-ID de-duplication is attempted (Message-ID is optional and not unique, RFC 5322
§3.6.4); with ``delete`` or ``move`` the folder only ever holds what was not fetched yet, so only
``flag`` may see copies after such a change, which servers make only when a folder's UIDs were lost.

With IDLE offered (RFC 2177) and ``idle = true``, the session stays open and waits: an EXISTS ends
the wait at once, else it is renewed every ``interval`` seconds (well under the 29 minutes RFC 2177
§3 allows), each time with a new look at the folder.
"""

from __future__ import annotations

import imaplib
import itertools
import re
import select
import ssl
import threading
import time
from typing import Any

from msgspool.domain.fetch import FetchAccount
from msgspool.domain.maildir import mutf7
from msgspool.errors import FetchError, LoginRefused
from msgspool.transports import fetch_account

WAIT_SLICE = 0.25  # seconds between looks at the stop flag during IDLE
MAX_LINE = 1_000_000  # imaplib's own cap on a line (its _MAXLINE), kept by _OwnBuffer
_TAGS = itertools.count(1)
_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_DELIMITER = re.compile(rb'\) "(\\?.)" ')


class _OwnBuffer:
    """imaplib's `read` and `readline` (its documented places to override) from a buffer of our
    own over the socket instead of the socket file's: so that an IDLE wait can see a line that came
    with the one before it ("+ idling" and "* 2 EXISTS" in one segment; the socket then has nothing
    more to say, and a line in a buffered reader it cannot look into would wait for the renewal —
    seen: a message that arrived as the IDLE began waited 120 s)."""

    sock: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pending = bytearray()
        super().__init__(*args, **kwargs)

    def _more(self) -> bool:
        data = self.sock.recv(65536)
        self._pending += data
        return bool(data)

    def readline(self) -> bytes:
        while (end := self._pending.find(b"\n")) < 0:
            if len(self._pending) > MAX_LINE:
                raise imaplib.IMAP4.error(f"got more than {MAX_LINE} bytes")
            if not self._more():
                end = len(self._pending) - 1  # the connection closed: what is left
                break
        line = bytes(self._pending[:end + 1])
        del self._pending[:end + 1]
        return line

    def read(self, size: int) -> bytes:
        while len(self._pending) < size and self._more():
            pass
        data = bytes(self._pending[:size])
        del self._pending[:size]
        return data

    def has_line(self) -> bool:
        """A whole line is here already: readline() will not wait for the socket."""
        return b"\n" in self._pending

    def starttls(self, *args: Any, **kwargs: Any) -> Any:
        answer = super().starttls(*args, **kwargs)  # type: ignore[misc]
        self._pending.clear()  # what came before the handshake came in clear: never read as TLS's
        return answer


class _IMAP4(_OwnBuffer, imaplib.IMAP4):
    pass


class _IMAP4_SSL(_OwnBuffer, imaplib.IMAP4_SSL):
    pass


def _text(err: BaseException) -> str:
    """The server's words (poplib and imaplib keep them as bytes), or the error's own."""
    arg = err.args[0] if err.args else None
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(err) or type(err).__name__


def _is_news(line: bytes) -> bool:
    """An untagged EXISTS or RECENT: new mail in the selected folder."""
    return line.startswith(b"* ") and line.rstrip().upper().endswith((b" EXISTS", b" RECENT"))


def quoted(folder: str) -> str:
    """A folder name as an IMAP quoted string, in modified UTF-7 (RFC 3501 §5.1.3)."""
    name = mutf7(folder) if folder.upper() != "INBOX" else folder
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class IMAPSession:
    def __init__(self, account: FetchAccount, imap: imaplib.IMAP4, validity: str) -> None:
        self.account, self.imap, self.validity = account, imap, validity
        self.leaves_copy = account.after == "flag"
        # imaplib keeps the capabilities of before LOGIN; a server may offer more after it (RFC 3501 §6.2.3).
        _typ, data = imap.capability()
        self.capabilities = {c.upper() for c in (data[0] or b"").decode("ascii", "replace").split()}
        self.can_wait = account.idle and "IDLE" in self.capabilities
        self._created = False
        self._separator: str | None = None

    def uids(self) -> list[str]:
        # UNDELETED: a message someone marked \Deleted is on its way out, not new mail (and one of
        # ours whose EXPUNGE a crash prevented is not asked about again)
        data = self._ok("UID SEARCH", self.imap.uid("SEARCH", "UNDELETED"))
        return [f"{self.validity}:{uid}" for uid in b" ".join(d for d in data if d).decode().split()]

    def size(self, key: str) -> int | None:
        data = self._ok("UID FETCH", self.imap.uid("FETCH", self._uid(key), "(RFC822.SIZE)"))
        for item in data:
            match = _SIZE.search(item if isinstance(item, bytes) else item[0])
            if match:
                return int(match.group(1))
        return None

    def retrieve(self, key: str) -> bytes:
        data = self._ok("UID FETCH", self.imap.uid("FETCH", self._uid(key), "(BODY.PEEK[])"))
        for item in data:
            if isinstance(item, tuple) and b"BODY[]" in item[0]:
                return bytes(item[1])
        raise FetchError(f"UID FETCH {self._uid(key)}: the server sent no message (expunged meanwhile?)")

    def done(self, key: str) -> None:
        uid, after = self._uid(key), self.account.after
        if after == "flag":
            self._ok("UID STORE", self.imap.uid("STORE", uid, "+FLAGS.SILENT", "(\\Seen)"))
        elif after == "delete":
            self._delete(uid)
        elif "MOVE" in self.capabilities:
            self._to_folder("MOVE", uid)
        else:
            self._to_folder("COPY", uid)
            self._delete(uid)

    def _to_folder(self, command: str, uid: str) -> None:
        folder = quoted((self.account.move_to or "").replace("/", self._delimiter()))
        typ, data = self.imap.uid(command, uid, folder)
        if typ != "OK" and b"TRYCREATE" in b" ".join(d for d in data if isinstance(d, bytes)) and not self._created:
            self._created = True
            self.imap.create(folder)  # RFC 3501 §6.4.7: [TRYCREATE] says a CREATE may help
            typ, data = self.imap.uid(command, uid, folder)
        self._ok(f"UID {command}", (typ, data))

    def _delimiter(self) -> str:
        """The server's hierarchy delimiter (RFC 3501 §6.3.8: LIST "" "" answers with it), "/" if none."""
        if self._separator is None:
            typ, data = self.imap.list('""', '""')
            match = _DELIMITER.search(data[0]) if typ == "OK" and data and isinstance(data[0], bytes) else None
            self._separator = match.group(1).decode() if match else "/"
        return self._separator

    def _delete(self, uid: str) -> None:
        self._ok("UID STORE", self.imap.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)"))
        if "UIDPLUS" in self.capabilities:  # RFC 4315: only this message, not others marked \Deleted
            self._ok("UID EXPUNGE", self.imap.uid("EXPUNGE", uid))
        else:
            self._ok("EXPUNGE", self.imap.expunge())

    def wait(self, timeout: float, stop: threading.Event) -> bool | None:
        """RFC 2177 IDLE until an EXISTS, `timeout`, or `stop`; then DONE and the tagged reply."""
        if not self.can_wait:
            return None
        tag = f"M{next(_TAGS)}".encode()
        self.imap.send(tag + b" IDLE\r\n")
        line, woken = self.imap.readline(), False
        while line.startswith(b"* "):  # news of before the IDLE may come ahead of its "+" (RFC 2177 §3)
            woken = woken or _is_news(line)
            line = self.imap.readline()
        if not line.startswith(b"+"):
            raise FetchError(f"IDLE refused: {line.decode('utf-8', 'replace').strip()}")
        woken = woken or self._idle_until(time.monotonic() + timeout, stop)
        self.imap.send(b"DONE\r\n")
        while not line.startswith(tag + b" "):
            line = self.imap.readline()
            if not line:
                raise FetchError("the server closed the connection during IDLE")
            woken = woken or _is_news(line)
        if not line.startswith(tag + b" OK"):
            raise FetchError(f"IDLE ended with {line.decode('utf-8', 'replace').strip()}")
        return woken

    def _idle_until(self, deadline: float, stop: threading.Event) -> bool:
        # A line is read when one is here already (in _OwnBuffer's buffer, or decrypted in the TLS
        # layer) or the socket has data, so that the stop flag is looked at every WAIT_SLICE.
        sock, imap = self.imap.sock, self.imap
        while not stop.is_set() and time.monotonic() < deadline:
            here = (isinstance(imap, _OwnBuffer) and imap.has_line()) or (
                isinstance(sock, ssl.SSLSocket) and sock.pending())
            if not here and not select.select([sock], [], [], min(WAIT_SLICE, deadline - time.monotonic()))[0]:
                continue
            line = self.imap.readline()
            if not line:
                raise FetchError("the server closed the connection during IDLE")
            if _is_news(line):
                return True
        return False

    def close(self) -> None:
        try:
            self.imap.logout()
        except (imaplib.IMAP4.error, OSError) as err:
            raise FetchError(f"LOGOUT failed: {_text(err)}") from None

    def _uid(self, key: str) -> str:
        return key.partition(":")[2]

    def _ok(self, what: str, answer: tuple[str, list[Any]]) -> list[Any]:
        typ, data = answer
        if typ != "OK":
            text = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")
            raise FetchError(f"{what} refused: {typ} {text}")
        return data


class IMAPFetcher:
    """The account's sessions; `open` runs in the fetcher's thread."""

    def __init__(self, account: FetchAccount, settings: Any = None) -> None:
        self.account, self.name = account, account.name
        self.context = fetch_account.tls_context(account)

    def check(self) -> None:
        fetch_account.check(self.account)

    def open(self) -> IMAPSession:
        a = self.account
        try:
            imap = self._connect()
        except (OSError, imaplib.IMAP4.error) as err:
            raise FetchError(f"cannot connect to {a.host}:{a.port}: {_text(err)}") from None
        try:
            return self._start(imap)
        except BaseException:
            imap.shutdown()
            raise

    def _connect(self) -> imaplib.IMAP4:
        a = self.account
        if a.security == "tls":
            return _IMAP4_SSL(a.host, a.port, ssl_context=self.context, timeout=a.timeout)
        return _IMAP4(a.host, a.port, timeout=a.timeout)

    def _start(self, imap: imaplib.IMAP4) -> IMAPSession:
        a = self.account
        try:
            if a.security == "starttls":
                imap.starttls(ssl_context=self.context)  # before LOGIN: no password in clear
        except (imaplib.IMAP4.error, OSError) as err:
            raise FetchError(f"{a.host}:{a.port}: STARTTLS failed: {_text(err)}") from None
        try:
            password = fetch_account.credentials(a).password()
        except (OSError, ValueError) as err:
            raise FetchError(f"{a.host}:{a.port}: {err}") from None
        try:
            imap.login(a.user, password)
        except imaplib.IMAP4.error as err:
            raise LoginRefused(f"{a.host}:{a.port} refused the login of {a.user}: {_text(err)}") from None
        except OSError as err:
            raise FetchError(f"{a.host}:{a.port}: {_text(err)}") from None
        try:
            typ, data = imap.select(quoted(a.folder))
            if typ != "OK":
                raise FetchError(f"{a.host}:{a.port}: SELECT {a.folder} refused: {_text(FetchError(*data))}")
            _typ, validity = imap.response("UIDVALIDITY")
        except (imaplib.IMAP4.error, OSError) as err:
            raise FetchError(f"{a.host}:{a.port}: SELECT {a.folder}: {_text(err)}") from None
        if not validity or validity[0] is None:
            raise FetchError(f"{a.host}:{a.port}: SELECT {a.folder} gave no UIDVALIDITY (RFC 3501 §2.3.1.1)")
        return IMAPSession(a, imap, validity[0].decode())
