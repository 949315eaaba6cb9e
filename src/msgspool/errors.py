"""The exception tree. Every error that ends up in front of a client carries its reply.

    MsgspoolError
    ├── ConfigError                a bad setting: the CLI prints it and exits 2
    ├── SpoolError                 the spool cannot be opened or is locked by another daemon
    ├── NotFound                   an unknown message id
    ├── SubmitError(reply)         a submission refused: bad address, no recipients, too big
    └── DestinationUnavailable(reply)
                                   a transport could not reach its next hop at the connection
                                   level; the scheduler marks the destination down
"""

from __future__ import annotations

from msgspool.domain.outcome import Reply


class MsgspoolError(Exception):
    pass


class ConfigError(MsgspoolError):
    pass


class SpoolError(MsgspoolError):
    pass


class NotFound(MsgspoolError):
    pass


class SubmitError(MsgspoolError):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.line())
        self.reply = reply


class DestinationUnavailable(MsgspoolError):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.line())
        self.reply = reply
