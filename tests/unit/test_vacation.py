"""Vacation replies (RFC 5230): when one is due (null and system senders, automatic and list mail,
mail not addressed to the user, one reply per sender and handle per period) and the reply as the
stdlib email package reads it back. Pure: the caller keeps the last-sent times."""

from __future__ import annotations

from dataclasses import replace
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from msgspool.domain.sieve import DAY, Vacation
from msgspool.hooks.sieve import Envelope, compile_script, compose_vacation, evaluate, vacation_due, vacation_reply
from msgspool.hooks.sieve import vacation_skip_reason as skip_reason

NOW = 1_700_000_000.0
ORIGINAL = (b"From: Ann <ann@example.org>\r\nTo: Bob <Bob@Example.NET>\r\n"
            b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= from Ann\r\nMessage-ID: <m2@example.org>\r\n"
            b"References: <m0@example.org> <m1@example.org>\r\nIn-Reply-To: <m1@example.org>\r\n"
            b"\r\nHi Bob!\r\n")
VACATION = Vacation(sender="ann@example.org", recipient="bob@example.net", mailbox="bob@example.net",
                    reason="I am away until Monday.", seconds=7 * DAY, handle="h")


def message(*lines: str) -> bytes:
    return ("".join(f"{line}\r\n" for line in lines) + "\r\nbody\r\n").encode()


PLAIN = message("From: ann@example.org", "To: bob@example.net", "Subject: hi")


def parse(raw: bytes) -> EmailMessage:
    parsed = message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def reply_to(original: bytes = ORIGINAL, vacation: Vacation = VACATION) -> EmailMessage:
    raw = vacation_reply(vacation, original, now=NOW, message_id="<v1@example.net>")
    assert raw is not None
    return parse(raw)


# -- when a reply is due -------------------------------------------------------------------------------


def test_a_personal_message_to_the_user_is_answered() -> None:
    assert skip_reason(VACATION, ORIGINAL) is None and vacation_due(VACATION, ORIGINAL)


def test_the_null_sender_is_never_answered() -> None:
    assert skip_reason(replace(VACATION, sender=""), PLAIN) == "the envelope sender is null"


@pytest.mark.parametrize("sender", ["MAILER-DAEMON@example.org", "mailer-daemon", "owner-dev@lists.example.org",
                                    "dev-request@lists.example.org", "LISTSERV@example.org", "majordomo@example.org"])
def test_system_and_list_senders_are_not_answered(sender: str) -> None:
    assert "system or list address" in str(skip_reason(replace(VACATION, sender=sender), PLAIN))


def test_mail_from_the_user_itself_is_not_answered() -> None:
    vacation = replace(VACATION, sender="Bob@example.NET")
    assert skip_reason(vacation, PLAIN) == "the message is from the user"
    assert skip_reason(replace(VACATION, sender="bob@example.com", addresses=("bob@example.com",)), PLAIN) is not None


@pytest.mark.parametrize("value", ["auto-generated", "auto-replied", "Auto-Notified; owner-email=x@example.org"])
def test_auto_submitted_mail_is_not_answered(value: str) -> None:
    original = message(f"Auto-Submitted: {value}", "To: bob@example.net")
    assert skip_reason(VACATION, original) == f"Auto-Submitted: {value}"


def test_auto_submitted_no_is_answered() -> None:
    assert vacation_due(VACATION, message("Auto-Submitted: No", "To: bob@example.net"))


@pytest.mark.parametrize("field", ["List-Id: <dev.example.org>", "List-Unsubscribe: <mailto:u@example.org>",
                                   "List-Post: NO", "List-Help: <https://example.org>", "list-owner: <x@example.org>"])
def test_mailing_list_messages_are_not_answered(field: str) -> None:
    assert "mailing list" in str(skip_reason(VACATION, message(field, "To: bob@example.net")))


@pytest.mark.parametrize("precedence", ["bulk", "List", "junk"])
def test_bulk_precedence_is_not_answered(precedence: str) -> None:
    original = message(f"Precedence: {precedence}", "To: bob@example.net")
    assert skip_reason(VACATION, original) == f"Precedence: {precedence.lower()}"


def test_mail_not_addressed_to_the_user_is_not_answered() -> None:
    original = message("To: dev@lists.example.org", "Cc: carol@example.com")
    assert skip_reason(VACATION, original) == "none of the user's addresses is in To/Cc/Bcc"


@pytest.mark.parametrize("field", ["Cc: x@example.org, Bob <BOB@example.net>", "Bcc: bob@example.net",
                                   "Resent-To: bob@example.net", "Resent-Cc: bob@example.net"])
def test_the_user_in_any_recipient_field_is_answered(field: str) -> None:
    assert vacation_due(VACATION, message("To: dev@example.org", field))


def test_an_alias_from_addresses_counts_as_the_user() -> None:
    original = message("To: Robert <robert@example.com>")
    assert not vacation_due(VACATION, original)
    assert vacation_due(replace(VACATION, addresses=("Robert <robert@example.com>",)), original)


def test_the_mailbox_address_counts_as_the_user() -> None:
    vacation = replace(VACATION, recipient="bob+work@example.net")
    assert vacation_due(vacation, message("To: bob@example.net"))


