"""The typed shapes of the HTTP API: what each route takes and answers (web/routes.py declares
which), and from which the OpenAPI 3.1 document is generated (web/openapi.py).

Pydantic v2, because its JSON Schema output is draft 2020-12, the dialect OpenAPI 3.1 uses as it
is (no translation layer to drift), and because its validation runs in compiled code: every JSON
answer is checked, strictly, against its route's model on the way out (web/routes.py; of a long
list, its first 100 items), so what the document says is what is sent, and an answer that strays
from it is a 500 a test sees, not a silent drift.
msgspec would be faster still but its schemas need more hand work for 3.1; dataclasses have no
schema generator of their own.

The answers keep the field names of DESIGN.md's contract and of `queue list --json` (views.py
builds them; the models only check and describe them). Models of answers allow members they do
not name (`extra="allow"`): a field added to views.py reaches clients at once, and the drift test
(tests/unit/test_openapi.py) asks that it be named here too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["queued", "active", "deferred", "delivered", "failed", "held", "expired", "cancelled"]
RecipientStatus = Literal["queued", "active", "deferred", "held", "delivered", "failed", "expired"]  # domain Status
Time = str | None  # ISO 8601 UTC, as views.py writes them ("2026-12-01T08:00:00Z"); None: not set


class Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class Problem(BaseModel):
    """RFC 9457 problem details, as every error answer of the API is (web/problems.py)."""

    model_config = ConfigDict(extra="allow", title="Problem")
    type: str = Field("about:blank", description="always about:blank: the status says what happened")
    title: str
    status: int
    detail: str = ""
    field: str | None = Field(None, description="the member or parameter of the request at fault")


class RecipientView(Answer):
    address: str
    addrtype: str = Field(description='the address type, "SMTP" for an email address (MAPI PR_ADDRTYPE)')
    type: str = Field(description="to, cc or bcc")
    transport: str | None
    destination: str | None
    status: str = Field(description="queued, active, deferred, delivered, failed, held or expired")
    attempts: int
    next_attempt_at: Time
    last_attempt_at: Time
    last_reply: str | None
    relay: str | None
    notify: str | None
    orcpt: str | None


class HistoryEntry(Answer):
    time: Time
    stage: str
    hook: str | None = None
    outcome: str
    detail: str | None = None


class CopyLink(Answer):
    """A copy of a submission filed in a local mailbox (the one id story: issue 13.2)."""

    id: str
    mailbox: str
    folder: str
    recipient: str | None


class MessageView(Answer):
    """A message of any folder, as `queue list --json` and `queue show --json` print it."""

    id: str
    sender: str
    subject: str | None = Field(description="the Subject, decoded (at most 200 characters); null: none, or"
                                            " stored before msgspool kept subjects")
    size: int
    submitted_at: Time
    finished_at: Time
    mailbox: str
    folder: str
    message_class: str
    priority: int
    held: bool
    origin: str
    deliver_after: Time
    expires_at: Time
    max_attempts: int | None
    ret: str | None
    envid: str | None
    read: bool
    flags: list[str]
    mdn: str | None
    resend_of: str | None
    copy_of: str | None = Field(description="a copy filed in a local mailbox: the queue id of the message it copies")
    copy_for: str | None = Field(description="a copy filed in a local mailbox: the recipient it was filed for")
    recipients: list[RecipientView]
    history: list[HistoryEntry] | None = Field(None, description="only in one message's view: hooks, holds, ...")
    resends: list[str] | None = Field(None, description="only in one message's view: the messages resending it")
    copies: list[CopyLink] | None = Field(None, description="only in one message's view: its copies filed in"
                                                            " local mailboxes")


class MessagePage(Answer):
    """A page of a listing; `next_cursor` asks for the next one (null: this was the last)."""

    messages: list[MessageView]
    next_cursor: str | None


class EventView(Answer):
    id: int | None
    type: str
    message_id: str | None = None
    time: Any = None


class EventPage(Answer):
    events: list[EventView]
    next_cursor: str | None


class MessageEvents(Answer):
    """One message's history as events: its submission, every attempt of each recipient with its
    reply (deferred, delivered, failed), holds, reports; `recipients` groups them by address."""

    message_id: str
    events: list[EventView]
    recipients: dict[str, list[EventView]]
    next_cursor: str | None


class Folders(Answer):
    mailbox: str
    folders: list[str]


class MailboxView(Answer):
    address: str
    created_at: float = Field(description="when it came to exist (its first message or setting), Unix time")
    folders: list[str] = Field(description="the folders holding its messages (GET .../folders/{folder}/messages)")


class MailboxPage(Answer):
    """A page of the mailboxes by address; `next_cursor` asks for the next one (null: the last)."""

    mailboxes: list[MailboxView]
    next_cursor: str | None


class Attachment(Answer):
    index: int = Field(description="its number in GET .../attachments/{index}, from 0")
    filename: str | None
    content_type: str
    size: int = Field(description="decoded, in bytes")


HeaderField = Annotated[list[str], Field(min_length=2, max_length=2)]  # [name, value]


class ParsedContent(Answer):
    """A message's content as a mail reader shows it (RFC 5322 headers, MIME parts: RFC 2045/2046)."""

    headers: list[HeaderField] = Field(description="[name, value] in order, RFC 2047 words decoded")
    subject: str | None
    text: str | None = Field(description="the first text/plain part not an attachment")
    html: str | None = Field(description="the first text/html part not an attachment")
    attachments: list[Attachment]


