"""The file transport: local(8)'s delivery to a file or a maildir named in the aliases table.

Its recipients have the address type ALIAS-FILE, which only the aliases file gives (a member
``/var/mail/archive`` or ``/srv/mail/support/``, spooler/aliases.py); the address is the path. The
runtime makes one, named `aliases-file`, when the aliases file has such a member:

    /path/     a maildir (the trailing slash says so): made when missing, written as the maildir
               transport writes (transports/maildir.py: tmp/, fsync, link into new/, fsync new/)
    /path      an mbox file, appended to (domain/mbox.py: a From_ line, ">From " quoting, an empty
               line after), made 0600 when missing, as Postfix's local(8) does:
                 - opened without following a symbolic link; a file that is not a regular file,
                   has more than one hard link or has an execute bit is refused (local(8)'s
                   safe_open and its "executable bit is set" check), /dev/null takes the mail
                 - locked with a dot-lock (PATH.lock, made with O_EXCL; one older than 500 s is
                   stale and removed; where the directory is not writable it is done without,
                   local(8)'s MBOX_DOT_LOCK_MAY_FAIL) and an fcntl lock, both tried until
                   `lock_timeout`
                 - appended, fsynced; on any error cut back to its old length (no half message)

Every recipient gets Return-Path and Delivered-To on top: Delivered-To names the alias (the
recipient's ORCPT), as local(8)'s does, and a message that already carries it is a loop (554 5.4.6).

Who writes: with msgspool running as root, never root itself (Postfix writes as the aliases file's
owner, or default_privs when that is root): the write is done by a short-lived child process
(``python -m msgspool.transports.file``) that becomes `user` (the `aliases_user` setting; required
as root, as for the aliases' commands) and `group`, root's groups dropped, before it touches the
path, so a path that account may not write is refused by the kernel. Without root, in a thread
of the daemon, as msgspool's own user.

Outcomes, per recipient:
    written and synced                           -> delivered (250 2.0.0)
    disk full, quota, permission, read-only,
    the lock not got, any other OS error         -> deferred (452 4.3.1, 452 4.2.2, 451 4.2.0, 451 4.3.0)
    a symbolic link, not a regular file, hard
    links, an execute bit                        -> failed 554 5.2.0 (the operator's file is wrong)
    not an absolute path                         -> failed 550 5.1.3
    Delivered-To already names the alias         -> failed 554 5.4.6
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import itertools
import json
import os
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from msgspool.domain import maildir, mbox
from msgspool.domain.aliases import ALIAS_FILE
from msgspool.domain.content import delivered_to
from msgspool.domain.dsn import Handoff
from msgspool.domain.message import Message, Recipient
from msgspool.domain.outcome import Reply
from msgspool.errors import ConfigError
from msgspool.transports.maildir import make_maildir, write_message
from msgspool.transports.pipe import DEFAULT_PATH, Account, Command

STALE_LOCK = 500.0  # seconds after which a dot-lock is taken for a crashed writer's (Postfix's stale_lock_time)
LOCK_POLL = 0.1
DEV_NULL = "/dev/null"
_counter = itertools.count(1)


class UnsafeFile(Exception):
    """A mailbox file msgspool will not append to (a link, not a regular file, executable)."""


class FileConnection:
    def __init__(self, transport: FileTransport) -> None:
        self.transport, self.remote = transport, "file"

    @property
    def usable(self) -> bool:
        return True

    @property
    def handoff(self) -> Handoff:
        return Handoff.FINAL

    async def send(self, message: Message, recipients: Sequence[Recipient]) -> list[Reply]:
        return [await self.transport.deliver(message, r) for r in recipients]

    async def close(self) -> None:
        return None


class FileTransport:
    addrtypes = frozenset({ALIAS_FILE})

    def __init__(self, name: str, settings: Any, options: dict[str, Any]) -> None:
        self.name = name
        self.domains: tuple[str, ...] = ()
        self.account = Account(name, str(options.get("user", "")), str(options.get("group", "")))
        try:
            self.lock_timeout = float(options.get("lock_timeout", 5.0))
            self.timeout = float(options.get("timeout", 300.0))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"transport {name}: lock_timeout and timeout must be numbers") from err
        self.host = str(getattr(settings, "host_name", "") or "localhost")

    def nexthop(self, address: str) -> str:
        return "files"

    async def connect(self, nexthop: str) -> FileConnection:
        return FileConnection(self)

    async def close(self) -> None:
        return None

    async def deliver(self, message: Message, r: Recipient) -> Reply:
        path = r.address
        if not path.startswith("/") or "\0" in path:
            return Reply(550, "5.1.3", f"{path!r}: a file or maildir needs an absolute path")
        alias = r.dsn.orcpt.address if r.dsn is not None and r.dsn.orcpt is not None else path
        content = message.full_content()
        if delivered_to(content, alias):
            return Reply(554, "5.4.6", f"mail forwarding loop for <{alias}>")
        if path.endswith("/"):
            data = maildir.delivered_headers(message.sender, alias) + maildir.to_lf(content)
        else:
            data = mbox.entry(message.sender, alias, content, time.time())
        if self.account.switch:
            return await self._write_as(path, data)
        return await asyncio.to_thread(write, path, data, self.host, self.lock_timeout)

    async def _write_as(self, path: str, data: bytes) -> Reply:
        """The write, by a child process running as the transport's account (msgspool is root)."""
        # Started as root and switched by the child itself before it reads a byte: the account
        # may not be able to run this interpreter (a Python under /root), and a fork of this
        # threaded process that ran Python code before its exec would risk a lock held by
        # another thread.
        account = f"{self.account.uid}:{self.account.gid}"
        argv = [sys.executable, "-m", __name__, account, path, self.host, str(self.lock_timeout)]
        env = {"PATH": DEFAULT_PATH, **self.account.environment(),
               **{k: os.environ[k] for k in ("PYTHONPATH", "LANG", "TZ") if k in os.environ}}
        try:
            command = await Command.start(argv, env=env, cwd="/", account={})
        except OSError as err:
            return Reply(451, "4.3.0", f"cannot start the file writer: {err.strerror or err}")
        output = bytearray()
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.gather(command.feed(data), command.collect(output, 8192))
                status = await command.wait()
        except TimeoutError:
            await command.kill()
            return Reply(451, "4.3.0", f"file {path}: writing took more than {self.timeout:g} s")
        except BaseException:
            await command.kill()
            raise
        return _parse_reply(bytes(output), status, path)


