"""Plain data of the domain: queue ids, time formats, events as JSON, message and recipient helpers."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime

from msgspool.domain.events import Event, EventType
from msgspool.domain.ids import new_id
from msgspool.domain.message import Message, Recipient
from msgspool.domain.timefmt import iso, rfc5322


def test_queue_ids_are_18_crockford_digits_sorted_by_submission_time() -> None:
    ids = [new_id(1_700_000_000.0 + i / 1000) for i in range(50)]
    assert all(re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{18}", i) for i in ids)
    assert ids == sorted(ids)


def test_queue_ids_of_the_same_millisecond_are_not_reused() -> None:
    assert len({new_id(1_700_000_000.0) for _ in range(1000)}) == 1000


def test_iso_is_utc_with_milliseconds_and_z() -> None:
    assert iso(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso(None) is None


def test_rfc5322_date_reads_back_as_the_same_second() -> None:
    assert parsedate_to_datetime(rfc5322(1_700_000_000.7)).timestamp() == 1_700_000_000


def test_event_json_has_type_message_id_iso_time_and_only_the_fields_that_apply() -> None:
    event = Event(EventType.NEW_MAIL, "01ABC", 0.0, mailbox="bob@localhost", folder="inbox",
                  detail={"sender": "a@example.org"}, id=7)
    assert event.to_json() == {"id": 7, "type": "new_mail", "message_id": "01ABC", "time": "1970-01-01T00:00:00.000Z",
                               "mailbox": "bob@localhost", "folder": "inbox", "sender": "a@example.org"}
    assert "recipient" not in event.to_json() and "mailbox" not in Event(EventType.SUBMITTED, "x", 0.0).to_json()


def test_recipient_has_a_destination_only_once_routed() -> None:
    assert Recipient("u@example.com").destination is None
    assert Recipient("u@example.com", transport="smtp", nexthop="example.com").destination == "smtp:example.com"


def test_message_size_and_content_include_the_per_copy_header_prefix() -> None:
    message = Message("id", "a@example.org", b"body\r\n", [], 0.0, headers_prefix=b"Delivered-To: b\r\n")
    assert message.full_content() == b"Delivered-To: b\r\nbody\r\n"
    assert message.size == len(message.full_content())


def test_a_mailbox_filter_matches_the_mailbox_however_the_user_spells_it() -> None:
    from msgspool.spooler.events import EventFilter

    event = Event(EventType.NEW_MAIL, "Q1", 0.0, mailbox="you@localhost", folder="inbox")
    assert EventFilter(mailbox="You@LocalHost").matches(event)
    assert not EventFilter(mailbox="them@localhost").matches(event)
