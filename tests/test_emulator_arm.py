"""The emulator's ARM / AKS surface, driven by the real azure-mgmt-containerservice client."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import httpx
import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.mgmt.containerservice.aio import ContainerServiceClient
from azure.mgmt.containerservice.models import ManagedClusterServicePrincipalProfile
from cryptography import x509

from emulator import seeds
from emulator.sandbox import EmulatorControl
from emulator.seeds import ROTATOR_ARM_ACTIONS
from shared.azure import container_service, product_credential
from shared.settings import Settings
from tests.plugins.emulator import grant_sdk_poller

T = TypeVar("T")
NEW_KEY = "aaaaaaaa-0000-4000-8000-000000000001"
NEW_SECRET = "rotated-secret-value-0123456789abcdefghij"


def _run(settings: Settings, sub: str, body: Callable[[ContainerServiceClient], Awaitable[T]], **kwargs: Any) -> T:
    async def main() -> T:
        credential = product_credential(settings)
        try:
            async with container_service(settings, credential, sub, **kwargs) as client:
                return await body(client)
        finally:
            await credential.close()

    return asyncio.run(main())


def _demo_with_new_password(lro_seconds: float = 0.0) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Demo estate where aks-payments' app also has a fresh password NEW_SECRET (key NEW_KEY)."""
    doc = seeds.demo()
    doc["lro"] = {"base_seconds": lro_seconds, "per_node_seconds": 0}
    cluster = next(c for c in doc["clusters"] if c["name"] == "aks-payments")
    app = next(a for a in doc["applications"] if a["app_id"] == cluster["client_id"])
    app["password_credentials"].append({"key_id": NEW_KEY, "secret": NEW_SECRET, "expires_in_days": 180})
    cluster["held_key_id"] = app["password_credentials"][0]["key_id"]
    return doc, cluster, app


def _reset(emulator: EmulatorControl, doc: dict[str, Any]) -> None:
    """Reset to `doc`, keeping the product identity the session's settings were built with; these wire tests drive
    the SDK's own LRO poller, so the identity also holds what it reads (`grant_sdk_poller`)."""
    doc["product"]["secret"] = emulator.ready["client_secret"]
    emulator.reset(grant_sdk_poller(doc))


def _truth_cluster(emulator: EmulatorControl, name: str) -> dict[str, Any]:
    return next(c for c in emulator.state()["clusters"] if c["id"].endswith("/" + name))


