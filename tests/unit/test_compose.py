"""Header edits for submissions without an envelope: recipients from To/Cc/Bcc, Bcc removed, and
From/Date/Message-ID added when missing; the body is never touched."""

from __future__ import annotations

from email.parser import BytesParser
from email.policy import compat32

import pytest

from msgspool.compose import complete_headers, header_recipients, header_sender, strip_bcc

MESSAGE = (b"From: App <app@example.org>\r\nTo: Ann <ann@example.com>, bob@example.com\r\n"
           b"Cc: carol@example.net\r\nBcc: audit@example.net,\r\n secret@example.net\r\nSubject: hi\r\n"
           b"\r\nBcc: this line is body\r\nTo: so is this\r\n")


def test_header_recipients_come_from_to_cc_and_bcc_in_that_order() -> None:
    assert header_recipients(MESSAGE) == ["ann@example.com", "bob@example.com", "carol@example.net",
                                          "audit@example.net", "secret@example.net"]


def test_header_recipients_skip_empty_groups() -> None:
    assert header_recipients(b"To: undisclosed-recipients:;\r\nCc: a@example.com\r\n\r\nbody\r\n") == ["a@example.com"]


def test_header_sender_prefers_sender_over_from() -> None:
    assert header_sender(b"From: a@example.org\r\nSender: list@example.org\r\n\r\n") == "list@example.org"
    assert header_sender(b"From: Ann <a@example.org>, b@example.org\r\n\r\n") == "a@example.org"
    assert header_sender(b"Subject: none\r\n\r\n") == ""


def test_strip_bcc_removes_the_field_with_its_folded_lines_and_keeps_everything_else() -> None:
    stripped = strip_bcc(MESSAGE)
    assert stripped == MESSAGE.replace(b"Bcc: audit@example.net,\r\n secret@example.net\r\n", b"", 1)
    assert b"secret@" not in stripped and b"\r\nBcc: this line is body\r\n" in stripped


@pytest.mark.parametrize("field", [b"BCC: x@example.org\r\n", b"bcc: x@example.org\r\n"])
def test_strip_bcc_ignores_the_case_of_the_field_name(field: bytes) -> None:
    assert strip_bcc(b"To: a@example.org\r\n" + field + b"\r\nbody\r\n") == b"To: a@example.org\r\n\r\nbody\r\n"


def test_strip_bcc_of_a_last_header_without_body() -> None:
    assert strip_bcc(b"To: a@example.org\r\nBcc: b@example.org\r\n") == b"To: a@example.org\r\n\r\n"


def test_complete_headers_adds_from_date_and_message_id_before_the_body() -> None:
    done = complete_headers(b"Subject: hi\r\n\r\nbody\r\n", "app@example.org", "The App", "mx.example.org")
    parsed = BytesParser(policy=compat32).parsebytes(done)
    assert parsed["From"] == "The App <app@example.org>"
    assert parsed["Date"] and parsed["Message-ID"].endswith("@mx.example.org>")
    assert parsed.get_payload() == "body\r\n"
    assert done.startswith(b"Subject: hi\r\n")


def test_complete_headers_leaves_a_complete_message_byte_for_byte() -> None:
    content = b"From: a@example.org\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n"
    assert complete_headers(content, "other@example.org", "Other", "h") is content


def test_complete_headers_keeps_the_from_that_is_there() -> None:
    done = complete_headers(b"From: a@example.org\r\n\r\nbody\r\n", "other@example.org", None, "h")
    assert BytesParser(policy=compat32).parsebytes(done).get_all("From") == ["a@example.org"]


def test_body_without_header_section_gets_headers_and_a_separator() -> None:
    done = complete_headers(b"just a body line\r\n", "app@example.org", None, "h")
    parsed = BytesParser(policy=compat32).parsebytes(done)
    assert parsed["From"] == "app@example.org"
    assert parsed.get_payload() == "just a body line\r\n"


def test_strip_bcc_keeps_the_body_of_a_message_with_lf_line_ends() -> None:
    stripped = strip_bcc(b"From: a@example.org\nBcc: b@example.org\nSubject: s\n\nbody\n")
    assert b"Subject: s" in stripped and b"body" in stripped and b"b@example.org" not in stripped


def test_complete_headers_puts_added_fields_in_the_header_section_with_lf_line_ends() -> None:
    done = complete_headers(b"From: a@example.org\nSubject: s\n\nbody\n", "a@example.org", None, "h")
    assert BytesParser(policy=compat32).parsebytes(done)["Date"] is not None
