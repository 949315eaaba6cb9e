"""The default DKIM key lookup (hooks/dkim.py dns_txt) against a real DNS server on loopback: a
small UDP responder built with dnspython that serves TXT records, NXDOMAIN and SERVFAIL."""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.rcode
import dns.resolver
import dns.rrset
import pytest

from msgspool.hooks.dkim import DKIMResult, dns_txt, verify_signatures

RECORD = ("v=DKIM1; k=rsa; ", "p=MIIBIjANBgkq")  # one record in two strings (RFC 6376 §3.6.2.2)


def answer(query: dns.message.Message) -> dns.message.Message:
    response = dns.message.make_response(query)
    name = query.question[0].name.to_text()
    if name == "sel._domainkey.example.org.":
        response.answer.append(dns.rrset.from_text(name, 60, "IN", "TXT", " ".join(f'"{s}"' for s in RECORD)))
    elif name == "broken._domainkey.example.org.":
        response.set_rcode(dns.rcode.SERVFAIL)
    elif name != "empty._domainkey.example.org.":  # empty: the name exists, no TXT record
        response.set_rcode(dns.rcode.NXDOMAIN)
    response.flags |= dns.flags.RA
    return response


@pytest.fixture
def resolver() -> Iterator[dns.resolver.Resolver]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            sock.sendto(answer(dns.message.from_wire(data)).to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.port = sock.getsockname()[1]
    r.retry_servfail = False
    yield r
    stopping.set()
    thread.join()
    sock.close()


def test_a_key_record_is_found_and_its_strings_joined(resolver: dns.resolver.Resolver) -> None:
    assert dns_txt(b"sel._domainkey.example.org.", 2.0, resolver=resolver) == "".join(RECORD).encode()


@pytest.mark.parametrize("selector", [b"missing", b"empty"])
def test_no_such_name_or_no_txt_record_is_no_key(resolver: dns.resolver.Resolver, selector: bytes) -> None:
    assert dns_txt(selector + b"._domainkey.example.org.", 2.0, resolver=resolver) is None


def test_a_servfail_is_a_temperror_not_a_missing_key(resolver: dns.resolver.Resolver) -> None:
    content = (b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=broken;\r\n"
               b" h=from; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=dGVzdA==\r\n"
               b"From: a@example.org\r\n\r\n")
    lookup = functools.partial(dns_txt, resolver=resolver)
    assert verify_signatures(content, dnsfunc=lookup, timeout=2.0) == [
        DKIMResult("temperror", "example.org", "broken", "rsa-sha256", "dGVzdA==", "key lookup failed")]
