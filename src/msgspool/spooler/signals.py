"""Signals: how parts of the runtime that must tell each other something are wired without
holding each other.

Some parts wake each other in a circle — the scheduler's settlements owe reports, the reporter's
reports are mail for the scheduler; the lease tells the scheduler how many nodes share the
destinations, the scheduler asks the lease whether it may start a transaction. The composition
root (wiring.py) makes the signals first and passes each to the constructors of the part that
emits it (which calls it) and of the part that answers it (which connects itself), so every part
gets its collaborators when it is made and none is patched afterwards.

A signal calls its slots at once, in the order they connected, in the caller's thread (the event
loop's): `signal()` is exactly the direct call it replaces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, ParamSpec

P = ParamSpec("P")


class Signal(Generic[P]):
    def __init__(self, name: str) -> None:
        self.name = name
        self._slots: list[Callable[P, object]] = []

    def connect(self, slot: Callable[P, object]) -> None:
        self._slots.append(slot)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for slot in self._slots:
            slot(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Signal({self.name!r}, {len(self._slots)} slots)"
