"""Every on-demand request is audited with its caller (issue 14 item 3): `POST /api/rotations` with the App Service
principal (only behind App Service authentication) and the function key as far as the host tells, `aks-rotator
rotate` with the identity its access token names. Real Azurite and the emulator (its tokens carry `oid`/`appid`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from shared import api, rotation
from shared.caller import FUNCTION_KEY, NO_AUTH_IN_FRONT
from shared.settings import Settings
from shared.store import AuditRow, RotationStore
from tests.plugins.azurite import StorageNames
from tests.support.engine import cluster_by_name, demo_estate, make_settings
from tests.support.sim import Simulation
from tests.test_queue_channel import resets_of, window_in

OID = "11111111-2222-3333-4444-555555555555"


@pytest.fixture
def rot(emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames) -> Iterator[Settings]:
    emulator.reset(demo_estate())
    yield make_settings(emulator, azurite, storage_names)


async def _trail(settings: Settings, rotation_id: str) -> list[AuditRow]:
    async with RotationStore(settings) as store:
        await store.ensure()
        return await store.audit_log(rotation_id)


def _requested(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [vars(r) for r in caplog.records if getattr(r, "event", None) == "rotation.requested"]


def _request(settings: Settings, cluster_id: str, headers: dict[str, str]) -> api.ApiResponse:
    return asyncio.run(api.request_rotation(settings, json.dumps({"cluster_id": cluster_id}).encode(), headers))


def test_http_request_behind_app_service_auth_is_audited_with_its_principal(
    rot: Settings, emulator: EmulatorControl, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")  # what App Service sets when authentication is on
    cluster = cluster_by_name(emulator.state(), "aks-payments")
    headers = {"X-MS-CLIENT-PRINCIPAL-NAME": "ops@contoso.com", "X-MS-CLIENT-PRINCIPAL-ID": OID}
    with caplog.at_level(logging.INFO):
        first = _request(rot, cluster["id"], headers)
        again = _request(rot, cluster["id"], headers)  # the same day: a duplicate, audited all the same
    assert (first.status, again.status) == (202, 200), (first.body, again.body)
    trail = asyncio.run(_trail(rot, first.body["rotation_id"]))
    submits = [a for a in trail if a.step == "submit"]
    assert [a.outcome for a in submits] == ["queued", "duplicate"]
    for row in submits:
        assert row.fields["caller"] == "ops@contoso.com" and row.fields["caller_id"] == OID
        assert row.fields["caller_via"] == "http" and row.fields["caller_key"] == FUNCTION_KEY
    logged = _requested(caplog)
    assert [r["status"] for r in logged] == ["queued", "duplicate"]
    assert all(r["caller"] == "ops@contoso.com" and r["caller_key"] == FUNCTION_KEY for r in logged)


def test_http_principal_headers_without_app_service_auth_are_not_trusted(
    rot: Settings, emulator: EmulatorControl, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("WEBSITE_AUTH_ENABLED", raising=False)
    cluster = cluster_by_name(emulator.state(), "aks-payments")
    forged = {"X-MS-CLIENT-PRINCIPAL-NAME": "ceo@contoso.com", "X-MS-CLIENT-PRINCIPAL-ID": OID}
    with caplog.at_level(logging.INFO):
        response = _request(rot, cluster["id"], forged)
        rejected = _request(rot, cluster["id"].replace("aks-payments", "aks-nope"), forged)
    assert (response.status, rejected.status) == (202, 404)
    (row,) = [a for a in asyncio.run(_trail(rot, response.body["rotation_id"])) if a.step == "submit"]
    assert row.fields["caller"] == NO_AUTH_IN_FRONT and "caller_id" not in row.fields
    assert "ceo@contoso.com" not in caplog.text and OID not in caplog.text
    refused = [r for r in caplog.records if getattr(r, "event", None) == "input.rejected"]
    assert refused and all(getattr(r, "caller", None) == NO_AUTH_IN_FRONT for r in refused)


def test_cli_rotate_is_audited_with_the_identity_it_signed_in_as(
    rot: Settings, emulator: EmulatorControl, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = cluster_by_name(emulator.state(), "aks-checkout")
    with caplog.at_level(logging.DEBUG):
        result = asyncio.run(rotation.rotate_now(rot, cluster["id"], dry_run=False))  # what `aks-rotator rotate` runs
    assert result.status == "queued"
    (row,) = [a for a in asyncio.run(_trail(rot, result.rotation_id)) if a.step == "submit"]
    assert row.fields["caller_via"] == "cli"
    assert row.fields["caller_app_id"] == rot.client_id == row.fields["caller"]  # an app-only token: named by its app
    assert row.fields["caller_id"]  # the product identity's object id, from the token's `oid`
    (logged,) = _requested(caplog)
    assert logged["caller_app_id"] == rot.client_id and logged["status"] == "queued"
    assert "eyJ" not in caplog.text and "eyJ" not in json.dumps(
        [a.fields for a in asyncio.run(_trail(rot, result.rotation_id))]
    )


def test_an_on_demand_request_waits_for_the_window_unless_the_held_key_is_urgent(
    make_world: Any, emulator: EmulatorControl
) -> None:
    window, opens = window_in(emulator, 4)
    world = make_world([{"name": "aks-a", "days": 200}, {"name": "aks-b", "days": 2}], MAINTENANCE_WINDOW=window)
    calm, urgent = world.cluster("aks-a"), world.cluster("aks-b")
    seen: dict[str, Any] = {}

    async def operators(sim: Simulation) -> None:
        for cluster in (calm, urgent):
            body = json.dumps({"cluster_id": cluster["id"]}).encode()
            seen[cluster["id"]] = await api.request_rotation(sim.settings, body, {})

    def before_the_window(_sim: Simulation) -> None:
        seen["calm"], seen["urgent"] = resets_of(emulator, calm["id"]), resets_of(emulator, urgent["id"])

    world.sim.after(timedelta(minutes=1), operators, "POST /api/rotations for aks-a (200 days) and aks-b (2 days)")
    world.sim.at(opens - timedelta(minutes=5), before_the_window, "just before the window opens")
    world.run(6)
    assert seen[calm["id"]].status == 202 and seen[urgent["id"]].status == 202
    assert seen["calm"] == [] and seen["urgent"]  # only the urgent one went outside the window
    assert resets_of(emulator, calm["id"])  # the other waited for its window, then rotated
    world.check()
