"""Field modes (`/_emulator/modes`): AKS, ARM and Graph as they behave in the field, each off by default, driven
through the SDKs the product uses."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.containerservice.aio import ContainerServiceClient
from azure.mgmt.containerservice.models import ManagedClusterServicePrincipalProfile

from emulator import seeds
from emulator.sandbox import EmulatorControl
from shared.azure import container_service, product_credential
from shared.settings import Settings
from tests.plugins.emulator import grant_sdk_poller

T = TypeVar("T")
NEW_KEY = "cccccccc-0000-4000-8000-000000000003"
NEW_SECRET = "modes-new-secret-0123456789abcdefghijklmn"


def _run(settings: Settings, sub: str, body: Callable[[ContainerServiceClient], Awaitable[T]], **kw: Any) -> T:
    async def main() -> T:
        credential = product_credential(settings)
        try:
            async with container_service(settings, credential, sub, retry_total=0, **kw) as client:
                return await body(client)
        finally:
            await credential.close()

    return asyncio.run(main())


def _estate(emulator: EmulatorControl, lro_seconds: float = 0.0, pools: int = 1) -> dict[str, Any]:
    """The demo estate; these tests drive the SDK's own LRO poller, so the identity holds what it reads."""
    doc = grant_sdk_poller(seeds.demo())
    doc["product"]["secret"] = emulator.ready["client_secret"]
    doc["lro"] = {"base_seconds": lro_seconds, "per_node_seconds": 0}
    cluster = next(c for c in doc["clusters"] if c["name"] == "aks-payments")
    app = next(a for a in doc["applications"] if a["app_id"] == cluster["client_id"])
    app["password_credentials"].append({"key_id": NEW_KEY, "secret": NEW_SECRET, "expires_in_days": 180})
    cluster["held_key_id"] = app["password_credentials"][0]["key_id"]
    cluster["node_pools"] = [{"name": f"pool{i}", "count": 2} for i in range(pools)]
    emulator.reset(doc)
    return cluster


def _truth(emulator: EmulatorControl) -> dict[str, Any]:
    return next(c for c in emulator.state()["clusters"] if c["id"].endswith("/aks-payments"))


def _reset_sp(cluster: dict[str, Any], secret: str = NEW_SECRET) -> Callable[[ContainerServiceClient], Awaitable[Any]]:
    async def reset(client: ContainerServiceClient) -> Any:
        profile = ManagedClusterServicePrincipalProfile(client_id=cluster["client_id"], secret=secret)
        poller = await client.managed_clusters.begin_reset_service_principal_profile(
            cluster["resource_group"], cluster["name"], profile, polling_interval=0
        )
        return await poller.result()

    return reset


def _raw_reset(emulator: EmulatorControl, settings: Settings, cluster: dict[str, Any]) -> httpx.Response:
    async def main() -> httpx.Response:
        credential = product_credential(settings)
        try:
            token = (await credential.get_token("https://management.azure.com/.default")).token
        finally:
            await credential.close()
        url = (
            f"{emulator.endpoint}/subscriptions/{cluster['subscription_id']}/resourceGroups/"
            f"{cluster['resource_group']}/providers/Microsoft.ContainerService/managedClusters/{cluster['name']}"
            "/resetServicePrincipalProfile?api-version=2026-08-01"
        )
        async with httpx.AsyncClient(verify=emulator.ssl_context()) as http:
            body = {"clientId": cluster["client_id"], "secret": NEW_SECRET}
            return await http.post(url, json=body, headers={"Authorization": f"Bearer {token}"})

    return asyncio.run(main())


def test_modes_are_off_by_default_and_unknown_ones_are_refused(emulator: EmulatorControl) -> None:
    assert not any(emulator.state()["modes"][k] for k in ("node_image_upgrade", "lro_location_only"))
    with pytest.raises(httpx.HTTPStatusError):
        emulator.set_modes(no_such_mode=True)
    with pytest.raises(httpx.HTTPStatusError):
        emulator.set_modes(operation_url_form="sideways")


