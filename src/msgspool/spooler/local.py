"""Local delivery with inbound hooks (MAPI: the spooler hook between transport and store; Postfix's
local(8)): each local recipient's copy goes through the inbound hooks, and what they decide becomes
the recipient's outcome — filed into one or more folders, discarded, rejected (an NDR follows),
held (a hook failed), plus the messages they send on (forwards, auto-replies), which the store
submits in the same step as the outcome.

Without inbound hooks none of this runs: intake files local mail at submission, in the same commit.

A recipient a mailbox transport delivers (a maildir, transports/maildir.py) goes through the same
hooks; its copies are then filed by that transport (`file_copy`) instead of the store. A copy it
cannot write decides the recipient's outcome (temporary: deferred, the scheduler times the retry;
permanent: failed), and nothing is sent on; copies written before it stay, so a retry of a
recipient with several `File` actions may write those again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from msgspool.domain.address import mailbox_key
from msgspool.domain.content import delivered_to
from msgspool.domain.dsn import RecipientDSN
from msgspool.domain.hooks import (
    AutoReply,
    Delivery,
    File,
    Forward,
    Hold,
    HookRecord,
    InboundAction,
    Postprocessed,
    Reject,
)
from msgspool.domain.message import Message, Recipient, Settlement
from msgspool.domain.outcome import Filed, Reply
from msgspool.domain.recipient import Status
from msgspool.domain.routing import LOCAL
from msgspool.errors import SubmitError
from msgspool.ports import MailboxTransport
from msgspool.spooler.hooks import Postprocessor
from msgspool.spooler.intake import Intake, Submission

log = logging.getLogger("msgspool.local")
NEVER = RecipientDSN(frozenset())  # what a hook sends on asks for no reports


class LocalDelivery:
    def __init__(self, intake: Intake, postprocessor: Postprocessor, clock: Callable[[], float] = time.time, *,
                 answer_once: Callable[[tuple[str, ...], float, float], Awaitable[bool]] | None = None,
                 mailbox_transports: Mapping[str, MailboxTransport] | None = None) -> None:
        self.intake, self.postprocessor, self.clock = intake, postprocessor, clock
        self.answer_once = answer_once  # the store's (Mailboxes.answer_once): auto-replies sent once a period
        self.mailbox_transports = dict(mailbox_transports or {})

    def takes(self, transport: str | None) -> bool:
        """Whether recipients of this transport come here (the store's mailboxes, or a maildir's)."""
        return transport == LOCAL or transport in self.mailbox_transports

    async def deliver(self, message: Message, recipients: Sequence[Recipient]) -> list[Settlement]:
        return [await self._one(message, r) for r in recipients]

    async def _one(self, message: Message, r: Recipient) -> Settlement:
        # The store's mailbox is the route's nexthop; a maildir's nexthop is the domain.
        mailbox = mailbox_key(r.address) if r.transport in self.mailbox_transports else (r.nexthop or r.address)
        if delivered_to(message.content, r.address):  # Postfix local(8)'s loop check
            return Settlement(message.id, r.index, r.address, Status.FAILED, Reply(
                554, "5.4.6", f"mail forwarding loop for <{r.address}>"), dsn=r.dsn, transport=r.transport,
                nexthop=r.nexthop)
        result = await self.postprocessor.run(Delivery(message.id, mailbox, r.address, message.sender, message.content,
                                                       message.message_class))
        if result.verdict is None:
            await self._once(result)
        base = Settlement(message.id, r.index, r.address, Status.DELIVERED, None, dsn=r.dsn,
                          transport=r.transport, nexthop=r.nexthop, history=tuple(result.history))
        if isinstance(result.verdict, Reject):
            base.status, base.reply = Status.FAILED, result.verdict.reply
        elif isinstance(result.verdict, Hold):
            base.status, base.reply = Status.HELD, Reply(451, "4.3.0", result.verdict.reason)
        else:
            try:
                outside = self.mailbox_transports.get(r.transport or "")
                if outside is None:
                    self._file(message, r, result, base)
                else:
                    await self._file_outside(outside, message, r, result, base)
            except Exception as err:  # uncaught, it would leave the recipient active, its history silent
                self._unfiled(message, r, result, base, err)
        return base

    async def _once(self, result: Postprocessed) -> None:
        """Drop the auto-replies whose key was answered within their period (a vacation, RFC
        5230 §4.2). Asked before the outcome commits: a crash in between costs a reply, never
        sends one twice."""
        delivery = result.delivery
        if self.answer_once is None or not any(isinstance(a, AutoReply) and a.once for a in delivery.actions):
            return
        kept: list[InboundAction] = []
        for action in delivery.actions:
            if (isinstance(action, AutoReply) and action.once is not None
                    and not await self.answer_once(action.once, self.clock(), action.period)):
                result.history.append(HookRecord("", "skipped", f"auto-reply to {action.to}: already"
                                                 f" answered within {action.period:g} s"))
                continue
            kept.append(action)
        delivery.actions = kept

    def _file(self, message: Message, r: Recipient, result: Postprocessed, base: Settlement) -> None:
        now, delivery = self.clock(), result.delivery
        files = [a for a in delivery.actions if isinstance(a, File)]
        base.copies = tuple(self._copy(message, r, delivery, f, now) for f in files)
        self._done(message, r, delivery, files, base, now, f"mailbox {r.nexthop}")

    async def _file_outside(self, transport: MailboxTransport, message: Message, r: Recipient,
                            result: Postprocessed, base: Settlement) -> None:
        delivery = result.delivery
        files = [a for a in delivery.actions if isinstance(a, File)]
        content = delivery.with_added_headers()
        filed: list[Filed] = []
        for action in files:
            reply = await transport.file_copy(message, r, content, folder=action.folder, flags=action.flags)
            if not isinstance(reply, Filed):
                base.status = Status.DEFERRED if reply.temporary else Status.FAILED
                base.reply = reply
                return
            filed.append(reply)
        base.filed = tuple(filed)
        self._done(message, r, delivery, files, base, self.clock(), f"maildir of {mailbox_key(r.address)}",
                   folders=[f.folder for f in filed])

    def _done(self, message: Message, r: Recipient, delivery: Delivery, files: list[File], base: Settlement,
              now: float, where: str, folders: Sequence[str] | None = None) -> None:
        """What a recipient filed (or discarded) sends on, and its reply."""
        base.spawn = tuple(m for m in (self._spawn(message, r, a, now) for a in delivery.actions) if m is not None)
        names = ", ".join(folders if folders is not None else [f.folder or "inbox" for f in files])
        done = f"delivered to {where} ({names})" if files else f"discarded for {where}"
        sent = [a.address if isinstance(a, Forward) else f"auto-reply to {a.to}" for a in delivery.actions
                if isinstance(a, Forward | AutoReply)]
        base.reply = Reply(250, "2.0.0", done + (f"; forwarded to {', '.join(sent)}" if sent else ""))

    def _unfiled(self, message: Message, r: Recipient, result: Postprocessed, base: Settlement,
                 err: Exception) -> None:
        """The hooks' answer passed judge_inbound yet could not be carried out: it is the error of the
        hook that last changed the delivery (as if it had raised), and the recipient is held with
        it until the hook is fixed and `queue release` runs the hooks again."""
        hook = next((h.hook for h in reversed(result.history) if h.outcome == "changed"), "")
        error = f"could not carry out its answer: {type(err).__name__}: {err}"
        who = f"inbound hook {hook}" if hook else "the inbound hooks"
        log.warning("%s: %s failed for <%s>: %s; held", message.id, who, r.address, error)
        base.status, base.reply = Status.HELD, Reply(451, "4.3.0", f"{who} failed: {error}")
        base.copies, base.spawn = (), ()
        base.history = (*base.history, HookRecord(hook, "error", error))

    def _copy(self, message: Message, r: Recipient, delivery: Delivery, action: File, now: float) -> Message:
        copy = self.intake.local_copy(message, r, now, folder=action.folder or "", flags=action.flags,
                                      added_headers=delivery.added_headers)
        if delivery.content != message.content:  # a hook changed it (e.g. removed forged headers)
            copy.content, copy.own_content = delivery.content, True
        return copy

    def _spawn(self, message: Message, r: Recipient, action: object, now: float) -> Message | None:
        """A forward keeps the envelope sender (RFC 5228 §4.2), so a failure goes back to it, and
        carries Delivered-To, so a forwarding loop is seen; an auto-reply has the null sender."""
        if isinstance(action, Forward):
            content = f"Delivered-To: {r.address}\r\n".encode() + message.content
            sub = Submission(message.sender, [action.address], content, origin="forward",
                             meta={"forwarded_from": message.id})
        elif isinstance(action, AutoReply):
            sub = Submission("", [action.to], action.content, origin="auto-reply",
                             meta={"in_reply_to": message.id}, recipient_dsn=[NEVER])
        else:
            return None
        try:
            built, _copies = self.intake.build(sub, now, route=False)
        except SubmitError as err:
            log.warning("%s: an inbound hook's %s not sent: %s", message.id, type(action).__name__, err.reply.line())
            return None
        return built
