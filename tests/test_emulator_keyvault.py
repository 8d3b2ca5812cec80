"""Conformance of the emulated Key Vault, driven by the real `SecretClient` (sync and aio)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.identity import ClientSecretCredential
from azure.identity.aio import ClientSecretCredential as AsyncClientSecretCredential
from azure.keyvault.secrets import KeyVaultSecretIdentifier, SecretClient
from azure.keyvault.secrets.aio import SecretClient as AsyncSecretClient

from emulator import seeds
from emulator.sandbox import EmulatorControl

OTHER_APP = "0c7a5b1e-2d3f-4a6b-9c8d-7e6f5a4b3c2d"
OTHER_SECRET = "other-app-secret-value-0123456789abcdef"


def _credential(control: EmulatorControl, app_id: str | None = None, secret: str | None = None) -> Any:
    ready = control.ready
    return ClientSecretCredential(
        ready["tenant_id"],
        app_id or ready["client_id"],
        secret or ready["client_secret"],
        authority=ready["endpoint"],
        disable_instance_discovery=True,
        connection_verify=ready["ca_file"],
    )


def _client(control: EmulatorControl, credential: Any = None, **kwargs: Any) -> SecretClient:
    return SecretClient(
        control.ready["key_vault_url"],
        credential or _credential(control),
        verify_challenge_resource=False,
        connection_verify=control.ready["ca_file"],
        **kwargs,
    )


@pytest.fixture
def client(emulator: EmulatorControl) -> Iterator[SecretClient]:
    with _client(emulator) as c:
        yield c


def _with_other_app(role: str | None) -> dict[str, Any]:
    doc = seeds.demo()
    doc["applications"].append(
        {
            "app_id": OTHER_APP,
            "display_name": "other-caller",
            "owned_by_product": False,
            "password_credentials": [{"secret": OTHER_SECRET, "expires_in_days": 30}],
        }
    )
    if role is not None:
        doc["vault_roles"].append({"principal": OTHER_APP, "vault": seeds.VAULT, "role": role})
    return doc


def _raw(control: EmulatorControl, method: str, path: str, **kwargs: Any) -> httpx.Response:
    with httpx.Client(base_url=control.endpoint, verify=ssl.create_default_context(cafile=control.ca_file)) as http:
        return http.request(method, path, **kwargs)


def test_unauthenticated_request_gets_the_key_vault_challenge(emulator: EmulatorControl) -> None:
    response = _raw(emulator, "GET", f"/kv/{seeds.VAULT}/secrets/anything/?api-version=2026-04-01")
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer authorization=")
    assert 'resource="https://vault.azure.net"' in challenge
    assert response.json()["error"]["code"] == "Unauthorized"


def test_set_and_get_round_trip_through_the_challenge(client: SecretClient, emulator: EmulatorControl) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    secret = client.set_secret(
        "aks-sp-demo", "s3cr3t-value", content_type="text/plain", tags={"a": "1"}, expires_on=expires
    )
    assert secret.value == "s3cr3t-value"
    assert secret.name == "aks-sp-demo"
    assert secret.properties.version is not None and len(secret.properties.version) == 32
    assert secret.properties.expires_on == expires
    assert secret.properties.recovery_level == "Recoverable+Purgeable"
    assert secret.properties.created_on is not None
    identifier = KeyVaultSecretIdentifier(secret.id or "")
    assert (identifier.name, identifier.version) == ("aks-sp-demo", secret.properties.version)

    latest = client.get_secret("aks-sp-demo")
    assert latest.value == "s3cr3t-value"
    assert latest.properties.tags == {"a": "1"}
    assert latest.properties.content_type == "text/plain"
    second = client.set_secret("aks-sp-demo", "second-value")
    assert client.get_secret("aks-sp-demo").value == "second-value"
    assert client.get_secret("aks-sp-demo", secret.properties.version).value == "s3cr3t-value"
    assert second.properties.version != secret.properties.version
    counts = emulator.requests()
    assert counts["keyvault.setSecret"] >= 2  # the first PUT went without a body and met the challenge


def test_latest_without_trailing_slash(client: SecretClient, emulator: EmulatorControl) -> None:
    client.set_secret("plain", "v")
    token = _credential(emulator).get_token("https://vault.azure.net/.default").token
    response = _raw(
        emulator,
        "GET",
        f"/kv/{seeds.VAULT}/secrets/plain?api-version=2026-04-01",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200
    assert response.json()["value"] == "v"


def test_versions_page_past_25(client: SecretClient, emulator: EmulatorControl) -> None:
    made = {client.set_secret("many", f"value-{i}").properties.version for i in range(30)}
    emulator.clear_requests()
    listed = list(client.list_properties_of_secret_versions("many"))
    assert {p.version for p in listed} == made
    assert all(p.name == "many" for p in listed)
    assert emulator.requests()["keyvault.getSecretVersions"] == 2  # 25 + 5
    small_pages = list(client.list_properties_of_secret_versions("many", max_page_size=7))
    assert len(small_pages) == 30
    assert emulator.requests()["keyvault.getSecretVersions"] == 2 + 5
    names = [p.name for p in client.list_properties_of_secrets()]
    assert names == ["many"]


def test_versions_items_carry_no_value(client: SecretClient, emulator: EmulatorControl) -> None:
    client.set_secret("novalue", "hidden-value", tags={"state": "pending"})
    token = _credential(emulator).get_token("https://vault.azure.net/.default").token
    response = _raw(
        emulator,
        "GET",
        f"/kv/{seeds.VAULT}/secrets/novalue/versions?api-version=2026-04-01",
        headers={"Authorization": f"Bearer {token}"},
    )
    body = response.json()
    assert body["nextLink"] is None
    assert "hidden-value" not in response.text
    assert body["value"][0]["tags"] == {"state": "pending"}
    assert set(body["value"][0]["attributes"]) >= {"enabled", "created", "updated", "recoveryLevel"}


def test_update_replaces_tags_and_changes_attributes(client: SecretClient) -> None:
    first = client.set_secret("upd", "v1", tags={"keep": "no", "state": "pending"})
    version = first.properties.version
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=7)
    updated = client.update_secret_properties("upd", version, tags={"state": "current"}, expires_on=expires)
    assert updated.tags == {"state": "current"}
    assert updated.expires_on == expires
    assert updated.content_type is None
    # Omitted fields stay as they were.
    again = client.update_secret_properties("upd", version, content_type="text/plain")
    assert again.tags == {"state": "current"}
    assert again.expires_on == expires
    assert client.get_secret("upd", version).properties.content_type == "text/plain"


def test_missing_secret_is_secret_not_found(client: SecretClient) -> None:
    with pytest.raises(ResourceNotFoundError) as info:
        client.get_secret("does-not-exist")
    assert info.value.error is not None
    assert info.value.error.code == "SecretNotFound"
    assert "A secret with (name/id) does-not-exist was not found in this key vault" in str(info.value)
    client.set_secret("exists", "v")
    with pytest.raises(ResourceNotFoundError):
        client.get_secret("exists", "0" * 32)
    assert list(client.list_properties_of_secret_versions("does-not-exist")) == []


def test_disabled_version_cannot_be_read(client: SecretClient) -> None:
    secret = client.set_secret("off", "v", enabled=False)
    with pytest.raises(HttpResponseError) as info:
        client.get_secret("off")
    assert info.value.status_code == 403
    assert info.value.error is not None and info.value.error.code == "Forbidden"
    assert "Operation get is not allowed on a disabled secret." in str(info.value)
    client.update_secret_properties("off", secret.properties.version, enabled=True)
    assert client.get_secret("off").value == "v"


def test_invalid_name_is_bad_parameter(client: SecretClient) -> None:
    with pytest.raises(HttpResponseError) as info:
        client.set_secret("bad_name", "v")
    assert info.value.status_code == 400
    assert info.value.error is not None and info.value.error.code == "BadParameter"
    with pytest.raises(HttpResponseError) as too_long:
        client.set_secret("a" * 128, "v")
    assert too_long.value.status_code == 400


def test_value_over_25k_is_refused(client: SecretClient) -> None:
    with pytest.raises(HttpResponseError) as info:
        client.set_secret("big", "x" * (25 * 1024 + 1))
    assert info.value.status_code == 400


def test_secrets_user_cannot_set(emulator: EmulatorControl) -> None:
    emulator.reset(_with_other_app("Key Vault Secrets User"))
    with _client(emulator) as officer:
        officer.set_secret("shared", "officer-wrote-this")
    with _client(emulator, _credential(emulator, OTHER_APP, OTHER_SECRET)) as user:
        assert user.get_secret("shared").value == "officer-wrote-this"
        assert [p.name for p in user.list_properties_of_secrets()] == ["shared"]
        with pytest.raises(HttpResponseError) as info:
            user.set_secret("shared", "nope")
    error = info.value
    assert error.status_code == 403
    assert error.error is not None and error.error.code == "Forbidden"
    assert error.error.innererror == {"code": "ForbiddenByRbac"}
    assert "Caller is not authorized to perform action on resource." in error.message
    assert f"appid={OTHER_APP}" in error.message
    assert "Action: 'Microsoft.KeyVault/vaults/secrets/setSecret/action'" in error.message
    assert "nope" not in str(error)


def test_reader_sees_metadata_but_not_values(emulator: EmulatorControl) -> None:
    emulator.reset(_with_other_app("Key Vault Reader"))
    with _client(emulator) as officer:
        officer.set_secret("meta", "value-only-for-users")
    with _client(emulator, _credential(emulator, OTHER_APP, OTHER_SECRET)) as reader:
        assert len(list(reader.list_properties_of_secret_versions("meta"))) == 1
        with pytest.raises(HttpResponseError) as info:
            reader.get_secret("meta")
    assert info.value.status_code == 403
    assert "getSecret/action" in info.value.message


def test_no_role_is_forbidden(emulator: EmulatorControl) -> None:
    emulator.reset(_with_other_app(None))
    nobody = _client(emulator, _credential(emulator, OTHER_APP, OTHER_SECRET))
    with nobody, pytest.raises(HttpResponseError) as info:
        list(nobody.list_properties_of_secrets())
    assert info.value.status_code == 403
    assert "readMetadata/action" in info.value.message


def test_unknown_vault_is_404(emulator: EmulatorControl) -> None:
    url = emulator.ready["key_vault_url"].rsplit("/", 1)[0] + "/no-such-vault"
    with (
        SecretClient(
            url, _credential(emulator), verify_challenge_resource=False, connection_verify=emulator.ca_file
        ) as missing,
        pytest.raises(ResourceNotFoundError) as info,
    ):
        missing.get_secret("x")
    assert info.value.error is not None and info.value.error.code == "VaultNotFound"


def test_throttled_request_is_retried_by_the_sdk(client: SecretClient, emulator: EmulatorControl) -> None:
    client.set_secret("busy", "v")
    emulator.add_faults({"kind": "throttle", "surface": "keyvault", "times": 1, "retry_after": 1})
    emulator.clear_requests()
    assert client.get_secret("busy").value == "v"
    assert emulator.requests()["keyvault.getSecret"] == 2
    assert emulator.faults()[0]["fired"] == 1


def test_per_vault_bucket_answers_429(emulator: EmulatorControl) -> None:
    doc = seeds.demo()
    doc["limits"] = {"keyvault_capacity": 3, "keyvault_refill": 0.001}
    emulator.reset(doc)
    with _client(emulator, retry_total=0) as c:
        c.set_secret("limited", "v")
        c.get_secret("limited")
        c.get_secret("limited")
        with pytest.raises(HttpResponseError) as info:
            c.get_secret("limited")
    assert info.value.status_code == 429
    response: Any = info.value.response
    assert response is not None and "Retry-After" in response.headers


def test_async_client_round_trip(emulator: EmulatorControl) -> None:
    async def run() -> tuple[str | None, int]:
        ready = emulator.ready
        credential = AsyncClientSecretCredential(
            ready["tenant_id"],
            ready["client_id"],
            ready["client_secret"],
            authority=ready["endpoint"],
            disable_instance_discovery=True,
            connection_verify=ready["ca_file"],
        )
        async with (
            credential,
            AsyncSecretClient(
                ready["key_vault_url"], credential, verify_challenge_resource=False, connection_verify=ready["ca_file"]
            ) as c,
        ):
            for i in range(27):
                await c.set_secret("async-many", f"value-{i}")
            got = await c.get_secret("async-many")
            count = len([p async for p in c.list_properties_of_secret_versions("async-many")])
            return got.value, count

    value, count = asyncio.run(run())
    assert value == "value-26"
    assert count == 27


def test_truth_has_hashes_not_values(client: SecretClient, emulator: EmulatorControl) -> None:
    client.set_secret("truthful", "canary-value-never-in-truth", tags={"state": "current"})
    vault = next(v for v in emulator.state()["vaults"] if v["name"] == seeds.VAULT)
    (entry,) = vault["secrets"]["truthful"]
    assert entry["tags"] == {"state": "current"}
    assert len(entry["valueSha256"]) == 64
    assert "canary-value-never-in-truth" not in str(emulator.state())
