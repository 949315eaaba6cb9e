"""Address lists as written (RFC 5322 §3.4): where each addr-spec sits in a raw header field value,
so that an address can be changed and nothing else — display names, RFC 2047 encoded-words,
comments, group names and folding stay byte for byte.

Decoding the field and writing it anew (``email.utils.getaddresses``, ``formataddr``) cannot promise
that: an encoded-word may hide a comma (``=?us-ascii?q?Doe=2C_John?=``) that, decoded, splits one
mailbox into two, and group names and comments do not survive. Here the value is tokenized as
written (§3.2: quoted strings, comments, domain literals, atoms, specials), so an encoded-word is one
atom like any other, and only the tokens of an addr-spec are ever replaced.

The grammar, with CFWS allowed between any two tokens::

    address-list = [address] *("," [address])          ; empty entries: obs-addr-list, §4.4
    address      = mailbox / group
    group        = phrase ":" [mailbox *("," [mailbox])] ";"
    mailbox      = [phrase] "<" [obs-route] addr-spec ">" / addr-spec
    addr-spec    = word *("." word) "@" (atom *("." atom) / domain-literal)

A value that does not follow it raises `AddressListError`; callers leave such a field alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

_SPACE = re.compile(r"[ \t\r\n]+")  # WSP and the CRLF of folding
_ATOM = re.compile(r'[^ \t\r\n()<>\[\]:;@\\,."]+')  # atext, and UTF-8 (RFC 6532) as it comes
_SPECIALS = frozenset("<>:;@,.")
_WORDS = frozenset({"atom", "quoted", "."})


class AddressListError(ValueError):
    """The value is not an address list."""


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "atom", "quoted", "literal", "comment", "space", or the special character itself
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class AddrSpec:
    """An addr-spec as written: ``value[start:end]``, and the address it names (without CFWS)."""

    start: int
    end: int
    address: str


def tokenize(value: str) -> list[Token]:
    """The value's lexical tokens (RFC 5322 §3.2), CFWS included, covering it end to end."""
    found: list[Token] = []
    start = 0
    while start < len(value):
        kind, end = _token_at(value, start)
        found.append(Token(kind, start, end))
        start = end
    return found


def _token_at(value: str, start: int) -> tuple[str, int]:
    char = value[start]
    if char in _SPECIALS:
        return char, start + 1
    if char == '"':
        return "quoted", _closing(value, start, '"')
    if char == "[":
        return "literal", _closing(value, start, "]")
    if char == "(":
        return "comment", _comment_end(value, start)
    for kind, pattern in (("space", _SPACE), ("atom", _ATOM)):
        match = pattern.match(value, start)
        if match:
            return kind, match.end()
    raise AddressListError(f"unexpected {char!r} at {start}")


def _closing(value: str, start: int, close: str) -> int:
    """The end of a quoted string or domain literal opened at `start` (quoted-pairs skipped)."""
    at = start + 1
    while at < len(value):
        if value[at] == "\\":
            at += 2
        elif value[at] == close:
            return at + 1
        else:
            at += 1
    raise AddressListError(f"unterminated {value[start]} at {start}")


def _comment_end(value: str, start: int) -> int:
    """The end of the comment opened at `start`: comments nest (§3.2.2)."""
    depth, at = 0, start
    while at < len(value):
        char = value[at]
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return at + 1
        at += 2 if char == "\\" else 1
    raise AddressListError(f"unterminated comment at {start}")


def addr_specs(value: str) -> list[AddrSpec]:
    """Every addr-spec of an address list, in order; AddressListError when it is not one."""
    significant = [t for t in tokenize(value) if t.kind not in ("space", "comment")]
    return _Parser(value, significant).address_list()


def map_addresses(value: str, mapper: Callable[[str], str]) -> str:
    """The value with each addr-spec replaced by `mapper(address)`; everything else as it was."""
    for spec in reversed(addr_specs(value)):
        mapped = mapper(spec.address)
        if mapped != spec.address:
            value = value[: spec.start] + mapped + value[spec.end:]
    return value


class _Parser:
    """Recursive descent over the tokens that are not CFWS, collecting addr-specs."""

    def __init__(self, value: str, tokens: list[Token]) -> None:
        self.value, self.tokens, self.at = value, tokens, 0
        self.found: list[AddrSpec] = []

    def address_list(self) -> list[AddrSpec]:
        self._entries(end=None, in_group=False)
        return self.found

    def _entries(self, end: str | None, in_group: bool) -> None:
        """Addresses separated by commas, empty ones allowed, up to `end` (None: the value's end)."""
        while self._peek() != end:
            if self._peek() != ",":
                self._address(in_group)
            if self._peek() not in (",", end):
                raise AddressListError(f"expected a comma at {self._where()}")
            if self._peek() == ",":
                self.at += 1

    def _address(self, in_group: bool) -> None:
        words = self._run(_WORDS)
        following = self._peek()
        if following == "<":
            self._angle_addr()
        elif following == ":" and words and not in_group:  # a group's display name; groups do not nest
            self.at += 1
            self._entries(end=";", in_group=True)
            self.at += 1
        elif following == "@" and words:
            self._addr_spec(words)
        else:
            raise AddressListError(f"no address at {self._where()}")

    def _angle_addr(self) -> None:
        self.at += 1
        if self._peek() == "@":  # obs-route (§4.4): "@a.example,@b.example:" before the address
            while self._peek() not in (":", None):
                self.at += 1
            self._expect(":")
        if self._peek() != ">":  # "<>" names no address: nothing to map
            local = self._run(_WORDS)
            if not local or self._peek() != "@":
                raise AddressListError(f"no addr-spec at {self._where()}")
            self._addr_spec(local)
        self._expect(">")

    def _addr_spec(self, local: list[Token]) -> None:
        self.at += 1  # the "@"
        domain = self._domain()
        for part in (local, domain):  # words side by side are a phrase ("John Doe@x"), not an addr-spec
            if any(a.kind != "." and b.kind != "." for a, b in pairwise(part)):
                raise AddressListError(f"a phrase where an addr-spec was expected at {part[0].start}")
        self.found.append(AddrSpec(local[0].start, domain[-1].end, f"{self._text(local)}@{self._text(domain)}"))

    def _domain(self) -> list[Token]:
        if self._peek() == "literal":
            self.at += 1
            return [self.tokens[self.at - 1]]
        domain = self._run(frozenset({"atom", "."}))
        if not domain:
            raise AddressListError(f"no domain at {self._where()}")
        return domain

    def _run(self, kinds: frozenset[str]) -> list[Token]:
        """The tokens of `kinds` from here on (a phrase, or the parts of an addr-spec)."""
        start = self.at
        while self._peek() in kinds:
            self.at += 1
        return self.tokens[start:self.at]

    def _text(self, tokens: list[Token]) -> str:
        return "".join(self.value[t.start:t.end] for t in tokens)

    def _expect(self, kind: str) -> None:
        if self._peek() != kind:
            raise AddressListError(f"expected {kind!r} at {self._where()}")
        self.at += 1

    def _peek(self) -> str | None:
        return self.tokens[self.at].kind if self.at < len(self.tokens) else None

    def _where(self) -> int:
        return self.tokens[self.at].start if self.at < len(self.tokens) else len(self.value)
