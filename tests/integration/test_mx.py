"""Direct MX delivery (RFC 5321 §5.1, RFC 7505) over real sockets: a loopback DNS server
(tests/support/dns.py) publishes MX, A and AAAA records, and the MX hosts are SMTP sinks on several
loopback addresses (127.0.0.2, 127.0.0.3, ... are loopback on Linux), all on one port (the
transport's `port` option), so an address with no sink is a dead host (connection refused)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from msgspool.config import Settings
from msgspool.errors import DestinationUnavailable
from msgspool.transports.smtp import SMTPTransport
from tests.conftest import SpoolerFactory
from tests.integration.test_relay import submission, wait_status
from tests.support.dns import ZoneServer
from tests.support.sink import Sink, free_port

DOMAIN = "example.test"


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def peers(port: int) -> Iterator[Any]:
    """peers(address, **sink options): an SMTP sink listening on that loopback address."""
    started: list[Sink] = []

    def start(address: str, **options: Any) -> Sink:
        sink = Sink(port=port, host=address, **options).start()
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.stop()


def smtp_options(port: int, dns: ZoneServer, **options: Any) -> dict[str, Any]:
    return {"name": "smtp", "type": "smtp", "port": port, "nameserver": dns.address, **options}


async def deliver(spooler_factory: SpoolerFactory, port: int, zone: dict[tuple[str, str], list[str]],
                  wanted: set[str], address: str = f"b@{DOMAIN}", settings: dict[str, Any] | None = None,
                  **options: Any) -> dict[str, Any]:
    """Submit one message for `address` to a spool whose smtp transport has these options (and the
    spool these settings); the recipient once its status is one of `wanted`."""
    with ZoneServer(zone) as dns:
        async with spooler_factory(transports=[smtp_options(port, dns, **options)], **(settings or {})) as spooler:
            message_id = await spooler.submit(submission(address))
            info = await wait_status(spooler, message_id, wanted)
    recipient: dict[str, Any] = info["recipients"][0]
    return recipient


async def test_a_dead_preferred_mx_is_passed_over_for_the_next(
        spooler_factory: SpoolerFactory, peers: Any, port: int) -> None:
    backup = peers("127.0.0.3")  # nothing listens on 127.0.0.2: the preferred MX is dead
    zone = {(DOMAIN, "MX"): ["20 mx2.example.test.", "10 mx1.example.test."],
            ("mx1.example.test", "A"): ["127.0.0.2"], ("mx2.example.test", "A"): ["127.0.0.3"]}
    r = await deliver(spooler_factory, port, zone, {"delivered"})
    assert backup.recipients() == [f"b@{DOMAIN}"]
    assert r["relay"] == f"mx2.example.test[127.0.0.3]:{port}"


async def test_mx_hosts_are_tried_in_preference_order(spooler_factory: SpoolerFactory, peers: Any, port: int) -> None:
    best, worse = peers("127.0.0.2"), peers("127.0.0.3")
    zone = {(DOMAIN, "MX"): ["20 mx2.example.test.", "10 mx1.example.test."],
            ("mx1.example.test", "A"): ["127.0.0.2"], ("mx2.example.test", "A"): ["127.0.0.3"]}
    await deliver(spooler_factory, port, zone, {"delivered"})
    assert (best.count(), worse.count(), worse.connections) == (1, 0, 0)


async def test_a_dead_address_of_an_mx_host_is_passed_over_for_its_next_address(
        spooler_factory: SpoolerFactory, peers: Any, port: int) -> None:
    live = peers("127.0.0.3")
    zone = {(DOMAIN, "MX"): ["10 mx.example.test."], ("mx.example.test", "A"): ["127.0.0.2", "127.0.0.3"]}
    r = await deliver(spooler_factory, port, zone, {"delivered"})
    assert live.count() == 1 and r["relay"] == f"mx.example.test[127.0.0.3]:{port}"


async def test_an_mx_that_greets_with_4xx_is_passed_over(spooler_factory: SpoolerFactory, peers: Any,
                                                         port: int) -> None:
    busy = peers("127.0.0.2", greeting=b"421 4.3.2 too busy, try another\r\n")
    backup = peers("127.0.0.3")
    zone = {(DOMAIN, "MX"): ["10 mx1.example.test.", "20 mx2.example.test."],
            ("mx1.example.test", "A"): ["127.0.0.2"], ("mx2.example.test", "A"): ["127.0.0.3"]}
    await deliver(spooler_factory, port, zone, {"delivered"})
    assert (busy.connections, busy.count(), backup.count()) == (1, 0, 1)


async def test_without_an_mx_record_the_domain_itself_is_the_implicit_mx(
        spooler_factory: SpoolerFactory, peers: Any, port: int) -> None:
    host = peers("127.0.0.3")
    zone = {(DOMAIN, "A"): ["127.0.0.3"]}  # the name exists (NODATA for MX)
    r = await deliver(spooler_factory, port, zone, {"delivered"})
    assert host.count() == 1 and r["relay"] == f"{DOMAIN}[127.0.0.3]:{port}"


async def test_a_domain_that_does_not_exist_fails_at_once(spooler_factory: SpoolerFactory, port: int) -> None:
    r = await deliver(spooler_factory, port, {(DOMAIN, "A"): ["127.0.0.3"]}, {"failed"}, address="b@nowhere.test")
    assert r["last_reply"] == "550 5.1.2 domain nowhere.test does not exist"
    assert r["attempts"] == 1


async def test_a_null_mx_fails_at_once(spooler_factory: SpoolerFactory, peers: Any, port: int) -> None:
    host = peers("127.0.0.3")
    zone = {(DOMAIN, "MX"): ["0 ."], (DOMAIN, "A"): ["127.0.0.3"]}  # RFC 7505: no fallback to the A record
    r = await deliver(spooler_factory, port, zone, {"failed"})
    assert r["last_reply"] == f"556 5.1.10 {DOMAIN} accepts no mail (null MX)"
    assert host.connections == 0


async def test_mx_hosts_without_any_address_fail_554_5_4_4(spooler_factory: SpoolerFactory, port: int) -> None:
    zone = {(DOMAIN, "MX"): ["10 mx1.example.test.", "20 mx2.example.test."],
            ("mx2.example.test", "TXT"): ['"exists, no address"']}  # mx1: NXDOMAIN, mx2: NODATA
    r = await deliver(spooler_factory, port, zone, {"failed"})
    assert r["last_reply"].startswith("554 5.4.4 no MX host of example.test (mx1.example.test, mx2.example.test)")


async def test_the_address_limit_caps_the_hosts_one_attempt_tries(
        spooler_factory: SpoolerFactory, peers: Any, port: int) -> None:
    third = peers("127.0.0.4")
    zone = {(DOMAIN, "MX"): ["10 mx1.example.test.", "20 mx2.example.test.", "30 mx3.example.test."],
            ("mx1.example.test", "A"): ["127.0.0.2"], ("mx2.example.test", "A"): ["127.0.0.3"],
            ("mx3.example.test", "A"): ["127.0.0.4"]}
    r = await deliver(spooler_factory, port, zone, {"deferred"}, mx_address_limit=2)
    assert third.connections == 0
    assert r["last_reply"].startswith(f"421 4.4.1 no host for {DOMAIN} answered; tried mx1.example.test[127.0.0.2]"
                                      f":{port}, mx2.example.test[127.0.0.3]:{port}; the last said: 421 4.4.1")
    await deliver(spooler_factory, port, zone, {"delivered"}, address=f"c@{DOMAIN}", mx_address_limit=3)
    assert f"c@{DOMAIN}" in third.recipients()


async def test_when_every_mx_is_dead_the_recipient_waits_deferred(spooler_factory: SpoolerFactory,
                                                                   port: int) -> None:
    zone = {(DOMAIN, "MX"): ["10 mx1.example.test."], ("mx1.example.test", "A"): ["127.0.0.2"]}
    r = await deliver(spooler_factory, port, zone, {"deferred"})
    assert r["last_reply"].startswith("421 4.4.1 connection refused")


async def test_a_5xx_greeting_from_every_mx_defers_rather_than_bounces(
        spooler_factory: SpoolerFactory, peers: Any, port: int) -> None:
    peers("127.0.0.2", greeting=b"554 5.7.1 no service for you\r\n")
    zone = {(DOMAIN, "MX"): ["10 mx1.example.test."], ("mx1.example.test", "A"): ["127.0.0.2"]}
    r = await deliver(spooler_factory, port, zone, {"deferred"})
    assert r["last_reply"] == "451 4.4.0 554 5.7.1 no service for you"


async def test_equal_preferences_are_shuffled_and_lower_preferences_come_first(port: int) -> None:
    zone = {(DOMAIN, "MX"): ["10 a.example.test.", "10 b.example.test.", "5 first.example.test.",
                             "20 last.example.test."]}
    with ZoneServer(zone) as dns:
        transport = SMTPTransport("smtp", Settings(hostname="mx.test"), smtp_options(port, dns))
        orders = {tuple(await transport._mx_hosts(DOMAIN)) for _ in range(40)}
    assert orders == {("first.example.test", "a.example.test", "b.example.test", "last.example.test"),
                      ("first.example.test", "b.example.test", "a.example.test", "last.example.test")}


async def test_ipv4_and_ipv6_addresses_of_an_mx_host_are_both_tried(port: int) -> None:
    zone = {(DOMAIN, "MX"): ["10 mx.example.test."], ("mx.example.test", "A"): ["127.0.0.2"],
            ("mx.example.test", "AAAA"): ["::1"]}
    with ZoneServer(zone) as dns:
        transport = SMTPTransport("smtp", Settings(hostname="mx.test"), smtp_options(port, dns))
        assert await transport._mx_addresses(DOMAIN, [(10, "mx.example.test")]) == [
            ("mx.example.test", "127.0.0.2"), ("mx.example.test", "::1")]
        with pytest.raises(DestinationUnavailable) as caught:  # neither answers
            await transport.connect(DOMAIN)
    assert "tried mx.example.test[127.0.0.2]" in caught.value.reply.text and "[::1]" in caught.value.reply.text


TWO_MX = {(DOMAIN, "MX"): ["10 mx1.example.test.", "20 mx2.example.test."],
          ("mx1.example.test", "A"): ["127.0.0.2"], ("mx2.example.test", "A"): ["127.0.0.3"]}


async def test_recipients_the_first_mx_defers_go_to_the_next_in_the_same_attempt(
        spooler_factory: SpoolerFactory, peers: Any, port: int) -> None:
    primary = peers("127.0.0.2", rcpt_reply=b"451 4.3.0 queue full, try the backup\r\n")
    backup = peers("127.0.0.3")
    r = await deliver(spooler_factory, port, TWO_MX, {"delivered"})
    assert (primary.count(), backup.recipients()) == (0, [f"b@{DOMAIN}"])
    assert r["relay"] == f"mx2.example.test[127.0.0.3]:{port}" and r["attempts"] == 1


async def test_the_session_limit_stops_the_fallback(spooler_factory: SpoolerFactory, peers: Any, port: int) -> None:
    peers("127.0.0.2", rcpt_reply=b"451 4.3.0 queue full\r\n")
    backup = peers("127.0.0.3")
    r = await deliver(spooler_factory, port, TWO_MX, {"deferred"}, mx_session_limit=1)
    assert r["last_reply"] == "451 4.3.0 queue full" and backup.connections == 0


async def test_only_the_deferred_recipients_go_to_the_next_mx_and_each_names_its_own(
        spooler_factory: SpoolerFactory, peers: Any, port: int) -> None:
    primary, backup = peers("127.0.0.2"), peers("127.0.0.3")  # both defer fail4xx-* (450)
    with ZoneServer(TWO_MX) as dns:
        async with spooler_factory(transports=[smtp_options(port, dns)]) as spooler:
            message_id = await spooler.submit(submission(f"b@{DOMAIN}", f"fail4xx-c@{DOMAIN}"))
            info = await wait_status(spooler, message_id, {"delivered", "deferred"})
    by_address = {r["address"]: r for r in info["recipients"]}
    assert primary.recipients() == [f"b@{DOMAIN}"] and backup.count() == 0
    assert [c for c in backup.commands if c.startswith("RCPT")] == [f"RCPT TO:<fail4xx-c@{DOMAIN}>"]
    assert by_address[f"b@{DOMAIN}"]["relay"] == f"mx1.example.test[127.0.0.2]:{port}"
    assert by_address[f"fail4xx-c@{DOMAIN}"]["relay"] == f"mx2.example.test[127.0.0.3]:{port}"
    assert by_address[f"fail4xx-c@{DOMAIN}"]["status"] == "deferred"


async def test_a_session_lost_mid_transaction_goes_on_at_the_next_mx(
        spooler_factory: SpoolerFactory, peers: Any, port: int) -> None:
    primary = peers("127.0.0.2", hangup_on=b"MAIL")
    backup = peers("127.0.0.3")
    r = await deliver(spooler_factory, port, TWO_MX, {"delivered"})
    assert primary.connections == 1 and backup.recipients() == [f"b@{DOMAIN}"]
    assert r["relay"] == f"mx2.example.test[127.0.0.3]:{port}"


def own_mx(port: int, *others: str) -> dict[tuple[str, str], list[str]]:
    """MX 10 is this msgspool (its listener's address and port); `others` are "PREF NAME ADDRESS"."""
    zone = {(DOMAIN, "MX"): ["10 self.example.test."], ("self.example.test", "A"): ["127.0.0.2"]}
    for other in others:
        preference, name, address = other.split()
        zone[(DOMAIN, "MX")].append(f"{preference} {name}.")
        if address != "-":
            zone[(name, "A")] = [address]
        else:
            zone[(name, "TXT")] = ['"no address"']
    return zone


async def test_mail_for_a_domain_whose_best_mx_is_this_host_fails_as_a_loop(
        spooler_factory: SpoolerFactory, peers: Any, port: int) -> None:
    worse = peers("127.0.0.3")
    r = await deliver(spooler_factory, port, own_mx(port, "20 backup.example.test 127.0.0.3"), {"failed"},
                      settings={"smtp_listen": f"127.0.0.2:{port}"})
    assert r["last_reply"].startswith(f"554 5.4.6 mail for {DOMAIN} loops back to myself (self.example.test"
                                      f"[127.0.0.2]:{port} is this msgspool's SMTP listener)")
    assert worse.connections == 0  # RFC 5321 §5.1: no MX of equal or worse preference than this host


async def test_a_better_mx_than_this_host_gets_the_mail(spooler_factory: SpoolerFactory, peers: Any,
                                                        port: int) -> None:
    better = peers("127.0.0.3")
    await deliver(spooler_factory, port, own_mx(port, "5 primary.example.test 127.0.0.3"), {"delivered"},
                  settings={"smtp_listen": f"127.0.0.2:{port}"})
    assert better.count() == 1


async def test_a_better_mx_without_an_address_defers_rather_than_loop(spooler_factory: SpoolerFactory,
                                                                      port: int) -> None:
    r = await deliver(spooler_factory, port, own_mx(port, "5 primary.example.test -"), {"deferred"},
                      settings={"smtp_listen": f"127.0.0.2:{port}"})
    assert r["last_reply"].startswith(f"451 4.4.4 unable to find a primary relay for {DOMAIN}")


async def test_a_listener_on_another_port_is_not_this_mx(spooler_factory: SpoolerFactory, peers: Any,
                                                         port: int) -> None:
    mx = peers("127.0.0.2")  # a Postfix beside msgspool: same address, the MX port; msgspool on another
    await deliver(spooler_factory, port, own_mx(port), {"delivered"},
                  settings={"smtp_listen": f"127.0.0.2:{free_port()}"})
    assert mx.count() == 1


async def test_an_mx_lookup_that_fails_for_now_defers(spooler_factory: SpoolerFactory, port: int) -> None:
    with ZoneServer({(DOMAIN, "MX"): ["10 mx.example.test."]}, servfail={DOMAIN}) as dns:
        async with spooler_factory(transports=[smtp_options(port, dns)]) as spooler:
            message_id = await spooler.submit(submission(f"b@{DOMAIN}"))
            info = await wait_status(spooler, message_id, {"deferred"})
    assert info["recipients"][0]["last_reply"].startswith(f"451 4.4.3 MX lookup for {DOMAIN} failed")


async def test_an_address_lookup_that_fails_for_now_defers_unless_another_mx_has_an_address(port: int) -> None:
    zone = {(DOMAIN, "MX"): ["10 mx1.example.test.", "20 mx2.example.test."], ("mx2.example.test", "A"): ["127.0.0.3"]}
    with ZoneServer(zone, servfail={"mx1.example.test"}) as dns:
        transport = SMTPTransport("smtp", Settings(hostname="mx.test"), smtp_options(port, dns))
        # mx1's lookup fails; mx2 still gets the mail (Postfix: any address found is used)
        assert await transport._mx_addresses(DOMAIN, [(10, "mx1.example.test"), (20, "mx2.example.test")]) == [
            ("mx2.example.test", "127.0.0.3")]
        with pytest.raises(DestinationUnavailable) as caught:  # mx1 alone: no address, for now
            await transport._mx_addresses(DOMAIN, [(10, "mx1.example.test")])
    assert caught.value.reply.code == 451 and caught.value.reply.dsn == "4.4.3"
