"""The mbox format as Postfix's local(8) appends to a file named in an alias (`/path` members).

One message in the file is::

    From sender  Sun Dec  6 23:12:05 2026     the From_ line: envelope sender (MAILER-DAEMON for
    Return-Path: <sender>                     the null one), two spaces, the local time as asctime()
    Delivered-To: alias@domain
    ...the message, lines ended by LF, a line that starts with "From " written as ">From "...
                                              and an empty line after it

That is Postfix's mail_copy() with MAIL_COPY_MBOX: only "From " at the start of a line is
quoted (the mboxo/mboxcl convention; mboxrd would also quote ">From " as ">>From "), which is what
Python's `mailbox.mbox`, mutt and Dovecot's mbox reader expect of such a file. Pure code: the
locked append itself is transports/file.py's.
"""

from __future__ import annotations

import re
import time

from msgspool.domain.maildir import delivered_headers, to_lf

NULL_SENDER = "MAILER-DAEMON"  # the From_ line's sender for the null envelope sender (Postfix's)
_FROM_LINE = re.compile(rb"^From ", re.MULTILINE)


def from_line(sender: str, now: float) -> bytes:
    """The From_ line that starts a message in an mbox file (Postfix: "From %s  %.24s")."""
    who = sender or NULL_SENDER
    if any(c.isspace() for c in who):  # a quoted local part with a space would split the line
        who = who.replace(" ", "_").replace("\t", "_")
    return f"From {who}  {time.asctime(time.localtime(now))}\n".encode("utf-8", "surrogateescape")


def quote_from(body: bytes) -> bytes:
    """A line that starts with "From " gets a ">" (else a reader takes it for the next message)."""
    return _FROM_LINE.sub(b">From ", body)


def entry(sender: str, recipient: str, content: bytes, now: float) -> bytes:
    """What is appended for one message: the From_ line, Return-Path and Delivered-To, the content
    (CRLF to LF, From-quoted, ended by a line end) and an empty line."""
    body = quote_from(delivered_headers(sender, recipient) + to_lf(content))
    if not body.endswith(b"\n"):
        body += b"\n"
    return from_line(sender, now) + body + b"\n"
