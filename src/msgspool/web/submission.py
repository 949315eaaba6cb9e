"""The body of POST /api/messages, checked member by member, into a `Submission`.

A body that is not what the API takes is a 400 (not JSON, not an object, a member of the wrong
type); a well-formed value out of range (a time past year 9999, a priority that is none of the
three, an attempt cap below 0) is a 422. Either names the member at fault, in the API's words.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from msgspool.compose import header_recipients, strip_bcc
from msgspool.domain.message import NON_URGENT, NORMAL, URGENT
from msgspool.domain.recipient import RecipientType
from msgspool.domain.timefmt import OutOfRange, parse_time
from msgspool.spooler.intake import MAX_ATTEMPTS_CAP, Submission
from msgspool.web.problems import Problem

PRIORITIES = {"urgent": URGENT, "normal": NORMAL, "non-urgent": NON_URGENT}
_ADDRTYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
RFC822 = "message/rfc822"
SHAPE = "expected a JSON object {sender, recipients, content}"


def malformed(field: str | None, detail: str) -> Problem:
    return Problem(400, detail, title="Bad request", field=field)


def out_of_range(field: str, detail: str) -> Problem:
    return Problem(422, detail, title="Value out of range", field=field)


async def json_body(request: web.Request) -> Any:
    """The request's JSON document; Problem 415 when it is not declared JSON, 400 when it is not JSON."""
    if request.content_type != "application/json":
        raise Problem(415, f"the body must be application/json, not {request.content_type or 'none'}",
                      headers={"Accept-Post": "application/json"})
    raw = await request.read()  # 413 from aiohttp past client_max_size
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise malformed(None, f"the body is not UTF-8 (byte {err.start})") from err
    except json.JSONDecodeError as err:
        where = "the body is empty" if not raw.strip() else f"at line {err.lineno}, column {err.colno}"
        raise malformed(None, f"the body is not valid JSON: {where}") from err


def submission(body: Any, origin: str = "http") -> Submission:
    if not isinstance(body, dict):
        raise malformed(None, f"{SHAPE}, not a JSON {_json_type(body)}")
    sender = body.get("sender", "")
    if not isinstance(sender, str):
        raise malformed("sender", "sender must be a string: an address, or \"\" for the null sender")
    recipients = _strings(body, "recipients", required=True)
    content = body.get("content")
    if not isinstance(content, str):
        raise malformed("content", "content must be a string: the RFC 5322 message"
                        if "content" in body else f"content is missing: {SHAPE}")
    assert recipients is not None
    try:
        data = content.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate escape (\ud800) in the JSON string
        raise malformed("content", f"content is not valid Unicode at character {err.start}") from err
    addrtypes = _strings(body, "addrtypes")
    if addrtypes is not None and not all(_ADDRTYPE.fullmatch(a) for a in addrtypes):
        raise malformed("addrtypes", "addrtypes must be address type names such as \"SMTP\" (letters, digits, - _ .)")
    return Submission(sender=sender, recipients=recipients, content=data, origin=origin, addrtypes=addrtypes,
                      **_placement(body), **scheduling(body))


def _placement(body: dict[str, Any]) -> dict[str, Any]:
    """`types` (to, cc, bcc per recipient), `mailbox` (sent from) and `message_class` (MAPI)."""
    fields: dict[str, Any] = {}
    types = _strings(body, "types")
    if types is not None:
        if not all(t in RecipientType.__members__.values() for t in types):
            raise malformed("types", 'types must be "to", "cc" or "bcc", one per recipient')
        fields["types"] = [RecipientType(t) for t in types]
    for name in ("mailbox", "message_class"):
        value = body.get(name)
        if value is not None and not (isinstance(value, str) and value and value.isprintable()):
            raise malformed(name, f"{name} must be a non-empty string")
        if value is not None:
            fields[name] = value
    return fields


def raw_submission(query: Mapping[str, str], content: bytes, origin: str = "http") -> Submission:
    """POST /api/messages with Content-Type message/rfc822: the body is the message as it is;
    ?sender= and ?recipient= (repeated) give the envelope, else (as sendmail -t) the recipients are
    its To, Cc and Bcc, and the Bcc field is removed (RFC 5322 §3.6.3)."""
    sender = query.get("sender", "")
    recipients = list(query.getall("recipient", [])) if isinstance(query, MultiMapping) else []
    if not content.strip():
        raise malformed(None, "the body is empty: expected an RFC 5322 message")
    if not recipients:
        recipients = header_recipients(content)
        content = strip_bcc(content)
    if not recipients:
        raise malformed("recipient", "no recipients: give ?recipient=ADDRESS or To/Cc/Bcc fields")
    return Submission(sender=sender, recipients=recipients, content=content, origin=origin)


def _strings(body: dict[str, Any], name: str, *, required: bool = False) -> list[str] | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if value is None:
        raise malformed(name, f"{name} is missing: {SHAPE}")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise malformed(name, f"{name} must be a list of strings")
    return value


def scheduling(body: dict[str, Any]) -> dict[str, Any]:
    """The scheduling controls of a submission: `priority` ("urgent", "normal", "non-urgent" or
    MAPI's 1, 0, -1), `deliver_after` and `expires_at` (ISO 8601 with a zone, or POSIX seconds),
    `max_attempts` (a whole number; 0: no cap). Absent ones keep the Submission's defaults."""
    fields: dict[str, Any] = {}
    if (priority := body.get("priority")) is not None:
        fields["priority"] = _priority(priority)
    for name in ("deliver_after", "expires_at"):
        if body.get(name) is not None:
            fields[name] = _time(name, body[name])
    if (cap := body.get("max_attempts")) is not None:
        if isinstance(cap, bool) or not isinstance(cap, int):
            raise malformed("max_attempts", "max_attempts must be a whole number (0: no cap)")
        if not 0 <= cap <= MAX_ATTEMPTS_CAP:
            raise out_of_range("max_attempts", f"max_attempts must be 0 (no cap) to {MAX_ATTEMPTS_CAP}, not {cap}")
        fields["max_attempts"] = cap
    return fields


def _priority(value: Any) -> int:
    names = ", ".join(f'"{name}"' for name in PRIORITIES)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise malformed("priority", f"priority must be one of {names} or 1, 0, -1")
    number = PRIORITIES.get(value) if isinstance(value, str) else value
    if number not in PRIORITIES.values():
        raise out_of_range("priority", f"priority must be one of {names} or 1, 0, -1, not {_short(value)}")
    assert number is not None
    return number


def _time(name: str, value: Any) -> float:
    try:
        return parse_time(value)
    except OutOfRange as err:
        raise out_of_range(name, f"{name}: {_short(value)} is not a time between 1970 and 9999") from err
    except (ValueError, OverflowError) as err:
        raise malformed(name, f"{name} must be an ISO 8601 time with a zone (2026-12-01T08:00:00Z) or POSIX"
                        f" seconds, not {_short(value)}") from err


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), "value")
