"""Delivery reports (RFC 3464 in RFC 6522 multipart/report): what the stdlib email package reads
back from a composed DR/NDR/delay notice, the returned content under RET and the size limit,
RFC 6533's global types, MAPI classes, and the rule that a bounce is never bounced."""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from email.parser import HeaderParser

import pytest

from msgspool.domain.dsn import Action, OriginalRecipient, Ret
from msgspool.domain.outcome import Reply
from msgspool.domain.reports import (
    DeliveryReport,
    RecipientEntry,
    ReportKind,
    report_class,
    report_kind,
    route_report,
)
from msgspool.domain.reports import compose_report as _compose_report

NOW = 1_700_000_000.0
ORIGINAL = (b"From: Ann <ann@example.org>\r\nTo: bob@example.net, carol@example.net\r\n"
            b"Subject: quarterly numbers\r\nMessage-ID: <q3@example.org>\r\n\r\nThe body text.\r\n")
BOB_UNKNOWN = RecipientEntry.from_reply(
    "bob@example.net", Action.FAILED, Reply(550, "5.1.1", "<bob@example.net>: Recipient address rejected"),
    remote_mta="mx.example.net", original_recipient=OriginalRecipient("rfc822", "Bob@Example.NET"),
    last_attempt=NOW - 5)
CAROL_EXPIRED = RecipientEntry.from_reply("carol@example.net", Action.FAILED,
                                          Reply(554, "5.4.7", "message expired: delivery time limit exceeded"))


def report(*entries: RecipientEntry, original: bytes = ORIGINAL, **fields: object) -> DeliveryReport:
    return DeliveryReport(reporting_mta="relay.example.org", to="ann@example.org", original=original,
                          recipients=entries or (BOB_UNKNOWN, CAROL_EXPIRED), arrival=NOW - 60,
                          **fields)  # type: ignore[arg-type]


def compose(value: DeliveryReport) -> bytes:
    return _compose_report(value, now=NOW, message_id="<report-1@relay.example.org>")


def parse(raw: bytes) -> EmailMessage:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parts(raw: bytes) -> list[EmailMessage]:
    found = [part for part in parse(raw).iter_parts() if isinstance(part, EmailMessage)]
    assert len(found) == 3
    return found


def status_blocks(part: Message) -> list[Message]:
    """The field groups of a message/delivery-status part, as the email package splits them."""
    payload = part.get_payload()
    assert part.get_content_type() == "message/delivery-status" and isinstance(payload, list)
    return [block for block in payload if isinstance(block, Message)]


def raw_status_blocks(raw: bytes) -> list[Message]:
    """The field groups of the second part read from the bytes: the email package splits only the
    ASCII message/delivery-status into groups, not message/global-delivery-status."""
    boundary = parse(raw).get_boundary()
    assert boundary is not None
    second = raw.split(f"\r\n--{boundary}\r\n".encode())[2]
    body = second.split(b"\r\n\r\n", 1)[1].decode("utf-8")
    return [HeaderParser().parsestr(block) for block in body.strip("\r\n").split("\r\n\r\n")]


# -- the NDR -----------------------------------------------------------------------------------------


def test_ndr_parses_as_multipart_report_of_type_delivery_status_with_three_parts() -> None:
    message = parse(compose(report()))
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts(compose(report()))] == [
        "text/plain", "message/delivery-status", "message/rfc822"]


def test_ndr_carries_per_message_fields() -> None:
    first = status_blocks(parts(compose(report(envid="QQ314159", queue_id="4XyZ")))[1])[0]
    assert first["Reporting-MTA"] == "dns; relay.example.org"
    assert first["Original-Envelope-Id"] == "QQ314159"
    assert first["Arrival-Date"] == "Tue, 14 Nov 2023 22:12:20 +0000"
    assert first["X-Msgspool-Queue-ID"] == "4XyZ"


