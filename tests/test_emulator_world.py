"""World events (`/_emulator/world/...`): what people, tools and AKS itself do to an estate, seen through the real
SDKs the product uses (azure-mgmt-containerservice, azure-keyvault-secrets, azure-identity)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.mgmt.containerservice.aio import ContainerServiceClient
from azure.mgmt.containerservice.models import ManagedClusterServicePrincipalProfile

from emulator import seeds
from emulator.sandbox import EmulatorControl
from shared.azure import container_service, product_credential, secret_client, secret_credential
from shared.settings import Settings
from tests.plugins.emulator import grant_sdk_poller

T = TypeVar("T")
NEW_KEY = "bbbbbbbb-0000-4000-8000-000000000002"
NEW_SECRET = "world-new-secret-0123456789abcdefghijklm"


def _run(settings: Settings, sub: str, body: Callable[[ContainerServiceClient], Awaitable[T]]) -> T:
    async def main() -> T:
        credential = product_credential(settings)
        try:
            async with container_service(settings, credential, sub, retry_total=0) as client:
                return await body(client)
        finally:
            await credential.close()

    return asyncio.run(main())


def _estate(lro_seconds: float = 0.0, **extra: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The demo estate; aks-payments' app also has NEW_SECRET (key NEW_KEY)."""
    doc = seeds.demo()
    doc["lro"] = {"base_seconds": lro_seconds, "per_node_seconds": 0}
    doc.update(extra)
    cluster = next(c for c in doc["clusters"] if c["name"] == "aks-payments")
    app = next(a for a in doc["applications"] if a["app_id"] == cluster["client_id"])
    app["password_credentials"].append({"key_id": NEW_KEY, "secret": NEW_SECRET, "expires_in_days": 180})
    cluster["held_key_id"] = app["password_credentials"][0]["key_id"]
    return doc, cluster, app


def _reset(emulator: EmulatorControl, doc: dict[str, Any]) -> None:
    """Reset to `doc`; these tests drive the SDK's own LRO poller, so the identity holds what it reads."""
    doc["product"]["secret"] = emulator.ready["client_secret"]
    emulator.reset(grant_sdk_poller(doc))


def _truth(emulator: EmulatorControl, name: str) -> dict[str, Any]:
    return next(c for c in emulator.state()["clusters"] if c["id"].endswith("/" + name))


def _app_truth(emulator: EmulatorControl, app_id: str) -> dict[str, Any]:
    state = emulator.state()
    app = next(a for a in state["applications"] if a["appId"] == app_id)
    return {**app, "removedPasswords": [r for r in state["removedPasswords"] if r["appId"] == app_id]}


def _reset_sp(cluster: dict[str, Any], secret: str = NEW_SECRET) -> Callable[[ContainerServiceClient], Awaitable[Any]]:
    async def reset(client: ContainerServiceClient) -> Any:
        profile = ManagedClusterServicePrincipalProfile(client_id=cluster["client_id"], secret=secret)
        poller = await client.managed_clusters.begin_reset_service_principal_profile(
            cluster["resource_group"], cluster["name"], profile
        )
        return await poller.result()

    return reset


def test_stopped_cluster_reports_power_state_and_refuses_a_reset(
    emulator: EmulatorControl, emu_settings: Settings
) -> None:
    doc, cluster, _ = _estate()
    _reset(emulator, doc)
    emulator.world("stop", cluster="aks-payments")

    async def get(client: ContainerServiceClient) -> Any:
        return await client.managed_clusters.get(cluster["resource_group"], "aks-payments")

    mc = _run(emu_settings, cluster["subscription_id"], get)
    assert mc.properties.power_state.code == "Stopped"
    assert mc.properties.agent_pool_profiles[0].count == 0
    with pytest.raises(HttpResponseError) as refused:
        _run(emu_settings, cluster["subscription_id"], _reset_sp(cluster))
    assert refused.value.status_code == 409 and refused.value.error is not None
    assert refused.value.error.code == "OperationNotAllowed" and "Power State(Stopped)" in str(refused.value)
    assert _truth(emulator, "aks-payments")["powerState"] == "Stopped"

    emulator.world("start", cluster="aks-payments")
    _run(emu_settings, cluster["subscription_id"], _reset_sp(cluster))
    assert _truth(emulator, "aks-payments")["heldKeyId"] == NEW_KEY


