"""MTA-STS lookups for MX delivery (RFC 8461): the ``_mta-sts`` TXT record, the policy fetched over
verified HTTPS, and a cache that outlives both (so an attacker who strips the record or blocks the
fetch cannot downgrade a domain whose policy is known).

For a new connection to a domain (at most once a minute per domain): the TXT record is looked up;
an id equal to the cached policy's keeps it, a new id fetches
``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` (HTTP 200, ``text/plain``, no redirects, at
most 64 KiB, certificate and name verified against the system's CAs or `smtp_tls_ca_file`); a
missing record or a failed fetch keeps a cached policy until its max_age ends, else the domain has
none. The SMTP transport applies the policy (smtp.py).

aiohttp, the HTTPS client, is imported only by a fetch: it is 0.3 s of the 0.65 s that importing
the daemon takes (`python -X importtime`), paid at every start of the delivery process (and so by
a respawn) while a relay-only spool never fetches a policy.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from msgspool.domain.mta_sts import Policy, parse_policy, record_id

log = logging.getLogger("msgspool.smtp")

POLICY_PATH = "/.well-known/mta-sts.txt"
POLICY_SIZE_LIMIT = 64 * 1024  # §3.3
RECHECK = 60.0  # seconds a lookup's answer (a policy, or none) is reused before the record is asked again


@dataclass(frozen=True)
class _Cached:
    id: str
    policy: Policy
    expires_at: float


class MTASTS:
    """The MTA-STS policies of recipient domains, as the SMTP transport needs them."""

    def __init__(self, resolver: Any, context: ssl.SSLContext, timeout: float,
                 clock: Callable[[], float] = time.time, *, http_via_resolver: bool = False) -> None:
        self._resolver = resolver  # a dns.asyncresolver.Resolver
        self._context = context
        self._timeout = timeout
        self._clock = clock
        self._http_via_resolver = http_via_resolver  # resolve mta-sts.DOMAIN with `resolver` too
        self._cache: dict[str, _Cached] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._answers: dict[str, tuple[float, Policy | None]] = {}  # domain -> (when, what) of the last lookup

    async def policy(self, domain: str) -> Policy | None:
        """The domain's policy in force, or None. Connections opened at once to one domain wait for
        one lookup (and fetch) instead of making their own."""
        domain = domain.lower().rstrip(".")
        lock = self._locks.setdefault(domain, asyncio.Lock())
        async with lock:
            when, answer = self._answers.get(domain, (-RECHECK, None))
            if self._clock() - when < RECHECK:
                return answer
            answer = await self._policy(domain)
            self._answers[domain] = (self._clock(), answer)
            return answer

    async def _policy(self, domain: str) -> Policy | None:
        cached = self._cache.get(domain)
        if cached is not None and cached.expires_at <= self._clock():
            del self._cache[domain]
            cached = None
        policy_id = await self._record_id(domain)
        if policy_id is None or (cached is not None and cached.id == policy_id):
            return cached.policy if cached is not None else None
        try:
            policy = await self._fetch(domain)
        except (OSError, TimeoutError, ValueError) as err:  # _fetch turns aiohttp's errors into OSError
            log.warning("MTA-STS policy of %s not fetched (%s)%s", domain, err or type(err).__name__,
                        "; the cached one stays" if cached else "")
            return cached.policy if cached is not None else None
        self._cache[domain] = _Cached(policy_id, policy, self._clock() + policy.max_age)
        log.info("MTA-STS policy of %s: mode=%s mx=%s max_age=%d", domain, policy.mode, ",".join(policy.mx),
                 policy.max_age)
        return policy

    async def _record_id(self, domain: str) -> str | None:
        import dns.exception

        try:
            answer = await self._resolver.resolve(f"_mta-sts.{domain}", "TXT")
        except dns.exception.DNSException:
            return None  # none published, or the lookup failed: a cached policy holds either way
        texts = [b"".join(record.strings).decode("utf-8", "replace") for record in answer]
        return record_id(texts)

    async def _fetch(self, domain: str) -> Policy:
        import aiohttp  # here, not at the top: see the module docstring

        resolver = _dns_resolver(self._resolver) if self._http_via_resolver else None
        connector = aiohttp.TCPConnector(ssl=self._context, resolver=resolver, force_close=True)
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session, \
                    session.get(f"https://mta-sts.{domain}{POLICY_PATH}", allow_redirects=False) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                if response.content_type != "text/plain":
                    raise ValueError(f"media type {response.content_type}, not text/plain")
                body = await response.content.read(POLICY_SIZE_LIMIT + 1)
        except aiohttp.ClientError as err:
            raise OSError(str(err) or type(err).__name__) from err
        if len(body) > POLICY_SIZE_LIMIT:
            raise ValueError("policy larger than 64 KiB")
        return parse_policy(body.decode("utf-8"))


def _dns_resolver(resolver: Any) -> Any:
    """aiohttp's host lookups through the transport's own name server (its `nameserver` option)."""
    from aiohttp.abc import AbstractResolver, ResolveResult

    class DNSResolver(AbstractResolver):
        async def resolve(self, host: str, port: int = 0,
                          family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
            import dns.exception

            try:
                answer = await resolver.resolve(host, "A")
            except dns.exception.DNSException as err:
                raise OSError(f"cannot resolve {host}: {err}") from None
            return [ResolveResult(hostname=host, host=str(record), port=port, family=socket.AF_INET, proto=0,
                                  flags=socket.AI_NUMERICHOST) for record in answer]

        async def close(self) -> None:
            return None

    return DNSResolver()
