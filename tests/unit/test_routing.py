"""Routing: local domains first, then, of the transports that take the address type, the one whose
domain route matches most specifically (exact, then the longest parent, then any); equals go by
configured order; no taker means no route."""

from __future__ import annotations

import pytest

from msgspool.domain.address import domain_of
from msgspool.domain.routing import LOCAL, ROUTES_KEPT, Route, Router, TransportRoute, domain_matches


def transport(name: str, *addrtypes: str, domains: tuple[str, ...] = (), nexthop: str | None = None) -> TransportRoute:
    return TransportRoute(name, frozenset(addrtypes), (lambda _a: nexthop) if nexthop else domain_of, domains)


def test_local_domain_recipient_routes_to_its_mailbox_folded_to_lower_case() -> None:
    router = Router(["Example.ORG."], [transport("smtp", "SMTP")])
    assert router.route("Bob.Smith@EXAMPLE.org") == Route(LOCAL, "bob.smith@example.org")


def test_local_domains_come_before_every_transport() -> None:
    router = Router(["localhost"], [transport("smtp", "SMTP", nexthop="relay:25")])
    assert router.route("root@localhost").transport == LOCAL


def test_bare_postmaster_is_local_even_without_a_domain() -> None:
    router = Router(["example.org"], [])
    assert router.route("PostMaster") == Route(LOCAL, "postmaster")
    assert router.route("someone") is None


def test_address_type_other_than_smtp_is_never_local() -> None:
    router = Router(["localhost"], [transport("hooks", "HTTP")])
    assert not router.is_local("x@localhost", "HTTP")
    assert router.route("x@localhost", "HTTP") == Route("hooks", "localhost")


def test_first_transport_in_configured_order_takes_the_recipient() -> None:
    router = Router([], [transport("first", "SMTP", nexthop="a"), transport("second", "SMTP", nexthop="b")])
    assert router.route("u@example.com") == Route("first", "a")


def test_transport_with_domain_routes_takes_only_its_domains() -> None:
    router = Router([], [transport("partner", "SMTP", domains=("partner.example",), nexthop="vpn:25"),
                         transport("smtp", "SMTP")])
    assert router.route("u@Partner.Example").transport == "partner"
    assert router.route("u@other.example") == Route("smtp", "other.example")


def test_address_type_match_ignores_case() -> None:
    router = Router([], [transport("hooks", "HTTP")])
    assert router.route("https://h.example/in", "http") is not None


def test_no_transport_for_the_address_type_means_no_route() -> None:
    router = Router(["localhost"], [transport("smtp", "SMTP")])
    assert router.route("x@example.com", "X400") is None


def test_route_destination_is_transport_and_nexthop() -> None:
    assert Route("smtp", "relay.example:587").destination == "smtp:relay.example:587"


@pytest.mark.parametrize(("domain", "patterns", "expected"), [
    ("example.org", ["example.org"], True),
    ("example.org", ["EXAMPLE.ORG"], True),
    ("mail.example.org", [".example.org"], True),
    ("example.org", [".example.org"], False),  # a leading dot means subdomains only
    ("badexample.org", [".example.org"], False),
    ("anything.test", ["*"], True),
    ("example.net", ["example.org", ".example.org"], False),
])
def test_domain_pattern_matching(domain: str, patterns: list[str], expected: bool) -> None:
    assert domain_matches(domain, patterns) is expected


def test_an_exact_domain_route_wins_over_a_transport_that_takes_any_domain() -> None:
    """Issue 10.7: the built-in smtp transport comes first and takes every domain; a domain route
    on an extra SMTP transport must still win for its domain (Postfix transport_maps)."""
    router = Router([], [transport("smtp", "SMTP", nexthop="mx"),
                         transport("partner", "SMTP", domains=("partner.example",), nexthop="partner-relay")])
    assert router.route("a@partner.example") == Route("partner", "partner-relay")
    assert router.route("a@other.example") == Route("smtp", "mx")
    route, why = router.explain("a@partner.example")
    assert route == Route("partner", "partner-relay") and "partner.example" in why


