"""Message content as bytes: line ends, the header section, trace headers. Pure functions over
RFC 5322 text; the body is never parsed."""

from __future__ import annotations

import contextlib
import re
from email.header import decode_header, make_header

_RECEIVED = re.compile(rb"^received:", re.IGNORECASE | re.MULTILINE)
_LINE_END = re.compile(rb"\r?\n")
_PRIORITY = re.compile(rb"^(priority|x-priority|importance):[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)
# MAPI PR_PRIORITY values (domain/message.py): urgent 1, normal 0, non-urgent -1.
_PRIORITY_WORDS = {b"urgent": 1, b"high": 1, b"normal": 0, b"non-urgent": -1, b"low": -1}

_DELIVERED_TO = re.compile(rb"^delivered-to:[ \t]*<?([^\r\n>]+)>?[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


def header_block(content: bytes) -> bytes:
    """The header section of an RFC 5322 message (up to the first empty line)."""
    end = content.find(b"\r\n\r\n")
    if end < 0:
        end = content.find(b"\n\n")
    return content if end < 0 else content[: end + 2]


def delivered_to(content: bytes, address: str) -> bool:
    """Whether the header section already says it was delivered to `address` (a forwarding loop,
    as Postfix local(8) checks)."""
    wanted = address.lower().encode("utf-8", "replace")
    return any(m.group(1).strip().lower() == wanted for m in _DELIVERED_TO.finditer(header_block(content)))


def count_hops(content: bytes) -> int:
    return len(_RECEIVED.findall(header_block(content)))


def canonical(content: bytes) -> bytes:
    """Content with every line ending a CRLF (RFC 5322 §2.1): API and sendmail input may use LF."""
    if content.count(b"\n") == content.count(b"\r\n"):
        return content
    return _LINE_END.sub(b"\r\n", content)


def header_priority(content: bytes) -> int | None:
    """The priority a message's header asks for: ``Priority:`` (RFC 2156: urgent, normal,
    non-urgent), ``X-Priority:`` (1-2 urgent, 3 normal, 4-5 non-urgent) or ``Importance:`` (high,
    normal, low); None when it names none."""
    for name, value in _PRIORITY.findall(header_block(content)):
        word = value.strip().lower()
        if name.lower() == b"x-priority" and word[:1] in (b"1", b"2", b"3", b"4", b"5"):
            return {b"1": 1, b"2": 1, b"3": 0}.get(word[:1], -1)
        if word in _PRIORITY_WORDS:
            return _PRIORITY_WORDS[word]
    return None


_SUBJECT = re.compile(rb"^subject:[ \t]*([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE)


def subject(content: bytes, limit: int = 200) -> str | None:
    """The Subject of a message, unfolded and decoded (RFC 5322 §2.2.3, RFC 2047 encoded words),
    cut at `limit` characters: what a queue search looks in. None when there is none."""
    match = _SUBJECT.search(header_block(content))
    if match is None:
        return None
    raw = _LINE_END.sub(b"", match.group(1)).decode("utf-8", "replace").strip()
    if "=?" in raw:
        with contextlib.suppress(ValueError, LookupError, UnicodeError):  # a broken encoded word stays as it is
            raw = str(make_header(decode_header(raw)))
    return raw[:limit]
