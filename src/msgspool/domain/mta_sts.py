"""MTA-STS (RFC 8461): the DNS record, the policy text, and which MX hosts a policy allows.

Pure parsing and matching; the lookups and the HTTPS fetch are the SMTP transport's
(transports/mta_sts.py). A domain publishes ``_mta-sts.DOMAIN TXT "v=STSv1; id=..."`` and a policy
at ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt``::

    version: STSv1
    mode: enforce            # enforce | testing | none
    mx: mail.example.com
    mx: *.example.net        # a wildcard stands for exactly one leftmost label
    max_age: 86400           # seconds a sender may keep the policy (at most a year)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MODES = ("enforce", "testing", "none")
MAX_AGE_LIMIT = 31_557_600  # §3.2: one year
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


@dataclass(frozen=True)
class Policy:
    mode: str
    mx: tuple[str, ...]
    max_age: int

    def allows(self, host: str) -> bool:
        return any(mx_matches(pattern, host) for pattern in self.mx)

    def allowed(self, hosts: Iterable[str]) -> list[str]:
        return [host for host in hosts if self.allows(host)]


def record_id(texts: Sequence[str]) -> str | None:
    """The policy id of a domain's ``_mta-sts`` TXT records (§3.1); None: no (usable) policy record.
    More than one STSv1 record is no record at all."""
    records = [text for text in texts if text.startswith("v=STSv1")]
    if len(records) != 1:
        return None
    fields: dict[str, str] = {}
    for part in records[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    if fields.get("v") != "STSv1" or not _ID.match(fields.get("id", "")):
        return None
    return fields["id"]


def parse_policy(text: str) -> Policy:
    """The policy file (§3.2): ``key: value`` lines; ValueError when it is not a valid policy."""
    values: dict[str, list[str]] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        key, sep, value = line.partition(":")
        if sep:
            values.setdefault(key.strip().lower(), []).append(value.strip())
    if values.get("version") != ["STSv1"]:
        raise ValueError("policy version is not STSv1")
    mode = (values.get("mode") or [""])[0]
    if mode not in MODES:
        raise ValueError(f"policy mode {mode!r} is none of {', '.join(MODES)}")
    try:
        max_age = int((values.get("max_age") or [""])[0])
    except ValueError:
        raise ValueError("policy max_age is not a number") from None
    if not 0 <= max_age <= MAX_AGE_LIMIT:
        raise ValueError(f"policy max_age {max_age} is out of range")
    mx = tuple(pattern.lower().rstrip(".") for pattern in values.get("mx", ()) if pattern)
    if not mx and mode != "none":
        raise ValueError("policy names no mx")
    return Policy(mode, mx, max_age)


def mx_matches(pattern: str, host: str) -> bool:
    """§4.1: an exact name, or ``*.`` standing for one leftmost label; case and a final dot ignored."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, _, rest = host.partition(".")
        return bool(label) and rest == pattern[2:]
    return host == pattern
