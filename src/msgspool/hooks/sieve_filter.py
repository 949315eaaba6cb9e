"""The built-in inbound hook `sieve`: runs each local mailbox's Sieve script (RFC 5228) on its mail.

    [[hooks]]
    name = "filters"
    type = "sieve"
    scripts = "sieve"          # folder of scripts, one per mailbox: <mailbox>.sieve (relative: to
                               # the data directory); e.g. sieve/you@localhost.sieve
    default = ""               # optional: the script for mailboxes without one of their own
    max_redirects = 4          # most redirects one script may do per message

What a script decides becomes the recipient's outcome (spooler/local.py): ``keep`` and ``fileinto``
file a copy (with imap4flags flags; ``\\Seen`` files it read), ``redirect`` forwards, ``discard``
files nothing, ``reject``/``ereject`` fail the recipient with ``550 5.7.1 <reason>`` (after the
message was accepted, the sender learns it from the NDR, RFC 5429 §2.1), ``vacation`` sends one
auto-reply per sender and handle per period (RFC 5230 §4.2, §4.5: the last-sent times are kept in
``vacation.db`` in the data directory). A script that does not compile, or fails at run time, files
the message into the inbox (RFC 5228 §2.10.6, the implicit keep) and says why in the log: a broken
filter never loses mail or stops it. Scripts are compiled once and again when their file changes.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from msgspool.domain.address import mailbox_key
from msgspool.domain.hooks import AutoReply, Delivery, File, Forward, InboundAction, Reject
from msgspool.domain.sieve import Discard, Envelope, FileInto, Keep, Outcome, Redirect, Script, Vacation, evaluate
from msgspool.domain.vacation import vacation_reply
from msgspool.errors import ConfigError
from msgspool.hooks.sieve import SieveError, compile_script, reject_reply

log = logging.getLogger("msgspool.sieve")


class SieveFilter:
    def __init__(self, name: str, settings: Any, options: dict[str, Any]) -> None:
        self.name = name
        data = Path(settings.data_dir)
        self.scripts = data / str(options.pop("scripts", "sieve"))
        default = str(options.pop("default", ""))
        self.default = data / default if default else None
        self.max_redirects = int(options.pop("max_redirects", 4))
        if options:
            raise ConfigError(f"hook {name}: unknown options {', '.join(sorted(options))}")
        self.vacations = VacationLog(data / "vacation.db")
        self._compiled: dict[Path, tuple[tuple[int, int], Script | None]] = {}
        self._lock = threading.Lock()

    def postprocess(self, delivery: Delivery) -> list[InboundAction] | Reject | None:
        script = self._script(delivery.mailbox)
        if script is None:
            return None
        message = delivery.with_added_headers()  # e.g. dkim_verify's result, for header tests
        outcome = evaluate(script, message, Envelope(delivery.sender, delivery.recipient),
                           mailbox=delivery.mailbox, max_redirects=self.max_redirects)
        if outcome.error is not None:
            log.warning("%s: sieve script of %s failed: %s; kept", delivery.message_id, delivery.mailbox,
                        outcome.error)
        if outcome.reject is not None:
            return Reject(reject_reply(outcome.reject))
        return self._actions(outcome, delivery, message)

    def _actions(self, outcome: Outcome, delivery: Delivery, message: bytes) -> list[InboundAction]:
        actions: list[InboundAction] = []
        for action in outcome.actions:
            if isinstance(action, Keep):
                actions.append(File(None, action.flags))
            elif isinstance(action, FileInto):
                actions.append(File(action.folder, action.flags))
            elif isinstance(action, Redirect):
                actions.append(Forward(action.address))
            elif isinstance(action, Vacation):
                actions.extend(self._vacation(action, delivery.mailbox, message))
            else:
                assert isinstance(action, Discard)
        return actions

    def _vacation(self, vacation: Vacation, mailbox: str, message: bytes) -> list[InboundAction]:
        now = time.time()
        reply = self.vacations.answer_once((mailbox, *vacation.key), now, lambda last_sent: vacation_reply(
            vacation, message, now=now, last_sent=last_sent))
        return [] if reply is None else [AutoReply(vacation.sender, reply)]

    def _script(self, mailbox: str) -> Script | None:
        """The mailbox's script (else the default one), compiled; None when it has none or it
        does not compile."""
        own = self.scripts / f"{mailbox_key(mailbox)}.sieve"
        for path in (own, self.default):
            if path is not None and path.is_file():
                return self._compile(path)
        return None

    def _compile(self, path: Path) -> Script | None:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._compiled.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        try:
            script: Script | None = compile_script(path.read_text(encoding="utf-8"))
        except (SieveError, UnicodeDecodeError) as err:
            log.warning("sieve script %s does not compile: %s; mail is kept in the inbox", path, err)
            script = None
        with self._lock:
            self._compiled[path] = (stamp, script)
        return script


class VacationLog:
    """When a vacation reply last went to a sender, per mailbox and handle (RFC 5230 §4.2), in an
    SQLite file of its own: the hook's state, apart from the spool."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS vacation (mailbox TEXT, sender TEXT, handle TEXT,"
                           " sent_at REAL NOT NULL, PRIMARY KEY (mailbox, sender, handle))")
        self._lock = threading.Lock()

    def answer_once(self, key: tuple[str, str, str], now: float,
                    reply_for: Callable[[float | None], bytes | None]) -> bytes | None:
        """`reply_for(last_sent)`, recording `now` as the key's last-sent time when it gives a reply.
        One step: deliveries are filtered concurrently (a task per message, several hook threads),
        and two messages from one sender must not both see "not answered yet" (RFC 5230 §4.2). The
        write lock (BEGIN IMMEDIATE) makes it one step for another process on the same file too."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                reply = reply_for(self._last_sent(key))
                if reply is not None:
                    self._conn.execute("INSERT INTO vacation (mailbox, sender, handle, sent_at) VALUES (?,?,?,?)"
                                       " ON CONFLICT DO UPDATE SET sent_at = excluded.sent_at", (*key, now))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return reply

    def _last_sent(self, key: tuple[str, str, str]) -> float | None:
        row = self._conn.execute("SELECT sent_at FROM vacation WHERE mailbox = ? AND sender = ? AND handle = ?",
                                 key).fetchone()
        return None if row is None else float(row[0])
