"""Spooler events: every state change a client may want to hear about (MAPI fnevNewMail and more).

An event is plain data. The store writes it in the same transaction as the change it describes
(so a client that resumes from an event id misses nothing); the runtime then publishes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    SUBMITTED = "submitted"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    FAILED = "failed"
    EXPIRED = "expired"
    HELD = "held"
    REPORT = "report"
    READ = "read"  # a mailbox message was marked read or unread (detail: read)
    NEW_MAIL = "new_mail"
    TRANSPORT_STATUS = "transport_status"


@dataclass(slots=True)
class Event:
    type: EventType
    message_id: str | None
    time: float
    recipient: str | None = None
    mailbox: str | None = None
    folder: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    id: int | None = None  # assigned by the store

    def to_json(self) -> dict[str, Any]:
        from msgspool.domain.timefmt import iso

        out: dict[str, Any] = {"id": self.id, "type": str(self.type), "message_id": self.message_id,
                               "time": iso(self.time)}
        if self.recipient is not None:
            out["recipient"] = self.recipient
        if self.mailbox is not None:
            out["mailbox"] = self.mailbox
        if self.folder is not None:
            out["folder"] = self.folder
        out.update(self.detail)
        return out


def event_to_wire(event: Event) -> dict[str, Any]:
    """Lossless plain form, for passing events between processes."""
    return {"type": str(event.type), "message_id": event.message_id, "time": event.time,
            "recipient": event.recipient, "mailbox": event.mailbox, "folder": event.folder,
            "detail": event.detail, "id": event.id}


def event_from_wire(data: dict[str, Any]) -> Event:
    return Event(EventType(data["type"]), data["message_id"], data["time"], recipient=data["recipient"],
                 mailbox=data["mailbox"], folder=data["folder"], detail=data["detail"], id=data["id"])
