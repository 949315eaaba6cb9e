"""logs.py: the JSON log's objects, and log_format's values."""

from __future__ import annotations

import json
import logging

import pytest

from msgspool.config import Settings
from msgspool.errors import ConfigError
from msgspool.logs import JSONFormatter, fields, formatter


def record(message: str, *args: object, extra: dict[str, object] | None = None,
           exc_info: object = None) -> logging.LogRecord:
    made = logging.getLogger("msgspool.test").makeRecord("msgspool.test", logging.WARNING, __file__, 1, message,
                                                        args, exc_info, extra=extra)
    made.created = 0.25
    return made


def test_a_plain_record_is_time_level_logger_message() -> None:
    entry = json.loads(JSONFormatter().format(record("%s: destination down", "smtp:relay")))
    assert entry == {"time": "1970-01-01T00:00:00.250Z", "level": "warning", "logger": "msgspool.test",
                     "message": "smtp:relay: destination down", "pid": entry["pid"]}


def test_fields_become_members_and_a_traceback_one_member() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        made = record("x", extra=fields(queue_id="Q1", delay=0.5), exc_info=sys.exc_info())
    line = JSONFormatter().format(made)
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["queue_id"], entry["delay"]) == ("Q1", 0.5)
    assert "ValueError: bad" in entry["exception"]


def test_log_format_is_text_or_json() -> None:
    assert Settings().log_format == "text"
    assert isinstance(formatter("text"), logging.Formatter) and not isinstance(formatter("text"), JSONFormatter)
    settings = Settings()
    settings.merge({"log_format": "json"}, "test")
    assert isinstance(formatter(settings.log_format), JSONFormatter)
    with pytest.raises(ConfigError, match="log_format"):
        settings.merge({"log_format": "xml"}, "test")