def test_failed_reset_as_node_image_upgrade_leaves_pools_split_and_aks_retries(
    emulator: EmulatorControl, emu_settings: Settings
) -> None:
    cluster = _estate(emulator, lro_seconds=10, pools=3)
    emulator.set_modes(node_image_upgrade=True, aks_retries_failed_reset=1, aks_retry_seconds=30)
    emulator.add_faults({"kind": "lro_fail", "surface": "arm", "operation": "resetServicePrincipalProfile", "times": 1})
    old = _truth(emulator)["heldKeyId"]

    async def begin(client: ContainerServiceClient) -> str:
        profile = ManagedClusterServicePrincipalProfile(client_id=cluster["client_id"], secret=NEW_SECRET)
        poller = await client.managed_clusters.begin_reset_service_principal_profile(
            cluster["resource_group"], cluster["name"], profile, polling_interval=0
        )
        return str(poller.status())

    _run(emu_settings, cluster["subscription_id"], begin)
    emulator.advance(11)
    truth = _truth(emulator)
    assert [p["heldKeyId"] for p in truth["nodePools"]] == [NEW_KEY, NEW_KEY, old]
    assert truth["controlPlane"]["heldKeyId"] == NEW_KEY
    assert truth["provisioningState"] == "Updating"  # AKS retries the failed reset
    assert [op["status"] for op in emulator.state()["operations"]] == ["Failed", "InProgress"]

    emulator.advance(41)
    truth = _truth(emulator)
    assert {p["heldKeyId"] for p in truth["nodePools"]} == {NEW_KEY}
    assert truth["provisioningState"] == "Succeeded" and truth["outage_seconds"] == 0


def test_location_only_202_is_followed_by_the_sdk(emulator: EmulatorControl, emu_settings: Settings) -> None:
    cluster = _estate(emulator, lro_seconds=0)
    emulator.set_modes(lro_location_only=True)
    raw = _raw_reset(emulator, emu_settings, cluster)
    assert raw.status_code == 202 and "Azure-AsyncOperation" not in raw.headers and raw.headers["Location"]
    emulator.reset()
    cluster = _estate(emulator, lro_seconds=2)
    emulator.set_modes(lro_location_only=True)

    async def reset_and_advance(client: ContainerServiceClient) -> Any:
        profile = ManagedClusterServicePrincipalProfile(client_id=cluster["client_id"], secret=NEW_SECRET)
        poller = await client.managed_clusters.begin_reset_service_principal_profile(
            cluster["resource_group"], cluster["name"], profile, polling_interval=0
        )
        emulator.advance(3)
        return await poller.result()

    _run(emu_settings, cluster["subscription_id"], reset_and_advance)
    assert _truth(emulator)["heldKeyId"] == NEW_KEY
    assert emulator.requests().get("arm.operationStatus", 0) == 0


def test_reset_answered_200_is_complete_at_once(emulator: EmulatorControl, emu_settings: Settings) -> None:
    cluster = _estate(emulator, lro_seconds=60)
    emulator.set_modes(reset_sync_200=True)
    raw = _raw_reset(emulator, emu_settings, cluster)
    assert raw.status_code == 200
    assert _truth(emulator)["heldKeyId"] == NEW_KEY and _truth(emulator)["provisioningState"] == "Succeeded"


def test_invalid_secret_fails_the_operation_with_details(emulator: EmulatorControl, emu_settings: Settings) -> None:
    cluster = _estate(emulator, lro_seconds=1)
    emulator.set_modes(invalid_secret_async=True)

    async def reset_wrong(client: ContainerServiceClient) -> Any:
        profile = ManagedClusterServicePrincipalProfile(client_id=cluster["client_id"], secret="not-a-password-x")
        poller = await client.managed_clusters.begin_reset_service_principal_profile(
            cluster["resource_group"], cluster["name"], profile, polling_interval=0
        )
        emulator.advance(2)
        return await poller.result()

    with pytest.raises(HttpResponseError) as failed:
        _run(emu_settings, cluster["subscription_id"], reset_wrong)
    error = failed.value.error
    assert error is not None and error.code == "ResourceOperationFailure"
    assert error.details and "ServicePrincipalProfile were invalid" in error.details[0].message
    assert _truth(emulator)["heldKeyId"] != NEW_KEY


