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
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest

from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from shared import clock, rotation
from shared.messages import CredentialKind, RotationMessage, new_rotation_message
from shared.queues import RotationQueues
from shared.rotation.submit import UNSENT_AFTER, message_for
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
from tests.support.sim import Simulation


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


# -- simulated weeks: the emulator's truth is the judge ---------------------------------------------------------
def window_in(emulator: EmulatorControl, days_ahead: int) -> tuple[str, datetime]:
    """A one-hour window `days_ahead` days from the emulator's now, and when it opens."""
    now = datetime.fromisoformat(emulator.state()["now"].replace("Z", "+00:00"))
    day = (now + timedelta(days=days_ahead)).date()
    return f"{day:%a} 23:00-23:59", datetime.combine(day, time(23, 0), tzinfo=UTC)


def resets_of(emulator: EmulatorControl, cluster_id: str) -> list[dict[str, Any]]:
    return [op for op in emulator.state()["operations"] if op["clusterId"].lower() == cluster_id.lower()]


def test_a_hand_written_message_with_a_fresh_id_is_rejected_in_a_simulated_week(
    make_world: Any, emulator: EmulatorControl, caplog: pytest.LogCaptureFixture
) -> None:
    window, _opens = window_in(emulator, 4)
    world = make_world([{"name": "aks-a", "days": 200}], MAINTENANCE_WINDOW=window)
    cluster = world.cluster("aks-a")
    forged = new_rotation_message(
        cluster_id=cluster["id"], kind=CredentialKind.SP_SECRET, reason="expired", app_id=cluster["clientId"]
    )

    async def hand_written(sim: Simulation) -> None:
        await sim.queues.send(forged.model_copy(update={"attempt": 7}).to_json())

    world.sim.after(timedelta(minutes=1), hand_written, "a hand-written message with a fresh id")
    with caplog.at_level(logging.WARNING):
        world.run(7)  # past the window: nothing may have started, in it or out of it
    assert not resets_of(emulator, cluster["id"])
    assert world.records() == {}
    rejected = [r for r in caplog.records if getattr(r, "event", None) == "input.rejected"]
    assert rejected and "no such rotation was submitted" in rejected[0].getMessage()
    world.check()


def test_a_hand_written_copy_of_a_real_rotation_can_only_advance_it_in_its_window(
    make_world: Any, emulator: EmulatorControl
) -> None:
    window, opens = window_in(emulator, 4)
    world = make_world([{"name": "aks-a", "days": 12}], MAINTENANCE_WINDOW=window)  # due, not urgent
    cluster = world.cluster("aks-a")
    seen: dict[str, Any] = {}

    async def hand_written(sim: Simulation) -> None:
        async with RotationStore(sim.settings) as store:
            (row,) = await store.list(cluster_id=cluster["id"])
        seen["waiting"] = (row.state, row.phase)
        copy = message_for(row, row.attempts + 5).model_copy(update={"reason": "expired"})  # no not_before
        for _ in range(3):
            await sim.queues.send(copy.to_json())

    def before_the_window(_sim: Simulation) -> None:
        seen["before"] = resets_of(emulator, cluster["id"])

    world.sim.after(timedelta(days=1), hand_written, "hand-written copies of the waiting rotation's message")
    world.sim.at(opens - timedelta(minutes=5), before_the_window, "just before the window opens")
    world.run(6)
    assert seen["waiting"] == ("waiting", "apply"), seen
    assert seen["before"] == []  # the copies woke it, and it went on waiting for its window
    assert resets_of(emulator, cluster["id"])  # then it applied in the window
    assert {r.state for r in world.records().values()} == {"succeeded"}
    world.check()


def test_an_early_copy_waits_for_the_time_its_row_waits_for(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    closed_day = (datetime.now(UTC) + timedelta(days=3)).strftime("%A")  # a window that is certainly not open now
    doc = demo_estate()
    for cluster in doc["clusters"]:
        cluster["maintenance"] = [{"name": "default", "time_in_week": [{"day": closed_day, "hourSlots": [3]}]}]
    emulator.reset(doc)
    settings = make_settings(emulator, azurite, storage_names)
    message = due_message(emulator.state(), "aks-checkout")  # 20 days left: waits for the window
    asyncio.run(submit_all(settings, [message]))
    asyncio.run(run_until_idle(settings))
    row = asyncio.run(rows(settings))[message.rotation_id]
    assert (row.state, row.phase) == ("waiting", "apply") and row.not_before is not None
    copy = message_for(row, row.attempts + 3)  # a copy that does not know the wait

    async def deliver() -> rotation.StepOutcome:
        async with open_deps(settings) as deps:
            return await rotation.handle_message(settings, copy.to_json(), deps=deps)

    requests = emulator.requests()
    outcome = asyncio.run(deliver())
    assert (outcome.action, outcome.detail) == ("waiting", "not yet due")
    assert emulator.requests() == requests  # not even a look at the cluster before its time
    after = asyncio.run(rows(settings))[message.rotation_id]
    assert after.not_before is not None and timedelta(0) <= after.not_before - row.not_before <= timedelta(seconds=2)

    async def poison_the_first_message() -> None:
        async with open_deps(settings) as deps:
            await rotation.handle_poison(settings, message.to_json(), deps=deps)

    asyncio.run(poison_the_first_message())  # a stale copy (superseded long ago) on the poison queue
    still = asyncio.run(rows(settings))[message.rotation_id]
    assert (still.state, still.phase) == ("waiting", "apply")  # not failed, nothing cleaned up
    trail = asyncio.run(rotation.status(settings, message.rotation_id))[0].audit
    assert [(a.step, a.outcome) for a in trail if a.step == "poison"] == [("poison", "ignored")]
