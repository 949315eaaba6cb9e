"""Queue ids: sortable by submission time, unique across processes and machines, never reused
(Postfix warns that its reused queue ids can make `postsuper -d` hit the wrong message).

Format: 10 Crockford base-32 digits of milliseconds since the epoch, then 8 of randomness (40 bits):
``0JXQ8B1T6ZK4M7P2RD``.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _b32(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_id(now: float | None = None) -> str:
    ms = int((now if now is not None else time.time()) * 1000)
    return _b32(ms, 10) + _b32(int.from_bytes(os.urandom(5), "big"), 8)


def id_floor(t: float) -> str:
    """The least id of a message whose id was made at time `t` (ids compare as strings)."""
    return _b32(max(0, int(t * 1000)), 10)
