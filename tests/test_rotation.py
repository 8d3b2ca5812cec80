"""The rotation engine end to end: emulator (Entra, ARM, Graph, Key Vault) + Azurite, through the real SDKs.

The judge is the emulator's truth (`/_emulator/state`): outage seconds per cluster, every password, every Key
Vault version. Helpers here are shared with tests/test_rotation_faults.py.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from shared import rotation
from shared.messages import CredentialKind, new_rotation_message
from shared.settings import Settings
from shared.windows import SettingWindow, effective_windows, is_open, next_open
from tests.plugins.azurite import StorageNames
from tests.support.engine import (
    all_passwords,
    app_of,
    check_invariants,
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


# -- happy paths -----------------------------------------------------------------------------------------------
def test_happy_path_application_and_service_principal(rot: Settings, emulator: EmulatorControl) -> None:
    before = emulator.state()
    payments = cluster_by_name(before, "aks-payments")  # password on the application, 3 days left
    checkout = cluster_by_name(before, "aks-checkout")  # password on the service principal, 20 days left
    messages = [due_message(before, "aks-payments"), due_message(before, "aks-checkout")]
    results = asyncio.run(submit_all(rot, messages))
    assert [r.status for r in results] == ["queued", "queued"]

    report = asyncio.run(run_until_idle(rot))
    assert report.errors == 0
    after = emulator.state()
    records = asyncio.run(rows(rot))
    assert {r.state for r in records.values()} == {"succeeded"}
    check_invariants(after, records)
    for cluster_before, message in ((payments, messages[0]), (checkout, messages[1])):
        cluster = cluster_by_name(after, cluster_before["id"].rsplit("/", 1)[-1])
        record = records[message.rotation_id]
        assert cluster["heldKeyId"] == record.new_key_id != cluster_before["heldKeyId"]
        app = app_of(after, cluster["clientId"])
        keys = {p["keyId"] for p in all_passwords(app)}
        assert cluster_before["heldKeyId"] not in keys  # the old secret was retired
        assert keys == {record.new_key_id}
    # Where the new password went: the same object that held the old one.
    assert (
        app_of(after, payments["clientId"])["passwordCredentials"][0]["keyId"]
        == records[messages[0].rotation_id].new_key_id
    )
    assert (
        app_of(after, checkout["clientId"])["servicePrincipal"]["passwordCredentials"][0]["keyId"]
        == records[messages[1].rotation_id].new_key_id
    )
    # The audit has a row per step.
    views = asyncio.run(rotation.status(rot, messages[0].rotation_id))
    steps = [a.step for a in views[0].audit]
    for step in ("submit", "create", "store", "prove", "apply", "verify", "finish", "done"):
        assert step in steps, steps


def test_duplicate_submit_and_late_duplicate_delivery_are_no_ops(rot: Settings, emulator: EmulatorControl) -> None:
    message = due_message(emulator.state(), "aks-payments")
    first, second = asyncio.run(submit_all(rot, [message, message]))
    assert (first.status, second.status) == ("queued", "duplicate")
    asyncio.run(run_until_idle(rot))
    state = emulator.state()
    # A late redelivery of the very first message after the rotation finished changes nothing.
    outcome = asyncio.run(_handle_once(rot, message.to_json()))
    assert outcome.action == "duplicate"
    assert emulator.state()["applications"] == state["applications"]


async def _handle_once(settings: Settings, body: str) -> rotation.StepOutcome:
    async with open_deps(settings) as deps:
        return await rotation.handle_message(settings, body, deps=deps)


def test_not_due_is_untouched(rot: Settings, emulator: EmulatorControl) -> None:
    before = emulator.state()
    # Discovery queues only due credentials; a stale "due" message for a credential 300 days out changes nothing.
    message = due_message(before, "aks-analytics")
    asyncio.run(submit_all(rot, [message]))
    asyncio.run(run_until_idle(rot))
    after = emulator.state()
    assert after["applications"] == before["applications"]
    assert after["vaults"] == before["vaults"]
    record = asyncio.run(rows(rot))[message.rotation_id]
    assert (record.state, record.phase) == ("succeeded", "skipped")


def test_outside_window_waits_unless_urgent(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime.now(UTC)
    closed_day = (now + timedelta(days=3)).strftime("%A")  # a window that is certainly not open now
    doc = demo_estate()
    for cluster in doc["clusters"]:
        cluster["maintenance"] = [{"name": "default", "time_in_week": [{"day": closed_day, "hourSlots": [3]}]}]
    emulator.reset(doc)
    settings = make_settings(emulator, azurite, storage_names)
    state = emulator.state()
    urgent = due_message(state, "aks-payments")  # 3 days left: urgent (URGENT_DAYS=3)
    waiting = due_message(state, "aks-checkout")  # 20 days left: waits for the window
    asyncio.run(submit_all(settings, [urgent, waiting]))
    with caplog.at_level(logging.INFO):
        asyncio.run(run_until_idle(settings))
    records = asyncio.run(rows(settings))
    assert records[urgent.rotation_id].state == "succeeded"
    assert any(getattr(r, "event", None) == "rotation.urgent" and getattr(r, "alert", False) for r in caplog.records)
    late = records[waiting.rotation_id]
    assert late.state == "waiting" and late.phase.startswith("apply")
    assert late.not_before is not None and late.not_before > now + timedelta(hours=1)
    after = emulator.state()
    assert cluster_by_name(after, "aks-checkout")["heldKeyId"] == cluster_by_name(state, "aks-checkout")["heldKeyId"]
    check_invariants(after, records)


def test_certificate_rotation_opted_in(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    doc = demo_estate()
    legacy = next(c for c in doc["clusters"] if c["name"] == "aks-legacy")
    legacy["tags"] = {"aks-rotator-rotate-certs": "true"}
    emulator.reset(doc)
    settings = make_settings(emulator, azurite, storage_names)
    before = cluster_by_name(emulator.state(), "aks-legacy")
    message = new_rotation_message(
        cluster_id=before["id"], kind=CredentialKind.CLUSTER_CERTIFICATE, reason="due", observed_expiry=None
    )
    other = cluster_by_name(emulator.state(), "aks-analytics")  # not opted in
    refused = new_rotation_message(cluster_id=other["id"], kind=CredentialKind.CLUSTER_CERTIFICATE, reason="due")
    asyncio.run(submit_all(settings, [message, refused]))
    asyncio.run(run_until_idle(settings))
    after = emulator.state()
    records = asyncio.run(rows(settings))
    assert records[message.rotation_id].state == "succeeded"
    assert cluster_by_name(after, "aks-legacy")["certExpiry"] > before["certExpiry"]
    assert records[refused.rotation_id].state == "failed"
    assert "not opted in" in (records[refused.rotation_id].failure_reason or "")
    trail = asyncio.run(rotation.status(settings, message.rotation_id))[0].audit
    assert any("30 minutes" in a.detail for a in trail)


def test_rotate_now_dry_run_and_real(rot: Settings, emulator: EmulatorControl) -> None:
    cluster = cluster_by_name(emulator.state(), "aks-analytics")
    dry = asyncio.run(rotation.rotate_now(rot, cluster["id"], dry_run=True))
    assert dry.status == "dry_run"
    real = asyncio.run(rotation.rotate_now(rot, cluster["id"], dry_run=False))
    assert real.status == "queued"
    again = asyncio.run(rotation.rotate_now(rot, cluster["id"], dry_run=False))
    assert again.status == "duplicate"  # one on-demand rotation per cluster per day
    asyncio.run(run_until_idle(rot))
    after = emulator.state()
    records = asyncio.run(rows(rot))
    assert records[real.rotation_id].state == "succeeded"
    assert cluster_by_name(after, "aks-analytics")["heldKeyId"] == records[real.rotation_id].new_key_id
    check_invariants(after, records)
    with pytest.raises(ValueError):
        asyncio.run(rotation.rotate_now(rot, "/subscriptions/not-a-cluster", dry_run=True))


def test_first_rotation_with_several_passwords_leaves_them(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    doc = demo_estate()
    app = next(a for a in doc["applications"] if a["display_name"] == "aks-payments-sp")
    app["password_credentials"].append({"display_name": "someone-elses", "expires_in_days": 90})
    emulator.reset(doc)
    settings = make_settings(emulator, azurite, storage_names)
    before = emulator.state()
    message = due_message(before, "aks-payments")
    asyncio.run(submit_all(settings, [message]))
    asyncio.run(run_until_idle(settings))
    after = emulator.state()
    records = asyncio.run(rows(settings))
    assert records[message.rotation_id].state == "succeeded"
    keys_before = {p["keyId"] for p in all_passwords(app_of(before, app["app_id"]))}
    keys_after = {p["keyId"] for p in all_passwords(app_of(after, app["app_id"]))}
    assert keys_before < keys_after  # nothing pre-existing removed
    trail = asyncio.run(rotation.status(settings, message.rotation_id))[0].audit
    assert any("pre-existing credentials untouched" in a.detail for a in trail)
    check_invariants(after, records)
    # The second rotation knows the cluster's key from Key Vault and retires exactly that one.
    emulator.advance(0)
    second = due_message(after, "aks-payments", reason="on_demand")
    asyncio.run(submit_all(settings, [second]))
    asyncio.run(run_until_idle(settings))
    final = emulator.state()
    keys_final = {p["keyId"] for p in all_passwords(app_of(final, app["app_id"]))}
    assert records[message.rotation_id].new_key_id not in keys_final
    assert keys_before <= keys_final
    check_invariants(final, asyncio.run(rows(settings)))


def test_shared_application_keeps_the_key_the_other_cluster_uses(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    doc = demo_estate()
    payments = next(c for c in doc["clusters"] if c["name"] == "aks-payments")
    twin = copy.deepcopy(payments)
    twin["name"] = "aks-payments-twin"
    twin["resource_group"] = "rg-aks-payments-twin"
    doc["clusters"].append(twin)
    emulator.reset(doc)
    settings = make_settings(emulator, azurite, storage_names)
    before = emulator.state()
    first = due_message(before, "aks-payments")
    asyncio.run(submit_all(settings, [first]))
    asyncio.run(run_until_idle(settings))
    mid = emulator.state()
    check_invariants(mid, asyncio.run(rows(settings)))
    assert cluster_by_name(mid, "aks-payments-twin")["heldValid"]  # its key was kept
    second = due_message(mid, "aks-payments-twin")
    asyncio.run(submit_all(settings, [second]))
    asyncio.run(run_until_idle(settings))
    after = emulator.state()
    records = asyncio.run(rows(settings))
    assert {r.state for r in records.values()} == {"succeeded"}
    check_invariants(after, records)
    app = app_of(after, payments["client_id"])
    held = {cluster_by_name(after, n)["heldKeyId"] for n in ("aks-payments", "aks-payments-twin")}
    assert {p["keyId"] for p in all_passwords(app)} == held  # the shared original key is gone once unused


def test_policy_caps_the_lifetime(emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames) -> None:
    doc = demo_estate()
    app = next(a for a in doc["applications"] if a["display_name"] == "aks-payments-sp")
    app["policy"] = {"max_password_lifetime_days": 30}
    emulator.reset(doc)
    settings = make_settings(emulator, azurite, storage_names)
    message = due_message(emulator.state(), "aks-payments")
    asyncio.run(submit_all(settings, [message]))
    asyncio.run(run_until_idle(settings))
    after = emulator.state()
    record = asyncio.run(rows(settings))[message.rotation_id]
    assert record.state == "succeeded"
    new = next(p for p in all_passwords(app_of(after, app["app_id"])) if p["keyId"] == record.new_key_id)
    assert datetime.fromisoformat(new["end"].replace("Z", "+00:00")) < datetime.now(UTC) + timedelta(days=31)


def test_status_lists_rows(rot: Settings, emulator: EmulatorControl) -> None:
    message = due_message(emulator.state(), "aks-checkout")
    asyncio.run(submit_all(rot, [message]))
    views = asyncio.run(rotation.status(rot))
    assert [v.rotation_id for v in views] == [message.rotation_id]
    assert views[0].state == "pending" and views[0].audit == ()


# -- maintenance-window math (pure) ----------------------------------------------------------------------------
def test_setting_window() -> None:
    window = SettingWindow.parse("Sat,Sun 01:00-05:00")
    saturday = datetime(2025, 3, 1, 2, 0, tzinfo=UTC)
    assert window.allows(saturday)
    assert not window.allows(saturday.replace(hour=5))
    monday = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
    assert window.next_start(monday) == datetime(2025, 3, 8, 1, 0, tzinfo=UTC)
    night = SettingWindow.parse("Fri 22:00-02:00")  # crosses midnight
    assert night.allows(datetime(2025, 3, 8, 1, 0, tzinfo=UTC))
    assert not night.allows(datetime(2025, 3, 8, 3, 0, tzinfo=UTC))
    assert is_open([], monday) and next_open([], monday) == monday
    assert effective_windows([], None) == []
    assert next_open([window], monday) == datetime(2025, 3, 8, 1, 0, tzinfo=UTC)
