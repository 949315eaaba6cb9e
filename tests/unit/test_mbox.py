"""The mbox format local(8) appends to a file named in an alias (domain/mbox.py): the From_ line,
Return-Path and Delivered-To, ">From " quoting of "From " lines only, LF line ends, an empty line
after the message; what Python's `mailbox.mbox` reads back as the one message it was."""

from __future__ import annotations

import mailbox
import time
from pathlib import Path

from msgspool.domain.mbox import entry, from_line, quote_from

NOW = 1_700_000_000.0
CONTENT = (b"From: a@example.com\r\nSubject: hi\r\n\r\nFrom here on\r\n>From kept as it is\r\n"
           b"a line with From in it\r\nFrom")


def test_the_from_line_names_the_sender_or_mailer_daemon_and_the_local_time() -> None:
    when = time.asctime(time.localtime(NOW)).encode()
    assert from_line("a@example.com", NOW) == b"From a@example.com  " + when + b"\n"
    assert from_line("", NOW) == b"From MAILER-DAEMON  " + when + b"\n"
    assert from_line('"a b"@example.com', NOW).startswith(b'From "a_b"@example.com  ')  # one word on the line


def test_only_lines_that_start_with_from_space_are_quoted() -> None:
    assert quote_from(b"From x\n>From y\nFromage\n From z\nFrom") == b">From x\n>From y\nFromage\n From z\nFrom"


def test_an_entry_is_one_message_that_python_mailbox_reads_back(tmp_path: Path) -> None:
    data = entry("a@example.com", "archive@localhost", CONTENT, NOW)
    assert data.startswith(b"From a@example.com  ")
    assert b"\r\n" not in data and data.endswith(b"\nFrom\n\n")  # a line end added, then the empty line
    lines = data.split(b"\n")
    assert lines[1:3] == [b"Return-Path: <a@example.com>", b"Delivered-To: archive@localhost"]
    path = tmp_path / "box"
    path.write_bytes(data + entry("", "archive@localhost", b"Subject: two\r\n\r\nsecond\r\n", NOW))
    box = mailbox.mbox(path, create=False)
    first, second = box.values()
    assert first["Subject"] == "hi" and first.get_from().startswith("a@example.com  ")
    # the empty line after a message separates it from the next: not part of the message
    assert first.get_payload() == ">From here on\n>From kept as it is\na line with From in it\nFrom\n"
    assert second["Subject"] == "two" and second.get_from().startswith("MAILER-DAEMON  ")
