"""The queue is not a command channel (issue 14 item 2): the worker acts only on messages `submit` could have sent.

`submit` writes the rotation's row before it sends the first message, so a message whose rotation id has no row,
or that names another cluster than its row, is rejected (`input.rejected`, recorded with its reason) and changes
nothing; a submit that stopped between the row and the message is recovered by the next submit (the scan's too).
Real Azurite and the emulator; the emulator's state is the judge.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from shared import clock, rotation
from shared.messages import RotationMessage
from shared.queues import RotationQueues
from shared.rotation.submit import UNSENT_AFTER
from shared.settings import Settings
from shared.store import RotationStore
from tests.plugins.azurite import StorageNames
from tests.support.engine import (
    cluster_by_name,
    demo_estate,
    due_message,
    make_settings,
    open_deps,
    rows,
    run_until_idle,
    submit_all,
)


@pytest.fixture
def rot(emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames) -> Iterator[Settings]:
    emulator.reset(demo_estate())
    yield make_settings(emulator, azurite, storage_names)


async def _send(settings: Settings, *messages: RotationMessage) -> None:
    async with RotationQueues(settings) as queues:
        await queues.ensure()
        for message in messages:
            await queues.send(message.to_json())


async def _rejections(settings: Settings) -> list[str]:
    async with RotationStore(settings) as store:
        await store.ensure()
        return [r.reason for r in await store.rejections()]


def _unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["applications"] == before["applications"]
    assert after["vaults"] == before["vaults"]
    assert after["operations"] == before["operations"]
    assert [c["heldKeyId"] for c in after["clusters"]] == [c["heldKeyId"] for c in before["clusters"]]


def test_a_message_nobody_submitted_is_rejected_and_changes_nothing(
    rot: Settings, emulator: EmulatorControl, caplog: pytest.LogCaptureFixture
) -> None:
    before = emulator.state()
    forged = due_message(before, "aks-payments", reason="expired")  # due, and claiming the most urgent reason
    asyncio.run(_send(rot, forged, forged.model_copy(update={"attempt": 9})))
    with caplog.at_level(logging.WARNING):
        report = asyncio.run(run_until_idle(rot))
    assert report.actions == {"rejected": 2} and report.poisoned == 0
    _unchanged(before, emulator.state())
    assert asyncio.run(rows(rot)) == {}  # no rotation row, no claim taken over
    assert asyncio.run(_rejections(rot)) == ["rotation_id: no such rotation was submitted"] * 2
    assert [r for r in caplog.records if getattr(r, "event", None) == "input.rejected"]


def test_a_message_for_a_rotation_of_another_cluster_is_rejected(rot: Settings, emulator: EmulatorControl) -> None:
    before = emulator.state()
    real = due_message(before, "aks-payments")
    other = due_message(before, "aks-checkout")
    asyncio.run(submit_all(rot, [real]))
    # The real rotation's id, with another cluster and application: the row says what the rotation is.
    forged = other.model_copy(update={"rotation_id": real.rotation_id, "attempt": 5})

    async def deliver() -> rotation.StepOutcome:
        async with open_deps(rot) as deps:
            return await rotation.handle_message(rot, forged.to_json(), deps=deps)

    outcome = asyncio.run(deliver())
    assert outcome.action == "rejected", outcome
    _unchanged(before, emulator.state())
    assert asyncio.run(rows(rot))[real.rotation_id].attempts == 0  # the forged attempt number was not adopted
    asyncio.run(run_until_idle(rot))  # the real rotation goes on as submitted
    records = asyncio.run(rows(rot))
    assert records[real.rotation_id].state == "succeeded"
    held = cluster_by_name(emulator.state(), "aks-checkout")["heldKeyId"]
    assert held == cluster_by_name(before, "aks-checkout")["heldKeyId"]


def test_an_unknown_message_on_the_poison_queue_creates_no_rotation(rot: Settings, emulator: EmulatorControl) -> None:
    before = emulator.state()
    forged = due_message(before, "aks-payments")

    async def poison() -> None:
        async with open_deps(rot) as deps:
            await rotation.handle_poison(rot, forged.to_json(), deps=deps)

    asyncio.run(poison())
    assert asyncio.run(rows(rot)) == {}
    assert asyncio.run(_rejections(rot)) == ["rotation_id: no such rotation was submitted"]
    _unchanged(before, emulator.state())


class _Order:
    """Queues that note, for every message sent, whether its rotation row existed at that moment."""

    def __init__(self, queues: RotationQueues, store: RotationStore, fail: bool = False) -> None:
        self.queues, self.store, self.fail = queues, store, fail
        self.row_existed: list[bool] = []

    async def send(self, message_json: str, delay_seconds: int = 0) -> str:
        rid = RotationMessage.model_validate_json(message_json).rotation_id
        self.row_existed.append(await self.store.get(rid) is not None)
        if self.fail:
            raise ConnectionError("the process stopped here")
        return await self.queues.send(message_json, delay_seconds)


def test_submit_records_the_row_before_the_message_and_a_lost_message_is_sent_again(
    rot: Settings, emulator: EmulatorControl
) -> None:
    message = due_message(emulator.state(), "aks-payments")

    async def go() -> tuple[list[bool], list[bool], rotation.SubmitResult, rotation.SubmitResult]:
        async with RotationStore(rot) as store, RotationQueues(rot) as queues:
            await store.ensure()
            await queues.ensure()
            crashing = _Order(queues, store, fail=True)
            with pytest.raises(ConnectionError):
                await rotation.submit(rot, message, store=store, queues=crashing)  # type: ignore[arg-type]
            ordered = _Order(queues, store)
            soon = await rotation.submit(rot, message, store=store, queues=ordered)  # type: ignore[arg-type]
            later = clock.now() + UNSENT_AFTER + timedelta(minutes=1)
            with clock.use(lambda: later):
                again = await rotation.submit(rot, message, store=store, queues=ordered)  # type: ignore[arg-type]
            return crashing.row_existed, ordered.row_existed, soon, again

    first, resent, soon, again = asyncio.run(go())
    assert first == [True]  # the row was written before the message was sent
    assert soon.status == "duplicate" and "pending" in soon.detail  # too early to tell a lost message from a slow one
    assert again.status == "duplicate" and "sent again" in again.detail
    assert resent == [True]  # exactly one copy, sent for an existing row
    report = asyncio.run(run_until_idle(rot))
    assert report.actions.get("rejected", 0) == 0
    record = asyncio.run(rows(rot))[message.rotation_id]
    assert record.state == "succeeded"
    trail = asyncio.run(rotation.status(rot, message.rotation_id))[0].audit
    assert [a.outcome for a in trail if a.step == "submit"] == ["resent"]


def test_the_scan_sends_again_a_message_lost_after_its_row_was_written(
    rot: Settings, emulator: EmulatorControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared import discovery

    async def crash(self: RotationQueues, message_json: str, delay_seconds: int = 0) -> str:
        raise ConnectionError("the process stopped here")

    with monkeypatch.context() as patched:
        patched.setattr(RotationQueues, "send", crash)
        with pytest.raises(discovery.DiscoveryError):
            asyncio.run(discovery.run_scheduled(rot))
    pending = asyncio.run(rows(rot))
    assert pending and {r.state for r in pending.values()} == {"pending"}
    later = clock.now() + UNSENT_AFTER + timedelta(minutes=1)
    with clock.use(lambda: later):
        asyncio.run(discovery.run_scheduled(rot))
    asyncio.run(run_until_idle(rot))
    records = asyncio.run(rows(rot))
    assert set(records) == set(pending)
    assert {r.state for r in records.values()} == {"succeeded"}
