"""The maildir transport: final delivery of local mail into maildirs (qmail's maildir(5), Dovecot's
Maildir++), which Dovecot, mutt and Python's `mailbox.Maildir` read. A *local transport*: it takes
only addresses of local domains (domain/routing.py), and its routes make their domains local.

    [[transports]]
    name = "maildir"
    type = "maildir"
    path = "/var/mail/%d/%u"      # %d domain, %u local part (lower case), %m user@domain, %% a "%"
    domains = ["example.org"]     # local domains, ".parent" patterns or single mailboxes; [] = every local domain
    create = true                 # make a missing maildir; false: no maildir is an unknown mailbox (5.1.1)
    owner = "vmail"               # optional: the user (name or uid) that gets what is written, as root

Each recipient gets a file of its own: Return-Path and Delivered-To on top (Postfix local(8)),
lines ended by LF. The steps are maildir(5)'s, with the syncs Dovecot relies on: a unique name in
`tmp/`, write, fsync the file, link it into `new/` (rename where the file system has no links),
remove the `tmp/` name, fsync `new/`; only then is the recipient delivered. A message class with a
receive folder other than the inbox (`set_receive_folder`) goes into that Maildir++ folder, made
on first use with its `maildirfolder` file and listed in `subscriptions`.

Outcomes, per recipient:
    written and synced             -> delivered (250 2.0.0), and a `new_mail` event
    disk full, quota, permission,
    read-only, any other OS error  -> deferred (452 4.3.1, 452 4.2.2, 451 4.2.0, 451 4.3.0): never lost
    no maildir and create = false  -> failed 550 5.1.1 (unknown mailbox)
    a name that would leave path   -> failed 550 5.1.3
    Delivered-To already says so   -> failed 554 5.4.6 (a forwarding loop)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import itertools
import os
import pwd
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msgspool.domain import maildir
from msgspool.domain.address import SMTP, domain_of, mailbox_key
from msgspool.domain.content import delivered_to
from msgspool.domain.mdn import original_recipient_header
from msgspool.domain.message import Message, Recipient
from msgspool.domain.outcome import Filed, Reply
from msgspool.errors import ConfigError
from msgspool.ports import ReceiveFolderLookup

_NO_LINKS = (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS)
_counter = itertools.count(1)  # deliveries of this process: the Q<n> of unique names


class MissingMaildir(Exception):
    """No maildir at the path and the transport may not make one."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


Owner = tuple[int, int]  # (uid, gid) the files are given, when msgspool runs as root


def owner_of(name: str | int) -> Owner:
    """A user name or uid, as (uid, its primary gid); ConfigError when there is no such user."""
    try:
        entry = pwd.getpwuid(name) if isinstance(name, int) else pwd.getpwnam(name)
    except KeyError as err:
        raise ConfigError(f"maildir owner {name!r}: no such user") from err
    return entry.pw_uid, entry.pw_gid


def _make_dir(path: Path, owner: Owner | None = None) -> bool:
    """Make `path` (0700, of `owner`) and sync its parent; False when it was there."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return False
    if owner is not None:
        os.chown(path, *owner)
    fsync_dir(path.parent)
    return True


def make_maildir(root: Path, folder: str | None = None, *, create: bool = True, owner: Owner | None = None) -> Path:
    """The directory holding `tmp/ new/ cur/` for `folder` (a Maildir++ directory name, None:
    the inbox) of the maildir `root`, made as needed (with `create`; else MissingMaildir when
    the root is not a maildir yet), everything made given to `owner`."""
    if not (root / "new").is_dir():
        if not create:
            raise MissingMaildir(str(root))
        if not root.is_dir():
            _make_dir_tree(root, owner)
        for sub in maildir.SUBDIRS:
            _make_dir(root / sub, owner)
    if folder is None:
        return root
    target = root / folder
    if not (target / "new").is_dir():
        _make_dir(target, owner)
        for sub in maildir.SUBDIRS:
            _make_dir(target / sub, owner)
        with contextlib.suppress(FileExistsError):  # made by an attempt that stopped half-way
            _write_new_file(target / maildir.FOLDER_MARKER, b"", owner)
        subscribe(root, folder[1:], owner)
    return target


def _make_dir_tree(path: Path, owner: Owner | None) -> None:
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        _make_dir(directory, owner)


def _write_new_file(path: Path | str, data: bytes, owner: Owner | None = None, *, dir_fd: int | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        view = memoryview(data)
        while view:  # os.write may take less than it is given
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def subscribe(root: Path, name: str, owner: Owner | None = None) -> None:
    """List a folder in the maildir's `subscriptions` (Dovecot, Courier), once."""
    path = root / maildir.SUBSCRIPTIONS
    try:
        names = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        names = []
    if name not in names:
        with path.open("a", encoding="utf-8") as f:
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())


