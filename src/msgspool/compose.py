"""Small, careful edits of RFC 5322 headers for submissions that come without an envelope
(`sendmail -t`, the Python API): recipients from To/Cc/Bcc, Bcc removed, and the headers a
message must have (From, Date, Message-ID; RFC 5322 §3.6) added when missing — as Postfix's
cleanup does for local submissions. Only the header section is parsed; the body is never touched.
"""

from __future__ import annotations

import re
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import formataddr, getaddresses, make_msgid

from msgspool.domain.content import canonical
from msgspool.domain.timefmt import rfc5322

_HEADER_LINE = re.compile(rb"^[!-9;-~]+:")


def _split(content: bytes) -> tuple[bytes, bytes]:
    """(header section with its last CRLF, the rest starting with the empty line); line ends are
    made CRLF first, since API callers often hand over LF-only text."""
    content = canonical(content)
    end = content.find(b"\r\n\r\n")
    if end >= 0:
        return content[: end + 2], content[end + 2:]
    if _HEADER_LINE.match(content):  # headers only, no body
        return (content if content.endswith(b"\r\n") else content + b"\r\n"), b"\r\n"
    return b"", b"\r\n" + content


def header_recipients(content: bytes) -> list[str]:
    headers = BytesHeaderParser(policy=compat32).parsebytes(_split(content)[0])
    fields = [str(v) for name in ("to", "cc", "bcc") for v in headers.get_all(name, [])]
    return [address for _name, address in getaddresses(fields) if address]


def header_sender(content: bytes) -> str:
    """The envelope sender a message implies: Sender:, else the first From: address."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(_split(content)[0])
    for name in ("sender", "from"):
        found = [a for _n, a in getaddresses([str(v) for v in headers.get_all(name, [])]) if a]
        if found:
            return found[0]
    return ""


_BCC = re.compile(rb"^bcc:.*?\r\n(?![ \t])", re.IGNORECASE | re.MULTILINE | re.DOTALL)


def strip_bcc(content: bytes) -> bytes:
    """Remove Bcc: fields (with their folded continuation lines) from the header section."""
    head, body = _split(content)
    return _BCC.sub(b"", head) + body


def complete_headers(content: bytes, sender: str, full_name: str | None, hostname: str) -> bytes:
    head, body = _split(content)
    headers = BytesHeaderParser(policy=compat32).parsebytes(head)
    extra = []
    if headers.get("from") is None:
        extra.append(f"From: {formataddr((full_name or '', sender))}")
    if headers.get("date") is None:
        extra.append(f"Date: {rfc5322()}")
    if headers.get("message-id") is None:
        extra.append(f"Message-ID: {make_msgid(domain=hostname)}")
    if not extra:
        return content
    return head + "".join(line + "\r\n" for line in extra).encode("utf-8") + body
