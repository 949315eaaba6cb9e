"""Routing: which transport is responsible for a recipient, and which destination it goes to.

MAPI's rule (IXPLogon::AddressTypes, "transport order"), made specific the way Postfix's
transport_maps are: of the transports whose address types include the recipient's, the one whose
domain route matches most specifically takes responsibility — an exact domain ("example.org")
before a parent-domain pattern (".example.org", the longest first), before "*" or a transport with
no domain routes (any domain); equals go by configured order. So a domain route on an extra SMTP
transport wins over the built-in `smtp` transport, which takes every domain. A recipient no
transport takes fails permanently. `Router.explain` says which route won and why.

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
        return self.specificity(address, addrtype) is not None

    def specificity(self, address: str, addrtype: str) -> tuple[int, int] | None:
        """How specifically this transport's routes match (higher wins); None: not at all."""
        if addrtype.upper() not in self.addrtypes:
            return None
        return (0, 0) if not self.domains else domain_specificity(domain_of(address), self.domains)


@dataclass(frozen=True, slots=True)
class Route:
    transport: str
    nexthop: str

    @property
    def destination(self) -> str:
        return f"{self.transport}:{self.nexthop}"


def domain_matches(domain: str, patterns: Iterable[str]) -> bool:
    return domain_specificity(domain, patterns) is not None


def domain_specificity(domain: str, patterns: Iterable[str]) -> tuple[int, int] | None:
    """(2, length) for an exact domain, (1, length) for a matching ".parent" pattern, (0, 0) for
    "*"; the best of the patterns, or None when none matches."""
    best: tuple[int, int] | None = None
    for pattern in patterns:
        pattern = pattern.lower()
        if domain == pattern:
            score = (2, len(pattern))
        elif pattern.startswith(".") and domain.endswith(pattern):
            score = (1, len(pattern))
        elif pattern == "*":
            score = (0, 0)
        else:
            continue
        best = score if best is None else max(best, score)
    return best


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
        return self.explain(address, addrtype)[0]

    def explain(self, address: str, addrtype: str = SMTP) -> tuple[Route | None, str]:
        """The route of an address and why it was chosen (`msgspool route`)."""
        if self.is_local(address, addrtype):
            return Route(LOCAL, mailbox_key(address)), f"{domain_of(address) or address} is a local domain"
        best: tuple[tuple[int, int], int, TransportRoute] | None = None
        for position, transport in enumerate(self.transports):
            score = transport.specificity(address, addrtype)
            if score is not None and (best is None or score > best[0]):
                best = (score, position, transport)
        if best is None:
            return None, f"no transport takes address type {addrtype.upper()} for {domain_of(address) or address}"
        (kind, _), _, transport = best
        domain = domain_of(address)
        if kind == 2:
            why = f"transport {transport.name} has a route for the domain {domain}"
        elif kind == 1:
            parent = max((p for p in transport.domains if p.startswith(".") and domain.endswith(p.lower())), key=len)
            why = f"transport {transport.name} has a route for {parent} (the domains under it)"
        else:
            why = (f"transport {transport.name} takes {addrtype.upper()} addresses of any domain and no"
                   " transport has a more specific route")
        return Route(transport.name, transport.destination_of(address)), why