def write_message(directory: Path, data: bytes, name_of: Callable[[], str], subdir: str = "new", *,
                  info: str = "", unique: bool = True, owner: Owner | None = None) -> Path:
    """maildir(5)'s delivery: `tmp/NAME`, write, fsync, link to `<subdir>/NAME<info>` (rename when
    the file system has no hard links), unlink `tmp/NAME`, fsync `<subdir>/`. `name_of()` gives a
    fresh unique name; a name taken meanwhile is replaced by the next one (not `unique`: raises
    FileExistsError). On any error the `tmp/` file is removed and the error raised: nothing
    half-written is ever in `new/`.

    `tmp/` and `<subdir>/` are opened once, never through a symbolic link, and every step is
    relative to them: a mailbox owner who swaps a directory for a link to elsewhere cannot make a
    daemon that runs as root write there (ELOOP: deferred like any write error)."""
    tmp_fd = _open_dir(directory / "tmp")
    try:
        target_fd = _open_dir(directory / subdir)
        try:
            return directory / subdir / _deliver_in(tmp_fd, target_fd, data, name_of, info, unique, owner)
        finally:
            os.close(target_fd)
    finally:
        os.close(tmp_fd)


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)


def _deliver_in(tmp_fd: int, target_fd: int, data: bytes, name_of: Callable[[], str], info: str, unique: bool,
                owner: Owner | None) -> str:
    while True:
        name = name_of()
        try:
            _write_new_file(name, data, owner, dir_fd=tmp_fd)
        except FileExistsError:
            if not unique:
                raise
            continue
        except OSError:
            _remove(name, tmp_fd)
            raise
        try:
            try:
                os.link(name, name + info, src_dir_fd=tmp_fd, dst_dir_fd=target_fd, follow_symlinks=False)
                os.unlink(name, dir_fd=tmp_fd)
            except FileExistsError:
                _remove(name, tmp_fd)
                if not unique:
                    raise
                continue
            except OSError as err:
                if err.errno not in _NO_LINKS:
                    raise
                os.rename(name, name + info, src_dir_fd=tmp_fd, dst_dir_fd=target_fd)
            os.fsync(target_fd)
        except OSError:
            _remove(name, tmp_fd)
            raise
        return name + info


def _remove(name: str, dir_fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)


def _original_recipient(drop: Drop) -> bytes:
    """Original-Recipient when the client gave an ORCPT (RFC 8098 §2.3: the delivering MTA adds it,
    so a read receipt names the address as first given), as the store's copies have it."""
    dsn = drop.recipient.dsn
    if dsn is None or dsn.orcpt is None:
        return b""
    return maildir.to_lf(original_recipient_header(dsn.orcpt).encode("utf-8"))


@dataclass(slots=True)
class Drop:
    """One recipient's delivery, decided in the event loop, written in a thread."""

    recipient: Recipient
    mailbox: str
    folder: str
    folder_dir: str | None = None  # its Maildir++ directory; None: the inbox
    root: Path | None = None
    reply: Reply | None = None  # decided before writing (a loop, a bad name)


class MaildirConnection:
    def __init__(self, transport: MaildirTransport, nexthop: str) -> None:
        self.transport, self.remote = transport, f"maildir:{nexthop}"

    @property
    def usable(self) -> bool:
        return True

    async def send(self, message: Message, recipients: Sequence[Recipient]) -> list[Reply]:
        drops = [await self.transport.plan(message, r) for r in recipients]
        return await asyncio.to_thread(self.transport.write_all, message, drops)

    async def close(self) -> None:
        return None


