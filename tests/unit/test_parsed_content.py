"""web/content.py: a stored message as a mail reader shows it, whatever its MIME tree holds."""

from __future__ import annotations

from msgspool.web.content import attachment, parsed

NESTED = (b"From: a@example.org\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nMIME-Version: 1.0\r\n"
          b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
          b"--XX\r\nContent-Type: text/plain; charset=x-unknown-charset\r\n\r\nodd charset\r\n"
          b"--XX\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n"
          b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
          b"Content-Disposition: attachment; filename=\"blob.bin\"\r\n\r\nAAEC!!!!\r\n--XX--\r\n")


def test_a_plain_message_has_its_text_and_no_attachments() -> None:
    shown = parsed(b"Subject: hi\r\nFrom: a@example.org\r\n\r\nhello\r\n")
    assert shown["subject"] == "hi" and shown["text"].strip() == "hello"
    assert shown["html"] is None and shown["attachments"] == []
    assert shown["headers"] == [["Subject", "hi"], ["From", "a@example.org"]]


def test_encoded_words_odd_charsets_nested_messages_and_bad_base64_do_not_break_it() -> None:
    shown = parsed(NESTED)
    assert shown["subject"] == "Gr\u00fc\u00dfe"
    assert shown["text"] is not None and "odd charset" in shown["text"]
    kinds = [(a["content_type"], a["filename"]) for a in shown["attachments"]]
    assert ("application/octet-stream", "blob.bin") in kinds
    blob = attachment(NESTED, kinds.index(("application/octet-stream", "blob.bin")))
    assert blob is not None and blob.payload[:3] == b"\x00\x01\x02"
    assert attachment(NESTED, 99) is None and attachment(NESTED, -1) is None


def test_no_header_section_at_all() -> None:
    shown = parsed(b"")
    assert shown["headers"] == [] and shown["subject"] is None and shown["attachments"] == []
