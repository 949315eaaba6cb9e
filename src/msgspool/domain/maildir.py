"""Maildir: the names and layout of a mailbox kept as a directory, as qmail's maildir(5) and
Dovecot's Maildir++ define them (what transports/maildir.py writes and `mailbox export` writes).

A maildir is a directory with `tmp/`, `new/` and `cur/`. A message is written under a unique
name into `tmp/`, synced, then linked (or renamed) into `new/`, and `new/` is synced: only then
does it exist for a reader, and only then is it delivered. A reader moves it to `cur/` and adds
its flags after ``:2,`` (S seen, R replied, F flagged, T trashed, D draft; sorted).

    unique name    <seconds>.M<microseconds>P<pid>Q<n>.<host>,S=<size>   (Dovecot's form; S= lets a
                   reader know the size without a stat)
    folders        Maildir++: a sub-folder is a directory `.<name>` of the root, with a file
                   `maildirfolder` in it; the hierarchy separator is "."; names are IMAP modified
                   UTF-7 (RFC 3501 §5.1.3), as Dovecot stores them; the root itself is INBOX.

Everything here is pure: names, paths, header lines and the replies an OS error maps to.
"""

from __future__ import annotations

import errno
import re

from msgspool.domain.address import split
from msgspool.domain.outcome import Reply

SUBDIRS = ("tmp", "new", "cur")
FOLDER_MARKER = "maildirfolder"  # Maildir++: this directory is a folder, not a root
SUBSCRIPTIONS = "subscriptions"  # Dovecot/Courier: the folders IMAP clients see as subscribed
INBOX = "inbox"
_EXPORT_ID = re.compile(r"\.X([0-9A-Za-z_-]+)\.")


def safe_host(host: str) -> str:
    """The host part of a unique name: "/" and ":" would break the name, so maildir(5) spells
    them as octal escapes."""
    return (host or "localhost").replace("/", r"\057").replace(":", r"\072")


def unique_name(now: float, pid: int, count: int, host: str, size: int) -> str:
    """A name no other delivery uses: the time to the microsecond, this process, a counter of its
    deliveries, the host; ``,S=`` the size of the file."""
    seconds = int(now)
    micro = round((now - seconds) * 1_000_000) % 1_000_000
    return f"{seconds}.M{micro}P{pid}Q{count}.{safe_host(host)},S={size}"


def export_name(message_id: str, submitted_at: float, host: str, size: int) -> str:
    """The name `mailbox export` gives a stored message: its queue id in it (after ``X``), so a
    second export knows what the first wrote (`exported_id`), wherever a reader moved it since."""
    return f"{int(submitted_at)}.X{message_id}.{safe_host(host)},S={size}"


def exported_id(name: str) -> str | None:
    """The queue id in a name `export_name` made; None for any other name."""
    match = _EXPORT_ID.search(name.split(":", 1)[0])
    return match.group(1) if match else None


# IMAP system flags (RFC 3501 §2.3.2) as maildir info letters; other keywords have no letter.
_FLAG_LETTERS = {"\\seen": "S", "\\answered": "R", "\\flagged": "F", "\\deleted": "T", "\\draft": "D"}
# The store's folders under the names mail clients give them (Dovecot's special-use \Sent).
EXPORT_FOLDERS = {"sent": "Sent"}


def info_of(read: bool, flags: tuple[str, ...] | list[str] = ()) -> str:
    """The ``:2,<letters>`` a message read or flagged carries in `cur/` (letters in ASCII order,
    maildir(5)); "" for an unread message without flags: it belongs in `new/`."""
    letters = {_FLAG_LETTERS[f.lower()] for f in flags if f.lower() in _FLAG_LETTERS}
    if read:
        letters.add("S")
    return ":2," + "".join(sorted(letters)) if letters else ""


class UnsafeMailbox(ValueError):
    """An address whose maildir path would leave the directory it belongs in."""


def _path_part(value: str, what: str) -> str:
    # A local part may be anything in quotes ("../x"@example.org): never a way out of the tree.
    if not value or value in (".", "..") or value.startswith(".") or any(c in value for c in "/\\\0"):
        raise UnsafeMailbox(f"{what} {value!r} cannot name a maildir")
    return value


