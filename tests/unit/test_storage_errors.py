"""Which store failures mean "no room": they become `StorageFull` (452 4.3.1), the rest stay what they are."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from msgspool.domain.routing import Router
from msgspool.errors import StorageFull
from msgspool.spooler.intake import Intake
from msgspool.stores.sqlite import storage_error

NOWHERE = Path("/nonexistent/msgspool-spool")  # statvfs fails: free space unknown, taken as plenty


def sqlite_error(message: str, code: int | None) -> sqlite3.OperationalError:
    err = sqlite3.OperationalError(message)
    if code is not None:
        err.sqlite_errorcode = code  # type: ignore[attr-defined]
    return err


@pytest.mark.parametrize("err", [
    sqlite_error("database or disk is full", 13),  # SQLITE_FULL
    sqlite_error("database or disk is full", None),  # no code: its words
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
])
def test_a_failure_for_lack_of_space_is_storage_full_with_the_452_4_3_1_reply(err: BaseException) -> None:
    full = storage_error(err, NOWHERE)
    assert isinstance(full, StorageFull)
    assert full.reply.line() == "452 4.3.1 Insufficient system storage"
    assert full.__cause__ is err


@pytest.mark.parametrize("err", [
    sqlite_error("disk I/O error", 10 | (3 << 8)),  # SQLITE_IOERR_WRITE with room to spare
    sqlite_error("database is locked", 5),
    OSError(errno.EACCES, "Permission denied"),
    RuntimeError("boom"),
])
def test_other_failures_stay_what_they_are(err: BaseException) -> None:
    assert storage_error(err, NOWHERE) is err


def test_mail_is_told_452_4_3_1_when_queue_minfree_plus_the_declared_size_is_not_free() -> None:
    intake = Intake(Router(["example.org"], []), free_space=lambda: 10_000, queue_minfree=1_000)
    assert intake.check_space(9_000) is None
    refusal = intake.check_space(9_001)
    assert refusal is not None and refusal.line() == "452 4.3.1 Insufficient system storage"
    assert Intake(Router(["example.org"], [])).check_space(1 << 60) is None  # room unknown: not refused
