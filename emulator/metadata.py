"""`GET /metadata/endpoints?api-version=2022-09-01` on the ARM host: the cloud's endpoints, so that
`az cloud register --endpoint-resource-manager <emulator>` (azure-cli `_populate_from_metadata_endpoint`, which
maps one cloud object with `_arm_to_cli_mapper`) points every az command group at the emulator. Anonymous, as
on management.azure.com.
"""

from __future__ import annotations

from aiohttp import web

from emulator.api_versions import METADATA
from emulator.core import emulator_of
from emulator.wire import ARM_AUDIENCES, Reply, error


async def endpoints(request: web.Request) -> web.Response:
    version = request.query.get("api-version")
    if version is None:
        message = "The api-version query parameter (?api-version=) is required for all requests."
        raise Reply(error("arm", 400, "MissingApiVersionParameter", message))
    if version not in METADATA:
        message = f"The api-version '{version}' is invalid. The supported versions are '{','.join(sorted(METADATA))}'."
        raise Reply(error("arm", 400, "InvalidApiVersionParameter", message))
    base = emulator_of(request).endpoint
    return web.json_response(
        {
            "name": "AksRotatorEmulator",
            "portal": base,
            "resourceManager": base + "/",
            "authentication": {
                "loginEndpoint": base,
                "audiences": sorted(a for a in ARM_AUDIENCES if a.endswith("/")),
                "tenant": "common",
                "identityProvider": "AAD",
            },
            "graph": base + "/",
            "graphAudience": base + "/",
            "microsoftGraphResourceId": base + "/",
            "batch": "https://batch.core.windows.net/",
            "gallery": base + "/",
            "sqlManagement": base + "/",
            "vmImageAliasDoc": base + "/",
            "media": base + "/",
            "activeDirectoryDataLake": base + "/",
            "suffixes": {
                "keyVaultDns": "vault.azure.net",
                "storage": "core.windows.net",
                "sqlServerHostname": "database.windows.net",
                "acrLoginServer": "azurecr.io",
                "mhsmDns": "managedhsm.azure.net",
            },
        }
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/metadata/endpoints", endpoints, name="arm.metadataEndpoints")
