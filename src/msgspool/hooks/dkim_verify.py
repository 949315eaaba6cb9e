"""The built-in inbound hook `dkim_verify`: checks the DKIM signatures (RFC 6376) of mail for local
mailboxes and records the outcome in an ``Authentication-Results:`` field above the filed copy
(RFC 8601), after removing any such field that claims to be ours (RFC 8601 §5: a forgery, since
only we write those).

    [[hooks]]
    name = "dkim-in"
    type = "dkim_verify"
    authserv_id = ""         # the name in the field; default: the host name (setting `hostname`)
    nameserver = ""          # optional HOST[:PORT] for the key lookups; default: the system's resolver

Verification is CPU work and DNS lookups: it runs in a hook thread, never on the event loop.
"""

from __future__ import annotations

import functools
from typing import Any

import dns.resolver

from msgspool.domain.hooks import Delivery
from msgspool.errors import ConfigError
from msgspool.hooks.dkim import DNSFunc, dns_txt, strip_authentication_results, verify


class DKIMVerify:
    def __init__(self, name: str, settings: Any, options: dict[str, Any]) -> None:
        self.name = name
        self.authserv_id = str(options.pop("authserv_id", "") or settings.host_name)
        self.dnsfunc = _lookup(str(options.pop("nameserver", "")))
        if options:
            raise ConfigError(f"hook {name}: unknown options {', '.join(sorted(options))}")

    def postprocess(self, delivery: Delivery) -> None:
        delivery.content = strip_authentication_results(delivery.content, self.authserv_id)
        delivery.added_headers.append(verify(delivery.content, authserv_id=self.authserv_id, dnsfunc=self.dnsfunc))


def _lookup(nameserver: str) -> DNSFunc | None:
    """Key lookups through one name server (HOST or HOST:PORT), or None for the system's resolver."""
    if not nameserver:
        return None
    host, _, port = nameserver.rpartition(":") if nameserver.count(":") == 1 else (nameserver, "", "53")
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = [host], int(port or 53)
    lookup: DNSFunc = functools.partial(dns_txt, resolver=resolver)
    return lookup
