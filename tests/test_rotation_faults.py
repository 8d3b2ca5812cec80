"""The rotation engine under faults: crashes at every step boundary, duplicates, concurrency, throttling, LRO
failure, replication delay, policy refusals, missing permissions, random schedules (hypothesis), canaries, scale.

After every scenario the emulator's truth is judged by `check_invariants`: no cluster outage, no product-created
password left unreferenced, Key Vault's current version is what the cluster holds, every rotation finished,
failed with a reason, or still waiting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from shared import rotation
from shared.messages import RotationMessage
from shared.queues import RotationQueues
from shared.settings import Settings
from shared.store import RotationStore
from tests.support.engine import (
    REALISTIC,
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
from tests.support.sim import Simulation

DUE = ("aks-payments", "aks-checkout")  # password on the application / on the service principal
NO_LIMITS = {
    "arm_read_capacity": 100000,
    "arm_read_refill": 100000,
    "arm_write_capacity": 100000,
    "arm_write_refill": 100000,
    "graph_capacity": 100000,
    "graph_refill": 100000,
}


def scenario(
    emulator: EmulatorControl,
    azurite: Azurite,
    faults: list[dict[str, Any]],
    *,
    doc: dict[str, Any] | None = None,
    names: tuple[str, ...] = DUE,
    env: dict[str, str] | None = None,
) -> tuple[Settings, dict[str, Any], dict[str, Any], list[RotationMessage]]:
    """Reset, queue the due rotations, inject `faults`, drain until idle; return settings, before, after, messages."""
    emulator.reset(doc or demo_estate())
    settings = make_settings(emulator, azurite, fresh_names(), **(env or {}))
    before = emulator.state()
    messages = [due_message(before, name) for name in names]
    asyncio.run(submit_all(settings, messages))
    if faults:
        emulator.add_faults(*faults)
    asyncio.run(run_until_idle(settings, rounds=200))
    emulator.clear_faults()
    return settings, before, emulator.state(), messages


# -- a crash at every step boundary: the next external call fails, the message is redelivered ----------------
BOUNDARY_FAULTS = {
    "lookup": {"kind": "status", "surface": "graph", "operation": "batch", "status": 503, "times": 2},
    "owners": {"kind": "status", "surface": "graph", "operation": "listOwners", "status": 500, "times": 2},
    "add_password_dropped": {"kind": "drop", "surface": "graph", "operation": "add*Password", "times": 1},
    "add_password_5xx": {"kind": "status", "surface": "graph", "operation": "add*Password", "status": 503, "times": 1},
    "store_lost_secret": {"kind": "status", "surface": "keyvault", "operation": "setSecret", "status": 503, "times": 1},
    "proof_token": {"kind": "status", "surface": "entra", "operation": "token", "status": 503, "times": 4},
    "read_secret": {"kind": "status", "surface": "keyvault", "operation": "getSecret", "status": 500, "times": 1},
    "arm_get": {"kind": "status", "surface": "arm", "operation": "get", "status": 503, "times": 2},
    "reset_5xx": {
        "kind": "status",
        "surface": "arm",
        "operation": "resetServicePrincipalProfile",
        "status": 500,
        "times": 1,
    },
    "reset_dropped": {"kind": "drop", "surface": "arm", "operation": "resetServicePrincipalProfile", "times": 1},
    "operation_poll": {"kind": "status", "surface": "arm", "operation": "operationStatus", "status": 503, "times": 2},
    "finish_tags": {"kind": "status", "surface": "keyvault", "operation": "updateSecret", "status": 503, "times": 2},
    "versions": {"kind": "status", "surface": "keyvault", "operation": "getSecretVersions", "status": 503, "times": 3},
    "retire_remove": {"kind": "status", "surface": "graph", "operation": "remove*Password", "status": 503, "times": 2},
    "inventory": {"kind": "status", "surface": "arm", "operation": "list", "status": 503, "times": 2},
    "throttle_graph": {"kind": "throttle", "surface": "graph", "retry_after": 1, "times": 2},
    "throttle_arm": {"kind": "throttle", "surface": "arm", "retry_after": 1, "times": 2},
    "throttle_keyvault": {"kind": "throttle", "surface": "keyvault", "retry_after": 1, "times": 2},
}


@pytest.mark.parametrize("fault", sorted(BOUNDARY_FAULTS))
def test_crash_at_every_step_boundary_resumes(emulator: EmulatorControl, azurite: Azurite, fault: str) -> None:
    settings, _before, after, messages = scenario(emulator, azurite, [BOUNDARY_FAULTS[fault]])
    records = asyncio.run(rows(settings))
    assert {records[m.rotation_id].state for m in messages} == {"succeeded"}, [
        (r.phase, r.failure_reason) for r in records.values()
    ]
    check_invariants(after, records)
    # Exactly one new password per rotation survived, and it is the one the cluster holds.
    assert len(product_passwords(after)) == len(messages)


def test_lost_secret_is_removed_and_created_again(emulator: EmulatorControl, azurite: Azurite) -> None:
    # Key Vault refuses the store and Graph refuses the immediate clean-up: the orphan stays until redelivery.
    faults = [
        {"kind": "status", "surface": "keyvault", "operation": "setSecret", "status": 503, "times": 1},
        {"kind": "status", "surface": "graph", "operation": "remove*Password", "status": 503, "times": 2},
    ]
    settings, _before, after, messages = scenario(emulator, azurite, faults, names=("aks-payments",))
    records = asyncio.run(rows(settings))
    assert records[messages[0].rotation_id].state == "succeeded"
    check_invariants(after, records)
    trail = asyncio.run(rotation.status(settings, messages[0].rotation_id))[0].audit
    assert any(a.outcome == "removed_lost" for a in trail)


def test_duplicate_and_concurrent_delivery(emulator: EmulatorControl, azurite: Azurite) -> None:
    emulator.reset(demo_estate())
    settings = make_settings(emulator, azurite, fresh_names())
    before = emulator.state()
    messages = [due_message(before, name) for name in DUE]

    async def go() -> None:
        await submit_all(settings, messages)
        async with RotationQueues(settings) as queues:
            for message in messages:  # duplicates of every first message, as an at-least-once queue may deliver
                await queues.send(message.to_json())
                await queues.send(message.to_json())
        async with open_deps(settings) as a, open_deps(settings) as b:
            await asyncio.gather(run_until_idle(settings, a), run_until_idle(settings, b))

    asyncio.run(go())
    after = emulator.state()
    records = asyncio.run(rows(settings))
    assert {r.state for r in records.values()} == {"succeeded"}
    check_invariants(after, records)
    assert len(product_passwords(after)) == len(messages)  # no rotation ran twice


def test_lro_failure_keeps_both_secrets_and_sends_the_reset_again(
    emulator: EmulatorControl, azurite: Azurite, caplog: pytest.LogCaptureFixture
) -> None:
    """A reset is a node image upgrade: a failed one may have moved some node pools, so the new password is never
    removed after AKS accepted a reset (issue 11.1). The product alerts, sends the same secret again, and finishes."""
    fault = {"kind": "lro_fail", "surface": "arm", "operation": "resetServicePrincipalProfile", "times": 1}
    with caplog.at_level(logging.INFO):
        settings, _before, after, messages = scenario(emulator, azurite, [fault], names=("aks-payments",))
    record = asyncio.run(rows(settings))[messages[0].rotation_id]
    assert record.state == "succeeded" and record.resends == 1
    assert cluster_by_name(after, "aks-payments")["heldKeyId"] == record.new_key_id
    assert any(getattr(r, "event", None) == "rotation.blocked" and getattr(r, "alert", False) for r in caplog.records)
    check_invariants(after, asyncio.run(rows(settings)))


def test_replication_delay_is_polled_without_holding_the_invocation(
    emulator: EmulatorControl, azurite: Azurite
) -> None:
    emulator.reset(demo_estate())
    settings = make_settings(emulator, azurite, fresh_names())
    before = emulator.state()
    message = due_message(before, "aks-payments")
    asyncio.run(submit_all(settings, [message]))
    emulator.add_faults({"kind": "replication_delay", "surface": "entra", "seconds": 600, "match": message.app_id})

    async def go() -> None:
        async with open_deps(settings) as deps:
            for _ in range(60):  # ten emulated minutes pass while the worker keeps re-queuing the proof
                report = await rotation.drain(settings, deps=deps, max_messages=3, retry_delay_seconds=0)
                if report.received == 0:
                    return
                emulator.advance(15)

    asyncio.run(go())
    after = emulator.state()
    records = asyncio.run(rows(settings))
    assert records[message.rotation_id].state == "succeeded"
    check_invariants(after, records)
    trail = asyncio.run(rotation.status(settings, message.rotation_id))[0].audit
    assert any(a.step == "prove" and a.outcome == "ok" for a in trail)


def test_proof_timeout_fails_and_cleans_up(emulator: EmulatorControl, azurite: Azurite) -> None:
    emulator.reset(demo_estate())
    settings = make_settings(emulator, azurite, fresh_names(), PROOF_TIMEOUT_SECONDS="1", REQUEUE_DELAY_SECONDS="0")
    message = due_message(emulator.state(), "aks-payments")
    asyncio.run(submit_all(settings, [message]))
    emulator.add_faults({"kind": "replication_delay", "surface": "entra", "seconds": 100000})
    asyncio.run(run_until_idle(settings, rounds=500))
    after = emulator.state()
    record = asyncio.run(rows(settings))[message.rotation_id]
    assert record.state == "failed" and "prove" in (record.failure_reason or "")
    assert product_passwords(after) == []
    check_invariants(after, {message.rotation_id: record})


def test_policy_blocked_add_password_fails_cleanly(emulator: EmulatorControl, azurite: Azurite) -> None:
    doc = demo_estate()
    next(a for a in doc["applications"] if a["display_name"] == "aks-payments-sp")["policy"] = {
        "block_password_addition": True
    }
    settings, before, after, messages = scenario(emulator, azurite, [], doc=doc, names=("aks-payments",))
    record = asyncio.run(rows(settings))[messages[0].rotation_id]
    assert record.state == "failed"
    assert "CredentialTypeNotAllowedAsPerAppPolicy" in (record.failure_reason or "")
    assert after["applications"] == before["applications"] and after["vaults"] == before["vaults"]


def test_full_password_list_fails_cleanly(emulator: EmulatorControl, azurite: Azurite) -> None:
    doc = demo_estate()
    next(a for a in doc["applications"] if a["display_name"] == "aks-payments-sp")["password_limit"] = 1
    settings, before, after, messages = scenario(emulator, azurite, [], doc=doc, names=("aks-payments",))
    record = asyncio.run(rows(settings))[messages[0].rotation_id]
    assert record.state == "failed" and "TooManyAppPasswords" in (record.failure_reason or "")
    assert after["applications"] == before["applications"]


# -- least privilege -------------------------------------------------------------------------------------------
def _without_arm_action(action: str) -> dict[str, Any]:
    doc = demo_estate()
    for assignment in doc["role_assignments"]:
        assignment["actions"] = [a for a in assignment["actions"] if a != action]
    return doc


def _without_graph_role() -> dict[str, Any]:
    doc = demo_estate()
    doc["graph_app_roles"] = {}
    return doc


def _without_ownership() -> dict[str, Any]:
    doc = demo_estate()
    for app in doc["applications"]:
        app["owned_by_product"] = False
    return doc


def _without_vault_role() -> dict[str, Any]:
    doc = demo_estate()
    doc["vault_roles"] = []
    return doc


PRIVILEGES: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "managedClusters/read": (
        lambda: _without_arm_action("Microsoft.ContainerService/managedClusters/read"),
        "Microsoft.ContainerService/managedClusters/read",
    ),
    "maintenanceConfigurations/read": (
        lambda: _without_arm_action("Microsoft.ContainerService/managedClusters/maintenanceConfigurations/read"),
        "maintenanceConfigurations/read",
    ),
    "resetServicePrincipalProfile/action": (
        lambda: _without_arm_action("Microsoft.ContainerService/managedClusters/resetServicePrincipalProfile/action"),
        "Microsoft.ContainerService/managedClusters/resetServicePrincipalProfile/action",
    ),
    "graph role": (_without_graph_role, "Application.ReadWrite.OwnedBy"),
    "ownership": (_without_ownership, "owner"),
    "key vault role": (_without_vault_role, "Key Vault"),
}


@pytest.mark.parametrize("missing", sorted(PRIVILEGES))
def test_missing_permission_fails_before_creating_anything(
    emulator: EmulatorControl, azurite: Azurite, missing: str
) -> None:
    build, named = PRIVILEGES[missing]
    settings, before, after, messages = scenario(emulator, azurite, [], doc=build(), names=("aks-payments",))
    record = asyncio.run(rows(settings))[messages[0].rotation_id]
    assert record.state == "failed"
    assert named in (record.failure_reason or ""), record.failure_reason
    assert after["applications"] == before["applications"]  # nothing created
    assert after["vaults"] == before["vaults"]


# -- poison ----------------------------------------------------------------------------------------------------
def test_persistent_failure_goes_to_poison_and_cleans_up(
    emulator: EmulatorControl, azurite: Azurite, caplog: pytest.LogCaptureFixture
) -> None:
    # Key Vault refuses every store: each delivery raises, the fifth goes to the poison queue, and the poison
    # handler fails the rotation (safe before apply: the cluster never saw the new secret).
    fault = {"kind": "status", "surface": "keyvault", "operation": "setSecret", "status": 503}
    with caplog.at_level(logging.INFO):
        settings, before, after, messages = scenario(emulator, azurite, [fault], names=("aks-payments",))
    record = asyncio.run(rows(settings))[messages[0].rotation_id]
    assert record.state == "failed" and "poison" in (record.failure_reason or "")
    assert product_passwords(after) == []
    assert after["applications"] == before["applications"]
    assert any(getattr(r, "event", None) == "rotation.poison" and getattr(r, "alert", False) for r in caplog.records)

    async def poisoned() -> int:
        async with RotationQueues(settings) as queues:
            return len(await queues.peek_poison())

    assert asyncio.run(poisoned()) == 1
    check_invariants(after, {record.rotation_id: record})


def test_invalid_message_is_rejected_to_poison(emulator: EmulatorControl, azurite: Azurite) -> None:
    emulator.reset(demo_estate())
    settings = make_settings(emulator, azurite, fresh_names())

    async def go() -> tuple[rotation.StepOutcome, int]:
        async with open_deps(settings) as deps:
            outcome = await rotation.handle_message(settings, '{"secretText": "hunter2hunter2"}', deps=deps)
            poison = await deps.queues.peek_poison()
            return outcome, len(poison)

    outcome, poisoned = asyncio.run(go())
    assert outcome.action == "rejected" and poisoned == 1
    assert "hunter2" not in outcome.detail


# -- canary: no secret value anywhere --------------------------------------------------------------------------
def test_canary_no_secret_in_logs_messages_or_audit(
    emulator: EmulatorControl, azurite: Azurite, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator.reset(demo_estate())
    settings = make_settings(emulator, azurite, fresh_names())
    before = emulator.state()
    messages = [due_message(before, name) for name in DUE]
    sent: list[str] = []
    emulator.add_faults(
        {"kind": "status", "surface": "keyvault", "operation": "setSecret", "status": 503, "times": 1},
        {"kind": "lro_fail", "surface": "arm", "operation": "resetServicePrincipalProfile", "times": 1},
    )

    async def go() -> list[str]:
        await submit_all(settings, messages)
        async with open_deps(settings) as deps:
            original = deps.queues.send

            async def recording(body: str, delay_seconds: int = 0) -> str:
                sent.append(body)
                return await original(body, delay_seconds)

            deps.queues.send = recording  # type: ignore[method-assign,assignment]
            await run_until_idle(settings, deps)
        async with RotationStore(settings) as store:
            trail = await store.audit_log()
            rows_ = await store.list()
        views = await rotation.status(settings)
        return (
            [json.dumps(a.__dict__, default=str) for a in trail]
            + [r.model_dump_json() for r in rows_]
            + [repr(v) for v in views]
        )

    with caplog.at_level(logging.DEBUG):
        stored = asyncio.run(go())
    out, err = capsys.readouterr()
    haystack = "\n".join(
        [
            caplog.text,
            out,
            err,
            *sent,
            *stored,
            *(r.getMessage() for r in caplog.records),
            *(str(r.__dict__) for r in caplog.records),
        ]
    )
    canaries = emulator.canaries()
    assert len(canaries) > 5
    leaked = [c[:4] + "…" for c in canaries if c in haystack]
    assert leaked == []


# -- random schedules ------------------------------------------------------------------------------------------
FAULT_SPECS = st.one_of(
    st.builds(
        lambda surface, op, status, times: {
            "kind": "status",
            "surface": surface,
            "operation": op,
            "status": status,
            "times": times,
        },
        st.sampled_from(["graph", "keyvault", "arm", "entra"]),
        st.sampled_from(
            [
                "*",
                "add*Password",
                "remove*Password",
                "setSecret",
                "updateSecret",
                "get",
                "token",
                "resetServicePrincipalProfile",
                "operationStatus",
                "getSecret",
                "batch",
            ]
        ),
        st.sampled_from([429, 500, 503]),
        st.integers(1, 3),
    ),
    st.builds(
        lambda times: {
            "kind": "lro_fail",
            "surface": "arm",
            "operation": "resetServicePrincipalProfile",
            "times": times,
        },
        st.integers(1, 2),
    ),
    st.builds(
        lambda seconds: {"kind": "replication_delay", "surface": "entra", "seconds": seconds, "probability": 0.5},
        st.sampled_from([0, 5, 30]),
    ),
    st.builds(
        lambda op: {"kind": "drop", "surface": "*", "operation": op, "times": 1},
        st.sampled_from(["add*Password", "setSecret", "resetServicePrincipalProfile", "remove*Password"]),
    ),
)


# On the simulation clock (tests/support/sim.py): the host's redelivery and poison, the daily scan and Key Vault's
# events run as they would for SCHEDULE_HOURS (then until the queue is empty, at most two days more); the whole
# promise is asserted after, liveness included: every submitted rotation is terminal or alerted.
# `FAULT_EXAMPLES` sets the number of examples (the long mode, `make simulate`).
SCHEDULE_HOURS = 12
FAULT_EXAMPLES = int(os.environ.get("FAULT_EXAMPLES", "100"))


@pytest.mark.slow
@pytest.mark.timeout(1800)
@hsettings(
    max_examples=FAULT_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    faults=st.lists(FAULT_SPECS, max_size=3),
    which=st.sampled_from([("aks-payments",), ("aks-checkout",), ("aks-payments",), DUE]),
    duplicate=st.booleans(),
    faults_after=st.sampled_from([0, 0, 200]),
)
def test_random_schedules_keep_the_promise(
    emulator: EmulatorControl,
    azurite: Azurite,
    faults: list[dict[str, Any]],
    which: tuple[str, ...],
    duplicate: bool,
    faults_after: int,
) -> None:
    emulator.reset(demo_estate())
    env = {**REALISTIC, "PROOF_TIMEOUT_SECONDS": "30", "PROOF_SUCCESSES": "2", "RETIRE_GRACE_SECONDS": "3600"}
    settings = make_settings(emulator, azurite, fresh_names(), **env)
    sim = Simulation(emulator, settings)
    messages = [due_message(emulator.state(), name) for name in which]

    async def go() -> None:
        await sim.submit(messages)
        if duplicate:
            await sim.queues.send(messages[0].to_json())
        if faults:
            sim.after(timedelta(seconds=faults_after), lambda s: s.emulator.add_faults(*faults), f"faults {faults}")
        await sim.run(timedelta(hours=SCHEDULE_HOURS))
        await sim.settle(timedelta(days=2))

    try:
        asyncio.run(go())
    finally:
        emulator.clear_faults()
    records = asyncio.run(rows(settings))
    sim.check(records)
    check_invariants(emulator.state(), records)
    for message in messages:
        record = records[message.rotation_id]
        assert record.terminal or sim.alerts.about(record.cluster_id), sim.explain([f"{record.state}: {record}"])
        if record.state == "failed":
            assert record.failure_reason