def _parse_reply(output: bytes, status: int, path: str) -> Reply:
    try:
        fields = json.loads(output.decode("utf-8", "replace").strip().splitlines()[-1])
        return Reply(int(fields["code"]), str(fields["enhanced"]), str(fields["text"]))
    except (ValueError, KeyError, IndexError, TypeError):
        detail = output.decode("utf-8", "replace").strip()[-300:] or f"exit status {status}"
        return Reply(451, "4.3.0", f"file {path}: the file writer failed: {detail}")


# -- the write itself (in a thread of the daemon, or in the child process) -------------------


def write(path: str, data: bytes, host: str, lock_timeout: float) -> Reply:
    """Write `data` (the headers and message, made by `FileTransport.deliver`) to `path`: a
    maildir when it ends in "/", else an mbox file appended to. Never raises for an OS error."""
    if path.endswith("/"):
        return write_maildir(Path(path), data, host)
    return append_mbox(path, data, lock_timeout)


def write_maildir(root: Path, data: bytes, host: str) -> Reply:
    try:
        directory = make_maildir(root)
        name = write_message(directory, data, lambda: maildir.unique_name(
            time.time(), os.getpid(), next(_counter), host, len(data)))
    except OSError as err:
        return maildir.reply_for_error(err.errno, str(root), err.strerror or str(err))
    return Reply(250, "2.0.0", f"delivered to maildir {root}/ as {name.name}")


