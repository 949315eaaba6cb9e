"""Accounts of the submission service (RFC 6409, AUTH of RFC 4954): what a user is, how a password
is hashed and checked, which envelope senders an account may use. Pure code; the store keeps the
records (stores/credentials.py), smtpd/policy.py asks them.

Passwords are kept only as scrypt hashes (RFC 7914), memory-hard so that a stolen spool costs an
attacker 32 MiB and tens of milliseconds per guess: ``scrypt$<N>$<r>$<p>$<salt>$<hash>``, the
salt 16 random bytes, the hash 32 bytes, both base64. The parameters travel with each hash, so
they can be raised later without breaking the accounts that exist. Comparison is constant-time.

Senders (Postfix's ``reject_sender_login_mismatch``): an account may use the envelope senders it
owns, and by default it owns
- its own name when that is an address, and any address of that domain (``alice@example.org``
  may send as ``billing@example.org``);
- ``NAME@DOMAIN`` for each local domain when its name is not an address.
`user add --sender` replaces the default with its own list of patterns: an address, ``@domain``
(any address of the domain) or ``*`` (any sender). The null sender (bounces) is always allowed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1  # 32 MiB, about 50-100 ms on a current core
_MAXMEM = 2**27  # hashlib's default (32 MiB) is just below what N * r * 128 needs with its overhead
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@-]{0,127}")
_SENDER = re.compile(r"\*|@[A-Za-z0-9.-]+|[^@\s]+@[A-Za-z0-9.-]+")
MAX_PASSWORD = 1024  # bytes: longer is refused before it is hashed (scrypt's cost is not the issue, input is)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    senders: tuple[str, ...]  # patterns; empty: the default (see the module docstring)
    created_at: float


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad user name {name!r}: 1 to 128 of letters, digits, '.', '_', '+', '@', '-'")
    return name


def check_senders(patterns: Iterable[str]) -> tuple[str, ...]:
    result = tuple(p.strip().lower() for p in patterns if p.strip())
    for pattern in result:
        if not _SENDER.fullmatch(pattern):
            raise ValueError(f"bad sender pattern {pattern!r}: an address, @domain or *")
    return result


def check_password(password: str) -> str:
    if not password:
        raise ValueError("the password is empty")
    if len(password.encode("utf-8")) > MAX_PASSWORD:
        raise ValueError(f"the password is longer than {MAX_PASSWORD} bytes")
    return password


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=32)


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password.encode("utf-8"), salt, n, r, p)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str | bytes, stored: str) -> bool:
    """Whether `password` matches the `stored` hash; False for a hash this code cannot read."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        raw = password.encode("utf-8", "surrogateescape") if isinstance(password, str) else password
        if len(raw) > MAX_PASSWORD:
            return False
        actual = _scrypt(raw, base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# A hash to check against when the user does not exist, so that a wrong name costs as long as a
# wrong password (no user enumeration by timing). Made once, lazily: it costs one scrypt.
_dummy: list[str] = []


def dummy_hash() -> str:
    if not _dummy:
        _dummy.append(hash_password(secrets.token_hex(16)))
    return _dummy[0]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def owned_senders(user: User, local_domains: Sequence[str]) -> tuple[str, ...]:
    """The sender patterns `user` owns: its own list, or the default."""
    if user.senders:
        return user.senders
    name = user.name.lower()
    if "@" in name:
        return (name, "@" + name.rpartition("@")[2])
    return tuple(f"{name}@{domain.lower()}" for domain in local_domains)


def sender_allowed(owned: Sequence[str], sender: str) -> bool:
    """May an account owning the patterns `owned` (owned_senders) use `sender` as envelope sender?"""
    if not sender:
        return True
    address = sender.lower()
    domain = "@" + address.rpartition("@")[2]
    return any(p in ("*", address, domain) for p in owned)
