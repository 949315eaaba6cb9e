"""Fetch accounts, the pure part (domain/fetch.py): a [[fetch]] table is checked when loaded with a
clear error, defaults filled in; which ids are new or forgotten; the sender and trace line a fetched
message gets."""

from __future__ import annotations

from typing import Any

import pytest

from msgspool.config import ConfigError, Settings
from msgspool.domain.fetch import envelope_sender, gone_uids, new_uids, parse_accounts, received_header

BASE = {"name": "work", "protocol": "pop3", "host": "pop.example.org", "user": "me",
        "password_file": "/etc/msgspool/work.pw", "mailbox": "me@localhost"}


def one(**kw: Any) -> Any:
    [account] = parse_accounts([{**BASE, **kw}])
    return account


def test_defaults_are_tls_on_the_protocols_implicit_port_deleting_after_the_commit_every_minute() -> None:
    pop = one()
    assert (pop.security, pop.port, pop.after, pop.interval, pop.folder, pop.verify) == (
        "tls", 995, "delete", 60.0, "INBOX", True)
    imap = one(protocol="IMAP")
    assert (imap.protocol, imap.port) == ("imap", 993)
    assert one(security="starttls").port == 110 and one(protocol="imap", security="none").port == 143
    assert one(port=1100).port == 1100
    assert one(protocol="imap", after="move:Archive/2026").move_to == "Archive/2026"
    assert imap.source == "imap://me@pop.example.org:993/INBOX" and pop.source == "pop3://me@pop.example.org:995"


@pytest.mark.parametrize(("change", "error"), [
    ({"protocol": "smtp"}, "protocol must be pop3 or imap"),
    ({"security": "ssl"}, "security must be one of tls, starttls, none"),
    ({"port": 70000}, "port must be 1 to 65535"),
    ({"port": "995"}, "port must be int"),
    ({"mailbox": "me"}, "mailbox must be a local address"),
    ({"interval": 0}, "interval and timeout must be more than 0"),
    ({"after": "flag"}, "after must be delete | keep for pop3"),
    ({"protocol": "imap", "after": "keep"}, "after must be delete | flag | move:FOLDER for imap"),
    ({"protocol": "imap", "after": "move:"}, "after must be"),
    ({"folder": "Archive"}, "folder is for imap only"),
    ({"password": "secret"}, "unknown key(s) password"),
    ({"user": ""}, "user must be a non-empty string"),
    ({"name": "a b"}, "name must be letters"),
    ({"verify": "yes"}, "verify must be bool"),
])
def test_a_bad_table_is_refused_naming_the_account_and_the_key(change: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=r"^fetch (work|1|a b): ") as caught:
        one(**change)
    assert error in str(caught.value)


def test_the_settings_refuse_a_bad_account_when_loaded_and_a_name_twice() -> None:
    with pytest.raises(ConfigError, match=r"msgspool.toml: fetch work: protocol"):
        Settings().merge({"fetch": [{**BASE, "protocol": "nntp"}]}, "msgspool.toml")
    with pytest.raises(ConfigError, match="name 'work' is given twice"):
        Settings().merge({"fetch": [BASE, BASE]}, "msgspool.toml")
    settings = Settings()
    settings.merge({"fetch": [BASE]}, "msgspool.toml")
    assert [a.name for a in settings.fetch_accounts] == ["work"]


def test_new_ids_keep_the_servers_order_and_gone_ones_are_those_no_longer_listed() -> None:
    assert new_uids(["c", "a", "b"], {"a"}) == ["c", "b"]
    assert gone_uids(["a"], {"a", "x", "y"}) == ["x", "y"]
    assert gone_uids([], set()) == []


def test_the_envelope_sender_is_the_first_valid_return_path_else_the_null_sender() -> None:
    assert envelope_sender(b"Return-Path: <a@example.org>\r\nReturn-Path: <b@example.org>\r\n\r\nx") == "a@example.org"
    assert envelope_sender(b"return-path:<>\r\nFrom: c@example.org\r\n\r\n") == ""
    assert envelope_sender(b"From: c@example.org\r\n\r\nReturn-Path: <d@example.org>\r\n") == ""
    assert envelope_sender(b"Return-Path: <not an address>\r\n\r\n") == ""


def test_the_received_line_names_server_protocol_account_and_a_printable_id() -> None:
    line = received_header(one(), "id\x00 1", "mx.test", 0.0).decode()
    assert line.startswith("Received: from pop.example.org by mx.test with POP3S id id??1\r\n\tfor <me@localhost>")
    assert "(fetch work); Thu, 01 Jan 1970 00:00:00 -0000\r\n" in line
    assert "with IMAP id" in received_header(one(protocol="imap", security="none"), "7:1", "h", 0.0).decode()
