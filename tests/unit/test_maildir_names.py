"""Maildir names and layout (domain/maildir.py): unique names, Maildir++ folder names in IMAP
modified UTF-7, the mailbox path of an address and the names that could leave it, the replies."""

from __future__ import annotations

import errno

import pytest

from msgspool.domain import maildir


def test_a_unique_name_has_time_microseconds_pid_counter_host_and_size() -> None:
    assert maildir.unique_name(1700000000.25, 42, 7, "mx.test", 1234) == "1700000000.M250000P42Q7.mx.test,S=1234"


def test_a_slash_or_colon_in_the_host_is_escaped_as_maildir5_says() -> None:
    assert maildir.safe_host("a/b:c") == r"a\057b\072c"


def test_an_export_name_carries_the_queue_id_wherever_a_reader_moves_it() -> None:
    name = maildir.export_name("Q1a2B-3", 1700000000.9, "mx.test", 99)
    assert name == "1700000000.XQ1a2B-3.mx.test,S=99"
    assert maildir.exported_id(name + ":2,S") == "Q1a2B-3"
    assert maildir.exported_id("1700000000.M1P2Q3.mx.test,S=9") is None


@pytest.mark.parametrize(("folder", "directory"), [
    ("inbox", None), ("INBOX", None), ("", None), ("Reports", ".Reports"), ("Lists/python", ".Lists.python"),
    ("a.b", ".a.b"), ("Entwürfe", ".Entw&APw-rfe"), ("R&D", ".R&-D"), ("日本語", ".&ZeVnLIqe-"),
])
def test_a_folder_is_a_maildirplus_directory_in_modified_utf7(folder: str, directory: str | None) -> None:
    assert maildir.folder_dir(folder) == directory


@pytest.mark.parametrize("folder", ["a//b", ".hidden", "x\0y", "back\\slash"])
def test_a_folder_name_with_an_empty_or_unsafe_level_is_refused(folder: str) -> None:
    with pytest.raises(maildir.UnsafeMailbox):
        maildir.folder_dir(folder)


def test_the_path_template_expands_user_domain_and_mailbox() -> None:
    assert maildir.expand_path("/var/mail/%d/%u/%%/%m", "Bob@Example.ORG") == \
        "/var/mail/example.org/bob/%/bob@example.org"


@pytest.mark.parametrize("address", ["../x@example.org", "a/b@example.org", ".@example.org", ".hidden@example.org",
                                     "a\\b@example.org"])
def test_a_local_part_that_could_leave_the_directory_is_refused(address: str) -> None:
    with pytest.raises(maildir.UnsafeMailbox):
        maildir.expand_path("/var/mail/%d/%u", address)


def test_delivered_headers_are_return_path_then_delivered_to_with_lf() -> None:
    assert maildir.delivered_headers("", "a@example.org") == b"Return-Path: <>\nDelivered-To: a@example.org\n"
    assert maildir.to_lf(b"A: b\r\n\r\nx\r\n") == b"A: b\n\nx\n"


@pytest.mark.parametrize(("err_no", "line"), [
    (errno.ENOSPC, "452 4.3.1"), (errno.EDQUOT, "452 4.2.2"), (errno.EACCES, "451 4.2.0"),
    (errno.EROFS, "451 4.3.0"), (errno.EIO, "451 4.3.0"), (None, "451 4.3.0"),
])
def test_every_write_error_is_a_temporary_reply(err_no: int | None, line: str) -> None:
    reply = maildir.reply_for_error(err_no, "/m", "x")
    assert reply.temporary and reply.line().startswith(line)


def test_info_letters_come_from_the_read_flag_and_imap_flags_in_ascii_order() -> None:
    assert maildir.info_of(False) == ""
    assert maildir.info_of(True) == ":2,S"
    assert maildir.info_of(False, ("\\Flagged", "\\Answered", "$Label1")) == ":2,FR"
    assert maildir.info_of(True, ("\\Seen", "\\Draft")) == ":2,DS"


@pytest.mark.parametrize(("options", "error"), [
    ({}, "needs path"),
    ({"path": "mail/%d/%u"}, "must be absolute"),
    ({"path": "/m/%u", "domains": "x.org"}, "domains must be a list"),
    ({"path": "/m/%u", "owner": True}, "owner must be"),
    ({"path": "/m/%u", "owner": "no-such-user-here"}, "no such user"),
])
def test_a_maildir_transport_with_bad_options_is_a_config_error(options: dict[str, object], error: str) -> None:
    from msgspool.config import Settings
    from msgspool.errors import ConfigError
    from msgspool.transports.maildir import MaildirTransport

    with pytest.raises(ConfigError, match=error):
        MaildirTransport("maildir", Settings(), dict(options))