@pytest.mark.parametrize(("address", "expected"), [
    ("u@mail.corp.example", "exact"),
    ("u@eu.corp.example", "subdomains"),
    ("u@x.eu.corp.example", "eu"),
    ("u@elsewhere.example", "any"),
])
def test_the_most_specific_domain_route_wins(address: str, expected: str) -> None:
    router = Router([], [transport("any", "SMTP", domains=("*",), nexthop="any"),
                         transport("subdomains", "SMTP", domains=(".corp.example",), nexthop="subdomains"),
                         transport("eu", "SMTP", domains=(".eu.corp.example",), nexthop="eu"),
                         transport("exact", "SMTP", domains=("mail.corp.example",), nexthop="exact")])
    assert router.route(address) == Route(expected, expected)


def test_explain_says_why_or_why_not() -> None:
    router = Router(["example.org"], [transport("smtp", "SMTP", nexthop="mx")])
    assert router.explain("bob@example.org")[1] == "example.org is a local domain"
    assert "any domain" in router.explain("bob@example.com")[1]
    assert router.explain("x", "FAX") == (None, "no transport takes address type FAX for x")


def maildir_route(*domains: str, name: str = "maildir") -> TransportRoute:
    return TransportRoute(name, frozenset({"SMTP"}), domain_of, domains, local=True)


def test_a_local_transport_delivers_its_local_domain_and_the_store_keeps_the_others() -> None:
    router = Router(["localhost", "example.org"], [transport("smtp", "SMTP"), maildir_route("example.org")])
    assert router.route("Alice@Example.org") == Route("maildir", "example.org")
    assert router.route("root@localhost") == Route(LOCAL, "root@localhost")
    assert router.route("x@example.net") == Route("smtp", "example.net")


def test_a_local_transport_route_makes_its_domain_local_and_never_takes_other_mail() -> None:
    router = Router([], [maildir_route("mail.test", ".corp.test")])
    assert router.is_local("a@mail.test") and router.is_local("b@eu.corp.test")
    assert router.route("b@eu.corp.test") == Route("maildir", "eu.corp.test")
    assert not router.is_local("c@example.net") and router.route("c@example.net") is None


def test_a_local_transport_without_domains_takes_every_local_domain_but_not_a_bare_postmaster() -> None:
    router = Router(["localhost"], [maildir_route()])
    assert router.route("a@localhost").transport == "maildir"
    assert router.route("postmaster") == Route(LOCAL, "postmaster")
    assert not router.is_local("a@example.net")


def test_a_mailbox_route_wins_over_a_domain_route() -> None:
    router = Router(["example.org"], [maildir_route("example.org", name="all"), maildir_route("Bob@example.org",
                                                                                              name="bob")])
    assert router.route("bob@EXAMPLE.org").transport == "bob"
    assert router.route("alice@example.org").transport == "all"
    assert "mailbox bob@x.test" in Router([], [transport("smtp", "SMTP", domains=("bob@x.test",))]).explain(
        "bob@x.test")[1]


def test_a_router_remembers_routes_as_explain_gives_them_within_a_bound() -> None:
    router = Router(["example.org"], [TransportRoute("smtp", frozenset({"SMTP"}), lambda a: domain_of(a)),
                                      TransportRoute("http", frozenset({"HTTP"}), lambda url: url.split("/")[2])])
    for address, addrtype in (("b@Example.COM", "SMTP"), ("bob@example.org", "SMTP"), ("https://h.test/x", "HTTP"),
                              ("b@example.com", "X400")):
        assert router.route(address, addrtype) == router.route(address, addrtype) == router.explain(address,
                                                                                                     addrtype)[0]
    for n in range(ROUTES_KEPT + 10):
        assert router.route(f"u{n}@d{n}.test") == Route("smtp", f"d{n}.test")
    assert len(router._routes) <= ROUTES_KEPT
