"""MTA-STS for MX delivery (RFC 8461) over real sockets: a loopback DNS server publishes the MX and
the ``_mta-sts`` record, a real HTTPS server on 127.0.0.1:443 serves the policy with a certificate
from a test CA (trustme), and the MX is the TLS-speaking test sink. The transport's `nameserver`
option sends every lookup (MX, TXT, the policy host) to the loopback DNS server."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.asyncresolver
import pytest
import trustme

from msgspool.transports.mta_sts import MTASTS
from msgspool.transports.smtp_security import TLSLevel, client_context
from tests.conftest import SpoolerFactory
from tests.integration.test_relay import submission, wait_status
from tests.integration.test_smtp_tls_out import server_context
from tests.support.dns import ZoneServer
from tests.support.sink import Sink

DOMAIN = "example.test"
ENFORCE = "version: STSv1\nmode: enforce\nmx: 127.0.0.1\nmax_age: 86400\n"


class PolicyServer:
    """https://mta-sts.DOMAIN/.well-known/mta-sts.txt on 127.0.0.1:443, in a thread."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.policy = ENFORCE
        self.content_type = "text/plain"
        self.fetches = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                found = self.path == "/.well-known/mta-sts.txt" and self.headers["Host"] == f"mta-sts.{DOMAIN}"
                body = server.policy.encode() if found else b"not found"
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", server.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 443), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def policy_server(ca: trustme.CA) -> Iterator[PolicyServer]:
    try:
        server = PolicyServer(server_context(ca, f"mta-sts.{DOMAIN}"))
    except OSError as err:  # not root, or 443 taken: the policy URL's port is fixed by the RFC
        pytest.skip(f"cannot serve HTTPS on 127.0.0.1:443: {err}")
    yield server
    server.close()


def zone(policy_id: str | None = "1") -> dict[tuple[str, str], list[str]]:
    records = {(DOMAIN, "MX"): ["10 127.0.0.1."], (f"mta-sts.{DOMAIN}", "A"): ["127.0.0.1"]}
    if policy_id is not None:
        records[(f"_mta-sts.{DOMAIN}", "TXT")] = [f'"v=STSv1; id={policy_id};"']
    return records


@pytest.fixture
def dns_server() -> Iterator[ZoneServer]:
    with ZoneServer(zone()) as server:
        yield server


@pytest.fixture
def make_mx(ca: trustme.CA) -> Iterator[Any]:
    sinks: list[Sink] = []

    def make(name: str | None = "127.0.0.1") -> Sink:
        sink = Sink(tls=server_context(ca, name) if name else None).start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.stop()


async def deliver_to_mx(spooler_factory: SpoolerFactory, mx: Sink, dns_server: ZoneServer, ca_file: str,
                        wanted: set[str], **settings: Any) -> dict[str, Any]:
    transport = {"name": "smtp", "type": "smtp", "port": mx.port, "nameserver": dns_server.address}
    async with spooler_factory(transports=[transport], smtp_mta_sts=True, smtp_tls_ca_file=ca_file,
                               **settings) as spooler:
        message_id = await spooler.submit(submission(f"b@{DOMAIN}"))
        info = await wait_status(spooler, message_id, wanted)
    recipient: dict[str, Any] = info["recipients"][0]
    return recipient


async def test_an_enforced_policy_verifies_the_mx_whatever_the_level(
        spooler_factory: SpoolerFactory, make_mx: Any, dns_server: ZoneServer, policy_server: PolicyServer,
        ca_file: str) -> None:
    mx = make_mx()
    r = await deliver_to_mx(spooler_factory, mx, dns_server, ca_file, {"delivered"}, smtp_tls_security_level="none")
    assert [m.tls for m in mx.messages] == ["TLSv1.3"]
    assert r["relay"] == f"127.0.0.1[127.0.0.1]:{mx.port} tls=TLSv1.3 mta-sts=enforce"
    assert policy_server.fetches == 1


async def test_an_enforced_policy_defers_an_mx_without_starttls(
        spooler_factory: SpoolerFactory, make_mx: Any, dns_server: ZoneServer, policy_server: PolicyServer,
        ca_file: str) -> None:
    mx = make_mx(None)
    r = await deliver_to_mx(spooler_factory, mx, dns_server, ca_file, {"deferred"})
    assert r["last_reply"].startswith(f"454 4.7.5 TLS is required (MTA-STS policy of {DOMAIN}) but 127.0.0.1")
    assert mx.messages == []


