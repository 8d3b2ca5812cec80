"""Graph's sign-in report per credential (emulator/graph_reports.py) read by the product (shared/signins.py),
through the real credential classes and msgraph's request adapter."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from emulator import seeds
from emulator.sandbox import EmulatorControl
from shared.azure import ARM_AUDIENCE, product_credential, secret_credential
from shared.settings import Settings
from shared.signins import SignIns, app_signins


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _signins(settings: Settings, app_id: str) -> SignIns:
    async def go() -> SignIns:
        credential = product_credential(settings)
        async with credential:
            return await app_signins(settings, credential, app_id)

    return asyncio.run(go())


def _demo(roles: list[str]) -> dict[str, Any]:
    doc = seeds.demo()
    doc["graph_app_roles"] = {seeds.PRODUCT_APP_ID: roles}
    return doc


def _first_cluster(emulator: EmulatorControl) -> dict[str, Any]:
    return next(c for c in emulator.state()["clusters"] if c["clientId"] != "msi")


def test_running_clusters_sign_in_with_the_key_they_hold_and_unused_keys_have_no_entry(
    emulator: EmulatorControl, emu_settings: Settings
) -> None:
    cluster = _first_cluster(emulator)
    added = emulator.world("credential_add", app_id=cluster["clientId"], days=30)
    report = _signins(emu_settings, cluster["clientId"])
    now = _when(emulator.state()["now"])
    held = report.last_signin(cluster["heldKeyId"])
    assert report.readable and held is not None and abs((held - now).total_seconds()) < 5
    assert report.last_signin(added["keyId"]) is None  # never used: no entry


def test_a_token_request_with_a_password_is_a_sign_in(emulator: EmulatorControl, emu_settings: Settings) -> None:
    cluster = _first_cluster(emulator)
    added = emulator.world("credential_add", app_id=cluster["clientId"], days=30)
    emulator.advance(3600)

    async def sign_in() -> None:
        async with secret_credential(emu_settings, cluster["clientId"], added["secretText"]) as credential:
            await credential.get_token(ARM_AUDIENCE + "/.default")

    asyncio.run(sign_in())
    signed = _signins(emu_settings, cluster["clientId"]).last_signin(added["keyId"])
    assert signed is not None and abs((signed - _when(emulator.state()["now"])).total_seconds()) < 5


def test_a_stopped_cluster_last_signed_in_when_it_stopped(emulator: EmulatorControl, emu_settings: Settings) -> None:
    cluster = _first_cluster(emulator)
    emulator.world("stop", cluster=cluster["id"])
    stopped_at = _when(emulator.state()["now"])
    emulator.advance(2 * 86400)
    last = _signins(emu_settings, cluster["clientId"]).last_signin(cluster["heldKeyId"])
    assert last is not None and abs((last - stopped_at).total_seconds()) < 5
    assert _when(emulator.state()["now"]) - last > timedelta(days=1)


def test_without_audit_log_read_all_the_report_is_refused(emulator: EmulatorControl, emu_settings: Settings) -> None:
    emulator.reset(_demo(["Application.ReadWrite.OwnedBy"]))
    report = _signins(emu_settings, _first_cluster(emulator)["clientId"])
    assert not report.readable and "403" in report.refusal and report.last == {}


@pytest.mark.parametrize(
    ("query", "status"),
    [("keyId eq '{key}'", 200), ("appId eq '{app}'", 200), ("startswith(keyId, 'a')", 400)],
    ids=["by-keyId", "by-appId", "unsupported"],
)
def test_the_documented_filters(emulator: EmulatorControl, emu_settings: Settings, query: str, status: int) -> None:
    cluster = _first_cluster(emulator)

    async def token() -> str:
        credential = product_credential(emu_settings)
        async with credential:
            return (await credential.get_token(emu_settings.graph_endpoint + "/.default")).token

    url = emu_settings.graph_endpoint + "/beta/reports/appCredentialSignInActivities"
    answer = httpx.get(
        url,
        params={"$filter": query.format(key=cluster["heldKeyId"], app=cluster["clientId"])},
        headers={"Authorization": f"Bearer {asyncio.run(token())}"},
        verify=emu_settings.ca_bundle or True,
    )
    assert answer.status_code == status, answer.text
    if status == 200:
        assert [e["keyId"] for e in answer.json()["value"]] == [cluster["heldKeyId"]]
        assert answer.json()["value"][0]["signInActivity"]["lastSignInDateTime"]
    else:
        assert answer.json()["error"]["code"] == "Request_UnsupportedQuery"