class SubmittedRecipient(Answer):
    address: str
    status: str
    reply: str | None


class FiledCopy(Answer):
    recipient: str | None
    mailbox: str
    id: str


class Submitted(Answer):
    id: str
    recipients: list[SubmittedRecipient]
    copies: list[FiledCopy] = Field(description="the copies filed at once for local recipients, with their ids")


class Submit(BaseModel):
    """POST /api/messages as JSON (the handler's checks, with the API's own words for each refusal,
    are web/submission.py's; this is what they take)."""

    model_config = ConfigDict(extra="allow", title="Submit")
    sender: str = Field("", description='the envelope sender; "" for the null sender')
    recipients: list[str] = Field(min_length=1)
    content: str = Field(description="the RFC 5322 message")
    addrtypes: list[str] | None = Field(None, description='per recipient: its address type, default "SMTP"')
    types: list[Literal["to", "cc", "bcc"]] | None = Field(None, description="per recipient: to, cc or bcc")
    mailbox: str | None = Field(None, description="the mailbox it is sent from (its copy is filed there)")
    message_class: str | None = Field(None, description='MAPI message class, default "IPM.Note"')
    priority: Literal["urgent", "normal", "non-urgent", 1, 0, -1] | None = None
    deliver_after: str | float | None = Field(None, description="ISO 8601 with a zone, or POSIX seconds")
    expires_at: str | float | None = Field(None, description="ISO 8601 with a zone, or POSIX seconds")
    max_attempts: int | None = Field(None, ge=0, description="0: no cap")


class FlushRoute(BaseModel):
    model_config = ConfigDict(extra="allow", title="FlushRoute")
    transport: str | None = Field(None, min_length=1)
    destination: str | None = Field(None, min_length=1)


class ReadConsent(BaseModel):
    model_config = ConfigDict(extra="allow", title="ReadConsent")
    mdn: bool | None = Field(None, description="whether the user agrees to send the read receipt asked for")


class BulkAction(BaseModel):
    """POST /api/queue/actions (spooler/bulk.py; the selector's terms are domain/selector.py's)."""

    model_config = ConfigDict(extra="allow", title="BulkAction")
    action: Literal["hold", "release", "delete", "flush", "requeue"]
    where: str | dict[str, str | int | float] = Field(
        description='a selector: "destination=HOST,sender=ADDR,status=S,older-than=1h" or {term: value}')
    dry_run: bool = Field(False, description="only count (and list) the messages it matches")


class BulkResult(Answer):
    ok: bool
    action: str
    where: Any
    dry_run: bool
    matched: int
    count: int | None = Field(None, description="the messages acted on (absent in a dry run)")
    ids: list[str] | None
    in_flight: dict[str, list[str]] | None = None
    flushed: int | None = None


class Flushed(Answer):
    ok: bool
    flushed: int


class Done(Answer):
    """hold, release, requeue, delete: the ids found (under the action's name)."""

    ok: bool


class ReadTarget(Answer):
    id: str
    mailbox: str


class ReadAnswer(Answer):
    ok: bool
    read: bool
    targets: list[ReadTarget] = Field(description="the mailbox messages it marked: the message itself, or for a"
                                                  " submission's queue id its local copies")
    mdn: list[str] = Field(description="the queue ids of the read receipts sent")


class Resent(Answer):
    ok: bool
    id: str
    resend_of: str
    recipients: list[Any]
    skipped: list[str] = Field(default_factory=list, description="failed commands and files of the aliases file:"
                                                                  " not resent (only that file may name them)")


class TransportState(Answer):
    ok: bool
    transport: str
    status: str
    changed: bool
    released: int


class FetchPolled(Answer):
    ok: bool
    accounts: int = Field(description="the fetch accounts that poll now")


class StatusTable(Answer):
    """MAPI's status table: the spooler's row, one per transport with its destinations, one per
    listener (SMTP, HTTP, the sendmail intake), the fetch accounts, the delivery nodes, and the
    queue's counts by status. Every row has status, inbound, outbound, counts, status_string and
    status_code (domain/status.py)."""

    spooler: dict[str, Any]
    transports: list[dict[str, Any]]
    listeners: list[dict[str, Any]]
    fetch: list[dict[str, Any]]
    nodes: list[dict[str, Any]]
    queue: dict[str, int]


class SuppressionView(Answer):
    address: str
    reason: str
    source: str
    created_at: Time
    until: Time
    message_id: str | None


class NewSuppression(BaseModel):
    model_config = ConfigDict(extra="allow", title="NewSuppression")
    address: str
    reason: str = ""
    until: str | float | None = Field(None, description="ISO 8601 with a zone, or POSIX seconds")
    days: float | None = Field(None, ge=0, le=36500, description="0: until removed")


class Unsuppressed(Answer):
    ok: bool
    address: str