@pytest.mark.parametrize("form", ["lowercase", "resourcegroup", "legacy_api_version"])
def test_operation_urls_in_other_forms_are_served(emulator: EmulatorControl, emu_settings: Settings, form: str) -> None:
    cluster = _estate(emulator, lro_seconds=2)
    emulator.set_modes(operation_url_form=form)
    raw = _raw_reset(emulator, emu_settings, cluster)
    status_url = raw.headers["Azure-AsyncOperation"]
    if form == "lowercase":
        assert "/providers/microsoft.containerservice/locations/" in status_url
    elif form == "resourcegroup":
        assert f"/resourceGroups/{cluster['resource_group']}/providers/" in status_url
    else:
        assert status_url.endswith("api-version=2016-03-30")
    emulator.reset()
    cluster = _estate(emulator, lro_seconds=2)
    emulator.set_modes(operation_url_form=form, strict_api_versions=True)

    async def reset_and_advance(client: ContainerServiceClient) -> Any:
        profile = ManagedClusterServicePrincipalProfile(client_id=cluster["client_id"], secret=NEW_SECRET)
        poller = await client.managed_clusters.begin_reset_service_principal_profile(
            cluster["resource_group"], cluster["name"], profile, polling_interval=0
        )
        emulator.advance(3)
        return await poller.result()

    _run(emu_settings, cluster["subscription_id"], reset_and_advance)
    assert _truth(emulator)["heldKeyId"] == NEW_KEY


def test_operation_status_carries_retry_after(emulator: EmulatorControl, emu_settings: Settings) -> None:
    cluster = _estate(emulator, lro_seconds=30)
    raw = _raw_reset(emulator, emu_settings, cluster)
    token = raw.request.headers["Authorization"]
    status = httpx.get(
        raw.headers["Azure-AsyncOperation"], headers={"Authorization": token}, verify=emulator.ssl_context()
    )
    assert status.json()["status"] == "InProgress" and 1 <= int(status.headers["Retry-After"]) <= 10


def test_unknown_api_version_refused_as_arm_does(emulator: EmulatorControl, emu_settings: Settings) -> None:
    cluster = _estate(emulator)
    emulator.set_modes(strict_api_versions=True)

    async def get(client: ContainerServiceClient) -> Any:
        return await client.managed_clusters.get(cluster["resource_group"], "aks-payments")

    assert _run(emu_settings, cluster["subscription_id"], get).name == "aks-payments"
    with pytest.raises(HttpResponseError) as refused:
        _run(emu_settings, cluster["subscription_id"], get, api_version="2099-01-01")
    assert refused.value.status_code == 400 and refused.value.error is not None
    assert refused.value.error.code == "NoRegisteredProviderFound" and "2026-08-01" in str(refused.value)


def test_graph_reads_lag_writes(emulator: EmulatorControl, emu_settings: Settings) -> None:
    cluster = _estate(emulator)
    emulator.set_modes(graph_read_lag_seconds=5)
    added = emulator.world("credential_add", app_id=cluster["client_id"])

    async def listed() -> list[str]:
        credential = product_credential(emu_settings)
        try:
            token = (await credential.get_token("https://graph.microsoft.com/.default")).token
        finally:
            await credential.close()
        async with httpx.AsyncClient(verify=emulator.ssl_context()) as http:
            response = await http.get(
                f"{emulator.endpoint}/v1.0/applications(appId='{cluster['client_id']}')",
                headers={"Authorization": f"Bearer {token}"},
            )
        return [p["keyId"] for p in response.json()["passwordCredentials"]]

    assert added["keyId"] not in asyncio.run(listed())
    emulator.advance(6)
    assert added["keyId"] in asyncio.run(listed())
