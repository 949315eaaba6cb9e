"""The exception tree. Every error that ends up in front of a client carries its reply.

    MsgspoolError
    ├── ConfigError                a bad setting: the CLI prints it and exits 2
    ├── SpoolError                 the spool cannot be opened or is locked by another daemon
    │   └── NoSpool                no spool was ever made there, and the caller asked not to
    │                              make one (Store.open(create=False)): the CLI's "no spool at"
    ├── StorageFull(reply)         a store write failed for lack of space (SQLITE_FULL, ENOSPC, an
    │                              I/O error on a file system with no room left): ``452 4.3.1``
    │                              over SMTP, 507 over HTTP, EX_TEMPFAIL from sendmail
    ├── NotFound                   an unknown message id
    │   └── UnknownTransport       an unknown transport name (`transport offline`, `flush --transport`)
    ├── NothingToResend            `queue resend` of a message none of whose recipients failed
    ├── UnableToAbort              delete/hold of a message a transport has in flight (MAPI
    │                              AbortSubmit's MAPI_E_UNABLE_TO_ABORT): what was done, what was not
    ├── SubmitError(reply)         a submission refused: bad address, no recipients, too big
    ├── DestinationUnavailable(reply)
    │                              a transport could not reach its next hop at the connection
    │                              level; the scheduler marks the destination down
    └── FetchError                 a fetch account's session failed (connection, TLS, a protocol
        └── LoginRefused           error); the account backs off and polls again; the server
                                   refused the user or password (the log says which account)
"""

from __future__ import annotations

from msgspool.domain.outcome import Reply


class MsgspoolError(Exception):
    pass


class ConfigError(MsgspoolError):
    pass


class SpoolError(MsgspoolError):
    pass


class NoSpool(SpoolError):
    pass


# RFC 3463 4.3.1 "Mail system full", in the words of RFC 5321's 452 (and Postfix's).
INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Insufficient system storage")


class StorageFull(MsgspoolError):
    """Nothing of the write was stored; the same write succeeds once there is room again."""

    def __init__(self, cause: str = "") -> None:
        super().__init__(f"{INSUFFICIENT_STORAGE.line()}: {cause}" if cause else INSUFFICIENT_STORAGE.line())
        self.reply = INSUFFICIENT_STORAGE


class NotFound(MsgspoolError):
    pass


class UnknownTransport(NotFound):
    """str(): the whole sentence ("no transport X (known: a, b)"), not only the name."""


class NothingToResend(MsgspoolError):
    """str(): the whole sentence, with the message id."""


class UnableToAbort(MsgspoolError):
    """`done`: the ids the operation took whole; `in_flight`: per message, the recipients a
    transport has in a transaction (they go on); `cancelled`: per message, the recipients that
    were cancelled (delete) or held (hold) although others of it were in flight."""

    def __init__(self, action: str, done: list[str], in_flight: dict[str, list[str]],
                 cancelled: dict[str, list[str]]) -> None:
        super().__init__(f"unable to {action}: in flight")
        self.action, self.done, self.in_flight, self.cancelled = action, done, in_flight, cancelled

    def detail(self) -> dict[str, object]:
        return {"ids": self.done, "in_flight": self.in_flight, "cancelled": self.cancelled}


class SubmitError(MsgspoolError):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.line())
        self.reply = reply


class DestinationUnavailable(MsgspoolError):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.line())
        self.reply = reply


class AlreadyFetched(MsgspoolError):
    """A fetched message whose id on its server is recorded already: another node filed it
    (two nodes of a shared spool polling one account), so this submission stored nothing."""


class FetchError(MsgspoolError):
    pass


class LoginRefused(FetchError):
    pass
