"""Reading a message's header section as bytes: the priority it asks for."""

from __future__ import annotations

import pytest

from msgspool.domain.content import header_priority


@pytest.mark.parametrize(("header", "expected"), [
    (b"Priority: urgent", 1), (b"Priority: non-urgent", -1), (b"priority: Normal", 0),
    (b"X-Priority: 1 (Highest)", 1), (b"X-Priority: 2", 1), (b"X-Priority: 3", 0), (b"X-Priority: 5 (Lowest)", -1),
    (b"Importance: high", 1), (b"Importance: low", -1), (b"Subject: Priority: urgent", None),
])
def test_the_header_priority_is_read_from_priority_x_priority_and_importance(header: bytes,
                                                                             expected: int | None) -> None:
    assert header_priority(b"From: a@example.org\r\n" + header + b"\r\n\r\nPriority: urgent\r\n") == expected
