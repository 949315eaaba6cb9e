"""Routing: which transport is responsible for a recipient, and which destination it goes to.

MAPI's rule (IXPLogon::AddressTypes, "transport order"), made specific the way Postfix's
transport_maps are: of the transports whose address types include the recipient's, the one whose
domain route matches most specifically takes responsibility — an exact domain ("example.org")
before a parent-domain pattern (".example.org", the longest first), before "*" or a transport with
no domain routes (any domain); equals go by configured order. A route may also name one mailbox
("alice@example.org"): it wins over every domain route. So a domain route on an extra SMTP
transport wins over the built-in `smtp` transport, which takes every domain. A recipient no
transport takes fails permanently. `Router.explain` says which route won and why.

Local domains come first: their recipients are filed by the store itself (MAPI's tightly coupled
store and transport), so they never enter the queue — unless a *local transport* (a maildir) has a
route for them: then it delivers them, the most specific route winning as above, and its routes
(domains, ".parent" patterns, mailboxes) are local too. A local transport takes no other mail.

A *destination* is the unit of connection reuse, concurrency and health: ``transport:nexthop``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from msgspool.domain.address import SMTP, domain_of, mailbox_key, split

LOCAL = "local"


@dataclass(frozen=True, slots=True)
class TransportRoute:
    """What routing needs to know of one transport."""

    name: str
    addrtypes: frozenset[str]
    destination_of: Callable[[str], str]  # address -> nexthop, e.g. the domain or "relay:25"
    domains: tuple[str, ...] = ()  # "example.org" exact, ".example.org" any subdomain; () = any
    local: bool = False  # delivers mail of local domains (a maildir), never other mail

    def matches(self, address: str, addrtype: str) -> bool:
        return self.specificity(address, addrtype) is not None

    def specificity(self, address: str, addrtype: str) -> tuple[int, int] | None:
        """How specifically this transport's routes match (higher wins); None: not at all."""
        if addrtype.upper() not in self.addrtypes:
            return None
        return (0, 0) if not self.domains else route_specificity(address, self.domains)


@dataclass(frozen=True, slots=True)
class Route:
    transport: str
    nexthop: str

    @property
    def destination(self) -> str:
        return f"{self.transport}:{self.nexthop}"


def route_specificity(address: str, patterns: Iterable[str]) -> tuple[int, int] | None:
    """As `domain_specificity`, and (3, length) for a pattern that is the address's mailbox."""
    mailbox = mailbox_key(address)
    if any("@" in p and p.lower() == mailbox for p in patterns):
        return (3, len(mailbox))
    return domain_specificity(domain_of(address), [p for p in patterns if "@" not in p])


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


ROUTES_KEPT = 4096  # addresses a Router remembers the route of (all forgotten when it is full)


class Router:
    def __init__(self, local_domains: Iterable[str], transports: Sequence[TransportRoute]) -> None:
        self.local_domains = frozenset(d.lower().rstrip(".") for d in local_domains)
        self.transports = tuple(t for t in transports if not t.local)
        self.local_transports = tuple(t for t in transports if t.local)
        # What local transports' routes make local besides local_domains ("*" adds nothing).
        self.local_routes = tuple(p.lower() for t in self.local_transports for p in t.domains if p != "*")
        self._routes: dict[tuple[str, str], Route | None] = {}  # route(): a Router's routes never change

    def is_local(self, address: str, addrtype: str = SMTP) -> bool:
        if addrtype.upper() != SMTP:
            return False
        domain = domain_of(address)
        if domain in self.local_domains or (domain and route_specificity(address, self.local_routes) is not None):
            return True
        # RFC 5321 §4.5.1: a bare "postmaster" is always local.
        return not domain and address.lower() == "postmaster"

    def local_transport(self, address: str, addrtype: str = SMTP) -> TransportRoute | None:
        """The local transport with the most specific route for a local address; None: the store
        files it. A bare "postmaster" (no domain) stays in the store."""
        best: tuple[tuple[int, int], int, TransportRoute] | None = None
        if not split(address)[1]:
            return None
        for position, transport in enumerate(self.local_transports):
            score = transport.specificity(address, addrtype)
            if score is not None and (best is None or score > best[0]):
                best = (score, position, transport)
        return best[2] if best else None

    def route(self, address: str, addrtype: str = SMTP) -> Route | None:
        """`explain`'s route, remembered: intake routes a recipient at RCPT and again when it
        builds the message, the delivery process once more, and bulk mail repeats its addresses
        (a reload of the settings builds a new Router)."""
        key = (address, addrtype)
        try:
            return self._routes[key]
        except KeyError:
            pass
        found = self.explain(address, addrtype)[0]
        if len(self._routes) >= ROUTES_KEPT:
            self._routes.clear()
        self._routes[key] = found
        return found

    def explain(self, address: str, addrtype: str = SMTP) -> tuple[Route | None, str]:
        """The route of an address and why it was chosen (`msgspool route`)."""
        if self.is_local(address, addrtype):
            local = self.local_transport(address, addrtype)
            if local is not None:
                return (Route(local.name, local.destination_of(address)),
                        f"{mailbox_key(address)} is local and transport {local.name} delivers it")
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
        if kind == 3:
            why = f"transport {transport.name} has a route for the mailbox {mailbox_key(address)}"
        elif kind == 2:
            why = f"transport {transport.name} has a route for the domain {domain}"
        elif kind == 1:
            parent = max((p for p in transport.domains if p.startswith(".") and domain.endswith(p.lower())), key=len)
            why = f"transport {transport.name} has a route for {parent} (the domains under it)"
        else:
            why = (f"transport {transport.name} takes {addrtype.upper()} addresses of any domain and no"
                   " transport has a more specific route")
        return Route(transport.name, transport.destination_of(address)), why
