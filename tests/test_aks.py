"""shared.aks.AksClient against the emulator, and the maintenance-window helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from emulator import seeds
from emulator.sandbox import EmulatorControl
from emulator.seeds import ROTATOR_ARM_ACTIONS
from shared.aks import (
    AksClient,
    AksError,
    AuthorizationFailed,
    ClusterBusy,
    ClusterNotFound,
    CredentialsRejected,
)
from shared.azure import product_credential
from shared.settings import Settings
from shared.windows import MaintenanceWindow, windows_allow

T = TypeVar("T")
NEW_KEY = "bbbbbbbb-0000-4000-8000-000000000002"
NEW_SECRET = "another-rotated-secret-0123456789abcdefgh"


def _run(settings: Settings, body: Callable[[AksClient], Awaitable[T]], **kwargs: Any) -> T:
    async def main() -> T:
        credential = product_credential(settings)
        try:
            async with AksClient(settings, credential, **kwargs) as aks:
                return await body(aks)
        finally:
            await credential.close()

    return asyncio.run(main())


def _reset(emulator: EmulatorControl, doc: dict[str, Any]) -> None:
    doc["product"]["secret"] = emulator.ready["client_secret"]
    emulator.reset(doc)


def _cluster_id(spec: dict[str, Any]) -> str:
    return (
        f"/subscriptions/{spec['subscription_id']}/resourceGroups/{spec['resource_group']}"
        f"/providers/Microsoft.ContainerService/managedClusters/{spec['name']}"
    )


def _payments(lro_seconds: float = 0.0) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    doc = seeds.demo()
    doc["lro"] = {"base_seconds": lro_seconds, "per_node_seconds": 1}
    cluster = next(c for c in doc["clusters"] if c["name"] == "aks-payments")
    app = next(a for a in doc["applications"] if a["app_id"] == cluster["client_id"])
    app["password_credentials"].append({"key_id": NEW_KEY, "secret": NEW_SECRET, "expires_in_days": 180})
    cluster["held_key_id"] = app["password_credentials"][0]["key_id"]
    return doc, cluster, app


def _truth(emulator: EmulatorControl, name: str) -> dict[str, Any]:
    return next(c for c in emulator.state()["clusters"] if c["id"].endswith("/" + name))


def test_subscriptions_and_cluster_inventory(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = seeds.demo()
    _reset(emulator, doc)

    async def body(aks: AksClient) -> tuple[list[str], dict[str, Any]]:
        subs = await aks.list_subscriptions()
        clusters = {c.name: c for sub in subs for c in await aks.list_clusters(sub)}
        return subs, clusters

    subs, clusters = _run(emu_settings, body)
    assert sorted(subs) == sorted(s["id"] for s in doc["subscriptions"])
    assert set(clusters) == {"aks-payments", "aks-checkout", "aks-analytics", "aks-ml", "aks-legacy"}
    payments = clusters["aks-payments"]
    spec = next(c for c in doc["clusters"] if c["name"] == "aks-payments")
    assert payments.id == _cluster_id(spec)
    assert payments.sp_client_id == spec["client_id"] and payments.identity_type is None
    assert payments.kubelet_on_sp is True and payments.node_count == 3
    assert payments.provisioning_state == "Succeeded" and payments.kubernetes_version == "1.33.2"
    assert payments.location == "westeurope" and payments.resource_group == "rg-aks-payments"
    ml = clusters["aks-ml"]
    assert ml.sp_client_id is None and ml.identity_type == "SystemAssigned" and ml.kubelet_on_sp is False
    legacy = clusters["aks-legacy"]
    server = next(c for c in doc["clusters"] if c["name"] == "aks-legacy")["aad_profile"]["serverAppID"]
    assert legacy.legacy_aad_server_app_id == server
    assert payments.legacy_aad_server_app_id is None


def test_msi_cluster_whose_kubelet_still_uses_the_sp(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = seeds.demo()
    spec = next(c for c in doc["clusters"] if c["name"] == "aks-analytics")
    spec["identity_type"] = "SystemAssigned"
    spec["kubelet_identity"] = False
    _reset(emulator, doc)
    info = _run(emu_settings, lambda aks: aks.get_cluster(_cluster_id(spec)))
    assert info.identity_type == "SystemAssigned"
    assert info.sp_client_id == spec["client_id"] and info.kubelet_on_sp is True


def test_get_cluster_not_found(emulator: EmulatorControl, emu_settings: Settings) -> None:
    spec = seeds.demo()["clusters"][0]
    with pytest.raises(ClusterNotFound):
        _run(emu_settings, lambda aks: aks.get_cluster(_cluster_id({**spec, "name": "gone"})), retry_total=0)


def test_reset_then_poll_the_operation_url_with_the_clock(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc, cluster, app = _payments(lro_seconds=60)
    _reset(emulator, doc)
    cid = _cluster_id(cluster)
    url = _run(
        emu_settings, lambda aks: aks.begin_reset_service_principal(cid, app["app_id"], NEW_SECRET)
    ).operation_url
    assert url is not None
    assert url.startswith(emulator.endpoint + "/subscriptions/") and "/operations/" in url
    assert NEW_SECRET not in url
    status = _run(emu_settings, lambda aks: aks.operation_status(url))
    assert (status.status, status.error) == ("InProgress", None)
    assert _truth(emulator, "aks-payments")["provisioningState"] == "Updating"
    with pytest.raises(ClusterBusy):
        _run(emu_settings, lambda aks: aks.begin_reset_service_principal(cid, app["app_id"], NEW_SECRET), retry_total=0)
    emulator.advance(64)  # base 60 + 1 s per node * 3
    status = _run(emu_settings, lambda aks: aks.operation_status(url))
    assert (status.status, status.error) == ("Succeeded", None)
    truth = _truth(emulator, "aks-payments")
    assert truth["heldKeyId"] == NEW_KEY and truth["provisioningState"] == "Succeeded"


def test_failed_operation_reports_its_error(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc, cluster, app = _payments()
    _reset(emulator, doc)
    emulator.add_faults({"kind": "lro_fail", "surface": "arm", "operation": "resetServicePrincipalProfile"})
    accepted = _run(
        emu_settings, lambda aks: aks.begin_reset_service_principal(_cluster_id(cluster), app["app_id"], NEW_SECRET)
    )
    url = accepted.operation_url
    assert url is not None
    emulator.advance(5)
    status = _run(emu_settings, lambda aks: aks.operation_status(url))
    assert status.status == "Failed" and status.error is not None and "resetServicePrincipalProfile" in status.error
    assert _truth(emulator, "aks-payments")["heldKeyId"] != NEW_KEY


def test_refused_secret_is_credentials_rejected(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc, cluster, app = _payments()
    _reset(emulator, doc)
    with pytest.raises(CredentialsRejected) as info:
        _run(
            emu_settings,
            lambda aks: aks.begin_reset_service_principal(
                _cluster_id(cluster), app["app_id"], "wrong-secret-0123456789abcdef"
            ),
            retry_total=0,
        )
    assert "wrong-secret" not in str(info.value)
    assert info.value.status == 400


def test_operation_url_must_be_on_the_arm_endpoint(emulator: EmulatorControl, emu_settings: Settings) -> None:
    foreign = "https://evil.example/subscriptions/x/providers/Microsoft.ContainerService/locations/w/operations/1"
    with pytest.raises(AksError, match="outside the configured ARM endpoint"):
        _run(emu_settings, lambda aks: aks.operation_status(foreign))
    other_path = emulator.endpoint + "/_emulator/state"
    with pytest.raises(AksError, match="not an AKS operation status URL"):
        _run(emu_settings, lambda aks: aks.operation_status(other_path))


def test_authorization_failed_names_the_missing_action(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc, cluster, _ = _payments()
    for ra in doc["role_assignments"]:
        ra["actions"] = [a for a in ROTATOR_ARM_ACTIONS if "maintenanceConfigurations" not in a]
    _reset(emulator, doc)
    with pytest.raises(AuthorizationFailed) as info:
        _run(emu_settings, lambda aks: aks.maintenance_windows(_cluster_id(cluster)), retry_total=0)
    assert info.value.action == "Microsoft.ContainerService/managedClusters/maintenanceConfigurations/read"
    assert info.value.action in str(info.value)
    assert info.value.scope.lower() == _cluster_id(cluster).lower()


def test_ca_expiry_and_certificate_rotation(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = seeds.demo()
    doc["lro"] = {"base_seconds": 10, "per_node_seconds": 0}
    _reset(emulator, doc)
    spec = next(c for c in doc["clusters"] if c["name"] == "aks-legacy")
    cid = _cluster_id(spec)
    seeded = datetime.fromisoformat(_truth(emulator, "aks-legacy")["certExpiry"].replace("Z", "+00:00"))
    assert _run(emu_settings, lambda aks: aks.ca_expiry(cid)) == seeded.replace(microsecond=0)
    url = _run(emu_settings, lambda aks: aks.begin_rotate_certificates(cid)).operation_url
    assert url is not None
    emulator.advance(11)
    assert _run(emu_settings, lambda aks: aks.operation_status(url)).status == "Succeeded"
    rotated = _run(emu_settings, lambda aks: aks.ca_expiry(cid))
    assert rotated > datetime.now(UTC) + timedelta(days=365 * 29)


def test_maintenance_windows_are_parsed(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = seeds.demo()
    spec = doc["clusters"][0]
    spec["maintenance"] = [
        {"name": "default", "time_in_week": [{"day": "Saturday", "hourSlots": [1, 2]}]},
        {
            "name": "aksManagedNodeOSUpgradeSchedule",
            "maintenance_window": {
                "schedule": {"daily": {"intervalDays": 1}},
                "durationHours": 6,
                "utcOffset": "+02:00",
                "startTime": "22:00",
            },
        },
    ]
    _reset(emulator, doc)
    windows = _run(emu_settings, lambda aks: aks.maintenance_windows(_cluster_id(spec)))
    assert [w.name for w in windows] == ["default", "aksManagedNodeOSUpgradeSchedule"]
    saturday = datetime(2030, 1, 5, 1, 30, tzinfo=UTC)  # a Saturday
    assert windows_allow(windows, saturday) is True
    assert windows_allow(windows, saturday + timedelta(hours=2)) is False
    assert windows_allow(windows, saturday, "nope") is None
    nightly = windows[1]
    assert nightly.allows(datetime(2030, 1, 7, 20, 0, tzinfo=UTC))  # 22:00 +02:00
    assert nightly.allows(datetime(2030, 1, 8, 1, 59, tzinfo=UTC))
    assert not nightly.allows(datetime(2030, 1, 8, 2, 0, tzinfo=UTC))
    empty = _run(emu_settings, lambda aks: aks.maintenance_windows(_cluster_id(doc["clusters"][1])))
    assert empty == []


def test_time_in_week_window_and_next_start() -> None:
    window = MaintenanceWindow.from_arm(
        "default",
        {
            "timeInWeek": [{"day": "Sunday", "hourSlots": [3, 4]}, {"day": "Wednesday", "hourSlots": [23]}],
            "notAllowedTime": [{"start": "2030-01-06T00:00:00Z", "end": "2030-01-07T00:00:00Z"}],
        },
    )
    monday = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)
    assert window.next_start(monday) == datetime(2030, 1, 9, 23, 0, tzinfo=UTC)
    assert window.allows(datetime(2030, 1, 9, 23, 59, tzinfo=UTC))
    # Sunday 2030-01-06 is blacked out; the next Sunday is not.
    assert not window.allows(datetime(2030, 1, 6, 3, 30, tzinfo=UTC))
    assert window.next_start(datetime(2030, 1, 10, tzinfo=UTC)) == datetime(2030, 1, 13, 3, 0, tzinfo=UTC)
    assert window.next_start(datetime(2030, 1, 13, 3, 15, tzinfo=UTC)) == datetime(2030, 1, 13, 3, 15, tzinfo=UTC)
    with pytest.raises(ValueError):
        MaintenanceWindow.from_arm("default", {}).next_start(monday)


def test_schedule_windows() -> None:
    weekly = MaintenanceWindow.from_arm(
        "aksManagedAutoUpgradeSchedule",
        {
            "maintenanceWindow": {
                "schedule": {"weekly": {"intervalWeeks": 2, "dayOfWeek": "Friday"}},
                "durationHours": 4,
                "utcOffset": "-05:00",
                "startDate": "2030-01-04",
                "startTime": "23:00",
                "notAllowedDates": [{"start": "2030-01-18", "end": "2030-01-18"}],
            }
        },
    )
    # Fri 2030-01-04 23:00 -05:00 = Sat 04:00 UTC; every 2 weeks; 2030-01-18 is excluded.
    assert weekly.allows(datetime(2030, 1, 5, 4, 0, tzinfo=UTC))
    assert not weekly.allows(datetime(2030, 1, 12, 4, 0, tzinfo=UTC))
    assert weekly.next_start(datetime(2030, 1, 6, tzinfo=UTC)) == datetime(2030, 1, 19, 5, 0, tzinfo=UTC)
    relative = MaintenanceWindow.from_arm(
        "aksManagedAutoUpgradeSchedule",
        {
            "maintenanceWindow": {
                "schedule": {"relativeMonthly": {"intervalMonths": 1, "weekIndex": "Last", "dayOfWeek": "Monday"}},
                "durationHours": 8,
                "startTime": "00:00",
            }
        },
    )
    assert relative.next_start(datetime(2030, 1, 1, tzinfo=UTC)) == datetime(2030, 1, 28, tzinfo=UTC)
    absolute = MaintenanceWindow.from_arm(
        "x",
        {
            "maintenanceWindow": {
                "schedule": {"absoluteMonthly": {"intervalMonths": 3, "dayOfMonth": 15}},
                "durationHours": 4,
                "startDate": "2030-02-01",
                "startTime": "01:00",
            }
        },
    )
    assert absolute.next_start(datetime(2030, 1, 1, tzinfo=UTC)) == datetime(2030, 2, 15, 1, 0, tzinfo=UTC)
    assert absolute.next_start(datetime(2030, 2, 16, tzinfo=UTC)) == datetime(2030, 5, 15, 1, 0, tzinfo=UTC)
