"""Regressions found in review: once a reset request's outcome is unknown, nothing may remove the new password.

A reset whose answer is lost (connection reset after AKS executed it) leaves the row `applying`: the cluster may
already hold the new secret. Then a definitive refusal of a *repeated* reset (4xx),
or a not-executed repeat (409) followed by a poisoning must never clean up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from azure.core.exceptions import ServiceResponseError

from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from shared.aks import ClusterBusy
from shared.settings import Settings
from tests.support.engine import (
    check_invariants,
    cluster_by_name,
    demo_estate,
    due_message,
    fresh_names,
    make_settings,
    open_deps,
    product_passwords,
    rows,
    run_until_idle,
    submit_all,
)

RESET = "resetServicePrincipalProfile"


def _run(emulator: EmulatorControl, azurite: Azurite, repeat: Callable[[], None]) -> tuple[Settings, str]:
    """The first reset reaches AKS but its answer is lost; `repeat()` runs before every later reset (it may inject a
    fault or raise), which is then sent for real. Returns the settings and the rotation id."""
    emulator.reset(demo_estate())
    settings = make_settings(emulator, azurite, fresh_names())
    message = due_message(emulator.state(), "aks-payments")
    asyncio.run(submit_all(settings, [message]))

    async def go() -> None:
        async with open_deps(settings) as deps:
            real = deps.aks.begin_reset_service_principal
            calls = 0

            async def reset(cluster_id: str, client_id: str, secret: str) -> str:
                nonlocal calls
                calls += 1
                if calls == 1:
                    await real(cluster_id, client_id, secret)  # AKS executes it ...
                    raise ServiceResponseError("connection reset by peer")  # ... and the answer is lost
                repeat()
                return await real(cluster_id, client_id, secret)

            deps.aks.begin_reset_service_principal = reset  # type: ignore[method-assign]
            await run_until_idle(settings, deps, rounds=100)
            assert calls >= 2

    try:
        asyncio.run(go())
    finally:
        emulator.clear_faults()
    return settings, message.rotation_id


def _judge(emulator: EmulatorControl, settings: Settings, rid: str) -> Any:
    after = emulator.state()
    records = asyncio.run(rows(settings))
    record = records[rid]
    cluster = cluster_by_name(after, "aks-payments")
    assert cluster["heldKeyId"] == record.new_key_id  # the lost-answer reset was applied
    assert cluster["heldValid"], f"the new password the cluster holds was removed: {record.failure_reason}"
    assert any(p["keyId"] == cluster["heldKeyId"] for p in product_passwords(after))
    assert record.state == "failed" and record.failure_reason, (record.state, record.phase)
    check_invariants(after, records)
    return record


def _once(action: Callable[[], None]) -> Callable[[], None]:
    done = False

    def run() -> None:
        nonlocal done
        if not done:
            done = True
            action()

    return run


def test_refused_repeat_after_unanswered_reset_does_not_clean_up(emulator: EmulatorControl, azurite: Azurite) -> None:
    # The repeated reset is refused (403) before it executes.
    fault = {"kind": "status", "surface": "arm", "operation": RESET, "status": 403, "times": 1}
    settings, rid = _run(emulator, azurite, _once(lambda: emulator.add_faults(fault)))
    _judge(emulator, settings, rid)


def test_busy_repeat_keeps_the_applying_mark_for_the_poison_handler(
    emulator: EmulatorControl, azurite: Azurite
) -> None:
    # The repeated reset is refused with 409 (not executed); then every delivery fails until the poison handler runs.
    def busy() -> None:
        emulator.add_faults(
            {"kind": "status", "surface": "keyvault", "operation": "getSecret", "status": 500, "times": 50}
        )
        raise ClusterBusy("resetServicePrincipalProfile: another operation is in progress", 409, "OperationNotAllowed")

    settings, rid = _run(emulator, azurite, _once(busy))
    record = _judge(emulator, settings, rid)
    assert "poison" in (record.failure_reason or "")
