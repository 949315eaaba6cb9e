"""DSN parameters (RFC 3461): xtext, NOTIFY/ORCPT/RET/ENVID parsing with `501 5.5.4` for bad
input, the parameters relayed to a DSN-capable next hop, and which events a request reports."""

from __future__ import annotations

import pytest

from msgspool.domain.dsn import (
    Action,
    DSNSyntaxError,
    Handoff,
    MessageDSN,
    Notify,
    OriginalRecipient,
    RecipientDSN,
    Ret,
    delay_warning_at,
    delay_warning_due,
    mail_params,
    parse_envid,
    parse_mail_params,
    parse_notify,
    parse_orcpt,
    parse_rcpt_params,
    rcpt_params,
    report_action,
    utf8_addr_decode,
    utf8_addr_encode,
    xtext_decode,
    xtext_encode,
)
from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import Status

ALL = frozenset(Notify)


# -- xtext -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["a+b@example.org", "plain", "x=y", "with space", "tab\there", "ünïcode",
                                  "\x7f\x01", "+++===", ""])
def test_xtext_round_trips_any_text(text: str) -> None:
    assert xtext_decode(xtext_encode(text)) == text


def test_xtext_encodes_plus_equals_space_and_non_ascii_as_uppercase_hex() -> None:
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext_encode("é") == "+C3+A9"


def test_xtext_leaves_printable_ascii_other_than_plus_and_equals_alone() -> None:
    printable = "".join(chr(c) for c in range(33, 127) if chr(c) not in "+=")
    assert xtext_encode(printable) == printable


def test_xtext_decode_accepts_a_hexchar_for_any_octet() -> None:
    assert xtext_decode("+41+2B") == "A+"


@pytest.mark.parametrize("bad", ["a+2bb", "a+G1", "a+", "a+2", "a b", "a=b", "caf\u00e9", "a\x01b", "+C3"])
def test_malformed_xtext_is_refused(bad: str) -> None:
    with pytest.raises(DSNSyntaxError):
        xtext_decode(bad)


# -- NOTIFY, ORCPT, RET, ENVID ----------------------------------------------------------------------


def test_notify_never_is_the_empty_set() -> None:
    assert parse_notify("NEVER") == frozenset()
    assert parse_notify("never") == frozenset()


def test_notify_keywords_are_case_insensitive_and_any_subset_is_allowed() -> None:
    assert parse_notify("success,Failure,DELAY") == ALL
    assert parse_notify("FAILURE") == {Notify.FAILURE}


def test_orcpt_is_split_into_a_lowercase_type_and_the_decoded_address() -> None:
    assert parse_orcpt("rfc822;a+2Bb@example.org") == OriginalRecipient("rfc822", "a+b@example.org")
    assert parse_orcpt("RFC822;x@example.org").addr_type == "rfc822"


def test_orcpt_of_an_unknown_address_type_is_kept_as_given() -> None:
    assert parse_orcpt("x400;c+3Dus+3Ba+3D+20") == OriginalRecipient("x400", "c=us;a= ")


def test_orcpt_utf8_type_decodes_unicode_escapes() -> None:
    assert parse_orcpt("utf-8;j\\x{F6}rg@b\\x{FC}cher.example") == OriginalRecipient("utf-8", "jörg@bücher.example")


def test_orcpt_utf8_type_takes_raw_utf8_only_under_smtputf8() -> None:
    assert parse_orcpt("utf-8;jörg@example.org", smtputf8=True) == OriginalRecipient("utf-8", "jörg@example.org")
    with pytest.raises(DSNSyntaxError):
        parse_orcpt("utf-8;jörg@example.org")


@pytest.mark.parametrize(("address", "xtext_form", "unitext_form"), [
    ("jörg@example.org", "j\\x{F6}rg@example.org", "jörg@example.org"),
    ("a+b=c\\d@example.org", "a\\x{2B}b\\x{3D}c\\x{5C}d@example.org", "a\\x{2B}b\\x{3D}c\\x{5C}d@example.org"),
])
def test_utf8_address_forms_escape_what_they_must_and_round_trip(address: str, xtext_form: str,
                                                                 unitext_form: str) -> None:
    assert utf8_addr_encode(address) == xtext_form
    assert utf8_addr_encode(address, unitext=True) == unitext_form
    assert utf8_addr_decode(xtext_form) == address
    assert utf8_addr_decode(unitext_form, smtputf8=True) == address


def test_ret_and_envid_are_parsed_from_mail_parameters() -> None:
    assert parse_mail_params({"RET": "hdrs", "ENVID": "QQ+2B314159"}) == MessageDSN(Ret.HDRS, "QQ+314159")
    assert parse_mail_params({"SIZE": "100"}) == MessageDSN(None, None)


def test_notify_and_orcpt_are_parsed_from_rcpt_parameters() -> None:
    parsed = parse_rcpt_params({"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;ann@example.org"})
    assert parsed == RecipientDSN(frozenset({Notify.SUCCESS, Notify.FAILURE}),
                                  OriginalRecipient("rfc822", "ann@example.org"))
    assert parse_rcpt_params({}) == RecipientDSN(None, None)


