"""Message content as bytes: line ends, the header section, trace headers. Pure functions over
RFC 5322 text; the body is never parsed."""

from __future__ import annotations

import re

_RECEIVED = re.compile(rb"^received:", re.IGNORECASE | re.MULTILINE)
_LINE_END = re.compile(rb"\r?\n")


def header_block(content: bytes) -> bytes:
    """The header section of an RFC 5322 message (up to the first empty line)."""
    end = content.find(b"\r\n\r\n")
    if end < 0:
        end = content.find(b"\n\n")
    return content if end < 0 else content[: end + 2]


def count_hops(content: bytes) -> int:
    return len(_RECEIVED.findall(header_block(content)))


def canonical(content: bytes) -> bytes:
    """Content with every line ending a CRLF (RFC 5322 §2.1): API and sendmail input may use LF."""
    if content.count(b"\n") == content.count(b"\r\n"):
        return content
    return _LINE_END.sub(b"\r\n", content)
