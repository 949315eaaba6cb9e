"""The LMTP dialect of the SMTP client (RFC 2033): the wire half of the LMTP transport.

LMTP is SMTP with three differences, and only those are here; the lines, replies, pipelining,
timeouts and extensions are smtp_client.py's:

* §4.1: the session opens with LHLO; a server refuses HELO and EHLO, so there is no fallback.
* §4.2: after the content's final dot the server answers once per recipient whose RCPT it
  accepted, in RCPT order: each recipient has its own outcome (one mailbox may be full while the
  next takes the mail). A connection lost after some of those replies leaves the rest unknown:
  they are deferred, and those already answered keep their answer (a delivered one is not sent
  twice).
* §4.2 also says DATA fails (503) when no RCPT succeeded; a server that answers 354 anyway gets
  the connection closed, since how many replies an empty message would earn is not defined.

It connects over TCP (no port of its own: 24 is Postfix's default) or to a Unix socket, which is
how Dovecot, Cyrus and most local delivery agents listen. No TLS: LMTP is for a trusted local hop.
"""

from __future__ import annotations

import asyncio

from msgspool.domain.outcome import CONNECTION_TIMEOUT, Reply
from msgspool.transports.smtp_client import ClientTimeouts, SMTPClient, SMTPConnectionError, TransactionResult
from msgspool.transports.smtp_security import CLEAR

UNIX = "unix:"  # a next hop that is a socket path: ``unix:/run/dovecot/lmtp``


class LMTPClient(SMTPClient):
    """One LMTP session; reuse it for several transactions while `usable`."""

    HELLO = "LHLO"
    HELO_FALLBACK = False

    @classmethod
    async def connect_unix(cls, path: str, *, helo_name: str,
                           timeouts: ClientTimeouts) -> LMTPClient:
        """Open a session over the Unix socket at `path`."""
        try:
            async with asyncio.timeout(timeouts.connect):
                reader, writer = await asyncio.open_unix_connection(path)
        except TimeoutError:
            raise SMTPConnectionError(CONNECTION_TIMEOUT) from None
        except OSError as err:  # refused, no such socket, no permission: the destination is down
            raise SMTPConnectionError(Reply(421, "4.4.1", f"connect to {UNIX}{path}: {err.strerror or err}")) \
                from None
        client = cls(reader, writer, timeouts, f"{UNIX}{path}")
        client.host = path
        return await client._opened(helo_name, CLEAR)

    async def _deliver_content(self, mail: Reply, rcpts: list[Reply], wire: bytes) -> TransactionResult:
        await self._write_content(wire)
        accepted = sum(rcpt.ok for rcpt in rcpts)
        finals: list[Reply] = []
        try:
            for _ in range(accepted):
                finals.append(await self._read(self.timeouts.data_done, "receiving the replies to end of DATA"))
        except SMTPConnectionError as err:
            if not finals:
                raise  # nothing is known of any recipient: the whole message is retried
            finals += [err.reply] * (accepted - len(finals))
        return TransactionResult(mail, rcpts, finals[-1], finals)

    async def _end_empty_data(self) -> None:
        self.close()
