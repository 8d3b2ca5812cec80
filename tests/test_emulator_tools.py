"""What SRE tools (az, other azure-identity clients) need from the emulator to rehearse the manual procedure:
the scopes az asks for, `az ad sp` lookups, reusable Key Vault ids, JSON errors on unknown paths, and the cloud
metadata `az cloud register` reads."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from azure.keyvault.secrets import KeyVaultSecretIdentifier
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.service_principals.service_principals_request_builder import ServicePrincipalsRequestBuilder

from emulator import seeds
from emulator.sandbox import EmulatorControl
from shared.azure import graph_client, product_credential, secret_client, secret_credential
from shared.settings import Settings

AZ_SCOPES = [
    ("https://management.core.windows.net//.default", "/subscriptions?api-version=2022-12-01"),
    ("https://management.azure.com//.default", "/subscriptions?api-version=2022-12-01"),
    ("https://graph.microsoft.com//.default", "/v1.0/applications?$top=1"),
]


def _token(emulator: EmulatorControl, scope: str) -> str:
    response = httpx.post(
        f"{emulator.endpoint}/{emulator.ready['tenant_id']}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": emulator.ready["client_id"],
            "client_secret": emulator.ready["client_secret"],
            "scope": scope,
        },
        verify=emulator.ssl_context(),
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


@pytest.mark.parametrize(("scope", "path"), AZ_SCOPES)
def test_az_scopes_are_accepted_by_entra_and_the_resource(emulator: EmulatorControl, scope: str, path: str) -> None:
    token = _token(emulator, scope)
    response = httpx.get(
        emulator.endpoint + path, headers={"Authorization": f"Bearer {token}"}, verify=emulator.ssl_context()
    )
    assert response.status_code == 200, response.text


def test_vault_scope_with_double_slash(emulator: EmulatorControl, emu_settings: Settings) -> None:
    async def main() -> str:
        credential = secret_credential(emu_settings, emulator.ready["client_id"], emulator.ready["client_secret"])
        try:
            token = (await credential.get_token("https://vault.azure.net//.default")).token
        finally:
            await credential.close()
        async with httpx.AsyncClient(verify=emulator.ssl_context()) as http:
            response = await http.get(
                f"{emu_settings.key_vault_url}/secrets?api-version=7.5", headers={"Authorization": f"Bearer {token}"}
            )
        return str(response.status_code)

    assert asyncio.run(main()) == "200"


def test_az_ad_sp_lookup_by_service_principal_name(emulator: EmulatorControl, emu_settings: Settings) -> None:
    app = seeds.demo()["applications"][0]

    async def main() -> list[str]:
        credential = product_credential(emu_settings)
        try:
            client = graph_client(emu_settings, credential)
            query = ServicePrincipalsRequestBuilder.ServicePrincipalsRequestBuilderGetQueryParameters(
                filter=f"servicePrincipalNames/any(c:c eq '{app['app_id']}')"
            )
            result = await client.service_principals.get(RequestConfiguration(query_parameters=query))
            return [str(sp.app_id) for sp in (result.value if result and result.value else [])]
        finally:
            await credential.close()

    assert asyncio.run(main()) == [app["app_id"]]


def test_key_vault_ids_work_when_used_again(emulator: EmulatorControl, emu_settings: Settings) -> None:
    async def main() -> tuple[str, str]:
        credential = product_credential(emu_settings)
        try:
            async with secret_client(emu_settings, credential) as client:
                written = await client.set_secret("reused", "value-1")
            assert written.id is not None
            ident = KeyVaultSecretIdentifier(written.id)
            token = (await credential.get_token("https://vault.azure.net/.default")).token
            async with httpx.AsyncClient(verify=emulator.ssl_context()) as http:
                again = await http.get(f"{written.id}?api-version=7.5", headers={"Authorization": f"Bearer {token}"})
            return ident.name, again.json()["value"]
        finally:
            await credential.close()

    assert asyncio.run(main()) == ("reused", "value-1")


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1.0/nothingHere", 400, "BadRequest"),
        ("/kv/rotator-kv/keys/k1", 404, "NotFound"),
        ("/subscriptions/x/providers/Microsoft.Nope/things", 404, "NotFound"),
        ("/nowhere", 404, "NotFound"),
    ],
)
def test_unknown_paths_answer_the_services_json_error(
    emulator: EmulatorControl, path: str, status: int, code: str
) -> None:
    response = httpx.get(emulator.endpoint + path, verify=emulator.ssl_context())
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == code


def test_cloud_metadata_for_az_cloud_register(emulator: EmulatorControl) -> None:
    response = httpx.get(
        f"{emulator.endpoint}/metadata/endpoints?api-version=2022-09-01", verify=emulator.ssl_context()
    )
    body = response.json()
    assert response.status_code == 200
    assert body["resourceManager"] == emulator.endpoint + "/"
    assert body["authentication"]["loginEndpoint"] == emulator.endpoint
    assert "https://management.core.windows.net/" in body["authentication"]["audiences"]
    assert body["suffixes"]["keyVaultDns"] and body["microsoftGraphResourceId"] == emulator.endpoint + "/"
    token = _token(emulator, body["microsoftGraphResourceId"] + "/.default")  # what az asks for Graph
    graph = httpx.get(
        f"{emulator.endpoint}/v1.0/applications?$top=1",
        headers={"Authorization": f"Bearer {token}"},
        verify=emulator.ssl_context(),
    )
    assert graph.status_code == 200