def test_envid_up_to_100_characters_is_accepted() -> None:
    assert parse_envid("x" * 100) == "x" * 100


MALFORMED_MAIL = [
    {"RET": ""}, {"RET": "BODY"}, {"RET": "FULL,HDRS"},
    {"ENVID": ""}, {"ENVID": "x" * 101}, {"ENVID": "a+2b"}, {"ENVID": "a+0Ab"}, {"ENVID": "a+"},
    {"ENVID": "+C3+A9"},  # decodes to non-ASCII: ENVID is printable ASCII only
]
MALFORMED_RCPT = [
    {"NOTIFY": ""}, {"NOTIFY": "NEVER,SUCCESS"}, {"NOTIFY": "SUCCESS,NEVER"}, {"NOTIFY": "SUCCESS,SUCCESS"},
    {"NOTIFY": "SOMETIMES"}, {"NOTIFY": "SUCCESS,"}, {"NOTIFY": ",FAILURE"}, {"NOTIFY": "SUCCESS FAILURE"},
    {"ORCPT": ""}, {"ORCPT": "rfc822"}, {"ORCPT": "rfc822;"}, {"ORCPT": ";a@example.org"},
    {"ORCPT": "rfc 822;a@example.org"}, {"ORCPT": "rfc822;a+2bb@example.org"},
    {"ORCPT": "rfc822;a+ZZ@example.org"}, {"ORCPT": "rfc822;a+0D+0Ab@example.org"},
    {"ORCPT": "rfc822;" + "a" * 494 + "@x.org"}, {"ORCPT": "rfc822;+FF@example.org"},
    {"ORCPT": "utf-8;j\\x{F6rg@example.org"}, {"ORCPT": "utf-8;a+b@example.org"},
    {"ORCPT": "utf-8;\\x{D800}@example.org"}, {"ORCPT": "utf-8;\\x{110000}@example.org"},
    {"ORCPT": "utf-8;jörg@example.org"},
]


@pytest.mark.parametrize("params", MALFORMED_MAIL, ids=repr)
def test_every_malformed_mail_dsn_parameter_gets_501_5_5_4(params: dict[str, str]) -> None:
    with pytest.raises(DSNSyntaxError) as caught:
        parse_mail_params(params)
    assert (caught.value.reply.code, caught.value.reply.enhanced) == (501, "5.5.4")
    assert caught.value.parameter in caught.value.reply.text


@pytest.mark.parametrize("params", MALFORMED_RCPT, ids=repr)
def test_every_malformed_rcpt_dsn_parameter_gets_501_5_5_4(params: dict[str, str]) -> None:
    with pytest.raises(DSNSyntaxError) as caught:
        parse_rcpt_params(params)
    assert (caught.value.reply.code, caught.value.reply.enhanced) == (501, "5.5.4")
    assert caught.value.parameter in caught.value.reply.text


def test_dsn_syntax_error_is_a_value_error_with_a_wire_ready_reply() -> None:
    error = DSNSyntaxError("NOTIFY", "unknown keyword")
    assert isinstance(error, ValueError)
    assert error.reply == Reply(501, "5.5.4", "Error: bad NOTIFY parameter: unknown keyword")


# -- relaying to a DSN next hop (RFC 3461 §5.2.1) ------------------------------------------------------


def test_mail_params_pass_ret_and_envid_on_encoded() -> None:
    assert mail_params(MessageDSN(Ret.HDRS, "a+b")) == ["RET=HDRS", "ENVID=a+2Bb"]
    assert mail_params(MessageDSN()) == []


def test_rcpt_params_pass_notify_and_the_clients_orcpt_unchanged() -> None:
    request = RecipientDSN(frozenset({Notify.DELAY, Notify.SUCCESS}), OriginalRecipient("rfc822", "a+b@example.org"))
    assert rcpt_params(request, "rewritten@example.net") == ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;a+2Bb@example.org"]


def test_rcpt_params_pass_never_as_never() -> None:
    assert rcpt_params(RecipientDSN(frozenset()), "a@example.org")[0] == "NOTIFY=NEVER"


def test_rcpt_params_add_orcpt_with_the_received_address_when_the_client_sent_none() -> None:
    assert rcpt_params(RecipientDSN(), "ann@example.org") == ["ORCPT=rfc822;ann@example.org"]


def test_an_added_orcpt_for_a_utf8_address_uses_the_utf8_type_in_the_form_the_next_hop_takes() -> None:
    assert rcpt_params(RecipientDSN(), "jörg@example.org") == ["ORCPT=utf-8;j\\x{F6}rg@example.org"]
    assert rcpt_params(RecipientDSN(), "jörg@example.org", smtputf8=True) == ["ORCPT=utf-8;jörg@example.org"]


def test_relayed_rcpt_params_parse_back_to_the_same_request() -> None:
    request = RecipientDSN(ALL, OriginalRecipient("rfc822", "odd=+addr@example.org"))
    params = dict(p.split("=", 1) for p in rcpt_params(request, "x@example.org"))
    assert parse_rcpt_params(params) == request


# -- which events are reported ---------------------------------------------------------------------


