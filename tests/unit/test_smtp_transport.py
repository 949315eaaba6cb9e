"""The SMTP transport's routing decisions: the nexthop of an address, and where `connect` goes.
No sockets: the SMTP client's connect is replaced by one that records its target and fails."""

from __future__ import annotations

from typing import Any

import pytest

from msgspool.config import Settings
from msgspool.domain.outcome import CONNECTION_REFUSED
from msgspool.errors import DestinationUnavailable
from msgspool.transports import smtp
from msgspool.transports.smtp import SMTPTransport, split_hostport


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    tried: list[tuple[str, int]] = []

    async def refuse(host: str, port: int, **_kwargs: Any) -> None:
        tried.append((host, port))
        raise smtp.SMTPConnectionError(CONNECTION_REFUSED)

    monkeypatch.setattr(smtp.SMTPClient, "connect", refuse)
    return tried


def transport(relay: str = "") -> SMTPTransport:
    return SMTPTransport("smtp", Settings(relay=relay, hostname="mx.test"), {})


@pytest.mark.parametrize(("value", "expected"), [("relay.example:587", ("relay.example", 587)),
                                                 ("relay.example", ("relay.example", 25)),
                                                 ("[::1]:2525", ("::1", 2525)), ("[192.0.2.1]", ("192.0.2.1", 25))])
def test_split_hostport_reads_host_port_forms(value: str, expected: tuple[str, int]) -> None:
    assert split_hostport(value) == expected


def test_with_a_relay_every_address_has_the_relay_as_nexthop() -> None:
    assert transport("relay.example:587").nexthop("u@example.com") == "relay.example:587"


def test_without_a_relay_the_nexthop_is_the_recipient_domain() -> None:
    assert transport().nexthop("u@Example.COM") == "example.com"


async def test_relay_nexthop_is_connected_to_and_a_refusal_is_a_connection_level_failure(
        attempts: list[tuple[str, int]]) -> None:
    with pytest.raises(DestinationUnavailable):
        await transport("relay.example:587").connect("relay.example:587")
    assert attempts == [("relay.example", 587)]


def test_lmtp_replies_after_the_content_go_to_the_accepted_recipients_in_order() -> None:
    from msgspool.domain.outcome import Reply
    from msgspool.transports.smtp_client import TransactionResult

    ok, unknown = Reply(250, "2.1.5", "OK"), Reply(550, "5.1.1", "no such user")
    first, full = Reply(250, "2.0.0", "<a> saved"), Reply(452, "4.2.2", "<c> quota exceeded")
    result = TransactionResult(Reply(250, "2.1.0", "OK"), [ok, unknown, ok], full, [first, full])
    assert result.outcomes() == [first, unknown, full]
    smtp_result = TransactionResult(Reply(250, "2.1.0", "OK"), [ok, unknown, ok], first)
    assert smtp_result.outcomes() == [first, unknown, first]  # SMTP: one reply for the message