def expand_path(template: str, address: str) -> str:
    """The maildir of `address` by `template`: %u the local part (lower case), %d the domain,
    %m the mailbox (user@domain), %% a percent sign. Raises UnsafeMailbox when a part could
    climb out of the directory (a "/" or a leading "." in it)."""
    local, domain = split(address)
    local = local.lower()
    parts = {"u": (local, "local part"), "d": (domain, "domain"), "m": (f"{local}@{domain}", "mailbox")}
    out: list[str] = []
    i = 0
    while i < len(template):
        key = template[i + 1] if template[i] == "%" and i + 1 < len(template) else ""
        if key == "%":
            out.append("%")
        elif key in parts:
            out.append(_path_part(*parts[key]))
        else:
            out.append(template[i])
            i += 1
            continue
        i += 2
    return "".join(out)


def mutf7(name: str) -> str:
    """IMAP modified UTF-7 (RFC 3501 §5.1.3): printable ASCII as is ("&" as "&-"), any other
    run as "&" + modified base64 of its UTF-16 + "-"."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            encoded = "".join(run).encode("utf-7").decode("ascii")  # "+<base64>-" or "+<base64>"
            body = encoded[1:].rstrip("-").replace("/", ",")
            out.append(f"&{body}-")
            run.clear()

    for c in name:
        if 0x20 <= ord(c) <= 0x7E:
            flush()
            out.append("&-" if c == "&" else c)
        else:
            run.append(c)
    flush()
    return "".join(out)


def folder_dir(folder: str) -> str | None:
    """The Maildir++ directory of a folder ("Lists/python" -> ".Lists.python"), None for the
    inbox (the root). "/" and "." both separate levels (Maildir++ has only "."); a level that
    would be empty or unsafe is refused with UnsafeMailbox."""
    if folder.strip().lower() in ("", INBOX):
        return None
    levels = [level.strip() for level in folder.replace("/", ".").split(".")]
    if any(not level or "\0" in level or "\\" in level for level in levels):
        raise UnsafeMailbox(f"folder {folder!r} cannot name a Maildir++ folder")
    return "." + ".".join(mutf7(level) for level in levels)


def delivered_headers(sender: str, address: str) -> bytes:
    """What a final delivery adds on top, as Postfix local(8) does: Return-Path (RFC 5321
    §4.4: the delivering MTA records the envelope sender) and Delivered-To (loop detection)."""
    return f"Return-Path: <{sender}>\nDelivered-To: {address}\n".encode("utf-8", "surrogateescape")


def to_lf(content: bytes) -> bytes:
    """Maildir files end lines with LF (maildir(5); mutt and Dovecot read them so)."""
    return content.replace(b"\r\n", b"\n")


# RFC 3463: X.2.2 mailbox full, X.3.1 mail system full, X.2.0/X.3.0 other mailbox/system trouble.
_TEMPORARY = {
    errno.ENOSPC: (452, "4.3.1", "mail system full"),
    errno.EDQUOT: (452, "4.2.2", "mailbox full (quota)"),
    errno.EACCES: (451, "4.2.0", "permission denied"),
    errno.EPERM: (451, "4.2.0", "operation not permitted"),
    errno.EROFS: (451, "4.3.0", "read-only file system"),
}


def reply_for_error(err_no: int | None, path: str, detail: str, kind: str = "maildir") -> Reply:
    """The reply a failed write into a maildir (or a mailbox file, `kind`) gives its recipient:
    always temporary (the disk fills, a permission is fixed, the mail waits in the spool
    meanwhile), never a loss."""
    code, enhanced, what = _TEMPORARY.get(err_no or 0, (451, "4.3.0", f"{kind} delivery failed"))
    return Reply(code, enhanced, f"{kind} {path}: {what}: {detail}")


def unknown_mailbox(address: str, path: str) -> Reply:
    return Reply(550, "5.1.1", f"<{address}>: unknown mailbox (no maildir {path})")


def bad_mailbox(address: str, reason: str) -> Reply:
    return Reply(550, "5.1.3", f"<{address}>: {reason}")
