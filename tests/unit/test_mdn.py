"""Read receipts (RFC 8098): reading the request from a stored message, the §2.1 rule on when one
may go out without the user, and the MDN as the stdlib email package reads it back."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage, Message

import pytest

from msgspool.domain.dsn import OriginalRecipient
from msgspool.domain.mdn import (
    Disposition,
    MDNRequest,
    compose_mdn,
    disposition_field,
    may_send_mdn,
    mdn_class,
    mdn_request,
    original_recipient_header,
)

NOW = 1_700_000_000.0
HEADERS = ("Return-Path: <ann@example.org>\r\nFrom: Ann <ann@example.org>\r\nTo: bob@example.net\r\n"
           "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nMessage-ID: <m1@example.org>\r\n"
           "Disposition-Notification-To: Ann <ann@example.org>\r\n")
MESSAGE = (HEADERS + "Original-Recipient: rfc822; Bob@Example.NET\r\n\r\nThe secret body.\r\n").encode()


def with_headers(*lines: str, base: str = HEADERS) -> bytes:
    return (base + "".join(f"{line}\r\n" for line in lines) + "\r\nbody\r\n").encode()


def request_of(content: bytes) -> MDNRequest:
    found = mdn_request(content)
    assert found is not None
    return found


def compose(content: bytes = MESSAGE, disposition: Disposition = Disposition.DISPLAYED, *,
            final_recipient: str = "bob@example.net", manual: bool | None = None) -> bytes:
    return compose_mdn(request_of(content), content, final_recipient=final_recipient, disposition=disposition,
                       reporting_host="mail.example.net", now=NOW, manual=manual, message_id="<mdn-1@example.net>")


def parse(raw: bytes) -> EmailMessage:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def part(raw: bytes, index: int) -> EmailMessage:
    found = list(parse(raw).iter_parts())[index]
    assert isinstance(found, EmailMessage)
    return found


def notification_fields(raw: bytes) -> Message:
    """The message/disposition-notification fields (the email package reads them as a nested header block)."""
    inner = part(raw, 1).get_payload(0)
    assert isinstance(inner, Message)
    return inner


# -- the request ------------------------------------------------------------------------------------


def test_request_is_read_from_the_header_section() -> None:
    assert request_of(MESSAGE) == MDNRequest(("ann@example.org",), "ann@example.org", "rfc822; Bob@Example.NET",
                                             "<m1@example.org>", "Grüße")


def test_a_message_without_disposition_notification_to_asks_for_nothing() -> None:
    assert mdn_request(b"From: ann@example.org\r\nSubject: hi\r\n\r\nDisposition-Notification-To: x@y.org\r\n") is None


def test_an_mdn_is_never_answered_with_an_mdn() -> None:
    mdn_itself = with_headers("Content-Type: multipart/report;", ' report-type="disposition-notification"; boundary=x')
    assert mdn_request(mdn_itself) is None


def test_a_delivery_report_is_never_answered_with_an_mdn() -> None:
    dsn = with_headers("Content-Type: multipart/report; report-type=delivery-status; boundary=x")
    assert mdn_request(dsn) is None


def test_one_address_equal_to_the_return_path_may_be_answered_automatically() -> None:
    assert not request_of(MESSAGE).needs_consent
    assert may_send_mdn(request_of(MESSAGE))


def test_the_return_path_domain_is_compared_without_case() -> None:
    content = with_headers(base=HEADERS.replace("Return-Path: <ann@example.org>", "Return-Path: <ann@EXAMPLE.org>"))
    assert not request_of(content).needs_consent


@pytest.mark.parametrize(("old", "new"), [
    ("Return-Path: <ann@example.org>", "Return-Path: <other@example.org>"),
    ("Return-Path: <ann@example.org>", "Return-Path: <Ann@example.org>"),  # local parts compare exactly
    ("Return-Path: <ann@example.org>", "Return-Path: <>"),
    ("Return-Path: <ann@example.org>\r\n", ""),
    ("Return-Path: <ann@example.org>\r\n", "Return-Path: <ann@example.org>\r\nReturn-Path: <x@example.org>\r\n"),
    ("Ann <ann@example.org>\r\n", "ann@example.org, boss@example.org\r\n"),
])
def test_an_mdn_needs_the_users_consent_when_the_request_is_not_plainly_the_senders(old: str, new: str) -> None:
    request = request_of(with_headers(base=HEADERS.replace(old, new)))
    assert request.needs_consent
    assert not may_send_mdn(request)
    assert may_send_mdn(request, user_consents=True)


def test_an_unknown_required_option_forbids_the_mdn_even_with_consent() -> None:
    request = request_of(with_headers("Disposition-Notification-Options: signed-receipt-protocol=required,pkcs7"))
    assert not may_send_mdn(request, user_consents=True)


def test_an_unknown_optional_option_is_ignored() -> None:
    request = request_of(with_headers("Disposition-Notification-Options: signed-receipt-protocol=optional,pkcs7"))
    assert may_send_mdn(request)


# -- the MDN ----------------------------------------------------------------------------------------


def test_mdn_parses_as_multipart_report_of_type_disposition_notification() -> None:
    message = parse(compose())
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "disposition-notification"
    assert [p.get_content_type() for p in message.iter_parts()] == [
        "text/plain", "message/disposition-notification", "text/rfc822-headers"]


def test_a_read_message_gets_a_manual_displayed_disposition() -> None:
    fields = notification_fields(compose())
    assert fields["Disposition"] == "manual-action/MDN-sent-manually; displayed"


def test_a_message_deleted_unread_gets_an_automatic_deleted_disposition_and_is_auto_replied() -> None:
    raw = compose(disposition=Disposition.DELETED)
    assert notification_fields(raw)["Disposition"] == "automatic-action/MDN-sent-automatically; deleted"
    assert parse(raw)["Auto-Submitted"] == "auto-replied"


def test_a_manual_mdn_is_not_marked_auto_submitted() -> None:
    assert parse(compose())["Auto-Submitted"] is None


def test_the_mode_can_be_chosen_for_either_disposition() -> None:
    raw = compose(manual=False)
    assert notification_fields(raw)["Disposition"] == "automatic-action/MDN-sent-automatically; displayed"


def test_mdn_fields_name_the_recipient_the_original_recipient_and_the_message() -> None:
    fields = notification_fields(compose())
    assert fields["Reporting-UA"] == "mail.example.net; msgspool"
    assert fields["Original-Recipient"] == "rfc822; Bob@Example.NET"
    assert fields["Final-Recipient"] == "rfc822; bob@example.net"
    assert fields["Original-Message-ID"] == "<m1@example.org>"


def test_no_original_recipient_field_when_the_message_had_no_such_header() -> None:
    assert "Original-Recipient" not in notification_fields(compose(with_headers()))


def test_mdn_goes_from_the_recipient_to_the_requested_address_and_threads_with_the_original() -> None:
    message = parse(compose())
    assert message["From"] == "bob@example.net"
    assert message["To"] == "ann@example.org"
    assert message["Subject"] == "Read: Grüße"
    assert message["In-Reply-To"] == "<m1@example.org>"
    assert "Disposition-Notification-To" not in message


def test_mdn_returns_only_the_original_headers() -> None:
    raw = compose()
    assert b"The secret body." not in raw
    assert "Message-ID: <m1@example.org>" in part(raw, 2).get_content()


def test_a_non_ascii_final_recipient_yields_a_global_disposition_notification() -> None:
    raw = compose(final_recipient="jörg@example.net")
    assert part(raw, 1).get_content_type() == "message/global-disposition-notification"
    assert "Final-Recipient: utf-8; jörg@example.net" in raw.decode()


@pytest.mark.parametrize(("disposition", "message_class"), [
    (Disposition.DISPLAYED, "REPORT.IPM.Note.IPNRN"), (Disposition.DELETED, "REPORT.IPM.Note.IPNNRN"),
])
def test_mdn_class_is_the_mapi_read_or_nonread_report(disposition: Disposition, message_class: str) -> None:
    assert mdn_class(disposition) == message_class


def test_disposition_field_joins_mode_and_type() -> None:
    assert disposition_field(Disposition.DELETED, manual=True) == "manual-action/MDN-sent-manually; deleted"


def test_original_recipient_header_is_written_from_orcpt_for_local_delivery() -> None:
    assert original_recipient_header(OriginalRecipient("rfc822", "Bob@Example.NET")) == (
        "Original-Recipient: rfc822; Bob@Example.NET\r\n")
    assert original_recipient_header(OriginalRecipient("utf-8", "jörg@example.net")) == (
        "Original-Recipient: utf-8; jörg@example.net\r\n")
