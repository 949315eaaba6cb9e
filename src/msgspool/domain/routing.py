"""Routing: which transport is responsible for a recipient, and which destination it goes to.

MAPI's rule (IXPLogon::AddressTypes, "transport order"): scan the transports in their configured
order; the first one whose address types include the recipient's, and whose domain routes (if it
has any) match, takes responsibility. A recipient no transport takes fails permanently.

Local domains come first: their recipients are filed by the store itself (MAPI's tightly coupled
store and transport), so they never enter the queue.

A *destination* is the unit of connection reuse, concurrency and health: ``transport:nexthop``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from msgspool.domain.address import SMTP, domain_of, mailbox_key

LOCAL = "local"


@dataclass(frozen=True, slots=True)
class TransportRoute:
    """What routing needs to know of one transport."""

    name: str
    addrtypes: frozenset[str]
    destination_of: Callable[[str], str]  # address -> nexthop, e.g. the domain or "relay:25"
    domains: tuple[str, ...] = ()  # "example.org" exact, ".example.org" any subdomain; () = any

    def matches(self, address: str, addrtype: str) -> bool:
        if addrtype.upper() not in self.addrtypes:
            return False
        return not self.domains or domain_matches(domain_of(address), self.domains)


@dataclass(frozen=True, slots=True)
class Route:
    transport: str
    nexthop: str

    @property
    def destination(self) -> str:
        return f"{self.transport}:{self.nexthop}"


def domain_matches(domain: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        pattern = pattern.lower()
        if pattern == "*" or domain == pattern:
            return True
        if pattern.startswith(".") and domain.endswith(pattern):
            return True
    return False


class Router:
    def __init__(self, local_domains: Iterable[str], transports: Sequence[TransportRoute]) -> None:
        self.local_domains = frozenset(d.lower().rstrip(".") for d in local_domains)
        self.transports = tuple(transports)

    def is_local(self, address: str, addrtype: str = SMTP) -> bool:
        if addrtype.upper() != SMTP:
            return False
        domain = domain_of(address)
        # RFC 5321 §4.5.1: a bare "postmaster" is always local.
        return domain in self.local_domains or (not domain and address.lower() == "postmaster")

    def route(self, address: str, addrtype: str = SMTP) -> Route | None:
        if self.is_local(address, addrtype):
            return Route(LOCAL, mailbox_key(address))
        for transport in self.transports:
            if transport.matches(address, addrtype):
                return Route(transport.name, transport.destination_of(address))
        return None