def test_list_follows_next_link_across_pages(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = seeds.generate(clusters=250, subscriptions=1)
    doc["limits"] = {"arm_page_size": 100}
    _reset(emulator, doc)
    sub = doc["subscriptions"][0]["id"]

    async def names(client: ContainerServiceClient) -> list[str]:
        return [str(mc.name) async for mc in client.managed_clusters.list()]

    listed = _run(emu_settings, sub, names)
    assert sorted(listed) == sorted(c["name"] for c in doc["clusters"])
    assert emulator.requests()["arm.list"] == 3

    async def by_rg(client: ContainerServiceClient) -> list[str]:
        return [str(mc.name) async for mc in client.managed_clusters.list_by_resource_group("rg-0001")]

    assert len(_run(emu_settings, sub, by_rg)) == 50


def test_get_cluster_shapes_and_not_found(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = seeds.demo()
    _reset(emulator, doc)
    payments = next(c for c in doc["clusters"] if c["name"] == "aks-payments")
    ml = next(c for c in doc["clusters"] if c["name"] == "aks-ml")

    async def get(client: ContainerServiceClient) -> Any:
        return await client.managed_clusters.get(payments["resource_group"], "aks-payments")

    mc = _run(emu_settings, payments["subscription_id"], get)
    raw = mc.as_dict()
    assert mc.id.endswith(
        "/resourceGroups/rg-aks-payments/providers/Microsoft.ContainerService/managedClusters/aks-payments"
    )
    assert mc.properties.service_principal_profile.client_id == payments["client_id"]
    assert "secret" not in raw["properties"]["servicePrincipalProfile"]
    assert mc.properties.identity_profile is None and mc.identity is None
    assert mc.properties.agent_pool_profiles[0].count == 3
    assert mc.properties.agent_pool_profiles[0].type == "VirtualMachineScaleSets"
    assert mc.properties.provisioning_state == "Succeeded"

    async def get_ml(client: ContainerServiceClient) -> Any:
        return await client.managed_clusters.get("rg-aks-ml", "aks-ml")

    msi = _run(emu_settings, ml["subscription_id"], get_ml)
    assert msi.properties.service_principal_profile.client_id == "msi"
    assert msi.identity.type == "SystemAssigned" and msi.identity.principal_id
    assert msi.properties.identity_profile["kubeletidentity"].client_id

    async def missing(client: ContainerServiceClient) -> Any:
        return await client.managed_clusters.get(payments["resource_group"], "nope")

    with pytest.raises(ResourceNotFoundError) as info:
        _run(emu_settings, payments["subscription_id"], missing, retry_total=0)
    assert info.value.error is not None and info.value.error.code == "ResourceNotFound"
    assert "Microsoft.ContainerService/managedClusters/nope" in str(info.value)


def test_maintenance_configurations(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = seeds.demo()
    cluster = doc["clusters"][0]
    cluster["maintenance"] = [
        {
            "name": "default",
            "time_in_week": [{"day": "Saturday", "hourSlots": [1, 2, 3]}],
            "not_allowed_time": [{"start": "2030-12-24T00:00:00Z", "end": "2030-12-27T00:00:00Z"}],
        },
        {
            "name": "aksManagedAutoUpgradeSchedule",
            "maintenance_window": {
                "schedule": {"weekly": {"intervalWeeks": 1, "dayOfWeek": "Sunday"}},
                "durationHours": 4,
                "utcOffset": "+00:00",
                "startTime": "02:00",
            },
        },
    ]
    _reset(emulator, doc)

    async def configs(client: ContainerServiceClient) -> tuple[list[Any], Any]:
        listed = [
            c
            async for c in client.maintenance_configurations.list_by_managed_cluster(
                cluster["resource_group"], cluster["name"]
            )
        ]
        one = await client.maintenance_configurations.get(cluster["resource_group"], cluster["name"], "default")
        return listed, one

    listed, default = _run(emu_settings, cluster["subscription_id"], configs)
    assert [c.name for c in listed] == ["default", "aksManagedAutoUpgradeSchedule"]
    assert default.properties.time_in_week[0].day == "Saturday"
    assert default.properties.time_in_week[0].hour_slots == [1, 2, 3]
    assert default.properties.not_allowed_time[0].start.year == 2030
    assert listed[1].properties.maintenance_window.schedule.weekly.day_of_week == "Sunday"
    assert listed[1].properties.maintenance_window.duration_hours == 4


def test_kubeconfig_ca_expiry_matches_seeded_cert_expiry(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = seeds.demo()
    _reset(emulator, doc)
    legacy = next(c for c in doc["clusters"] if c["name"] == "aks-legacy")

    async def creds(client: ContainerServiceClient) -> Any:
        return await client.managed_clusters.list_cluster_user_credentials("rg-aks-legacy", "aks-legacy")

    result = _run(emu_settings, legacy["subscription_id"], creds)
    kubeconfig = result.kubeconfigs[0].value.decode()
    ca = re.search(r"certificate-authority-data: (\S+)", kubeconfig)
    assert ca is not None
    cert = x509.load_pem_x509_certificate(base64.b64decode(ca[1]))
    seeded = datetime.fromisoformat(_truth_cluster(emulator, "aks-legacy")["certExpiry"].replace("Z", "+00:00"))
    assert cert.not_valid_after_utc == seeded.replace(microsecond=0)
    assert "server: https://" in kubeconfig


def test_reset_through_the_sdk_poller(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc, cluster, app = _demo_with_new_password()
    _reset(emulator, doc)
    old_key = app["password_credentials"][0]["key_id"]
    assert _truth_cluster(emulator, "aks-payments")["heldKeyId"] == old_key

    async def reset(client: ContainerServiceClient) -> None:
        poller = await client.managed_clusters.begin_reset_service_principal_profile(
            cluster["resource_group"],
            cluster["name"],
            ManagedClusterServicePrincipalProfile(client_id=app["app_id"], secret=NEW_SECRET),
            polling_interval=0,
        )
        await poller.result()

    _run(emu_settings, cluster["subscription_id"], reset)
    truth = _truth_cluster(emulator, "aks-payments")
    assert truth["heldKeyId"] == NEW_KEY and truth["heldValid"] is True
    assert truth["provisioningState"] == "Succeeded"
    ops = emulator.state()["operations"]
    assert [(o["kind"], o["status"]) for o in ops] == [("resetServicePrincipalProfile", "Succeeded")]
    counts = emulator.requests()
    assert counts["arm.operationStatus"] >= 1 and counts["arm.resetServicePrincipalProfile"] == 1


def test_reset_with_a_refused_secret_keeps_the_old_one(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc, cluster, app = _demo_with_new_password()
    _reset(emulator, doc)
    old_key = app["password_credentials"][0]["key_id"]

    async def reset(client: ContainerServiceClient) -> None:
        poller = await client.managed_clusters.begin_reset_service_principal_profile(
            cluster["resource_group"],
            cluster["name"],
            ManagedClusterServicePrincipalProfile(
                client_id=app["app_id"], secret="not-a-secret-entra-knows-0123456789"
            ),
            polling_interval=0,
        )
        await poller.result()

    with pytest.raises(HttpResponseError) as info:
        _run(emu_settings, cluster["subscription_id"], reset, retry_total=0)
    assert info.value.status_code == 400
    assert "The credentials in ServicePrincipalProfile were invalid. Please see https://aka.ms/aks-sp-help" in str(
        info.value
    )
    assert "AADSTS7000215" in str(info.value)
    truth = _truth_cluster(emulator, "aks-payments")
    assert truth["heldKeyId"] == old_key and truth["provisioningState"] == "Succeeded"


def test_lro_fail_fault_fails_the_operation(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc, cluster, app = _demo_with_new_password()
    _reset(emulator, doc)
    emulator.add_faults(
        {
            "kind": "lro_fail",
            "surface": "arm",
            "operation": "resetServicePrincipalProfile",
            "message": "Node drain timed out.",
            "times": 1,
        }
    )

    async def reset(client: ContainerServiceClient) -> None:
        poller = await client.managed_clusters.begin_reset_service_principal_profile(
            cluster["resource_group"],
            cluster["name"],
            ManagedClusterServicePrincipalProfile(client_id=app["app_id"], secret=NEW_SECRET),
            polling_interval=0,
        )
        await poller.result()

    with pytest.raises(HttpResponseError, match="Node drain timed out"):
        _run(emu_settings, cluster["subscription_id"], reset)
    truth = _truth_cluster(emulator, "aks-payments")
    assert truth["heldKeyId"] == app["password_credentials"][0]["key_id"]
    assert truth["provisioningState"] == "Failed"
    # The fault fired once: the retry succeeds.
    _run(emu_settings, cluster["subscription_id"], reset)
    assert _truth_cluster(emulator, "aks-payments")["heldKeyId"] == NEW_KEY


def test_second_operation_while_updating_is_409(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc, cluster, app = _demo_with_new_password(lro_seconds=600)
    _reset(emulator, doc)

    async def begin(client: ContainerServiceClient) -> None:
        await client.managed_clusters.begin_reset_service_principal_profile(
            cluster["resource_group"],
            cluster["name"],
            ManagedClusterServicePrincipalProfile(client_id=app["app_id"], secret=NEW_SECRET),
            polling=False,
        )

    _run(emu_settings, cluster["subscription_id"], begin)
    assert _truth_cluster(emulator, "aks-payments")["provisioningState"] == "Updating"

    async def rotate(client: ContainerServiceClient) -> None:
        await client.managed_clusters.begin_rotate_cluster_certificates(
            cluster["resource_group"], cluster["name"], polling=False
        )

    with pytest.raises(ResourceExistsError) as info:
        _run(emu_settings, cluster["subscription_id"], begin, retry_total=0)
    assert info.value.status_code == 409 and info.value.error is not None
    assert info.value.error.code == "OperationNotAllowed"
    assert "Another operation (Updating) is in progress" in str(info.value)
    with pytest.raises(ResourceExistsError):
        _run(emu_settings, cluster["subscription_id"], rotate, retry_total=0)
    emulator.advance(601)
    truth = _truth_cluster(emulator, "aks-payments")
    assert truth["provisioningState"] == "Succeeded" and truth["heldKeyId"] == NEW_KEY


def test_operation_status_resource_and_results(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc, cluster, _ = _demo_with_new_password(lro_seconds=30)
    _reset(emulator, doc)

    async def rotate(client: ContainerServiceClient) -> tuple[dict[str, Any], ...]:
        poller = await client.managed_clusters.begin_rotate_cluster_certificates(
            cluster["resource_group"], cluster["name"], polling=False
        )
        initial = poller.polling_method()._initial_response.http_response  # type: ignore[attr-defined]
        status_url = initial.headers["Azure-AsyncOperation"]
        result_url = initial.headers["Location"]
        assert initial.status_code == 202 and initial.headers["Retry-After"] == "10"
        assert "/providers/Microsoft.ContainerService/locations/westeurope/operations/" in status_url
        assert "/operationresults/" in result_url
        first = await client.send_request(_get(status_url))
        pending = await client.send_request(_get(result_url))
        emulator.advance(31)
        done = await client.send_request(_get(status_url))
        final = await client.send_request(_get(result_url))
        return (
            {"status": first.json(), "code": pending.status_code},
            {"status": done.json(), "code": final.status_code},
        )

    before, after = _run(emu_settings, cluster["subscription_id"], rotate)
    assert before["status"]["status"] == "InProgress" and "endTime" not in before["status"]
    assert before["code"] == 202
    assert after["status"]["status"] == "Succeeded" and after["status"]["endTime"]
    assert after["status"]["name"] and after["status"]["startTime"]
    assert after["code"] == 204
    expiry = datetime.fromisoformat(_truth_cluster(emulator, "aks-payments")["certExpiry"].replace("Z", "+00:00"))
    assert expiry.year >= datetime.now().year + 29


def _get(url: str) -> Any:
    from azure.core.rest import HttpRequest

    return HttpRequest("GET", url)


def test_authorization_failed_names_action_and_scope(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc, cluster, app = _demo_with_new_password()
    reduced = [a for a in ROTATOR_ARM_ACTIONS if "resetServicePrincipalProfile" not in a]
    for ra in doc["role_assignments"]:
        ra["actions"] = reduced
    _reset(emulator, doc)

    async def reset(client: ContainerServiceClient) -> None:
        await client.managed_clusters.begin_reset_service_principal_profile(
            cluster["resource_group"],
            cluster["name"],
            ManagedClusterServicePrincipalProfile(client_id=app["app_id"], secret=NEW_SECRET),
            polling=False,
        )

    with pytest.raises(HttpResponseError) as info:
        _run(emu_settings, cluster["subscription_id"], reset, retry_total=0)
    assert info.value.status_code == 403 and info.value.error is not None
    assert info.value.error.code == "AuthorizationFailed"
    scope = (
        f"/subscriptions/{cluster['subscription_id']}/resourceGroups/{cluster['resource_group']}"
        f"/providers/Microsoft.ContainerService/managedClusters/{cluster['name']}"
    )
    oid = _product_oid(emulator)
    assert info.value.error.message == (
        f"The client '{emu_settings.client_id}' with object id '{oid}' "
        "does not have authorization to perform action "
        f"'Microsoft.ContainerService/managedClusters/resetServicePrincipalProfile/action' over scope '{scope}' "
        "or the scope is invalid. If access was recently granted, please refresh your credentials."
    )
    assert _truth_cluster(emulator, "aks-payments")["heldKeyId"] != NEW_KEY


def _product_oid(emulator: EmulatorControl) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, "sp:" + emulator.ready["client_id"]))


def test_throttling_answers_429_and_the_sdk_retries_through(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = seeds.demo()
    doc["limits"] = {"arm_read_capacity": 2, "arm_read_refill": 2}
    _reset(emulator, doc)
    cluster = doc["clusters"][0]

    async def gets(client: ContainerServiceClient) -> list[str]:
        return [
            str((await client.managed_clusters.get(cluster["resource_group"], cluster["name"])).name) for _ in range(4)
        ]

    with pytest.raises(HttpResponseError) as info:
        _run(emu_settings, cluster["subscription_id"], gets, retry_total=0)
    assert info.value.status_code == 429
    response: Any = info.value.response
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["x-ms-ratelimit-remaining-subscription-reads"] == "0"
    assert _run(emu_settings, cluster["subscription_id"], gets) == [cluster["name"]] * 4


def test_ratelimit_header_subscriptions_and_api_version(emulator: EmulatorControl, emu_settings: Settings) -> None:
    async def token() -> str:
        credential = product_credential(emu_settings)
        try:
            return (await credential.get_token("https://management.azure.com/.default")).token
        finally:
            await credential.close()

    headers = {"Authorization": f"Bearer {asyncio.run(token())}"}
    with httpx.Client(base_url=emulator.endpoint, verify=emulator.ssl_context(), headers=headers) as http:
        subs = http.get("/subscriptions", params={"api-version": "2022-12-01"})
        assert subs.status_code == 200
        assert int(subs.headers["x-ms-ratelimit-remaining-subscription-reads"]) > 0
        assert len(subs.json()["value"]) == 3 and subs.json()["value"][0]["state"] == "Enabled"
        no_version = http.get("/subscriptions")
        assert no_version.status_code == 400
        assert no_version.json()["error"]["code"] == "MissingApiVersionParameter"
        sub = subs.json()["value"][0]["subscriptionId"]
        unknown = http.get(
            f"/subscriptions/{sub}/resourceGroups/rg-none/providers/Microsoft.ContainerService/managedClusters/x",
            params={"api-version": "2026-08-01"},
        )
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "ResourceGroupNotFound"