NONE_GIVEN = RecipientDSN()
NEVER = RecipientDSN(frozenset())
SUCCESS_ONLY = RecipientDSN(frozenset({Notify.SUCCESS}))
DELAY_ONLY = RecipientDSN(frozenset({Notify.DELAY}))


@pytest.mark.parametrize(("status", "request_", "expected"), [
    (Status.FAILED, NONE_GIVEN, Action.FAILED),
    (Status.EXPIRED, NONE_GIVEN, Action.FAILED),
    (Status.FAILED, RecipientDSN(ALL), Action.FAILED),
    (Status.FAILED, NEVER, None),
    (Status.FAILED, SUCCESS_ONLY, None),
    (Status.EXPIRED, DELAY_ONLY, None),
    (Status.DELIVERED, NONE_GIVEN, None),
    (Status.DELIVERED, NEVER, None),
    (Status.DELIVERED, SUCCESS_ONLY, Action.DELIVERED),
    (Status.DELIVERED, RecipientDSN(frozenset({Notify.FAILURE})), None),
    (Status.QUEUED, RecipientDSN(ALL), None),
    (Status.HELD, RecipientDSN(ALL), None),
])
def test_report_action_follows_notify(status: Status, request_: RecipientDSN, expected: Action | None) -> None:
    assert report_action(status, request_) is expected


@pytest.mark.parametrize(("request_", "warn", "expected"), [
    (NONE_GIVEN, True, Action.DELAYED),
    (DELAY_ONLY, True, Action.DELAYED),
    (RecipientDSN(frozenset({Notify.FAILURE})), True, None),
    (NEVER, True, None),
    (NONE_GIVEN, False, None),
    (DELAY_ONLY, False, None),
])
def test_delay_is_reported_only_when_due_and_notify_is_absent_or_has_delay(request_: RecipientDSN, warn: bool,
                                                                           expected: Action | None) -> None:
    assert report_action(Status.DEFERRED, request_, warn_delays=warn) is expected


@pytest.mark.parametrize(("handoff", "expected"), [
    (Handoff.FINAL, Action.DELIVERED), (Handoff.RELAY, Action.RELAYED), (Handoff.DSN_RELAY, None),
])
def test_success_is_delivered_when_final_relayed_without_dsn_next_hop_and_left_to_a_dsn_next_hop(
        handoff: Handoff, expected: Action | None) -> None:
    assert report_action(Status.DELIVERED, SUCCESS_ONLY, handoff=handoff) is expected


def test_a_next_hop_without_dsn_yields_no_relayed_report_unless_success_was_asked() -> None:
    assert report_action(Status.DELIVERED, NONE_GIVEN, handoff=Handoff.RELAY) is None


# -- delay notices (Postfix delay_warning_time; RFC 3461 §4.1 DELAY) -------------------------------


def due(request: RecipientDSN | None = None, *, sender: str = "a@example.org", now: float = 1100.0,
        warn_after: float = 100.0, warned: bool = False) -> bool:
    return delay_warning_due(request, sender=sender, submitted_at=1000.0, now=now, warn_after=warn_after,
                             warned=warned)


def test_a_delay_notice_is_due_once_the_time_since_arrival_reaches_the_threshold() -> None:
    assert not due(now=1099.9)
    assert due(now=1100.0)
    assert due(now=5000.0)


def test_a_delay_notice_of_mail_held_until_a_release_time_counts_from_that_time() -> None:
    # deliver_after / FUTURERELEASE: the hold its sender asked for is no delay.
    assert delay_warning_at(None, sender="a@example.org", submitted_at=1000.0, warn_after=100.0,
                            deliver_after=5000.0) == 5100.0
    assert delay_warning_at(None, sender="a@example.org", submitted_at=1000.0, warn_after=100.0,
                            deliver_after=900.0) == 1100.0


def test_a_delay_notice_is_sent_once_per_recipient() -> None:
    assert not due(warned=True)


def test_no_delay_notice_when_delay_warning_time_is_zero() -> None:
    assert not due(warn_after=0.0, now=10**9)
    assert delay_warning_at(None, sender="a@example.org", submitted_at=1000.0, warn_after=0.0) is None


@pytest.mark.parametrize(("request_", "expected"), [
    (None, True),  # NOTIFY absent: delays may be told (RFC 3461 §4.1: FAILURE,DELAY is the default)
    (NONE_GIVEN, True),
    (DELAY_ONLY, True),
    (RecipientDSN(ALL), True),
    (NEVER, False),
    (RecipientDSN(frozenset({Notify.FAILURE})), False),
    (SUCCESS_ONLY, False),
])
def test_a_delay_notice_follows_notify(request_: RecipientDSN | None, expected: bool) -> None:
    assert due(request_) is expected


def test_no_delay_notice_about_mail_from_the_null_sender() -> None:
    assert not due(sender="")
    assert delay_warning_at(None, sender="", submitted_at=1000.0, warn_after=100.0) is None


def test_the_warn_time_is_arrival_plus_the_threshold() -> None:
    assert delay_warning_at(DELAY_ONLY, sender="a@example.org", submitted_at=1000.0, warn_after=14400.0) == 15400.0