def test_one_reply_per_period_for_the_same_key() -> None:
    assert not vacation_due(VACATION, PLAIN, last_sent=NOW - 7 * DAY + 1, now=NOW)
    assert vacation_due(VACATION, PLAIN, last_sent=NOW - 7 * DAY, now=NOW)
    assert vacation_due(VACATION, PLAIN, last_sent=None, now=NOW)
    assert "already answered" in str(skip_reason(VACATION, PLAIN, last_sent=NOW - 60, now=NOW))


def test_a_zero_second_period_answers_every_time() -> None:
    assert vacation_due(replace(VACATION, seconds=0), PLAIN, last_sent=NOW, now=NOW)


def test_a_script_run_twice_gives_the_caller_one_key_per_sender() -> None:
    """The end-to-end rule: the key stays the same, so the caller's last-sent time suppresses a second reply."""
    script = compile_script('require "vacation";\nvacation :days 2 "Away.";')
    first, second = (evaluate(script, PLAIN, Envelope("ann@example.org", "bob@example.net"), mailbox="bob@example.net")
                     for _ in range(2))
    assert first.vacation is not None and second.vacation is not None
    sent: dict[tuple[str, str], float] = {}
    assert vacation_reply(first.vacation, PLAIN, now=NOW, last_sent=sent.get(first.vacation.key)) is not None
    sent[first.vacation.key] = NOW
    assert vacation_reply(second.vacation, PLAIN, now=NOW + DAY, last_sent=sent.get(second.vacation.key)) is None
    assert vacation_reply(second.vacation, PLAIN, now=NOW + 2 * DAY, last_sent=sent[second.vacation.key]) is not None


# -- the reply -----------------------------------------------------------------------------------------------


def test_reply_goes_to_the_envelope_sender_from_the_address_the_mail_was_sent_to() -> None:
    reply = reply_to()
    assert [a.addr_spec for a in reply["To"].addresses] == ["ann@example.org"]
    assert reply["From"] == "Bob@Example.NET"


def test_reply_subject_is_auto_and_the_decoded_original_subject() -> None:
    assert reply_to()["Subject"] == "Auto: Grüße from Ann"


def test_reply_threads_under_the_original() -> None:
    reply = reply_to()
    assert reply["In-Reply-To"] == "<m2@example.org>"
    assert reply["References"] == "<m0@example.org> <m1@example.org> <m2@example.org>"


def test_reply_references_start_from_in_reply_to_without_references() -> None:
    original = message("To: bob@example.net", "Message-ID: <b@x>", "In-Reply-To: <a@x>")
    assert reply_to(original)["References"] == "<a@x> <b@x>"


def test_reply_without_an_original_message_id_has_no_threading_fields() -> None:
    reply = reply_to(PLAIN)
    assert reply["In-Reply-To"] is None and reply["References"] is None


def test_reply_is_marked_auto_replied_and_dated() -> None:
    reply = reply_to()
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["Message-ID"] == "<v1@example.net>"
    assert reply["Date"].datetime.timestamp() == NOW


def test_reply_body_is_the_reason_as_utf8_text() -> None:
    reply = reply_to(vacation=replace(VACATION, reason="Bin weg. Grüße!\nBob\n"))
    assert reply.get_content_type() == "text/plain" and reply.get_content_charset() == "utf-8"
    assert reply["Content-Transfer-Encoding"] == "quoted-printable"
    assert reply.get_content().replace("\r\n", "\n") == "Bin weg. Grüße!\nBob\n"


def test_reply_uses_subject_and_from_arguments() -> None:
    reply = reply_to(vacation=replace(VACATION, subject="Weg bis Montag", from_address="Bob B. <bob@example.net>"))
    assert reply["Subject"] == "Weg bis Montag"
    assert reply["From"].addresses[0].addr_spec == "bob@example.net"
    assert reply["From"].addresses[0].display_name == "Bob B."


def test_reply_without_an_original_subject_says_automated_reply() -> None:
    assert reply_to(message("To: bob@example.net"))["Subject"] == "Automated reply"


def test_reply_has_crlf_line_ends_and_a_message_id_even_when_not_given() -> None:
    raw = compose_vacation(VACATION, ORIGINAL, now=NOW)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert parse(raw)["Message-ID"].endswith("@example.net>")


def test_mime_reason_is_the_whole_body_entity() -> None:
    reason = ('Content-Type: multipart/alternative; boundary="b1"\n\n--b1\nContent-Type: text/plain\n\nAway.\n'
              '--b1\nContent-Type: text/html\n\n<p>Away.</p>\n--b1--\n')
    reply = reply_to(vacation=replace(VACATION, reason=reason, mime=True))
    assert reply.get_content_type() == "multipart/alternative"
    parts = [part.get_content().strip() for part in reply.iter_parts() if isinstance(part, EmailMessage)]
    assert parts == ["Away.", "<p>Away.</p>"]
    assert reply["Auto-Submitted"] == "auto-replied" and reply["MIME-Version"] == "1.0"


def test_no_reply_is_composed_when_none_is_due() -> None:
    assert vacation_reply(VACATION, message("Precedence: bulk", "To: bob@example.net"), now=NOW) is None
