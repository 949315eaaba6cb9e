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
the spool, so that the nodes of a shared one answer once between them; spooler/local.py asks).
A script that does not compile, or fails at run time, files
the message into the inbox (RFC 5228 §2.10.6, the implicit keep) and says why in the log: a broken
filter never loses mail or stops it. Scripts are compiled once and again when their file changes.
"""

from __future__ import annotations

import logging
import threading
import time
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
        """The reply, if this message calls for one; whether one already went to this sender in
        the period is the store's to say, when the reply is sent (AutoReply.once)."""
        reply = vacation_reply(vacation, message, now=time.time())
        return [] if reply is None else [AutoReply(vacation.sender, reply, once=(mailbox, *vacation.key),
                                                   period=float(vacation.seconds))]

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
