"""Webhook targets, filters and signatures (domain/webhooks.py), and the `webhooks` setting."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest

from msgspool.config import ConfigError, Settings, load
from msgspool.domain.events import Event, EventType
from msgspool.domain.webhooks import (
    WebhookTarget,
    from_webhook,
    parse_targets,
    sign,
    signature_header,
    verify,
    webhook_body,
)

URL = "https://app.example/hooks/mail"
BODY = b'{"id":7,"type":"new_mail"}'


def test_signature_is_hex_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(b"k", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign("k", 1700000000, BODY) == expected
    assert signature_header("k", 1700000000, BODY) == f"t=1700000000,v1={expected}"


def test_verify_accepts_the_header_and_refuses_another_body_secret_or_an_old_timestamp() -> None:
    header = signature_header("k", 1700000000, BODY)
    assert verify("k", header, BODY, now=1700000010)
    assert not verify("k", header, BODY + b" ", now=1700000010)
    assert not verify("other", header, BODY, now=1700000010)
    assert not verify("k", header, BODY, now=1700000000 + 301)  # a replay, five minutes on
    assert not verify("k", "v1=abc", BODY, now=1700000000)
    assert not verify("k", "t=x,v1=abc", BODY, now=1700000000)


def test_verify_accepts_any_of_several_v1_signatures() -> None:
    header = f"t=1700000000,v1={'0' * 64},v1={sign('k', 1700000000, BODY)}"
    assert verify("k", header, BODY, now=1700000000)


def test_a_target_takes_defaults_and_normalizes_the_mailbox() -> None:
    [target] = parse_targets([{"url": URL, "secret": "k", "mailbox": "Bob@LocalHost"}])
    assert target == WebhookTarget(URL, "k", None, "bob@localhost", URL)


@pytest.mark.parametrize(("table", "complaint"), [
    ({"secret": "k"}, "url must be"),
    ({"url": "ftp://app.example/x", "secret": "k"}, "url must be"),
    ({"url": "http:///nohost", "secret": "k"}, "url must be"),
    ({"url": URL}, "secret must be"),
    ({"url": URL, "secret": ""}, "secret must be"),
    ({"url": URL, "secret": "k", "types": ["new_mail", "mail_arrived"]}, "types must be"),
    ({"url": URL, "secret": "k", "types": "new_mail"}, "types must be"),
    ({"url": URL, "secret": "k", "mailbox": 3}, "must be strings"),
    ({"url": URL, "secret": "k", "retries": 3}, "unknown key"),
])
def test_a_bad_target_is_refused_with_the_reason(table: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_targets([table])


def test_one_webhook_per_url() -> None:
    with pytest.raises(ValueError, match="given twice"):
        parse_targets([{"url": URL, "secret": "a"}, {"url": URL, "secret": "b", "types": ["failed"]}])


def test_wants_filters_by_type_and_mailbox() -> None:
    [mail, bob] = parse_targets([{"url": URL, "secret": "k", "types": ["new_mail"]},
                                 {"url": URL + "/bob", "secret": "k", "mailbox": "bob@localhost"}])
    new_mail = Event(EventType.NEW_MAIL, "Q1", 1.0, mailbox="bob@localhost", folder="inbox")
    delivered = Event(EventType.DELIVERED, "Q1", 1.0, recipient="carol@example.com")
    assert mail.wants(new_mail) and not mail.wants(delivered)
    assert bob.wants(new_mail) and not bob.wants(delivered)


def test_events_of_webhook_deliveries_are_recognized() -> None:
    assert from_webhook(Event(EventType.SUBMITTED, "Q", 1.0, detail={"origin": "webhook"}))
    assert from_webhook(Event(EventType.DEFERRED, "Q", 1.0, recipient=URL, detail={"transport": "webhook"}))
    assert not from_webhook(Event(EventType.SUBMITTED, "Q", 1.0, detail={"origin": "smtp"}))
    assert not from_webhook(Event(EventType.DELIVERED, "Q", 1.0, detail={"transport": "smtp"}))


def test_body_is_the_events_json() -> None:
    event = Event(EventType.NEW_MAIL, "Q1", 0.0, mailbox="bob@localhost", folder="inbox", id=7)
    assert webhook_body(event) == (b'{"folder":"inbox","id":7,"mailbox":"bob@localhost","message_id":"Q1",'
                                   b'"time":"1970-01-01T00:00:00.000Z","type":"new_mail"}')


def test_the_setting_is_checked_when_loaded(tmp_path: Path) -> None:
    config = tmp_path / "msgspool.toml"
    config.write_text('[[webhooks]]\nurl = "https://app.example/h"\nsecret = "k"\ntypes = ["new_mail"]\n')
    assert load(str(config), str(tmp_path)).webhooks == [
        {"url": "https://app.example/h", "secret": "k", "types": ["new_mail"]}]
    config.write_text('[[webhooks]]\nurl = "https://app.example/h"\nsecret = "k"\ntypes = ["nope"]\n')
    with pytest.raises(ConfigError, match="types must be"):
        load(str(config), str(tmp_path))


def test_the_setting_is_checked_when_given_as_an_override() -> None:
    with pytest.raises(ConfigError, match="secret must be"):
        Settings().merge({"webhooks": [{"url": URL}]}, "test")
