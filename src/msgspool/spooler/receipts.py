"""Read receipts (MAPI IMAPISupport::ReadReceipt, IPNRN / IPNNRN; RFC 8098 MDNs): when a message
filed into a local mailbox is marked read, or deleted unread, through the API and it asked for an
MDN (Disposition-Notification-To), this module writes the MDN and hands it to the store with the
change, which records it and submits it in one step (so a crash neither loses nor doubles it).

What the request allows is domain/mdn.py's decision; the policy here:

* ``consent`` is the user's answer to "send a read receipt?": True agrees (needed when the request
  is not plainly the sender's own, RFC 8098 §2.1), False refuses (recorded as ``suppressed``: no
  MDN for this message ever, MAPI SetReadFlag SUPPRESS_RECEIPT), None (nobody asked the user)
  sends only where no consent is needed, and records nothing, so a later request with consent
  may still send it.
* Marked read: ``manual-action/MDN-sent-manually; displayed``. Deleted unread:
  ``automatic-action/MDN-sent-automatically; deleted`` (the MAPI nonread report). Marking unread
  never sends anything, and a message is answered at most once, whatever happens to it later.
* Only messages filed into a mailbox are answered — not the outbox or Sent Items, not the
  spool's own mail, never a report. The MDN goes from the mailbox (its Final-Recipient) to the
  requested addresses with the null sender, through intake like any message: filed at once into
  a local requester's mailbox (class ``REPORT.IPM.Note.IPNRN`` / ``.IPNNRN``), queued for a
  remote one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from msgspool.domain.events import Event, EventType
from msgspool.domain.mdn import Disposition, MDNRequest, compose_mdn, may_send_mdn, mdn_class, mdn_request
from msgspool.domain.message import OUTBOX, SENT, SPOOL_MAILBOX, Message, MessageInfo, ReadReceipt
from msgspool.errors import SubmitError
from msgspool.ports import Mailboxes
from msgspool.spooler.intake import Intake, Submission

log = logging.getLogger("msgspool.reports")


class Receipts:
    def __init__(self, store: Mailboxes, intake: Intake, *, hostname: str,
                 publish: Callable[[Sequence[Event]], None], deliver: Callable[[Message], None],
                 routing: Callable[[], bool], clock: Callable[[], float] = time.time) -> None:
        self.store, self.intake, self.hostname = store, intake, hostname
        self.publish, self.deliver, self.routing, self.clock = publish, deliver, routing, clock

    async def mark_read(self, ids: Sequence[str], read: bool, consent: bool | None) -> list[str]:
        """Set or clear the read flag of existing messages, answering the read receipts that marking
        them read owes; returns the queue ids of the MDNs submitted."""
        now = self.clock()
        receipts: list[ReadReceipt] = []
        plain: list[str] = []
        for message_id in ids:
            receipt = await self.receipt(message_id, Disposition.DISPLAYED, consent) if read else None
            if receipt is None:
                plain.append(message_id)
            else:
                receipts.append(receipt)
        events = [e for r in receipts for e in await self.store.send_receipt(r, now)]
        if plain:
            events += await self.store.set_read(plain, read, now)
        return self._submitted(receipts, events)

    async def delete(self, ids: Sequence[str], consent: bool | None) -> list[str]:
        """Delete those of `ids` that are unread and owe a receipt, with their MDN (the rest is the
        caller's to delete); returns the ids it deleted."""
        now = self.clock()
        # One read for them all: of a bulk delete's chunk of outbox mail none owes a receipt.
        owing = [info.id for info in await self.store.messages(ids) if _answerable(info, Disposition.DELETED)]
        receipts = [r for r in [await self.receipt(i, Disposition.DELETED, consent) for i in owing] if r is not None]
        events = [e for r in receipts for e in await self.store.send_receipt(r, now)]
        self._submitted(receipts, events)
        return [r.message_id for r in receipts]

    async def receipt(self, message_id: str, disposition: Disposition, consent: bool | None) -> ReadReceipt | None:
        """The receipt this disposition of the message owes, or None when it owes none (yet)."""
        info = await self.store.get(message_id)
        if info is None or not _answerable(info, disposition):
            return None
        content = await self.store.content(message_id)
        request = mdn_request(content) if content is not None else None
        if content is None or request is None:
            return None
        if consent is False:
            return ReadReceipt(message_id, disposition, None)
        if not may_send_mdn(request, user_consents=bool(consent)):
            log.info("%s: MDN to %s not sent: %s", message_id, ",".join(request.notify_to),
                     "an unknown required option" if request.unknown_required_option else "needs the user's consent")
            return None
        return self._compose(info, content, request, disposition)

    def _compose(self, info: MessageInfo, content: bytes, request: MDNRequest,
                 disposition: Disposition) -> ReadReceipt | None:
        body = compose_mdn(request, content, final_recipient=info.mailbox, disposition=disposition,
                           reporting_host=self.hostname, now=self.clock())
        sub = Submission(sender="", recipients=list(request.notify_to), content=body, origin="mdn",
                         message_class=mdn_class(disposition, info.message_class))
        try:
            mdn, copies = self.intake.build(sub, route=self.routing())
        except SubmitError as err:  # e.g. a Disposition-Notification-To address intake will not take
            log.warning("%s: MDN to %s refused: %s", info.id, ",".join(request.notify_to), err.reply.line())
            return None
        return ReadReceipt(info.id, disposition, mdn, copies)

    def _submitted(self, receipts: Sequence[ReadReceipt], events: list[Event]) -> list[str]:
        """Publish what the store recorded; hand on the MDNs it took (it skips one whose message was
        answered meanwhile)."""
        self.publish(events)
        taken = {e.detail["report_id"] for e in events if e.type is EventType.REPORT}
        sent = [r.mdn for r in receipts if r.mdn is not None and r.mdn.id in taken]
        for mdn in sent:
            log.info("%s: MDN %s (%s) to %s", _original(receipts, mdn), mdn.id, mdn.message_class,
                     ",".join(r.address for r in mdn.recipients))
            self.deliver(mdn)
        return [mdn.id for mdn in sent]


def _answerable(info: MessageInfo, disposition: Disposition) -> bool:
    """A message filed into a mailbox, not yet answered, not a report; deleted: only while unread."""
    if info.mailbox == SPOOL_MAILBOX or info.folder in (OUTBOX, SENT) or info.mdn is not None:
        return False
    if info.message_class.upper().startswith("REPORT."):
        return False
    return disposition is Disposition.DISPLAYED or not info.read


def _original(receipts: Sequence[ReadReceipt], mdn: Message) -> str:
    return next(r.message_id for r in receipts if r.mdn is mdn)
