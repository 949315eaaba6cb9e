"""A stored message's content as a mail reader shows it: its header fields (RFC 5322 §2.2, encoded
words decoded as RFC 2047 says), the text and HTML bodies and the attachments of its MIME tree
(RFC 2045, RFC 2046; an attachment is a part with Content-Disposition: attachment, RFC 2183, or
any leaf part that is not the message's text), each by its index in a depth-first walk. Pure:
bytes in, data out.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from email.message import EmailMessage, Message
from typing import Any


@dataclass(frozen=True, slots=True)
class Part:
    filename: str | None
    content_type: str
    payload: bytes


def _message(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _text(part: Message) -> str | None:
    try:
        value = part.get_content()  # type: ignore[attr-defined]
    except (LookupError, ValueError, AssertionError):  # an unknown charset, a broken encoding
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else None
    return value if isinstance(value, str) else None


def _walk(message: Message) -> tuple[str | None, str | None, list[Part]]:
    text = html = None
    attachments: list[Part] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        attached = part.get_content_disposition() == "attachment" or part.get_filename() is not None
        if not attached and kind == "text/plain" and text is None:
            text = _text(part)
        elif not attached and kind == "text/html" and html is None:
            html = _text(part)
        else:
            payload = part.get_payload(decode=True)
            attachments.append(Part(part.get_filename(), kind, payload if isinstance(payload, bytes) else b""))
    return text, html, attachments


def parsed(raw: bytes) -> dict[str, Any]:
    message = _message(raw)
    text, html, attachments = _walk(message)
    subject = message.get("Subject")
    return {
        "headers": [[name, str(value)] for name, value in message.items()],
        "subject": str(subject) if subject is not None else None,
        "text": text,
        "html": html,
        "attachments": [{"index": i, "filename": a.filename, "content_type": a.content_type, "size": len(a.payload)}
                        for i, a in enumerate(attachments)],
    }


def attachment(raw: bytes, index: int) -> Part | None:
    _text, _html, attachments = _walk(_message(raw))
    return attachments[index] if 0 <= index < len(attachments) else None
