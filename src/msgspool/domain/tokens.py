"""Bearer tokens of the HTTP API (RFC 6750): what a token is, what its scopes allow, how its
secret is made and checked. Pure code; the store keeps the records, web/access.py asks them.

A secret reads ``msgspool_<id>_<random>``: the id finds the record, and only the SHA-256 of the
whole secret is stored, compared with `hmac.compare_digest`. The random part is 32 bytes from
`secrets`, so a fast hash is enough (nothing to brute-force, unlike a password).

Scopes: ``submit`` (POST /api/messages, and relaying through it), ``read`` (status, queue,
events), ``admin`` (queue operations) — and admin implies the other two.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

SUBMIT, READ, ADMIN = "submit", "read", "admin"
METRICS = "metrics"  # GET /metrics only: what a Prometheus server is given (read implies it)
SCOPES = (SUBMIT, READ, ADMIN, METRICS)
PREFIX = "msgspool_"
_SECRET = re.compile(r"msgspool_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass(frozen=True, slots=True)
class Token:
    id: str
    name: str
    scopes: frozenset[str]
    created_at: float

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes or (scope == METRICS and READ in self.scopes)


@dataclass(frozen=True, slots=True)
class NewToken:
    token: Token
    secret: str  # shown once, never stored
    digest: str


def parse_scopes(values: Iterable[str]) -> frozenset[str]:
    scopes = frozenset(v.strip().lower() for v in values if v.strip())
    if not scopes:
        raise ValueError(f"a token needs at least one scope: {', '.join(SCOPES)}")
    unknown = scopes - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scope {', '.join(sorted(unknown))}; known: {', '.join(SCOPES)}")
    return scopes


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad token name {name!r}: 1 to 64 of letters, digits, '.', '_', '@', '-'")
    return name


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def mint(scopes: frozenset[str], name: str | None, now: float) -> NewToken:
    token_id = secrets.token_hex(6)
    secret = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    token = Token(token_id, check_name(name) if name else token_id, scopes, now)
    return NewToken(token, secret, digest(secret))


def token_id_of(secret: str) -> str | None:
    """The id a presented secret claims; None when it is not shaped like one of ours."""
    match = _SECRET.fullmatch(secret)
    return match.group(1) if match else None


def matches(secret: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(secret), stored_digest)
