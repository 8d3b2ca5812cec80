"""The local worker when a step outlasts its message's visibility timeout (real Azurite, the real engine).

The message reappears with dequeue count 2 and a second worker takes it; the first worker's pop receipt is then
stale, so its delete answers 400 `PopReceiptMismatch` (the second worker still holds the message) or 404
`MessageNotFound` (the second worker deleted it). The first worker must survive, and the rotation must show no
duplicate effect: one password created, one reset sent, the redelivered copy acknowledged as stale.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from shared import rotation
from shared.queues import RotationQueues
from shared.rotation import worker
from shared.settings import Settings
from tests.plugins.azurite import StorageNames
from tests.support.engine import (
    demo_estate,
    due_message,
    make_settings,
    open_deps,
    product_passwords,
    rows,
    submit_all,
)
from tests.support.invariants import check_state

Handler = Callable[..., Awaitable[Any]]


@pytest.fixture
def slow(emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames) -> Iterator[Settings]:
    emulator.reset(demo_estate())
    # The step's own waits are a minute long, so the only visible message is the one whose visibility ran out.
    yield make_settings(emulator, azurite, storage_names, REQUEUE_DELAY_SECONDS="60", LRO_POLL_SECONDS="60")


@pytest.mark.parametrize("second_worker", ["still_holds_it", "deleted_it"])
def test_a_message_whose_visibility_ran_out_mid_step(
    slow: Settings,
    emulator: EmulatorControl,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    second_worker: str,
) -> None:
    message = due_message(emulator.state(), "aks-payments")
    asyncio.run(submit_all(slow, [message]))
    real: Handler = worker.handle_message
    taken, stepped, redelivered = asyncio.Event(), asyncio.Event(), asyncio.Event()
    first_done, second_done = asyncio.Event(), asyncio.Event()

    calls: list[int] = []

    async def until(event: asyncio.Event) -> None:
        await asyncio.wait_for(event.wait(), timeout=120)  # a broken scenario fails, never hangs

    async def handle(settings: Settings, body: str, *, dequeue_count: int = 1, deps: Any = None) -> Any:
        calls.append(dequeue_count)
        if len(calls) == 1:  # the first worker: the step runs, then outlasts the 1-second visibility
            taken.set()
            try:
                outcome = await real(settings, body, dequeue_count=dequeue_count, deps=deps)
            finally:
                stepped.set()
            await until(redelivered)
            if second_worker == "deleted_it":
                await until(second_done)
            return outcome
        if dequeue_count < 2:  # not the redelivered copy (e.g. the rotation's own next message): as usual
            return await real(settings, body, dequeue_count=dequeue_count, deps=deps)
        redelivered.set()  # the second worker took the same message (dequeue count 2) ...
        await until(stepped)  # ... and handles it once the first one's step is saved
        if second_worker == "still_holds_it":
            await until(first_done)
        return await real(settings, body, dequeue_count=dequeue_count, deps=deps)

    monkeypatch.setattr(worker, "handle_message", handle)

    async def scenario() -> tuple[rotation.DrainReport, rotation.DrainReport]:
        async with open_deps(slow) as first_deps, open_deps(slow) as second_deps:

            async def first() -> rotation.DrainReport:
                try:
                    return await rotation.drain(slow, deps=first_deps, max_messages=1, visibility_timeout=1)
                finally:
                    first_done.set()

            async def second() -> rotation.DrainReport:
                try:
                    await until(taken)  # the first worker has the message
                    return await rotation.drain(
                        slow, deps=second_deps, max_messages=1, idle_exit=False, idle_wait_seconds=0.1
                    )
                finally:
                    second_done.set()

            a, b = await asyncio.gather(first(), second())
            return a, b

    first_report, second_report = asyncio.run(scenario())
    assert (first_report.handled, first_report.receipts_lost, first_report.errors) == (1, 1, 0), calls
    assert second_report.actions == {"stale": 1}, calls  # the redelivered copy changed nothing
    lost = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "rotation.visibility_lost"]
    code = "PopReceiptMismatch" if second_worker == "still_holds_it" else "MessageNotFound"
    assert len(lost) == 1 and f"({code})" in lost[0], lost
    state = emulator.state()
    records = asyncio.run(rows(slow))
    created = [p["displayName"] for p in product_passwords(state)]
    assert created == [f"{rotation.DISPLAY_NAME_PREFIX} {message.rotation_id}"]
    assert emulator.requests().get("arm.resetServicePrincipalProfile", 0) == 1
    assert records[message.rotation_id].state != "failed"
    check_state(state, records).check()

    async def live() -> int:
        async with RotationQueues(slow) as queues:
            return (await queues.approximate_counts())["rotation"]

    assert asyncio.run(live()) == 1  # only the rotation's own next (delayed) message remains
