"""SMTP AUTH for the listeners (RFC 4954; PLAIN of RFC 4616, LOGIN): who may authenticate, when,
and whether the credentials hold. protocol.py parses the exchange; this decides.

- AUTH is offered only in an encrypted session (RFC 4954 §4, RFC 8314): before TLS, AUTH is
  answered ``538 5.7.11 Encryption required``. `smtpd_auth_allow_plaintext_loopback` also offers
  it in clear to loopback clients (tests, `make run`): nothing crosses a network there.
- Credentials are the accounts of `msgspool user add` (domain/users.py): a user found
  case-insensitively whose scrypt hash the password matches gets ``235 2.7.0``; anything else,
  an unknown user included (checked against a dummy hash, so that both cost the same time), gets
  ``535 5.7.8``. PLAIN's authorization identity must be empty or the user's own name (no proxy
  authorization). The hashes are computed in worker threads, at most two at a time: each takes
  32 MiB and a core for a fraction of a second, and a flood of guesses must not take the listener
  or the memory with it. The attempts of one client address are checked one after the other,
  each with its delay: parallel sessions do not multiply an attacker's guesses, nor let one
  address take both hashing slots from everyone else.
- Failed logins are counted per client address (limits.AuthFailures): a growing delay before
  each 535, and after `smtpd_auth_failure_limit` in `smtpd_auth_failure_window` seconds, 421
  4.7.0 for that long.
- Nothing of the payload is logged: a success logs the user, a failure only the client's address
  and the mechanism (a user name field often holds a mistyped password), in Postfix's words
  (``client=[ADDR], sasl_method=PLAIN, sasl_username=USER``; ``[ADDR]: SASL PLAIN authentication
  failed``), so that log watchers written for Postfix (fail2ban's postfix-sasl) find them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from msgspool.domain.outcome import Reply
from msgspool.domain.users import User, dummy_hash, owned_senders, verify_password
from msgspool.smtpd.limits import AuthFailures
from msgspool.smtpd.protocol import Session

log = logging.getLogger("msgspool.smtpd")

UserLookup = Callable[[str], Awaitable[tuple[User, str] | None]]

AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Error: authentication failed")
ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_LOCKED_OUT = Reply(421, "4.7.0", "Error: too many failed logins; try again later")
AUTH_NOT_ENABLED = Reply(502, "5.5.1", "Error: authentication not enabled")
HASHES_AT_ONCE = 2


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Authenticator:
    """The listeners' AUTH decisions, shared by every listener (one count of failures)."""

    def __init__(self, users: UserLookup | None, failures: AuthFailures, *, local_domains: Sequence[str],
                 allow_plaintext_loopback: bool = False) -> None:
        self.users, self.failures, self.local_domains = users, failures, list(local_domains)
        self.allow_plaintext_loopback = allow_plaintext_loopback
        self._hashing = asyncio.Semaphore(HASHES_AT_ONCE)
        self._clients: dict[str, asyncio.Lock] = {}  # per address with an attempt under way
        self._waiting: Counter[str] = Counter()

    def reconfigure(self, local_domains: Sequence[str], allow_plaintext_loopback: bool, failure_limit: int,
                    failure_window: float, failure_delay: float) -> None:
        """A reloaded configuration, in force for the next AUTH; the failures counted so far stay."""
        self.local_domains, self.allow_plaintext_loopback = list(local_domains), allow_plaintext_loopback
        self.failures.limit, self.failures.window, self.failures.delay = failure_limit, failure_window, failure_delay

    def refusal(self, session: Session) -> Reply | None:
        """None when `session` may authenticate now; else the reply refusing AUTH."""
        if self.users is None:
            return AUTH_NOT_ENABLED
        client = str(session.peer[0])
        if self.failures.locked_out(client):
            return AUTH_LOCKED_OUT
        if session.tls is None and not (self.allow_plaintext_loopback and is_loopback(client)):
            return ENCRYPTION_REQUIRED
        return None

    def locked_out(self, session: Session) -> bool:
        return self.failures.locked_out(str(session.peer[0]))

    async def authenticate(self, session: Session, mechanism: str, authzid: str, name: str,
                           password: bytes) -> Reply:
        client = str(session.peer[0])
        lock = self._clients.get(client)
        if lock is None:
            lock = self._clients[client] = asyncio.Lock()
        self._waiting[client] += 1
        try:
            async with lock:  # one attempt at a time per address, its delay included
                if self.failures.locked_out(client):  # reached meanwhile by an attempt in parallel
                    return AUTH_LOCKED_OUT
                return await self._check(session, client, mechanism, authzid, name, password)
        finally:
            self._waiting[client] -= 1
            if not self._waiting[client]:
                del self._waiting[client], self._clients[client]

    async def _check(self, session: Session, client: str, mechanism: str, authzid: str, name: str,
                     password: bytes) -> Reply:
        assert self.users is not None
        found = await self.users(name) if name else None
        stored = found[1] if found else None
        async with self._hashing:
            matched = await asyncio.to_thread(lambda: verify_password(password, stored or dummy_hash()))
        if found is not None and stored is not None and matched and authzid in ("", found[0].name, name):
            user = found[0]
            session.authenticated, session.login = True, user.name
            session.senders = owned_senders(user, self.local_domains)
            log.info("client=[%s], sasl_method=%s, sasl_username=%s", client, mechanism, user.name)
            return AUTH_OK
        delay = self.failures.fail(client)
        locked = self.failures.locked_out(client)
        log.warning("[%s]: SASL %s authentication failed%s", client, mechanism, "; locked out" if locked else "")
        if locked:
            return AUTH_LOCKED_OUT
        await asyncio.sleep(delay)
        return AUTH_FAILED
