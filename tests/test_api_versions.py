"""Every ARM and Resource Graph request carries the api-version its setting pins (the emulator records the one
each request used, with `strict_api_versions` on: a version the provider does not register is refused), and a
run with the settings overridden (a sovereign cloud that lags behind) sends those instead."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from shared import discovery
from shared.aks import AksClient
from shared.azure import product_credential
from shared.settings import Settings, SettingsError
from tests.plugins.azurite import StorageNames
from tests.support.engine import demo_estate, make_settings, rows, run_until_idle

PINNED = {
    "AKS_API_VERSION": "2026-08-01",
    "RESOURCE_GRAPH_API_VERSION": "2021-03-01",
    "SUBSCRIPTIONS_API_VERSION": "2022-12-01",
    "AUTHORIZATION_API_VERSION": "2022-04-01",
}
OLDER = {  # versions an older (sovereign) cloud registers
    "AKS_API_VERSION": "2024-05-01",
    "RESOURCE_GRAPH_API_VERSION": "2022-10-01",
    "SUBSCRIPTIONS_API_VERSION": "2022-09-01",
    "AUTHORIZATION_API_VERSION": "2018-07-01",
}
# Routes whose api-version is the setting's (operation URLs carry what AKS put in them: the reset's version).
SETTING_OF = {
    "arm.get": "AKS_API_VERSION",
    "arm.list": "AKS_API_VERSION",
    "arm.listMaintenanceConfigurations": "AKS_API_VERSION",
    "arm.resetServicePrincipalProfile": "AKS_API_VERSION",
    "arm.listClusterUserCredential": "AKS_API_VERSION",
    "arm.operationStatus": "AKS_API_VERSION",
    "resourcegraph.resources": "RESOURCE_GRAPH_API_VERSION",
    "arm.listSubscriptions": "SUBSCRIPTIONS_API_VERSION",
    "arm.permissions": "AUTHORIZATION_API_VERSION",
}


def _run(settings: Settings) -> None:
    """A scan that queues what is due, the rotations to the end, and the subscription list (ARM fallback)."""

    async def go() -> None:
        await discovery.scan(settings, sdk_kwargs={"retry_total": 0})
        await run_until_idle(settings)
        credential = product_credential(settings)
        async with credential, AksClient(settings, credential) as aks:
            assert await aks.list_subscriptions()

    asyncio.run(go())


@pytest.mark.parametrize("versions", [PINNED, OLDER], ids=["pinned", "overridden"])
def test_every_arm_request_carries_the_configured_api_version(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames, versions: dict[str, str]
) -> None:
    emulator.reset(demo_estate())
    emulator.set_modes(strict_api_versions=True)
    settings = make_settings(emulator, azurite, storage_names, **versions)
    emulator.clear_requests()
    _run(settings)
    used: dict[str, dict[str, int]] = emulator.api_versions()
    arm = {route: sorted(by) for route, by in used.items() if route.startswith(("arm.", "resourcegraph."))}
    assert set(SETTING_OF) - {"arm.operationStatus"} <= set(arm), arm  # the run touched every pinned route
    assert {route: sorted(arm[route]) for route in arm if route in SETTING_OF} == {
        route: [versions[SETTING_OF[route]]] for route in arm if route in SETTING_OF
    }
    assert set(arm) <= set(SETTING_OF), f"a route this test does not know: {set(arm) - set(SETTING_OF)}"
    records = asyncio.run(rows(settings))
    assert records and {r.state for r in records.values()} == {"succeeded"}


def test_a_version_the_provider_does_not_register_is_refused_by_the_emulator(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    """The check above can fail: with strict api-versions, a version AKS does not register stops the scan."""
    emulator.reset(demo_estate(resource_graph_enabled=False))  # the inventory comes from ARM lists
    emulator.set_modes(strict_api_versions=True)
    settings = make_settings(emulator, azurite, storage_names, AKS_API_VERSION="2099-01-01")
    report = asyncio.run(discovery.scan(settings, sdk_kwargs={"retry_total": 0}))
    refused = [e for e in report.errors if "NoRegisteredProviderFound" in e]
    assert report.clusters == 0 and len(refused) == report.subscriptions == 3, report.errors
    assert emulator.api_versions()["arm.list"] == {"2099-01-01": 3}


@pytest.mark.parametrize(
    ("name", "value"),
    [("AKS_API_VERSION", "latest"), ("RESOURCE_GRAPH_API_VERSION", "2021-3-1"), ("ARM_AUDIENCE", "http://x")],
)
def test_api_version_and_audience_settings_are_validated(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames, name: str, value: str
) -> None:
    with pytest.raises(SettingsError, match=name):
        make_settings(emulator, azurite, storage_names, **{name: value})


@pytest.mark.parametrize(
    ("audience", "works"),
    [("https://management.core.windows.net/", True), ("https://management.usgovcloudapi.net", False)],
)
def test_the_arm_audience_setting_is_the_token_scope(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames, audience: str, works: bool
) -> None:
    """A sovereign cloud's ARM audience goes into every ARM token request (the emulator serves the public cloud's
    two audiences and refuses any other)."""
    emulator.reset(demo_estate())
    settings = make_settings(emulator, azurite, storage_names, ARM_AUDIENCE=audience)

    async def clusters() -> Any:
        credential = product_credential(settings)
        async with credential, AksClient(settings, credential, retry_total=0) as aks:
            return await aks.list_subscriptions()

    if works:
        assert asyncio.run(clusters())
    else:
        with pytest.raises(Exception, match="AADSTS"):
            asyncio.run(clusters())