def append_mbox(path: str, data: bytes, lock_timeout: float) -> Reply:
    if path == DEV_NULL:
        return Reply(250, "2.0.0", f"delivered to {DEV_NULL}")
    try:
        fd = safe_open(path)
    except UnsafeFile as err:
        return Reply(554, "5.2.0", f"file {path}: {err}")
    except OSError as err:
        return maildir.reply_for_error(err.errno, path, err.strerror or str(err), "file")
    try:
        with mbox_lock(path, fd, lock_timeout):
            _append(fd, data)
    except TimeoutError:
        return Reply(451, "4.2.0", f"file {path}: unable to lock for exclusive access in {lock_timeout:g} s")
    except OSError as err:
        return maildir.reply_for_error(err.errno, path, err.strerror or str(err), "file")
    finally:
        os.close(fd)
    return Reply(250, "2.0.0", f"delivered to file {path}")


def safe_open(path: str) -> int:
    """`path` open for appending, made 0600 when missing; never through a symbolic link, and only
    a regular file with one link and no execute bit (Postfix's safe_open and local(8)'s checks).
    O_NONBLOCK: a FIFO with no reader fails at once (ENXIO) instead of hanging the writer."""
    flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)  # a race with another creator: EEXIST, retried
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafeFile("is a symbolic link") from err
        raise
    st = os.fstat(fd)
    problem = ("is not a regular file" if not stat.S_ISREG(st.st_mode)
               else "has more than one hard link" if st.st_nlink > 1
               else "has an execute bit set" if st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH) else "")
    if problem:
        os.close(fd)
        raise UnsafeFile(problem)
    return fd


@contextlib.contextmanager
def mbox_lock(path: str, fd: int, timeout: float) -> Iterator[None]:
    """The dot-lock, then the fcntl lock, as local(8) takes them; TimeoutError when either stays
    taken for `timeout` seconds."""
    deadline = time.monotonic() + timeout
    dotlock = _dot_lock(f"{path}.lock", deadline)
    try:
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise TimeoutError(path) from err
                time.sleep(LOCK_POLL)
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        if dotlock is not None:
            with contextlib.suppress(OSError):
                os.unlink(dotlock)


def _dot_lock(lock: str, deadline: float) -> str | None:
    """Make `lock` (O_EXCL): its name, or None where the directory does not let us (the fcntl
    lock alone then). A lock older than STALE_LOCK is a crashed writer's and is removed."""
    while True:
        try:
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
            return lock
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - os.lstat(lock).st_mtime > STALE_LOCK:
                    os.unlink(lock)
                    continue
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return None
            raise
        if time.monotonic() >= deadline:
            raise TimeoutError(lock)
        time.sleep(LOCK_POLL)


def _append(fd: int, data: bytes) -> None:
    """Append `data` and fsync; on an error cut the file back to where it ended (local(8) too)."""
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        # the last message lacks its line end: without one ours would run into it
        data = b"\n" + data
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise


def become(account: str) -> None:
    """Switch this (single-threaded) process to UID:GID for good, root's groups dropped."""
    uid, gid = (int(n) for n in account.split(":"))
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.geteuid() != uid or os.getegid() != gid or (uid != 0 and os.getgroups()):
        raise SystemExit(f"cannot switch to uid {uid}, gid {gid}")


def main(argv: list[str]) -> int:
    """The child process: UID:GID PATH HOST LOCK_TIMEOUT, the data on stdin, the reply as JSON
    on stdout. It becomes UID:GID first, before it touches the path."""
    account, path, host, lock_timeout = argv[0], argv[1], argv[2], float(argv[3])
    become(account)
    reply = write(path, sys.stdin.buffer.read(), host, lock_timeout)
    print(json.dumps({"code": reply.code, "enhanced": reply.enhanced, "text": reply.text}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
