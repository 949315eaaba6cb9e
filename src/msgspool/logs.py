"""How the daemon's two processes write their log (setting `log_format`, issue 13.6).

``text`` (the default): one line per event, ``TIME msgspool[PID]: MESSAGE``, the delivery line in
Postfix's words (``ID: to=<rcpt>, relay=..., delay=..., delays=a/b/c/d, dsn=..., status=sent (reply)``).

``json``: one JSON object per line per event, for a log shipper: always ``time`` (ISO 8601 UTC),
``level``, ``logger``, ``message`` (the text line's message) and ``pid``; a delivery line adds the
fields of the text line (``queue_id``, ``recipient``, ``relay``, ``delay``, ``delays``, ``dsn``,
``status``, ``reply``); a record with a traceback adds ``exception``. A part of msgspool gives a
record its fields with ``log.info(..., extra=fields(...))``.
"""

from __future__ import annotations

import json
import logging
from typing import IO, Any

from msgspool.domain.timefmt import iso

TEXT_FORMAT = "%(asctime)s msgspool[%(process)d]: %(message)s"
FIELDS = "msgspool_fields"  # the LogRecord attribute that carries a record's structured fields


def fields(**values: Any) -> dict[str, Any]:
    """`extra` for a log call whose record carries these fields in the JSON log."""
    return {FIELDS: values}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": iso(record.created), "level": record.levelname.lower(),
                                 "logger": record.name, "message": record.getMessage(), "pid": record.process}
        entry.update(getattr(record, FIELDS, None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    return JSONFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(log_format: str, level: int, stream: IO[str]) -> None:
    """The root logger writes `stream` in `log_format`: `logging.basicConfig` with the formatter
    chosen, and like it a no-op when the root logger has a handler already (an embedding program's)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(log_format))
    root.addHandler(handler)
    root.setLevel(level)
    if log_format == "json":  # a Python warning is a record too, not a line of its own on stderr
        logging.captureWarnings(True)
