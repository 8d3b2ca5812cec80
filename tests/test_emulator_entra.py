"""Entra surface and the emulator's control plane, driven by the real azure-identity credential classes."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.identity import ClientSecretCredential as SyncClientSecretCredential
from azure.identity.aio import ClientSecretCredential

from emulator import seeds
from emulator.sandbox import EmulatorControl

ARM = "https://management.azure.com/.default"
GRAPH = "https://graph.microsoft.com/.default"


def _credential(ready: dict[str, Any], client_id: str, secret: str, **kwargs: Any) -> ClientSecretCredential:
    return ClientSecretCredential(
        ready["tenant_id"],
        client_id,
        secret,
        authority=ready["endpoint"],
        disable_instance_discovery=True,
        connection_verify=ready["ca_file"],
        **kwargs,
    )


async def _token(ready: dict[str, Any], client_id: str, secret: str, scope: str = ARM, **kwargs: Any) -> str:
    credential = _credential(ready, client_id, secret, **kwargs)
    try:
        return (await credential.get_token(scope)).token
    finally:
        await credential.close()


def test_product_gets_tokens_with_audience_tenant_and_roles(emulator: EmulatorControl) -> None:
    ready = emulator.ready
    arm = jwt.decode(
        asyncio.run(_token(ready, ready["client_id"], ready["client_secret"])), options={"verify_signature": False}
    )
    graph = jwt.decode(
        asyncio.run(_token(ready, ready["client_id"], ready["client_secret"], GRAPH)),
        options={"verify_signature": False},
    )
    assert arm["aud"] == "https://management.azure.com"
    assert arm["tid"] == ready["tenant_id"] and arm["appid"] == ready["client_id"]
    assert "roles" not in arm
    assert graph["aud"] == "https://graph.microsoft.com"
    assert graph["roles"] == ["Application.ReadWrite.OwnedBy", "AuditLog.Read.All"]


def test_sync_credential_and_signature_verifies_against_jwks(emulator: EmulatorControl) -> None:
    ready = emulator.ready
    credential = SyncClientSecretCredential(
        ready["tenant_id"],
        ready["client_id"],
        ready["client_secret"],
        authority=ready["endpoint"],
        disable_instance_discovery=True,
        connection_verify=ready["ca_file"],
    )
    token = credential.get_token(ARM).token
    keys = httpx.get(
        f"{ready['endpoint']}/{ready['tenant_id']}/discovery/v2.0/keys", verify=emulator.ssl_context()
    ).json()
    key = jwt.PyJWK(keys["keys"][0])
    claims = jwt.decode(token, key.key, algorithms=["RS256"], audience="https://management.azure.com")
    assert claims["iss"] == f"{ready['endpoint']}/{ready['tenant_id']}/v2.0"


def test_wrong_secret_is_refused_with_aadsts7000215(emulator: EmulatorControl) -> None:
    ready = emulator.ready
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        asyncio.run(_token(ready, ready["client_id"], "not-the-secret"))


def test_unknown_app_and_unknown_tenant_are_refused(emulator: EmulatorControl) -> None:
    ready = emulator.ready
    with pytest.raises(ClientAuthenticationError, match="AADSTS700016"):
        asyncio.run(_token(ready, "00000000-1111-2222-3333-444444444444", "x"))
    response = httpx.post(
        f"{ready['endpoint']}/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": ready["client_id"], "client_secret": "x", "scope": ARM},
        verify=emulator.ssl_context(),
    )
    assert response.status_code == 400
    assert response.json()["error_codes"] == [90002]


def test_seeded_secret_expires_when_the_clock_passes_its_end(emulator: EmulatorControl) -> None:
    doc = seeds.demo()
    secret = "seeded-secret-value-0123456789abcdefghijk"
    app = doc["applications"][0]
    app["password_credentials"] = [
        {"key_id": "11111111-1111-1111-1111-111111111111", "secret": secret, "expires_in_days": 2}
    ]
    emulator.reset(doc)
    ready = emulator.ready
    assert asyncio.run(_token(ready, app["app_id"], secret))
    emulator.advance(3 * 86400)
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000222"):
        asyncio.run(_token(ready, app["app_id"], secret))


def test_tokens_expire_with_the_emulator_clock(emulator: EmulatorControl) -> None:
    ready = emulator.ready
    token = asyncio.run(_token(ready, ready["client_id"], ready["client_secret"]))
    url = f"{ready['endpoint']}/subscriptions?api-version=2022-12-01"
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(url, headers=headers, verify=emulator.ssl_context()).status_code == 200
    emulator.advance(3600)
    expired = httpx.get(url, headers=headers, verify=emulator.ssl_context())
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "ExpiredAuthenticationToken"


def test_replication_delay_refuses_intermittently_then_accepts(emulator: EmulatorControl) -> None:
    doc = seeds.demo()
    app = doc["applications"][0]
    secret = "fresh-secret-value-0123456789abcdefghijklm"
    app["password_credentials"] = [{"key_id": "22222222-2222-2222-2222-222222222222", "secret": secret}]
    emulator.reset(doc)
    # A seeded password was created long ago; a delay rule far longer than its age still makes it refused
    # with a probability that is neither 0 nor 1: count both outcomes over a bounded number of tries.
    emulator.add_faults({"kind": "replication_delay", "surface": "entra", "seconds": 365 * 86400 * 2})
    ready = emulator.ready
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(40):
        try:
            asyncio.run(_token(ready, app["app_id"], secret))
            outcomes["ok"] += 1
        except ClientAuthenticationError as exc:
            assert "AADSTS7000215" in str(exc)
            outcomes["refused"] += 1
    assert outcomes["ok"] > 0 and outcomes["refused"] > 0
    emulator.clear_faults()
    assert asyncio.run(_token(ready, app["app_id"], secret))


def test_injected_status_throttle_and_drop_faults(emulator: EmulatorControl) -> None:
    ready = emulator.ready
    emulator.add_faults({"kind": "status", "surface": "entra", "operation": "token", "status": 503, "times": 1})
    with pytest.raises(ClientAuthenticationError):
        asyncio.run(_token(ready, ready["client_id"], ready["client_secret"], retry_total=0))
    assert asyncio.run(_token(ready, ready["client_id"], ready["client_secret"]))  # times=1: only once

    emulator.add_faults({"kind": "throttle", "surface": "entra", "operation": "token", "retry_after": 7, "times": 1})
    response = httpx.post(
        f"{ready['endpoint']}/{ready['tenant_id']}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": ready["client_id"], "client_secret": "x", "scope": ARM},
        verify=emulator.ssl_context(),
    )
    assert response.status_code == 429 and response.headers["Retry-After"] == "7"

    emulator.add_faults({"kind": "drop", "surface": "entra", "operation": "token", "times": 1})
    with pytest.raises((ClientAuthenticationError, ServiceRequestError)):
        asyncio.run(_token(ready, ready["client_id"], ready["client_secret"], retry_total=0))
    fired = {rule["kind"]: rule["fired"] for rule in emulator.faults()}
    assert fired == {"status": 1, "throttle": 1, "drop": 1}


def test_latency_fault_and_request_counts(emulator: EmulatorControl) -> None:
    ready = emulator.ready
    emulator.clear_requests()
    emulator.add_faults({"kind": "latency", "surface": "entra", "operation": "token", "latency_ms": 300, "times": 1})
    asyncio.run(_token(ready, ready["client_id"], ready["client_secret"]))
    counts = emulator.requests()
    assert counts["entra.token"] == 1
    assert counts.get("mutations", 0) == 0  # a token request changes nothing
    assert emulator.faults()[0]["fired"] == 1


def test_bad_fault_rules_are_rejected(emulator: EmulatorControl) -> None:
    with pytest.raises(httpx.HTTPStatusError):
        emulator.add_faults({"kind": "explode"})
    with pytest.raises(httpx.HTTPStatusError):
        emulator.add_faults({"kind": "status", "bogus": 1})
    assert emulator.faults() == []


def test_truth_has_hashes_never_secret_values(emulator: EmulatorControl) -> None:
    truth_text = httpx.get(f"{emulator.endpoint}/_emulator/state", verify=emulator.ssl_context()).text
    canaries = emulator.canaries()
    assert len(canaries) >= 6  # the product's secret and every seeded password
    assert not [c for c in canaries if c in truth_text]
    truth = emulator.state()
    sp_clusters = [c for c in truth["clusters"] if c["clientId"] != "msi"]
    assert sp_clusters and all(c["heldValid"] and c["outage_seconds"] == 0 for c in sp_clusters)


def test_outage_is_accounted_when_the_held_secret_expires(emulator: EmulatorControl) -> None:
    truth = emulator.state()
    payments = next(c for c in truth["clusters"] if c["id"].endswith("/aks-payments"))
    assert payments["outage_seconds"] == 0
    emulator.advance(4 * 86400)  # its secret expires in 3 days
    after = next(c for c in emulator.state()["clusters"] if c["id"].endswith("/aks-payments"))
    assert after["heldValid"] is False
    assert 86400 * 0.99 <= after["outage_seconds"] <= 86400 * 1.01
