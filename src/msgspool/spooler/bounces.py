"""Hard bounces that come back later as mail: an asynchronous DSN (RFC 3464; domain/bounces.py)
received for a message msgspool sent lists the failed address on the suppression list, as a hard
bounce heard in the SMTP session does (spooler/scheduler.py `_settle_remote`).

A report is believed only when it names a message msgspool really handed on to that address:
it arrives from the null sender for a local address, and one of that address's messages of the
last LOOKBACK seconds has the reported recipient `delivered` by a transport whose failures
suppress (`bounces_suppress`: the SMTP transport, not a local one or Dovecot's LMTP), and the
report carries that message's Message-ID (from its returned header) or its ENVID. A report
nobody can tie to such a message changes nothing: anyone may write one.

The verdict must be a hard bounce by domain/suppression.py's rule (5.1.x about the address,
5.2.0/5.2.1, a plain 550/551/553), Action failed: a full mailbox or a policy refusal never suppresses.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from msgspool.domain.bounces import ReceivedReport, ReportedRecipient, message_id_of
from msgspool.domain.suppression import BOUNCE, Suppression, hard_bounce, suppression_key
from msgspool.ports import Store, Transport

log = logging.getLogger("msgspool")
LOOKBACK = 7 * 86400.0  # seconds back a report may be about (Sent keeps a message that long)


async def suppress_from_report(store: Store, transports: Mapping[str, Transport], report: ReceivedReport,
                               owners: Sequence[str], now: float, suppression_time: float) -> list[Suppression]:
    """The entries `report`, received for the local addresses `owners`, puts on the list (written)."""
    added: list[Suppression] = []
    if suppression_time <= 0:
        return added
    for reported in report.recipients:
        if reported.action != "failed" or not hard_bounce(reported.reply):
            continue
        entry = await _entry(store, transports, report, reported, owners, now, suppression_time)
        if entry is not None:
            await store.suppress_bounce(entry)
            log.info("%s: <%s> suppressed: a later report from %s says %s", entry.message_id, entry.address,
                     report.reporting_mta or "a relay", reported.reply.line())
            added.append(entry)
    return added


async def _entry(store: Store, transports: Mapping[str, Transport], report: ReceivedReport,
                 reported: ReportedRecipient, owners: Sequence[str], now: float,
                 suppression_time: float) -> Suppression | None:
    for owner in owners:
        for address in reported.addresses:
            for message_id, transport in await store.relayed_to(owner, address, now - LOOKBACK):
                if not getattr(transports.get(transport), "bounces_suppress", False):
                    continue
                if await _about(store, message_id, report):
                    reason = f"{reported.reply.line()} (reported later by {report.reporting_mta or 'a relay'})"
                    return Suppression(suppression_key(address), reason, now, now + suppression_time, BOUNCE,
                                       message_id)
    return None


async def _about(store: Store, message_id: str, report: ReceivedReport) -> bool:
    """Whether the report names this message: its ENVID, or the Message-ID it was sent with."""
    if report.envid:
        info = await store.get(message_id)
        if info is not None and info.envid and info.envid == report.envid:
            return True
    if not report.message_id:
        return False
    content = await store.content(message_id)
    return content is not None and message_id_of(content) == report.message_id
