"""Every change of a recipient's state goes through a domain step (domain/transitions.py, issue
11.1), on every store: the steps are recorded as they are taken while one message goes through
all of them, and each operation takes the step it is about and ends in the states the listing then
shows (a step ending elsewhere, or a change made past the steps, fails here; Step.to refuses what
the table does not allow)."""

from __future__ import annotations

import time

import pytest

from msgspool.domain.hooks import Hold, Preprocessed
from msgspool.domain.message import Settlement
from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import Status
from msgspool.domain.transitions import Step
from msgspool.ports import Store
from tests.contract.conftest import statuses, submit

BUSY = Reply(450, "4.2.1", "busy")
OK = Reply(250, "2.0.0", "ok")


async def test_each_operation_changes_states_only_through_its_domain_step(store: Store,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[tuple[str, Status]] = []
    to = Step.to

    def recording(step: Step, new: Status) -> Status:
        taken.append((step.name, new))
        return to(step, new)

    monkeypatch.setattr(Step, "to", recording)

    async def step(expected: list[str], names: set[str]) -> None:
        assert await statuses(store, message.id) == expected
        assert {name for name, _new in taken} >= names, taken
        assert {new for _name, new in taken} <= {Status(s) for s in expected}  # each step ended where shown
        taken.clear()

    now = time.time()
    message = await submit(store, "b@example.com", "c@example.com", now=now)
    taken.clear()  # the births
    [claimed] = await store.claim(now, 10, whole_messages=True)
    await step(["active", "active"], {"claim"})
    await store.preprocessed(claimed, Preprocessed([], verdict=Hold("a hook failed")), now)
    await step(["held", "held"], {"hold in delivery"})
    await store.release([message.id], now)
    await step(["queued", "queued"], {"release"})
    await store.claim(now, 10)
    await step(["active", "active"], {"claim"})
    await store.unclaim([(message.id, 0)], now)
    await step(["queued", "active"], {"give back"})
    await store.settle([Settlement(message.id, 1, "c@example.com", Status.DEFERRED, BUSY,
                                   next_attempt_at=now + 60)], now)
    await step(["queued", "deferred"], {"settle"})
    await store.hold([message.id], now)
    await step(["held", "held"], {"hold"})
    await store.requeue([message.id], now)
    await step(["queued", "queued"], {"requeue"})
    await store.claim(now, 10)
    await step(["active", "active"], {"claim"})
    await store.settle([Settlement(message.id, 0, "b@example.com", Status.DELIVERED, OK),
                        Settlement(message.id, 1, "c@example.com", Status.FAILED, Reply(550, "5.1.1", "no"))], now)
    await step(["delivered", "failed"], {"settle"})