def test_delete_while_a_reset_runs_cancels_it(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc, cluster, _ = _estate(lro_seconds=60)
    _reset(emulator, doc)

    async def begin_then_delete(client: ContainerServiceClient) -> Any:
        profile = ManagedClusterServicePrincipalProfile(client_id=cluster["client_id"], secret=NEW_SECRET)
        poller = await client.managed_clusters.begin_reset_service_principal_profile(
            cluster["resource_group"], cluster["name"], profile, polling_interval=0
        )
        emulator.world("delete", cluster=cluster["name"])
        return await poller.result()

    with pytest.raises(HttpResponseError) as failed:
        _run(emu_settings, cluster["subscription_id"], begin_then_delete)
    assert "deleted" in str(failed.value)

    async def get(client: ContainerServiceClient) -> Any:
        return await client.managed_clusters.get(cluster["resource_group"], cluster["name"])

    with pytest.raises(ResourceNotFoundError):
        _run(emu_settings, cluster["subscription_id"], get)
    state = emulator.state()
    assert [d["id"].rsplit("/", 1)[1] for d in state["deletedClusters"]] == ["aks-payments"]
    assert {op["status"] for op in state["operations"]} == {"Canceled"}
    assert not any(c["id"].endswith("/aks-payments") for c in state["clusters"])


def test_move_to_another_application(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc, cluster, _ = _estate()
    _reset(emulator, doc)
    other = next(a for a in doc["applications"] if a["display_name"] == "aks-legacy-sp")
    key = other["password_credentials"][0]["key_id"]
    emulator.world("move", cluster="aks-payments", app_id=other["app_id"], key_id=key)

    async def get(client: ContainerServiceClient) -> Any:
        return await client.managed_clusters.get(cluster["resource_group"], "aks-payments")

    mc = _run(emu_settings, cluster["subscription_id"], get)
    assert mc.properties.service_principal_profile.client_id == other["app_id"]
    truth = _truth(emulator, "aks-payments")
    assert truth["clientId"] == other["app_id"] and truth["heldKeyId"] == key and truth["heldValid"] is True
    assert {p["heldKeyId"] for p in truth["nodePools"]} == {key}


def test_credential_reset_replaces_every_password_unless_appended(
    emulator: EmulatorControl, emu_settings: Settings
) -> None:
    doc, _, app = _estate()
    _reset(emulator, doc)
    before = {p["keyId"] for p in _app_truth(emulator, app["app_id"])["passwordCredentials"]}

    appended = emulator.world("credential_reset", app_id=app["app_id"], append=True)
    after_append = {p["keyId"] for p in _app_truth(emulator, app["app_id"])["passwordCredentials"]}
    assert after_append == before | {appended["keyId"]} and appended["removed"] == []

    replaced = emulator.world("credential_reset", app_id=app["app_id"])
    truth = _app_truth(emulator, app["app_id"])
    assert [p["keyId"] for p in truth["passwordCredentials"]] == [replaced["keyId"]]
    assert truth["passwordCredentials"][0]["createdBy"] == "human"
    assert sorted(replaced["removed"]) == sorted(after_append)
    assert {r["keyId"] for r in truth["removedPasswords"]} == after_append
    assert {r["removedBy"] for r in truth["removedPasswords"]} == {"human"}
    assert replaced["secretText"] in emulator.canaries()

    emulator.advance(30)
    held = _truth(emulator, "aks-payments")
    assert held["heldValid"] is False and held["outage_seconds"] >= 30
    assert all(p["outage_seconds"] >= 30 for p in held["nodePools"])

    async def token(secret: str) -> str:
        credential = secret_credential(emu_settings, app["app_id"], secret)
        try:
            return (await credential.get_token("https://management.azure.com/.default")).token
        finally:
            await credential.close()

    assert asyncio.run(token(replaced["secretText"]))
    with pytest.raises(ClientAuthenticationError):
        asyncio.run(token(NEW_SECRET))


def test_human_add_and_remove_on_the_service_principal(emulator: EmulatorControl) -> None:
    doc, _, _ = _estate()
    _reset(emulator, doc)
    on_sp = next(a for a in doc["applications"] if "service_principal" in a)
    added = emulator.world("credential_add", app_id=on_sp["app_id"], holder="servicePrincipal", days=30)
    sp_keys = [p["keyId"] for p in _app_truth(emulator, on_sp["app_id"])["servicePrincipal"]["passwordCredentials"]]
    assert added["keyId"] in sp_keys
    emulator.world("credential_remove", app_id=on_sp["app_id"], holder="servicePrincipal", key_id=added["keyId"])
    truth = _app_truth(emulator, on_sp["app_id"])
    assert added["keyId"] not in [p["keyId"] for p in truth["servicePrincipal"]["passwordCredentials"]]
    assert [(r["keyId"], r["holder"]) for r in truth["removedPasswords"]] == [(added["keyId"], "servicePrincipal")]


def test_cluster_busy_with_someone_elses_upgrade(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc, cluster, _ = _estate()
    _reset(emulator, doc)
    emulator.world("busy", cluster="aks-payments", state="Upgrading", seconds=120)
    with pytest.raises(HttpResponseError) as refused:
        _run(emu_settings, cluster["subscription_id"], _reset_sp(cluster))
    assert refused.value.status_code == 409 and "Another operation (Upgrading)" in str(refused.value)
    assert _truth(emulator, "aks-payments")["provisioningState"] == "Upgrading"

    emulator.advance(121)
    _run(emu_settings, cluster["subscription_id"], _reset_sp(cluster))
    assert _truth(emulator, "aks-payments")["heldKeyId"] == NEW_KEY

    emulator.world("busy", cluster="aks-payments", state="Failed")
    assert _truth(emulator, "aks-payments")["provisioningState"] == "Failed"
    _run(emu_settings, cluster["subscription_id"], _reset_sp(cluster))  # a Failed cluster accepts operations
    assert _truth(emulator, "aks-payments")["provisioningState"] == "Succeeded"


def test_half_migrated_cluster_needs_the_secret_only_on_its_node_pools(
    emulator: EmulatorControl, emu_settings: Settings
) -> None:
    doc, cluster, app = _estate()
    cluster["node_pools"] = [{"name": "system", "count": 2}, {"name": "user", "count": 3}]
    _reset(emulator, doc)
    emulator.world("migrate_identity", cluster="aks-payments")

    async def get(client: ContainerServiceClient) -> Any:
        return await client.managed_clusters.get(cluster["resource_group"], "aks-payments")

    mc = _run(emu_settings, cluster["subscription_id"], get)
    assert mc.identity.type == "SystemAssigned"
    assert mc.properties.service_principal_profile.client_id == app["app_id"]
    assert mc.properties.identity_profile is None
    assert [p.name for p in mc.properties.agent_pool_profiles] == ["system", "user"]
    truth = _truth(emulator, "aks-payments")
    assert truth["controlPlane"]["usesSecret"] is False
    assert [p["usesSecret"] for p in truth["nodePools"]] == [True, True]

    held = truth["heldKeyId"]
    emulator.world("credential_remove", app_id=app["app_id"], key_id=held)
    emulator.advance(10)
    truth = _truth(emulator, "aks-payments")
    assert all(p["outage_seconds"] >= 10 for p in truth["nodePools"]) and truth["outage_seconds"] >= 10

    emulator.world("upgrade_node_image", cluster="aks-payments")
    assert _run(emu_settings, cluster["subscription_id"], get).properties.identity_profile is not None
    before = _truth(emulator, "aks-payments")["outage_seconds"]
    emulator.advance(10)
    assert _truth(emulator, "aks-payments")["outage_seconds"] == before  # nothing uses the secret any more


def test_application_shared_with_a_cluster_the_product_cannot_see(
    emulator: EmulatorControl, emu_settings: Settings
) -> None:
    doc, _, app = _estate()
    hidden_sub = "0badc0de-0000-4000-8000-00000000beef"
    doc["subscriptions"].append({"id": hidden_sub, "display_name": "other-team"})
    doc["clusters"].append(
        {"subscription_id": hidden_sub, "resource_group": "rg-other", "name": "aks-other", "client_id": app["app_id"]}
    )
    _reset(emulator, doc)

    async def get_hidden(client: ContainerServiceClient) -> Any:
        return await client.managed_clusters.get("rg-other", "aks-other")

    with pytest.raises(HttpResponseError) as denied:
        _run(emu_settings, hidden_sub, get_hidden)
    assert denied.value.status_code == 403
    truth = _truth(emulator, "aks-other")
    assert truth["clientId"] == app["app_id"] and truth["heldKeyId"] == _truth(emulator, "aks-payments")["heldKeyId"]


def test_key_vault_soft_delete_recover_purge(emulator: EmulatorControl, emu_settings: Settings) -> None:
    # The product's own data role cannot delete, recover or purge (docs/permissions.md); this drives those
    # operations, so the identity holds Key Vault Secrets Officer here.
    doc, _, _ = _estate()
    doc["vault_roles"] = [{**grant, "role": "Key Vault Secrets Officer"} for grant in doc["vault_roles"]]
    _reset(emulator, doc)

    async def main() -> None:
        credential = product_credential(emu_settings)
        try:
            async with secret_client(emu_settings, credential, retry_total=0) as client:
                await client.set_secret("held", "v1")
                deleted = await client.delete_secret("held")
                assert deleted.recovery_id and deleted.deleted_date is not None
                with pytest.raises(ResourceExistsError) as conflict:
                    await client.set_secret("held", "v2")
                assert "deleted but recoverable state" in str(conflict.value)
                assert (await client.get_deleted_secret("held")).name == "held"
                assert [d.name async for d in client.list_deleted_secrets()] == ["held"]
                await client.recover_deleted_secret("held")
                assert (await client.get_secret("held")).value == "v1"

                emulator.world("vault_delete", vault=seeds.VAULT, name="held")
                await client.purge_deleted_secret("held")
                with pytest.raises(ResourceNotFoundError):
                    await client.get_deleted_secret("held")
                assert (await client.set_secret("held", "v3")).value == "v3"
        finally:
            await credential.close()

    asyncio.run(main())
    vault = next(v for v in emulator.state()["vaults"] if v["name"] == seeds.VAULT)
    assert len(vault["secrets"]["held"]) == 1 and vault["deletedSecrets"] == {}


def test_password_limit_set_by_an_administrator(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc, _, app = _estate()
    _reset(emulator, doc)
    emulator.world("app_policy", app_id=app["app_id"], password_limit=2)

    async def add() -> httpx.Response:
        credential = product_credential(emu_settings)
        try:
            token = (await credential.get_token("https://graph.microsoft.com/.default")).token
        finally:
            await credential.close()
        async with httpx.AsyncClient(verify=emulator.ssl_context()) as http:
            return await http.post(
                f"{emulator.endpoint}/v1.0/applications(appId='{app['app_id']}')/addPassword",
                json={"passwordCredential": {"displayName": "rotator"}},
                headers={"Authorization": f"Bearer {token}"},
            )

    refused = asyncio.run(add())
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "TooManyAppPasswords"
