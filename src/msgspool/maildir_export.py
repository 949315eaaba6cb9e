"""`msgspool mailbox export MAILBOX DIR`: the mail a local mailbox holds in the store, written as a
Maildir with Maildir++ folders (domain/maildir.py), the way the maildir transport writes new mail —
so a site that moves a domain to maildirs takes its old mail along.

    inbox          -> the maildir's root (INBOX)
    sent           -> .Sent (the name clients give Sent Items)
    any other      -> its Maildir++ folder, as the maildir transport names receive folders
    outbox         -> not exported: mail still being sent is not the mailbox's mail yet

A message read in the store goes into `cur/` with the flag S (and R, F, T, D of its IMAP flags),
an unread one into `new/`. Each file is named after its queue id (`domain.maildir.export_name`), and
before writing, the export reads the ids of every file in the maildir (root and folders, `new/` and
`cur/`): a second export writes only what the first did not, even after a client moved, flagged or
refiled the messages. A message deleted from the maildir by its reader is written again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from msgspool.domain import maildir
from msgspool.domain.address import mailbox_key
from msgspool.domain.message import OUTBOX, MessageInfo
from msgspool.ports import Mailboxes
from msgspool.transports.maildir import make_maildir, write_message

PAGE = 200  # messages read from the store at a time


class UnknownMailbox(LookupError):
    """No mailbox of that name in the store."""


@dataclass(slots=True)
class ExportResult:
    written: dict[str, int] = field(default_factory=dict)  # Maildir folder ("INBOX", "Sent", ...) -> files
    skipped: int = 0  # already in the maildir from an earlier export

    @property
    def total(self) -> int:
        return sum(self.written.values())


def exported_ids(root: Path) -> set[str]:
    """The queue ids of the files an export wrote anywhere in the maildir at `root`."""
    found: set[str] = set()
    if not root.is_dir():
        return found
    for directory in [root, *(p for p in root.iterdir() if p.name.startswith(".") and p.is_dir())]:
        for sub in ("new", "cur"):
            try:
                names = [entry.name for entry in (directory / sub).iterdir()]
            except FileNotFoundError:
                continue
            found.update(i for i in map(maildir.exported_id, names) if i is not None)
    return found


def folder_name(folder: str) -> str:
    """The folder as a mail client shows it ("INBOX" for the inbox)."""
    if folder.strip().lower() in ("", maildir.INBOX):
        return "INBOX"
    return maildir.EXPORT_FOLDERS.get(folder.lower(), folder)


def folder_dir(name: str) -> str | None:
    """The Maildir++ directory of a folder; a store folder no Maildir++ name can hold as it is
    ("a//b") gets its empty levels and unsafe characters as "_"."""
    try:
        return maildir.folder_dir(name)
    except maildir.UnsafeMailbox:
        levels = name.replace("/", ".").replace("\0", "_").replace("\\", "_").split(".")
        return maildir.folder_dir(".".join(level.strip() or "_" for level in levels))


def write_one(root: Path, folder: str, info: MessageInfo, content: bytes, host: str) -> None:
    data = maildir.to_lf(content)
    directory = make_maildir(root, folder_dir(folder_name(folder)))
    flags = maildir.info_of(info.read, info.flags)
    name = maildir.export_name(info.id, info.submitted_at, host, len(data))
    write_message(directory, data, lambda: name, "cur" if flags else "new", info=flags, unique=False)


async def export_mailbox(store: Mailboxes, mailbox: str, root: Path, host: str) -> ExportResult:
    """Write what `mailbox` holds into the maildir `root` (made if missing); UnknownMailbox when
    the store has no such mailbox. OSError (a full disk) stops it: what was written stays, and
    the next export carries on from there."""
    key = mailbox_key(mailbox)
    folders = await store.mailbox_folders(key)
    if folders is None:
        raise UnknownMailbox(key)
    result = ExportResult()
    await asyncio.to_thread(make_maildir, root)
    done = await asyncio.to_thread(exported_ids, root)
    for folder in (f for f in folders if f != OUTBOX):
        name = folder_name(folder)
        result.written.setdefault(name, 0)
        after: tuple[float, str] | None = None
        while page := await store.list_messages((folder,), key, PAGE, after=after):
            after = (page[-1].submitted_at, page[-1].id)
            for info in page:
                if info.id in done:
                    result.skipped += 1
                    continue
                content = await store.content(info.id)
                if content is None:  # deleted meanwhile
                    continue
                await asyncio.to_thread(write_one, root, folder, info, content, host)
                done.add(info.id)
                result.written[name] += 1
    return result
