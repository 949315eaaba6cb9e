"""The pipe transport's rules without running anything (domain/pipe.py): macros, flags, exit statuses."""

from __future__ import annotations

import pytest

from msgspool.domain.pipe import (
    Envelope,
    command_input,
    exit_reply,
    expand_argv,
    parse_flags,
    printable,
    recipient_parts,
)


def envelope(*addresses: str, flags: str = "") -> Envelope:
    parts = tuple(recipient_parts(a, "", "+", frozenset(flags)) for a in addresses)
    return Envelope("s@example.org", parts, "example.net", "ID1", 42)


def test_a_per_recipient_macro_repeats_only_its_own_argument() -> None:
    argv = ["cmd", "-f", "${sender}", "-r", "to=${recipient}", "$(nexthop)", "${size}"]
    assert expand_argv(argv, envelope("a@x", "b@x")) == ["cmd", "-f", "s@example.org", "-r", "to=a@x", "to=b@x",
                                                         "example.net", "42"]


def test_user_and_extension_split_at_the_delimiter() -> None:
    parts = recipient_parts("joe+fax+1@Example.ORG", "", "+", frozenset())
    assert (parts.mailbox, parts.user, parts.extension, parts.domain) == ("joe+fax+1", "joe", "fax+1", "example.org")


@pytest.mark.parametrize(("flags", "address", "expected"), [
    ("h", "Joe@Example.ORG", "Joe@example.org"),
    ("u", "Joe@Example.ORG", "joe@Example.ORG"),
    ("q", "joe smith@x", '"joe smith"@x'),
    ("q", "joe.smith@x", "joe.smith@x"),
])
def test_folding_and_quoting_flags(flags: str, address: str, expected: str) -> None:
    assert recipient_parts(address, "", "+", frozenset(flags)).recipient == expected


def test_unknown_flags_are_named() -> None:
    with pytest.raises(ValueError, match="'Z'"):
        parse_flags("DZ")


def test_input_keeps_crlf_when_eol_asks_for_it() -> None:
    data = command_input(b"A: b\r\n\r\nbody", envelope("a@x"), frozenset("D"), return_path="s@x", eol=b"\r\n")
    assert data == b"Delivered-To: a@x\r\nA: b\r\n\r\nbody\r\n"


@pytest.mark.parametrize(("code", "kind_code", "dsn"), [(0, 250, "2.0.0"), (75, 451, "4.3.0"), (71, 451, "4.3.0"),
                                                         (74, 550, "5.3.0"), (68, 550, "5.1.2"), (2, 550, "5.3.0"),
                                                         (-15, 451, "4.3.0")])
def test_exit_statuses_as_postfix_reads_them(code: int, kind_code: int, dsn: str) -> None:
    reply = exit_reply("/bin/cmd", code, "")
    assert (reply.code, reply.dsn) == (kind_code, dsn)


def test_a_timeout_is_deferred() -> None:
    assert exit_reply("/bin/cmd", None, "", timed_out=True, time_limit=5).dsn == "4.3.0"


def test_output_is_made_one_printable_line() -> None:
    assert printable(b"a\tb\r\nc\x01d" + b"e" * 50, 10) == "a b c_dee"
