"""Addresses: the mailbox form msgspool routes on, and the few facts routing needs from it.

An SMTP address is ``local-part@domain`` (RFC 5321 §4.1.2). The domain is compared case-insensitively;
the local part is kept exactly as given (it is the destination's to interpret), except for mailbox
lookup in local domains, where msgspool folds it to lower case as every common MTA does.
"""

from __future__ import annotations

import re

SMTP = "SMTP"  # the address type (MAPI PR_ADDRTYPE) of internet mail addresses
# C0, DEL, C1, and lone surrogates (what undecodable bytes become): never part of an address, on
# any path in (the SMTP listener has its own check of the raw line, smtpd/protocol.py).
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def split(address: str) -> tuple[str, str]:
    """``user@Example.ORG`` -> ``("user", "example.org")``; no ``@`` -> ``(address, "")``."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain.lower().rstrip(".")


def domain_of(address: str) -> str:
    return split(address)[1]


def mailbox_key(address: str) -> str:
    """The name of a local mailbox: the address folded to lower case."""
    local, domain = split(address)
    return f"{local.lower()}@{domain}" if domain else local.lower()


def valid_smtp(address: str) -> bool:
    """A cheap syntactic check for API and sendmail input: ``local@domain`` with sane parts."""
    local, domain = split(address)
    if not local or not domain or len(address) > 320:  # RFC 5321 §4.5.3.1: 64 + 1 + 255
        return False
    if any(c in address for c in " <>,;") or CONTROL.search(address):
        return False
    if domain.startswith("[") and domain.endswith("]"):
        return True
    return all(label and len(label) <= 63 for label in domain.split("."))


def valid_recipient(address: str, addrtype: str = SMTP) -> bool:
    """Intake's check of a recipient address: an SMTP one by `valid_smtp` (or a bare postmaster,
    RFC 5321 §4.5.1); any other's syntax is its transport's business, but it must not carry a
    control character (a line break or NUL would end a protocol line or a log line early)."""
    if addrtype.upper() == SMTP:
        return valid_smtp(address) or address.lower() == "postmaster"
    return CONTROL.search(address) is None