async def test_an_enforced_policy_defers_an_mx_whose_certificate_names_another_host(
        spooler_factory: SpoolerFactory, make_mx: Any, dns_server: ZoneServer, policy_server: PolicyServer,
        ca_file: str) -> None:
    mx = make_mx("wrong.test")
    r = await deliver_to_mx(spooler_factory, mx, dns_server, ca_file, {"deferred"})
    assert r["last_reply"].startswith(f"454 4.7.5 TLS handshake with 127.0.0.1:{mx.port} failed: ")
    assert "mismatch" in r["last_reply"] and mx.messages == []


async def test_an_enforced_policy_refuses_mx_hosts_it_does_not_name(
        spooler_factory: SpoolerFactory, make_mx: Any, dns_server: ZoneServer, policy_server: PolicyServer,
        ca_file: str) -> None:
    policy_server.policy = ENFORCE.replace("mx: 127.0.0.1", "mx: *.example.test")
    mx = make_mx()
    r = await deliver_to_mx(spooler_factory, mx, dns_server, ca_file, {"deferred"})
    assert r["last_reply"] == f"451 4.7.5 MTA-STS policy of {DOMAIN} (enforce) allows none of its MX hosts (127.0.0.1)"
    assert mx.connections == 0


async def test_a_testing_policy_still_delivers_in_clear(
        spooler_factory: SpoolerFactory, make_mx: Any, dns_server: ZoneServer, policy_server: PolicyServer,
        ca_file: str) -> None:
    policy_server.policy = ENFORCE.replace("mode: enforce", "mode: testing")
    mx = make_mx(None)
    r = await deliver_to_mx(spooler_factory, mx, dns_server, ca_file, {"delivered"})
    assert [m.tls for m in mx.messages] == [None]
    assert r["relay"] == f"127.0.0.1[127.0.0.1]:{mx.port} mta-sts=testing"


async def test_without_a_policy_record_delivery_is_as_configured(
        spooler_factory: SpoolerFactory, make_mx: Any, policy_server: PolicyServer, ca_file: str) -> None:
    mx = make_mx(None)
    with ZoneServer(zone(policy_id=None)) as dns_server:
        r = await deliver_to_mx(spooler_factory, mx, dns_server, ca_file, {"delivered"})
    assert r["relay"] == f"127.0.0.1[127.0.0.1]:{mx.port}"
    assert policy_server.fetches == 0


async def test_the_policy_is_cached_by_id_and_outlives_a_stripped_record(
        policy_server: PolicyServer, ca_file: str) -> None:
    with ZoneServer(zone("1")) as dns_server:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers, resolver.port = ["127.0.0.1"], int(dns_server.address.split(":")[1])
        context = client_context(TLSLevel.VERIFY, ca_file)
        assert context is not None
        now = [1000.0]
        policies = MTASTS(resolver, context, 5.0, clock=lambda: now[0], http_via_resolver=True)
        first = await policies.policy(DOMAIN)
        assert first is not None and first.mode == "enforce" and policy_server.fetches == 1
        assert await policies.policy(DOMAIN) == first and policy_server.fetches == 1  # same id: no fetch
        dns_server.zone = ZoneServer(zone("2")).zone  # a new id: fetched again, once the last answer is old
        policy_server.policy = ENFORCE.replace("mode: enforce", "mode: testing")
        assert await policies.policy(DOMAIN) == first
        now[0] += 61
        second = await policies.policy(DOMAIN)
        assert second is not None and second.mode == "testing" and policy_server.fetches == 2
        dns_server.zone = ZoneServer(zone(None)).zone  # an attacker strips the record: the policy holds
        now[0] += 61
        assert await policies.policy(DOMAIN) == second and policy_server.fetches == 2
        now[0] += 86400  # until its max_age is over
        assert await policies.policy(DOMAIN) is None


async def test_a_policy_served_as_another_media_type_is_not_taken(policy_server: PolicyServer,
                                                                 ca_file: str) -> None:
    policy_server.content_type = "text/html"
    with ZoneServer(zone("1")) as dns_server:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers, resolver.port = ["127.0.0.1"], int(dns_server.address.split(":")[1])
        context = client_context(TLSLevel.VERIFY, ca_file)
        assert context is not None
        assert await MTASTS(resolver, context, 5.0, http_via_resolver=True).policy(DOMAIN) is None


async def test_a_policy_host_that_refuses_the_connection_gives_no_policy_and_no_error(ca_file: str) -> None:
    """aiohttp's connection errors are the lookup's failed fetch (logged), never the caller's."""
    records = {**zone("1"), (f"mta-sts.{DOMAIN}", "A"): ["127.0.0.2"]}  # nothing listens on 127.0.0.2:443
    with ZoneServer(records) as dns_server:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers, resolver.port = ["127.0.0.1"], int(dns_server.address.split(":")[1])
        context = client_context(TLSLevel.VERIFY, ca_file)
        assert context is not None
        assert await MTASTS(resolver, context, 5.0, http_via_resolver=True).policy(DOMAIN) is None