class MaildirTransport:
    """MailboxTransport (ports.py): files into maildirs, with the store's receive folders."""

    addrtypes = frozenset({SMTP})

    def __init__(self, name: str, settings: Any, options: dict[str, Any]) -> None:
        self.name = name
        path = options.get("path")
        if not isinstance(path, str) or not path:
            raise ConfigError(f"transport {name}: a maildir transport needs path, e.g. \"/var/mail/%d/%u\"")
        if not path.startswith("/"):  # relative to whatever directory the daemon was started in: a surprise
            raise ConfigError(f"transport {name}: path {path!r} must be absolute")
        domains = options.get("domains", [])
        if not isinstance(domains, list) or not all(isinstance(d, str) and d for d in domains):
            raise ConfigError(f"transport {name}: domains must be a list of domains or mailboxes")
        self.path = path
        self.domains: tuple[str, ...] = tuple(d.lower().rstrip(".") for d in domains)
        self.create = bool(options.get("create", True))
        owner = options.get("owner", "")
        if isinstance(owner, bool) or not isinstance(owner, str | int):
            raise ConfigError(f"transport {name}: owner must be a user name or uid")
        self.owner = owner_of(owner) if owner != "" else None
        self.host = str(getattr(settings, "host_name", "") or "localhost")
        self._receive_folder: ReceiveFolderLookup | None = None

    def use_receive_folders(self, lookup: ReceiveFolderLookup) -> None:
        self._receive_folder = lookup

    def nexthop(self, address: str) -> str:
        return domain_of(address)

    async def connect(self, nexthop: str) -> MaildirConnection:
        return MaildirConnection(self, nexthop)

    async def close(self) -> None:
        return None

    async def file_copy(self, message: Message, recipient: Recipient, content: bytes, *, folder: str | None = None,
                        flags: Sequence[str] = ()) -> Reply:
        """A copy the inbound hooks made (spooler/local.py): into `folder`, with `flags` (in `cur/`
        with their letters when there are any, maildir(5))."""
        copy = dataclasses.replace(message, content=content, headers_prefix=b"")
        drop = await self.plan(copy, recipient, folder=folder)
        if drop.reply is not None:
            return drop.reply
        return await asyncio.to_thread(self._write, copy, drop, maildir.to_lf(content),
                                       maildir.info_of(False, tuple(flags)))

    async def plan(self, message: Message, r: Recipient, *, folder: str | None = None) -> Drop:
        mailbox = mailbox_key(r.address)
        if folder is None:
            folder = maildir.INBOX
            if self._receive_folder is not None:
                folder = await self._receive_folder(mailbox, message.message_class)
        drop = Drop(r, mailbox, folder)
        try:
            drop.folder_dir = maildir.folder_dir(folder)
        except maildir.UnsafeMailbox:  # a receive folder no Maildir++ name can hold: the inbox then
            drop.folder = maildir.INBOX
        if delivered_to(message.full_content(), r.address):
            drop.reply = Reply(554, "5.4.6", f"mail forwarding loop for <{r.address}>")
            return drop
        try:
            drop.root = Path(maildir.expand_path(self.path, r.address))
        except maildir.UnsafeMailbox as err:
            drop.reply = maildir.bad_mailbox(r.address, str(err))
        return drop

    def write_all(self, message: Message, drops: Sequence[Drop]) -> list[Reply]:
        body = maildir.to_lf(message.full_content())
        return [drop.reply or self._write(message, drop, body) for drop in drops]

    def _write(self, message: Message, drop: Drop, body: bytes, info: str = "") -> Reply:
        assert drop.root is not None
        data = maildir.delivered_headers(message.sender, drop.recipient.address) + _original_recipient(drop) + body
        try:
            directory = make_maildir(drop.root, drop.folder_dir, create=self.create, owner=self.owner)
            path = write_message(directory, data, lambda: self.unique_name(len(data)), "cur" if info else "new",
                                 info=info, owner=self.owner)
        except MissingMaildir:
            return maildir.unknown_mailbox(drop.recipient.address, str(drop.root))
        except OSError as err:
            return maildir.reply_for_error(err.errno, str(drop.root), err.strerror or str(err))
        return Filed(250, "2.0.0", f"delivered to maildir {drop.root} ({drop.folder})", mailbox=drop.mailbox,
                     folder=drop.folder, location=str(path), sender=message.sender,
                     message_class=message.message_class)

    def unique_name(self, size: int) -> str:
        return maildir.unique_name(time.time(), os.getpid(), next(_counter), self.host, size)
