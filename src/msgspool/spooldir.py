"""The data directory and the spool files in it: private to the user msgspool runs as.

The spool holds every message, the tokens' hashes and the control socket, so it is created
``0700`` and every file msgspool makes in it ``0600`` — the database (``spool.db``; SQLite gives
its ``-wal`` and ``-shm`` files the database's mode), the lock files, ``control.sock``. Spill
files of large DATA phases are unnamed ``O_TMPFILE`` files (``0600``, gone with the session).

A spool made by an older msgspool (or under a loose umask) is tightened when a daemon starts
(`tighten`): group and other lose every permission on the directory and on those files, and each
change is logged. Other files an operator put there (``msgspool.toml``, keys) are left as they are.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from pathlib import Path
from typing import IO

log = logging.getLogger("msgspool")
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})  # "no room" from the file system
DIR_MODE = 0o700
FILE_MODE = 0o600
# The files msgspool itself makes in the data directory (SQLite's names for its side files).
SPOOL_FILES = ("spool.db", "spool.db-wal", "spool.db-shm", "spool.db-journal", "msgspool.lock", "serve.lock",
               "control.sock")


def create(data_dir: Path) -> None:
    """Make the data directory (and missing parents) when it does not exist; it is created 0700."""
    if not data_dir.is_dir():
        data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(data_dir, DIR_MODE)  # mkdir's mode passes through the umask


def create_file(path: Path) -> None:
    """Create `path` empty and 0600 unless it exists (an empty file is a new SQLite database)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE))


def open_private(path: Path) -> IO[str]:
    """Open `path` for reading and writing, created 0600 if missing (a lock file)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
    return os.fdopen(fd, "r+")


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on `directory`'s file system (huge if unknown)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return 1 << 62
    return st.f_bavail * st.f_frsize


def tighten(data_dir: Path) -> list[str]:
    """Create the data directory, or take group's and others' permissions away from it and from
    the spool files in it; log and return each change ("PATH 0755 -> 0700")."""
    create(data_dir)
    changes = [c for c in [_tighten(data_dir, DIR_MODE, follow=True)]
               + [_tighten(data_dir / name, FILE_MODE) for name in SPOOL_FILES] if c]
    for change in changes:
        log.warning("spool permissions tightened: %s", change)
    return changes


def _tighten(path: Path, allowed: int, *, follow: bool = False) -> str | None:
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):  # never chmod through a link planted in the spool
        return None
    mode = stat.S_IMODE(st.st_mode)
    wanted = mode & allowed
    if wanted == mode:
        return None
    try:
        os.chmod(path, wanted)
    except OSError as err:  # not ours (another user's spool): say so, do not stop
        log.warning("cannot tighten %s (mode %04o): %s", path, mode, err)
        return None
    return f"{path} {mode:04o} -> {wanted:04o}"
