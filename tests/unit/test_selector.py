"""Selectors of bulk actions (domain/selector.py): what parses, and errors that name the bad term."""

from __future__ import annotations

import pytest

from msgspool.domain.selector import Selector, SelectorError, from_json, make, parse_duration, parse_selector


def test_every_term_parses_and_values_compare_in_lower_case() -> None:
    where = parse_selector("destination=MX.Example.com, sender=Bob@Example.org,recipient=@example.NET,"
                           "status=deferred,transport=smtp,older-than=2d")
    assert where == Selector(destination="mx.example.com", sender="bob@example.org", recipient="@example.net",
                             status="deferred", transport="smtp", older_than=2 * 86400)
    assert where.to_json() == {"destination": "mx.example.com", "sender": "bob@example.org",
                               "recipient": "@example.net", "status": "deferred", "transport": "smtp",
                               "older-than": 172800.0}


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h", 3600), ("2d", 172800),
                                               ("1w", 604800), ("1.5h", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_the_search_terms_parse_folders_mailbox_subject_and_ages() -> None:
    where = parse_selector("folder=Inbox|sent,mailbox=Bob@example.org,subject=Invoice 42,newer-than=1h,older-than=90s")
    assert where.folders == ("inbox", "sent") and where.mailbox == "bob@example.org"
    assert where.subject == "invoice 42" and where.window(1000.0) == (910.0, -2600.0)
    assert parse_selector("folder=*").folders == () and parse_selector("status=held").folders is None
    assert parse_selector("folder=Reports|OUTBOX").folders == ("Reports", "outbox")  # a user's folder as named
    assert parse_selector("sender=<>").sender == ""  # the null sender (bounces)
    assert parse_selector("mailbox=<>").mailbox == ""  # the spool's own outbox
    assert not parse_selector("sender=a@b.c").recipient_terms and parse_selector("transport=smtp").recipient_terms
    assert parse_selector("folder=outbox").in_outbox_only() and not parse_selector("folder=*").in_outbox_only()
    assert parse_selector("mailbox=bob@example.org").searched_folders() == ()  # every folder of the mailbox
    assert parse_selector("status=held").in_outbox_only()
    assert make([("subject", "a, b"), ("older_than", "1h")]).subject == "a, b"  # the HTTP query's terms


@pytest.mark.parametrize(("text", "named"), [
    ("", "empty selector"),
    ("destination", "'destination'"),
    ("colour=blue", "'colour'"),
    ("status=lost", "'status'"),
    ("older-than=yesterday", "'older-than'"),
    ("older-than=5", "'older-than'"),
    ("sender=", "'sender'"),
    ("sender=nobody", "'sender'"),
    ("recipient=@", "'recipient'"),
    ("newer-than=soon", "'newer-than'"),
    ("folder=in box", "'folder'"),
    ("subject=" + "x" * 201, "'subject'"),
    ("status=held,status=queued", "'status' given twice"),
])
def test_a_bad_selector_is_refused_naming_the_term(text: str, named: str) -> None:
    with pytest.raises(SelectorError, match=named.replace("(", r"\(")):
        parse_selector(text)


def test_json_where_is_the_text_form_or_an_object() -> None:
    assert from_json("status=held") == from_json({"status": "held"}) == Selector(status="held")
    with pytest.raises(SelectorError, match="'older-than'"):
        from_json({"older-than": 3600})
    for bad in (None, [], {}, {"status": ["held"]}, {"sender": "a@b,status=held"}):
        with pytest.raises(SelectorError):
            from_json(bad)
