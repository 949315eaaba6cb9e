"""Built-in outbound hook `rewrite`: canonical address maps (Postfix canonical(5)) for the envelope
sender and recipients, and for the same addresses in the header section.

    [[hooks]]
    name = "canonical"
    type = "rewrite"
    sender = { "alice@old.example" = "alice@new.example", "@old.example" = "@new.example" }
    recipient = { "sales@new.example" = "team@new.example" }
    headers = true      # default: also From/Sender/Reply-To (sender map) and To/Cc (recipient map)

Lookup order, as Postfix's: ``user@domain``, then ``@domain`` (which keeps the user part when the
result is ``@otherdomain``); the first match wins, and the result is not looked up again. In the
header section only the addr-specs change (domain/addresslist.py finds them in the field as
written, RFC 5322 §3.4): display names, encoded-words, comments, group names and folding stay byte
for byte, and a field that is not a valid address list is left as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from msgspool.domain.address import split
from msgspool.domain.addresslist import AddressListError, map_addresses
from msgspool.domain.hooks import Draft
from msgspool.errors import ConfigError

SENDER_FIELDS = frozenset({"from", "sender", "reply-to"})
RECIPIENT_FIELDS = frozenset({"to", "cc"})
_FIELD = re.compile(rb"^([!-9;-~]+):[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*", re.MULTILINE)


def canonical_lookup(table: Mapping[str, str], address: str) -> str:
    """The address `table` maps `address` to (Postfix canonical order), or the address itself."""
    local, domain = split(address)
    found = table.get(address.lower())
    if found is not None:
        return found
    found = table.get(f"@{domain}")
    if found is None:
        return address
    return f"{local}{found}" if found.startswith("@") else found


def rewrite_fields(content: bytes, names: frozenset[str], mapper: Callable[[str], str]) -> bytes:
    """The content with the addresses of the header fields `names` (lower case) mapped."""
    end = content.find(b"\r\n\r\n")
    head, body = (content[: end + 2], content[end + 2:]) if end >= 0 else (content, b"")

    def one(match: re.Match[bytes]) -> bytes:
        name = match.group(1)
        if name.decode("ascii").lower() not in names:
            return match.group(0)
        return name + b":" + rewrite_value(match.group(0)[len(name) + 1:], mapper)

    return _FIELD.sub(one, head) + body


def rewrite_value(value: bytes, mapper: Callable[[str], str]) -> bytes:
    """A raw address-list value (folding and all) with its addr-specs mapped and every other byte
    kept; a value that is no address list is left as it is. surrogateescape carries bytes that are
    not UTF-8 (pre-RFC 6532 8-bit headers) through unchanged."""
    text = value.decode("utf-8", "surrogateescape")
    try:
        return map_addresses(text, mapper).encode("utf-8", "surrogateescape")
    except AddressListError:
        return value


class Rewrite:
    def __init__(self, name: str, settings: Any, options: dict[str, Any]) -> None:
        self.name = name
        self.sender_map = _table(name, "sender", options.pop("sender", {}))
        self.recipient_map = _table(name, "recipient", options.pop("recipient", {}))
        self.headers = bool(options.pop("headers", True))
        if options:
            raise ConfigError(f"hook {name}: unknown options {', '.join(sorted(options))}")

    def preprocess(self, draft: Draft) -> Draft:
        if draft.sender:
            draft.sender = canonical_lookup(self.sender_map, draft.sender)
        for r in draft.recipients:
            r.address = canonical_lookup(self.recipient_map, r.address)
        if self.headers:
            draft.content = rewrite_fields(draft.content, SENDER_FIELDS,
                                           lambda a: canonical_lookup(self.sender_map, a))
            draft.content = rewrite_fields(draft.content, RECIPIENT_FIELDS,
                                           lambda a: canonical_lookup(self.recipient_map, a))
        return draft


def _table(hook: str, which: str, raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise ConfigError(f"hook {hook}: {which} must be a table of address = address")
    return {k.lower(): v for k, v in raw.items()}