def test_ndr_has_no_original_envelope_id_without_envid() -> None:
    first = status_blocks(parts(compose(report()))[1])[0]
    assert "Original-Envelope-Id" not in first


def test_ndr_lists_the_right_fields_for_each_of_two_recipients() -> None:
    bob, carol = status_blocks(parts(compose(report()))[1])[1:]
    assert bob["Original-Recipient"] == "rfc822; Bob@Example.NET"
    assert bob["Final-Recipient"] == "rfc822; bob@example.net"
    assert (bob["Action"], bob["Status"]) == ("failed", "5.1.1")
    assert bob["Remote-MTA"] == "dns; mx.example.net"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected"
    assert bob["Last-Attempt-Date"] == "Tue, 14 Nov 2023 22:13:15 +0000"
    assert carol["Final-Recipient"] == "rfc822; carol@example.net"
    assert (carol["Action"], carol["Status"]) == ("failed", "5.4.7")
    assert "Original-Recipient" not in carol and "Remote-MTA" not in carol and "Last-Attempt-Date" not in carol


def test_ndr_headers_name_the_mailer_daemon_the_sender_the_kind_and_mark_it_auto_replied() -> None:
    message = parse(compose(report()))
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@relay.example.org>"
    assert message["To"] == "ann@example.org"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Message-ID"] == "<report-1@relay.example.org>"
    assert message["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert message["In-Reply-To"] == message["References"] == "<q3@example.org>"


def test_report_uses_crlf_line_ends_only() -> None:
    raw = compose(report(original=ORIGINAL.replace(b"\r\n", b"\n")))
    assert raw.count(b"\n") == raw.count(b"\r\n")


def test_text_part_lists_each_recipient_with_its_diagnostic_and_host() -> None:
    text = " ".join(parts(compose(report()))[0].get_content().split())  # lines are wrapped at 78
    assert "<bob@example.net> (originally <Bob@Example.NET>): host mx.example.net said: 550 5.1.1" in text
    assert "<carol@example.net>: 554 5.4.7 message expired" in text


def test_a_diagnostic_with_line_breaks_cannot_add_header_fields() -> None:
    evil = RecipientEntry.from_reply("bob@example.net", Action.FAILED, Reply(550, "5.0.0", "no\r\nAction: delivered"))
    block = status_blocks(parts(compose(report(evil)))[1])[1]
    assert block.get_all("Action") == ["failed"]


def test_a_long_diagnostic_is_folded_and_reads_back_whole() -> None:
    words = " ".join(f"word{i}" for i in range(60))
    entry = RecipientEntry.from_reply("bob@example.net", Action.FAILED, Reply(550, "5.0.0", words))
    raw = compose(report(entry))
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    diagnostic = status_blocks(parts(raw)[1])[1]["Diagnostic-Code"]
    assert re.sub(r"\s+", " ", diagnostic) == f"smtp; 550 5.0.0 {words}"


def test_an_all_ascii_report_is_7bit() -> None:
    raw = compose(report())
    assert raw.isascii() and parse(raw)["Content-Transfer-Encoding"] == "7bit"


# -- returned content --------------------------------------------------------------------------------


def test_ndr_returns_the_full_message_by_default() -> None:
    returned = parts(compose(report()))[2]
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload(0)
    assert isinstance(inner, Message)
    assert inner["Subject"] == "quarterly numbers" and "The body text." in inner.get_payload()


def test_ret_hdrs_returns_only_the_header_section() -> None:
    raw = compose(report(ret=Ret.HDRS))
    returned = parts(raw)[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert "Subject: quarterly numbers" in returned.get_content()
    assert b"The body text." not in raw


def test_an_original_over_the_size_limit_is_cut_to_its_headers_and_the_text_says_so() -> None:
    big = ORIGINAL + b"x" * 2000 + b"\r\n"
    raw = compose(report(original=big, return_limit=1000))
    text, _status, returned = parts(raw)
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"xxxxxxxxxx" not in raw
    assert f"The message was {len(big)} bytes, more than the 1000 bytes" in text.get_content()


def test_an_original_at_the_size_limit_is_returned_whole() -> None:
    returned = parts(compose(report(ret=Ret.FULL, return_limit=len(ORIGINAL))))[2]
    assert returned.get_content_type() == "message/rfc822"


@pytest.mark.parametrize(("ret", "content_type"), [(None, "text/rfc822-headers"), (Ret.HDRS, "text/rfc822-headers"),
                                                   (Ret.FULL, "message/rfc822")])
def test_a_delivery_report_returns_the_message_only_with_ret_full(ret: Ret | None, content_type: str) -> None:
    delivered = RecipientEntry.from_reply("bob@example.net", Action.DELIVERED, Reply(250, "2.0.0", "Ok"))
    assert parts(compose(report(delivered, ret=ret)))[2].get_content_type() == content_type


def test_an_8bit_original_makes_the_report_8bit_and_says_so() -> None:
    raw = compose(report(original=ORIGINAL.replace(b"The body text.", "Grüße".encode())))
    returned = parts(raw)[2]
    assert parse(raw)["Content-Transfer-Encoding"] == "8bit"
    assert returned["Content-Transfer-Encoding"] == "8bit"


def test_an_original_with_utf8_headers_is_returned_as_message_global() -> None:
    original = "From: jörg@example.org\r\nSubject: Grüße\r\n\r\nbody\r\n".encode()
    assert parts(compose(report(original=original)))[2].get_content_type() == "message/global"
    assert parts(compose(report(original=original, ret=Ret.HDRS)))[2].get_content_type() == "message/global-headers"


# -- international addresses (RFC 6533) ---------------------------------------------------------------


def test_a_non_ascii_recipient_yields_message_global_delivery_status_with_utf8_address_types() -> None:
    entry = RecipientEntry.from_reply("jörg@bücher.example", Action.FAILED, Reply(550, "5.1.1", "unknown"),
                                      original_recipient=OriginalRecipient("utf-8", "jörg@bücher.example"))
    raw = compose(report(entry, BOB_UNKNOWN))
    assert parts(raw)[1].get_content_type() == "message/global-delivery-status"
    assert parts(raw)[1]["Content-Transfer-Encoding"] == "8bit"
    jorg, bob = raw_status_blocks(raw)[1:]
    assert jorg["Final-Recipient"] == "utf-8; jörg@bücher.example"
    assert jorg["Original-Recipient"] == "utf-8; jörg@bücher.example"
    assert bob["Final-Recipient"] == "rfc822; bob@example.net"


def test_an_ascii_report_writes_a_utf8_type_original_recipient_in_its_7bit_form() -> None:
    entry = RecipientEntry.from_reply("bob@example.net", Action.FAILED, Reply(550),
                                      original_recipient=OriginalRecipient("utf-8", "bob\\x@example.net"))
    block = status_blocks(parts(compose(report(entry)))[1])[1]
    assert block["Original-Recipient"] == "utf-8; bob\\x{5C}x@example.net"


def test_non_ascii_text_is_quoted_printable_so_it_alone_does_not_make_the_report_8bit() -> None:
    entry = RecipientEntry.from_reply("jörg@example.org", Action.FAILED, Reply(550, "5.1.1", "unknown"))
    text = parts(compose(report(entry)))[0]
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert "<jörg@example.org>: 550 5.1.1 unknown" in text.get_content()


# -- other kinds ---------------------------------------------------------------------------------------


def test_a_delay_notice_says_it_is_delayed_and_until_when_it_is_retried() -> None:
    entry = RecipientEntry.from_reply("bob@example.net", Action.DELAYED, Reply(451, "4.4.1", "connection refused"),
                                      remote_mta="mx.example.net", last_attempt=NOW, will_retry_until=NOW + 86400)
    raw = compose(report(entry))
    block = status_blocks(parts(raw)[1])[1]
    assert parse(raw)["Subject"] == "Delayed Mail (still being retried)"
    assert (block["Action"], block["Status"]) == ("delayed", "4.4.1")
    assert block["Will-Retry-Until"] == "Wed, 15 Nov 2023 22:13:20 +0000"
    assert "will be retried until Wed, 15 Nov 2023" in parts(raw)[0].get_content()


def test_will_retry_until_appears_only_for_delayed_recipients() -> None:
    entry = RecipientEntry.from_reply("bob@example.net", Action.FAILED, Reply(550), will_retry_until=NOW)
    assert "Will-Retry-Until" not in status_blocks(parts(compose(report(entry)))[1])[1]


@pytest.mark.parametrize(("action", "subject"), [
    (Action.FAILED, "Undelivered Mail Returned to Sender"),
    (Action.DELAYED, "Delayed Mail (still being retried)"),
    (Action.DELIVERED, "Delivery Status Notification (Success)"),
    (Action.RELAYED, "Delivery Status Notification (Relayed)"),
])
def test_subject_names_the_kind_of_report(action: Action, subject: str) -> None:
    entry = RecipientEntry.from_reply("bob@example.net", action, Reply(250))
    assert parse(compose(report(entry)))["Subject"] == subject


def test_the_gravest_action_decides_the_kind() -> None:
    assert report_kind([Action.DELIVERED, Action.FAILED, Action.DELAYED]) is ReportKind.FAILURE
    assert report_kind([Action.RELAYED, Action.DELAYED]) is ReportKind.DELAY
    assert report_kind([Action.RELAYED, Action.DELIVERED]) is ReportKind.SUCCESS
    assert report_kind([Action.EXPANDED]) is ReportKind.SUCCESS
    assert report_kind([Action.RELAYED]) is ReportKind.RELAYED


@pytest.mark.parametrize(("kind", "message_class"), [
    (ReportKind.FAILURE, "REPORT.IPM.Note.NDR"), (ReportKind.SUCCESS, "REPORT.IPM.Note.DR"),
    (ReportKind.DELAY, "REPORT.IPM.Note.Delayed"), (ReportKind.RELAYED, "REPORT.IPM.Note.Relayed"),
])
def test_report_class_is_the_mapi_name(kind: ReportKind, message_class: str) -> None:
    assert report_class(kind) == message_class


def test_report_class_follows_the_original_class() -> None:
    assert report_class(ReportKind.FAILURE, "IPM.Schedule.Meeting") == "REPORT.IPM.Schedule.Meeting.NDR"


# -- never bounce a bounce ---------------------------------------------------------------------------


def test_a_report_goes_to_the_envelope_sender() -> None:
    route = route_report("ann@example.org", ReportKind.FAILURE, postmaster="postmaster@relay.example.org")
    assert (route.to, route.dropped) == ("ann@example.org", False)


def test_a_failed_bounce_goes_to_the_postmaster_once() -> None:
    route = route_report("", ReportKind.FAILURE, postmaster="postmaster@relay.example.org",
                         failed_recipients=["ann@example.org"])
    assert route.to == "postmaster@relay.example.org"


def test_a_failed_bounce_is_dropped_without_a_postmaster() -> None:
    route = route_report("", ReportKind.FAILURE, postmaster=None)
    assert route.dropped and "double bounce" in route.reason


def test_a_failed_double_bounce_to_the_postmaster_is_dropped_not_looped() -> None:
    route = route_report("", ReportKind.FAILURE, postmaster="postmaster@relay.example.org",
                         failed_recipients=["Postmaster@Relay.Example.Org"])
    assert route.dropped and "not looped" in route.reason


@pytest.mark.parametrize("kind", [ReportKind.DELAY, ReportKind.SUCCESS, ReportKind.RELAYED])
def test_mail_with_the_null_sender_gets_no_other_notice(kind: ReportKind) -> None:
    assert route_report("", kind, postmaster="postmaster@relay.example.org").dropped
