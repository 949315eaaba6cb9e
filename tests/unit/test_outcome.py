"""Replies: the SMTP code decides the outcome; the enhanced code (RFC 3463) is kept or derived."""

from __future__ import annotations

import pytest

from msgspool.domain import outcome
from msgspool.domain.outcome import Kind, Reply


@pytest.mark.parametrize(("code", "kind"), [(250, Kind.SUCCESS), (251, Kind.SUCCESS), (354, Kind.SUCCESS),
                                            (421, Kind.TEMPORARY), (452, Kind.TEMPORARY),
                                            (550, Kind.PERMANENT), (554, Kind.PERMANENT)])
def test_reply_code_class_decides_the_outcome(code: int, kind: Kind) -> None:
    reply = Reply(code)
    assert reply.kind is kind
    assert (reply.ok, reply.temporary, reply.permanent) == (kind is Kind.SUCCESS, kind is Kind.TEMPORARY,
                                                            kind is Kind.PERMANENT)


@pytest.mark.parametrize(("reply", "dsn"), [(Reply(250), "2.0.0"), (Reply(451), "4.0.0"), (Reply(550), "5.0.0"),
                                            (Reply(550, "5.1.1", "unknown"), "5.1.1")])
def test_dsn_is_the_enhanced_code_or_derived_from_the_class(reply: Reply, dsn: str) -> None:
    assert reply.dsn == dsn


def test_line_joins_the_parts_that_are_present() -> None:
    assert Reply(250, "2.0.0", "Ok").line() == "250 2.0.0 Ok"
    assert Reply(354, "", "go ahead").line() == "354 go ahead"
    assert str(Reply(221)) == "221"


def test_parse_splits_off_an_enhanced_code_of_the_same_class() -> None:
    assert Reply.parse(550, "5.1.1 <x@example.org>: unknown") == Reply(550, "5.1.1", "<x@example.org>: unknown")


@pytest.mark.parametrize("text", ["4.1.1 wrong class", "Ok", "5.1 too short", "5.1.1000 too long"])
def test_parse_keeps_text_whole_when_it_starts_with_no_matching_enhanced_code(text: str) -> None:
    assert Reply.parse(550, text) == Reply(550, "", text)


def test_wire_form_of_a_one_line_reply() -> None:
    assert Reply(250, "2.1.0", "Ok").wire() == b"250 2.1.0 Ok\r\n"
    assert Reply(250, "2.0.0").wire() == b"250 2.0.0\r\n"


def test_multi_line_text_becomes_a_multi_line_reply_with_the_code_on_every_line() -> None:
    assert Reply(250, "2.0.0", "first\nsecond\nlast").wire() == (
        b"250-2.0.0 first\r\n250-2.0.0 second\r\n250 2.0.0 last\r\n")


@pytest.mark.parametrize(("reply", "code", "enhanced"), [
    (outcome.NO_ROUTE, 550, "5.4.4"), (outcome.LOOP_DETECTED, 554, "5.4.6"), (outcome.EXPIRED, 554, "5.4.7"),
    (outcome.CONNECTION_REFUSED, 421, "4.4.1"), (outcome.CONNECTION_LOST, 421, "4.4.2"),
    (outcome.DESTINATION_DOWN, 421, "4.4.1"),
])
def test_msgspools_own_replies_carry_their_rfc3463_codes(reply: Reply, code: int, enhanced: str) -> None:
    assert (reply.code, reply.enhanced) == (code, enhanced)
    assert reply.dsn[0] == str(code)[0]


def test_exhausted_attempts_fail_permanently_quoting_the_last_temporary_reply() -> None:
    reply = outcome.attempts_exhausted(3, Reply(451, "4.3.0", "try later"))
    assert reply.permanent and reply.dsn == "5.4.7"
    assert reply.line() == "554 5.4.7 delivery attempts exhausted after 3 attempts: 451 4.3.0 try later"
