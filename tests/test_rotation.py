"""The rotation engine end to end: emulator (Entra, ARM, Graph, Key Vault) + Azurite, through the real SDKs.

The judge is the emulator's truth (`/_emulator/state`): outage seconds per cluster, every password, every Key
Vault version. Helpers here are shared with tests/test_rotation_faults.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from emulator import seeds
from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from shared import rotation
from shared.messages import CredentialKind, RotationMessage, new_rotation_message
from shared.queues import RotationQueues
from shared.rotation import Deps, DrainReport
from shared.settings import Settings
from shared.store import RotationRecord, RotationStore
from shared.vault import secret_name_for
from shared.windows import SettingWindow, effective_windows, is_open, next_open
from tests.plugins.azurite import StorageNames
from tests.plugins.emulator import product_env

FAST = {
    "PROOF_SPACING_SECONDS": "0",
    "PROOF_SUCCESSES": "3",
    "RETIRE_GRACE_SECONDS": "0",
    "REQUEUE_DELAY_SECONDS": "0",
    "LRO_POLL_SECONDS": "0",
    "LEASE_SECONDS": "15",
}


# -- helpers (shared with the fault tests) ---------------------------------------------------------------------
def make_settings(emulator: EmulatorControl, azurite: Azurite, names: StorageNames, **overrides: str) -> Settings:
    env = product_env(
        emulator,
        azurite,
        names,
        **{**FAST, **overrides},
    )
    return Settings.from_env(env)


def demo_estate(**changes: Any) -> dict[str, Any]:
    """The demo estate with instant AKS operations (tests advance nothing unless they say so)."""
    doc = seeds.demo()
    doc["lro"] = {"base_seconds": 0, "per_node_seconds": 0}
    doc.update(changes)
    return doc


def cluster_by_name(state: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in state["clusters"] if c["id"].rsplit("/", 1)[-1] == name)


def app_of(state: dict[str, Any], app_id: str) -> dict[str, Any]:
    return next(a for a in state["applications"] if a["appId"] == app_id)


def all_passwords(app: dict[str, Any]) -> list[dict[str, Any]]:
    return list(app["passwordCredentials"]) + list(app["servicePrincipal"]["passwordCredentials"])


def due_message(state: dict[str, Any], name: str, reason: str = "due") -> RotationMessage:
    """The message discovery would queue for the cluster's held password."""
    cluster = cluster_by_name(state, name)
    app = app_of(state, cluster["clientId"])
    held = next(p for p in all_passwords(app) if p["keyId"] == cluster["heldKeyId"])
    expiry = datetime.fromisoformat(held["end"].replace("Z", "+00:00"))
    return new_rotation_message(
        cluster_id=cluster["id"],
        kind=CredentialKind.SP_SECRET,
        reason=reason,  # type: ignore[arg-type]
        app_id=cluster["clientId"],
        observed_expiry=expiry,
    )


def open_deps(settings: Settings) -> contextlib.AbstractAsyncContextManager[Deps]:
    """Clients that fail fast (no SDK retries): the queue redelivery is the retry under test."""
    return Deps.open(settings, sdk_kwargs={"retry_total": 0}, graph_attempts=2)


async def run_until_idle(settings: Settings, deps: Deps | None = None, rounds: int = 50) -> DrainReport:
    """Drain until no message is visible (failed deliveries reappear at once: retry_delay_seconds=0)."""
    total = DrainReport()

    async def go(d: Deps) -> None:
        for _ in range(rounds):
            report = await rotation.drain(settings, deps=d, retry_delay_seconds=0)
            total.received += report.received
            total.handled += report.handled
            total.errors += report.errors
            total.poisoned += report.poisoned
            total.invocation_seconds += report.invocation_seconds
            for key, value in report.actions.items():
                total.actions[key] = total.actions.get(key, 0) + value
            if report.received == 0:
                return

    if deps is not None:
        await go(deps)
    else:
        async with open_deps(settings) as d:
            await go(d)
    return total


async def submit_all(settings: Settings, messages: list[RotationMessage]) -> list[rotation.SubmitResult]:
    async with RotationStore(settings) as store, RotationQueues(settings) as queues:
        await store.ensure()
        await queues.ensure()
        return [await rotation.submit(settings, m, store=store, queues=queues) for m in messages]


async def rows(settings: Settings) -> dict[str, RotationRecord]:
    async with RotationStore(settings) as store:
        await store.ensure()
        return {r.rotation_id: r for r in await store.list()}


def rotation_ids_in(state: dict[str, Any]) -> set[str]:
    return {p["displayName"].split()[-1] for a in state["applications"] for p in all_passwords(a) if _ours(p)}


def _ours(password: dict[str, Any]) -> bool:
    return (password.get("displayName") or "").startswith(rotation.DISPLAY_NAME_PREFIX + " ")


def check_invariants(state: dict[str, Any], records: dict[str, RotationRecord], *, allow_poisoned: bool = True) -> None:
    """The promise, judged from the emulator's truth after a run."""
    for cluster in state["clusters"]:
        assert cluster["outage_seconds"] == 0, cluster["id"]
        if cluster["clientId"] != "msi":
            assert cluster["heldValid"], f"{cluster['id']} holds a secret Entra does not accept"
    vault = {s: versions for v in state["vaults"] for s, versions in v["secrets"].items()}
    held = {c["heldKeyId"] for c in state["clusters"]}
    referenced = set(held)
    for versions in vault.values():
        for version in versions:
            # "uncertain": kept on purpose (the cluster may hold it), tracked in Key Vault and alerted.
            if version["tags"].get("state") in ("current", "previous", "uncertain"):
                referenced.add(version["tags"].get("key-id"))
    in_flight = {rid for rid, r in records.items() if not r.terminal}
    for app in state["applications"]:
        for password in all_passwords(app):
            if not _ours(password):
                continue
            rid = password["displayName"].split()[-1]
            # A product-created password is in use, or belongs to a rotation still in progress.
            assert password["keyId"] in referenced or rid in in_flight, f"leaked password of rotation {rid}"
    newest: dict[str, RotationRecord] = {}
    for record in records.values():
        if record.state == "succeeded" and record.step == "done" and record.kind == "sp_secret":
            key = record.cluster_id.lower()
            if key not in newest or record.created_at > newest[key].created_at:
                newest[key] = record
    for rid, record in records.items():
        if record.state == "failed":
            assert record.failure_reason, rid
            kept = record.new_key_id in referenced and "nothing was removed" in (record.failure_reason or "")
            assert rid not in rotation_ids_in(state) or _held_by_cluster(state, record) or kept, f"failed {rid} leaked"
        if newest.get(record.cluster_id.lower()) is record:
            cluster = next(c for c in state["clusters"] if c["id"].lower() == record.cluster_id.lower())
            current = [
                v for v in vault.get(secret_name_for(record.cluster_id), []) if v["tags"].get("state") == "current"
            ]
            assert len(current) == 1, rid
            assert current[0]["tags"]["key-id"] == cluster["heldKeyId"] == record.new_key_id, rid
        if not record.terminal:
            assert record.state in ("pending", "running", "waiting"), rid


def _held_by_cluster(state: dict[str, Any], record: RotationRecord) -> bool:
    cluster = next(c for c in state["clusters"] if c["id"].lower() == record.cluster_id.lower())
    return bool(cluster["heldKeyId"] == record.new_key_id)


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
    assert (record.state, record.step) == ("succeeded", "skipped")


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
    assert late.state == "waiting" and late.step.startswith("apply")
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
