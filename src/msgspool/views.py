"""How messages and recipients look to users: the JSON of `queue list/show --json` and of the
HTTP API (DESIGN.md's contract: id, sender, size, submitted_at, folder, recipients with address,
addrtype, transport, status, attempts, next_attempt_at, last_reply; times ISO 8601 UTC), and the
one-line text form of `queue list`.
"""

from __future__ import annotations

from typing import Any

from msgspool.domain.message import MessageInfo
from msgspool.domain.suppression import Suppression
from msgspool.domain.timefmt import iso
from msgspool.domain.tokens import Token
from msgspool.domain.users import User


def message_json(info: MessageInfo) -> dict[str, Any]:
    out = _message_fields(info)
    if info.history is not None:
        out["history"] = [{**h, "time": iso(h["time"])} for h in info.history]
    if info.resends is not None:
        out["resends"] = list(info.resends)
    if info.copies is not None:
        out["copies"] = [dict(c) for c in info.copies]
    return out


def _message_fields(info: MessageInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "sender": info.sender,
        "subject": info.subject,
        "size": info.size,
        "submitted_at": iso(info.submitted_at),
        "finished_at": iso(info.finished_at),
        "mailbox": info.mailbox,
        "folder": info.folder,
        "message_class": info.message_class,
        "priority": info.priority,
        "held": info.held,
        "origin": info.origin,
        "deliver_after": iso(info.deliver_after),
        "expires_at": iso(info.expires_at),
        "max_attempts": info.max_attempts,
        "ret": info.ret,
        "envid": info.envid,
        "read": info.read,
        "flags": list(info.flags),
        "mdn": info.mdn,
        "resend_of": info.resend_of,
        "copy_of": info.copy_of,
        "copy_for": info.copy_for,
        "recipients": [recipient_json(r) for r in info.recipients],
    }


def recipient_json(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "address": r["address"],
        "addrtype": r["addrtype"],
        "type": r["type"],
        "transport": r["transport"],
        "destination": r["destination"],
        "status": r["status"],
        "attempts": r["attempts"],
        "next_attempt_at": iso(r["next_attempt_at"]) if r["status"] in ("queued", "deferred") else None,
        "last_attempt_at": iso(r["last_attempt_at"]),
        "last_reply": r["last_reply"],
        "relay": r["relay"],
        "notify": r["notify"],
        "orcpt": r["orcpt"],
    }


def message_line(info: MessageInfo) -> str:
    """mailq style: id, size, time, sender; then one indented line per recipient, and (for one
    message's view) its history: what the hooks did, why it was held."""
    flag = "!" if info.held else " "
    head = f"{info.id}{flag} {info.size:>8} {iso(info.submitted_at)}  <{info.sender}>"
    lines = [head]
    for r in info.recipients:
        reply = f"  ({r['last_reply']})" if r["last_reply"] and r["status"] != "delivered" else ""
        lines.append(f"    {r['status']:<9} {r['address']}{reply}")
    if info.copy_of is not None:
        lines.append(f"    copy of {info.copy_of}" + (f" for {info.copy_for}" if info.copy_for else ""))
    for c in info.copies or ():
        lines.append(f"    copy {c['id']} in {c['mailbox']} ({c['folder']}) for {c['recipient']}")
    for h in info.history or ():
        who = f"{h['stage']} hook {h['hook']}" if h["hook"] else h["stage"]
        lines.append(f"  {iso(h['time'])} {who}: {h['outcome']}" + (f" ({h['detail']})" if h["detail"] else ""))
    return "\n".join(lines)


def token_json(token: Token) -> dict[str, Any]:
    return {"id": token.id, "name": token.name, "scopes": sorted(token.scopes), "created_at": iso(token.created_at)}


def user_json(user: User) -> dict[str, Any]:
    return {"name": user.name, "senders": list(user.senders), "created_at": iso(user.created_at)}


def user_line(user: User) -> str:
    senders = " ".join(user.senders) or "(own address and domain)"
    return f"{user.name:<32} senders {senders:<32} created {iso(user.created_at)}"


def token_line(token: Token) -> str:
    return f"{token.id}  {token.name:<20} {' '.join(sorted(token.scopes)):<18} created {iso(token.created_at)}"


def suppression_json(entry: Suppression) -> dict[str, Any]:
    return {"address": entry.address, "reason": entry.reason, "source": entry.source,
            "created_at": iso(entry.created_at), "until": iso(entry.until), "message_id": entry.message_id}


def suppression_line(entry: Suppression) -> str:
    until = iso(entry.until) or "until removed"
    return f"{entry.address}  {entry.source:8}  {until}  {entry.reason}"
