"""Microsoft Graph surface of the emulator, driven by the real msgraph-sdk (and msgraph-core for $batch)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_abstractions.headers_collection import HeadersCollection
from kiota_abstractions.method import Method
from kiota_abstractions.request_information import RequestInformation
from kiota_http.middleware.options.retry_handler_option import RetryHandlerOption
from msgraph.generated.applications.applications_request_builder import ApplicationsRequestBuilder
from msgraph.generated.applications.item.add_password.add_password_post_request_body import (
    AddPasswordPostRequestBody,
)
from msgraph.generated.applications.item.remove_password.remove_password_post_request_body import (
    RemovePasswordPostRequestBody,
)
from msgraph.generated.models.app_credential_restriction_type import AppCredentialRestrictionType
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.password_credential import PasswordCredential
from msgraph.generated.models.reference_create import ReferenceCreate
from msgraph.generated.service_principals.item.add_password.add_password_post_request_body import (
    AddPasswordPostRequestBody as SpAddPasswordPostRequestBody,
)
from msgraph.generated.service_principals.service_principals_request_builder import ServicePrincipalsRequestBuilder
from msgraph.graph_service_client import GraphServiceClient

from emulator import seeds
from emulator.sandbox import EmulatorControl
from shared.azure import graph_client, product_credential
from shared.settings import Settings

T = TypeVar("T")
NO_RETRY = RetryHandlerOption(delay=0, max_retries=0, should_retry=False)
READ_ALL = "Application.Read.All"
OWNED_BY = "Application.ReadWrite.OwnedBy"
WRITE_ALL = "Application.ReadWrite.All"


def _estate(roles: list[str], apps: int = 0, **extra: Any) -> dict[str, Any]:
    """The demo estate with the product's Graph roles replaced and `apps` more applications."""
    doc = seeds.demo()
    doc["graph_app_roles"] = {seeds.PRODUCT_APP_ID: roles}
    for i in range(apps):
        doc["applications"].append(
            {
                "app_id": str(uuid.UUID(int=i + 1)),
                "display_name": f"extra-{i:03d}",
                "password_credentials": [{"display_name": "p", "expires_in_days": 10 + i}],
                "service_principal": {"password_credentials": [{"display_name": "sp"}] if i % 3 == 0 else []},
            }
        )
    doc.update(extra)
    return doc


@asynccontextmanager
async def _graph(settings: Settings) -> AsyncIterator[GraphServiceClient]:
    credential = product_credential(settings)
    client = graph_client(settings, credential)
    try:
        yield client
    finally:
        await client.request_adapter._http_client.aclose()  # type: ignore[attr-defined]
        await credential.close()


def _run(settings: Settings, body: Callable[[GraphServiceClient], Awaitable[T]]) -> T:
    async def go() -> T:
        async with _graph(settings) as client:
            return await body(client)

    return asyncio.run(go())


def _odata_error(settings: Settings, body: Callable[[GraphServiceClient], Awaitable[Any]]) -> ODataError:
    with pytest.raises(ODataError) as caught:
        _run(settings, body)
    return caught.value


def _config(query: Any = None) -> RequestConfiguration[Any]:
    return RequestConfiguration(query_parameters=query, options=[NO_RETRY])


def _app(state: dict[str, Any], app_id: str) -> dict[str, Any]:
    return next(a for a in state["applications"] if a["appId"] == app_id)


async def _raw_batch(client: GraphServiceClient, payload: dict[str, Any]) -> dict[str, Any]:
    """POST /$batch through the SDK's adapter (auth + middleware), returning the parsed JSON body."""
    info = RequestInformation(Method.POST, client.request_adapter.base_url + "/$batch")
    info.headers = HeadersCollection()
    info.set_stream_content(json.dumps(payload).encode(), "application/json")
    info.add_request_options([NO_RETRY])
    raw: Any = await client.request_adapter.send_primitive_async(info, "bytes", {"XXX": ODataError})
    result: dict[str, Any] = json.loads(raw)
    return result


# -- reads ----------------------------------------------------------------------------------------------------
def test_list_with_filter_select_and_paging(emulator: EmulatorControl, emu_settings: Settings) -> None:
    emulator.reset(_estate([READ_ALL], apps=25))
    total = len(emulator.state()["applications"])

    async def body(client: GraphServiceClient) -> tuple[list[Any], int, Any]:
        query = ApplicationsRequestBuilder.ApplicationsRequestBuilderGetQueryParameters(
            select=["id", "appId", "passwordCredentials"], top=7
        )
        page = await client.applications.get(_config(query))
        items, pages = [], 0
        while page is not None:
            pages += 1
            items.extend(page.value or [])
            if not page.odata_next_link:
                break
            page = await client.applications.with_url(page.odata_next_link).get(_config())
        wanted = [str(uuid.UUID(int=i)) for i in (1, 2, 3)] + ["00000000-0000-0000-0000-00000000dead"]
        filtered = await client.applications.get(
            _config(
                ApplicationsRequestBuilder.ApplicationsRequestBuilderGetQueryParameters(
                    filter=f"appId in ({','.join(repr(w) for w in wanted)})", select=["appId", "displayName"]
                )
            )
        )
        return items, pages, filtered

    items, pages, filtered = _run(emu_settings, body)
    assert len(items) == total and pages == -(-total // 7)
    assert len({a.id for a in items}) == total
    assert all(a.display_name is None and a.app_id for a in items)  # $select honoured
    assert sorted(a.display_name for a in filtered.value) == ["extra-000", "extra-001", "extra-002"]
    assert all(a.id is None for a in filtered.value)

    sixteen = ",".join(f"'{uuid.UUID(int=i)}'" for i in range(1, 17))
    err = _odata_error(
        emu_settings,
        lambda c: c.applications.get(
            _config(
                ApplicationsRequestBuilder.ApplicationsRequestBuilderGetQueryParameters(filter=f"appId in ({sixteen})")
            )
        ),
    )
    assert err.response_status_code == 400 and err.error is not None
    assert err.error.code == "Request_UnsupportedQuery" and "Max allowed: 15" in str(err.error.message)


def test_get_by_id_and_app_id(emulator: EmulatorControl, emu_settings: Settings) -> None:
    emulator.reset(_estate([READ_ALL]))
    target = emulator.state()["applications"][2]

    async def body(client: GraphServiceClient) -> list[Any]:
        by_id = await client.applications.by_application_id(target["objectId"]).get(_config())
        by_app_id = await client.applications_with_app_id(target["appId"]).get(_config())
        sp = await client.service_principals_with_app_id(target["appId"]).get(_config())
        sp_by_id = await client.service_principals.by_service_principal_id(target["servicePrincipal"]["objectId"]).get(
            _config()
        )
        sps = await client.service_principals.get(
            _config(
                ServicePrincipalsRequestBuilder.ServicePrincipalsRequestBuilderGetQueryParameters(
                    filter=f"appId eq '{target['appId']}'"
                )
            )
        )
        return [by_id, by_app_id, sp, sp_by_id, sps]

    by_id, by_app_id, sp, sp_by_id, sps = _run(emu_settings, body)
    assert by_id.id == by_app_id.id == target["objectId"] and by_id.app_id == target["appId"]
    assert [str(p.key_id) for p in by_id.password_credentials] == [p["keyId"] for p in target["passwordCredentials"]]
    assert all(p.secret_text is None and p.hint for p in by_id.password_credentials)
    assert sp.id == sp_by_id.id == target["servicePrincipal"]["objectId"] and sp.app_id == target["appId"]
    assert [s.id for s in sps.value] == [sp.id]

    missing = str(uuid.uuid4())
    err = _odata_error(emu_settings, lambda c: c.applications.by_application_id(missing).get(_config()))
    assert err.response_status_code == 404 and err.error is not None
    assert err.error.code == "Request_ResourceNotFound" and missing in str(err.error.message)


# -- passwords ------------------------------------------------------------------------------------------------
def test_add_and_remove_password_on_application_and_service_principal(
    emulator: EmulatorControl, emu_settings: Settings
) -> None:
    emulator.reset(_estate([OWNED_BY]))
    target = emulator.state()["applications"][1]
    app_oid, sp_oid = target["objectId"], target["servicePrincipal"]["objectId"]

    async def body(client: GraphServiceClient) -> list[Any]:
        added = await client.applications.by_application_id(app_oid).add_password.post(
            AddPasswordPostRequestBody(password_credential=PasswordCredential(display_name="rotated")), _config()
        )
        on_sp = await client.service_principals.by_service_principal_id(sp_oid).add_password.post(
            SpAddPasswordPostRequestBody(password_credential=PasswordCredential(display_name="sp-rotated")), _config()
        )
        again = await client.applications.by_application_id(app_oid).get(_config())
        return [added, on_sp, again]

    added, on_sp, again = _run(emu_settings, body)
    assert added.secret_text and len(added.secret_text) == 40 and added.hint == added.secret_text[:3]
    assert (added.end_date_time - added.start_date_time).days in (730, 731)  # default: start + 2 years
    state = _app(emulator.state(), target["appId"])
    new = next(p for p in state["passwordCredentials"] if p["keyId"] == str(added.key_id))
    assert new["secretSha256"] == hashlib.sha256(added.secret_text.encode()).hexdigest()
    assert new["displayName"] == "rotated"
    sp_new = state["servicePrincipal"]["passwordCredentials"][-1]
    assert sp_new["keyId"] == str(on_sp.key_id) and on_sp.secret_text
    assert all(p.secret_text is None for p in again.password_credentials)  # returned once, never again
    assert {added.secret_text, on_sp.secret_text} <= set(emulator.canaries())

    async def remove(client: GraphServiceClient) -> None:
        await client.applications.by_application_id(app_oid).remove_password.post(
            RemovePasswordPostRequestBody(key_id=added.key_id), _config()
        )

    _run(emu_settings, remove)
    keys = [p["keyId"] for p in _app(emulator.state(), target["appId"])["passwordCredentials"]]
    assert str(added.key_id) not in keys and keys
    err = _odata_error(emu_settings, remove)  # the keyId is gone now
    assert err.response_status_code == 400 and err.error is not None and err.error.code == "Request_BadRequest"


def test_policy_errors(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = _estate([WRITE_ALL, "Policy.Read.All"], default_app_management_policy={"max_password_lifetime_days": 90})
    blocked, short, limited = doc["applications"][0], doc["applications"][1], doc["applications"][2]
    blocked["policy"] = {"block_password_addition": True}
    short["policy"] = {"max_password_lifetime_days": 30}
    limited["password_limit"] = 1
    emulator.reset(doc)
    oid = {a["appId"]: a["objectId"] for a in emulator.state()["applications"]}

    def add(app_id: str, days: int | None = None) -> Callable[[GraphServiceClient], Awaitable[Any]]:
        async def body(client: GraphServiceClient) -> Any:
            end = datetime.now(UTC) + timedelta(days=days) if days is not None else None
            return await client.applications.by_application_id(oid[app_id]).add_password.post(
                AddPasswordPostRequestBody(password_credential=PasswordCredential(display_name="x", end_date_time=end)),
                _config(),
            )

        return body

    cases = [
        (add(blocked["app_id"], 10), "CredentialTypeNotAllowedAsPerAppPolicy", "not allowed as per assigned policy"),
        (add(short["app_id"], 31), "CredentialInvalidLifetimeAsPerAppPolicy", "Credential lifetime exceeds"),
        (add(limited["app_id"], 10), "TooManyAppPasswords", "You can only add a maximum of 1 passwords"),
        # no own policy: the tenant default (90 days) applies, and the default lifetime (2 years) exceeds it
        (add(doc["applications"][3]["app_id"]), "CredentialInvalidLifetimeAsPerAppPolicy", "Credential lifetime"),
    ]
    for body, code, text in cases:
        err = _odata_error(emu_settings, body)
        assert err.response_status_code == 400 and err.error is not None
        assert err.error.code == code and text in str(err.error.message)
    assert _run(emu_settings, add(short["app_id"], 29)).secret_text  # within the limit

    async def policies(client: GraphServiceClient) -> list[Any]:
        own = await client.applications.by_application_id(oid[short["app_id"]]).app_management_policies.get(_config())
        none = await client.applications.by_application_id(oid[limited["app_id"]]).app_management_policies.get(
            _config()
        )
        default = await client.policies.default_app_management_policy.get(_config())
        return [own, none, default]

    own, none, default = _run(emu_settings, policies)
    (restriction,) = own.value[0].restrictions.password_credentials
    assert restriction.restriction_type == AppCredentialRestrictionType.PasswordLifetime
    assert restriction.max_lifetime.days == 30
    assert none.value == []
    assert default.is_enabled and default.application_restrictions.password_credentials[0].max_lifetime.days == 90


# -- owners and authorization ---------------------------------------------------------------------------------
def test_owners_list_and_add(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = _estate([WRITE_ALL])
    doc["applications"][0]["owned_by_product"] = False
    emulator.reset(doc)
    state = emulator.state()
    app_oid = _app(state, doc["applications"][0]["app_id"])["objectId"]
    product_sp = _app(state, seeds.PRODUCT_APP_ID)["servicePrincipal"]["objectId"]

    def add(object_id: str) -> Callable[[GraphServiceClient], Awaitable[Any]]:
        async def body(client: GraphServiceClient) -> Any:
            ref = ReferenceCreate(odata_id=f"https://graph.microsoft.com/v1.0/directoryObjects/{object_id}")
            await client.applications.by_application_id(app_oid).owners.ref.post(ref, _config())
            return await client.applications.by_application_id(app_oid).owners.get(_config())

        return body

    owners = _run(emu_settings, add(product_sp))
    assert [o.id for o in owners.value] == [product_sp] and owners.value[0].odata_type.endswith("servicePrincipal")
    err = _odata_error(emu_settings, add(product_sp))
    assert err.response_status_code == 400 and "already exist" in str(err.error.message)  # type: ignore[union-attr]
    err = _odata_error(emu_settings, add(str(uuid.uuid4())))
    assert err.response_status_code == 404

    emulator.reset(_estate([OWNED_BY]))  # OwnedBy isn't sufficient to add another owner
    app_oid = emulator.state()["applications"][1]["objectId"]
    err = _odata_error(emu_settings, add(product_sp))
    assert err.response_status_code == 403 and err.error is not None
    assert err.error.code == "Authorization_RequestDenied"


@pytest.mark.parametrize(
    ("roles", "read", "write_owned", "write_other"),
    [([OWNED_BY], 200, 200, 403), ([WRITE_ALL], 200, 200, 200), ([READ_ALL], 200, 403, 403), ([], 403, 403, 403)],
)
def test_authorization(
    emulator: EmulatorControl, emu_settings: Settings, roles: list[str], read: int, write_owned: int, write_other: int
) -> None:
    doc = _estate(roles)
    doc["applications"][0]["owned_by_product"] = False
    emulator.reset(doc)
    state = emulator.state()
    other = _app(state, doc["applications"][0]["app_id"])
    owned = _app(state, doc["applications"][1]["app_id"])

    def status(body: Callable[[GraphServiceClient], Awaitable[Any]]) -> int:
        try:
            _run(emu_settings, body)
        except ODataError as err:
            if err.response_status_code == 403:
                assert err.error is not None and err.error.code == "Authorization_RequestDenied"
                assert err.error.message == "Insufficient privileges to complete the operation."
            return int(err.response_status_code or 0)
        return 200

    def add(target: dict[str, Any], sp: bool = False) -> Callable[[GraphServiceClient], Awaitable[Any]]:
        async def body(client: GraphServiceClient) -> Any:
            pc = PasswordCredential(display_name="authz")
            if sp:
                builder = client.service_principals.by_service_principal_id(target["servicePrincipal"]["objectId"])
                return await builder.add_password.post(SpAddPasswordPostRequestBody(password_credential=pc), _config())
            return await client.applications.by_application_id(target["objectId"]).add_password.post(
                AddPasswordPostRequestBody(password_credential=pc), _config()
            )

        return body

    assert status(lambda c: c.applications.get(_config())) == read
    assert status(lambda c: c.applications.by_application_id(other["objectId"]).get(_config())) == read
    assert status(add(owned)) == write_owned
    assert status(add(owned, sp=True)) == write_owned
    assert status(add(other)) == write_other
    assert status(add(other, sp=True)) == write_other


# -- $batch and throttling ------------------------------------------------------------------------------------
def test_batch_limits_and_throttled_items(emulator: EmulatorControl, emu_settings: Settings) -> None:
    emulator.reset(_estate([READ_ALL]))
    app_ids = [a["appId"] for a in emulator.state()["applications"]]

    def requests(n: int) -> dict[str, Any]:
        return {
            "requests": [
                {"id": str(i), "method": "GET", "url": f"/applications?$filter=appId eq '{app_ids[i % 3]}'"}
                for i in range(n)
            ]
        }

    err = _odata_error(emu_settings, lambda c: _raw_batch(c, requests(21)))
    assert err.response_status_code == 400

    emulator.clear_requests()
    emulator.add_faults({"kind": "throttle", "surface": "graph", "operation": "listApplications", "times": 2})
    answer = _run(emu_settings, lambda c: _raw_batch(c, requests(5)))
    by_id = {r["id"]: r for r in answer["responses"]}
    assert sorted(by_id) == ["0", "1", "2", "3", "4"]
    throttled = [r for r in by_id.values() if r["status"] == 429]
    assert len(throttled) == 2
    assert all(int(r["headers"]["Retry-After"]) >= 1 and r["body"]["error"]["code"] for r in throttled)
    ok = [r for r in by_id.values() if r["status"] == 200]
    assert len(ok) == 3 and all(len(r["body"]["value"]) == 1 for r in ok)
    counts = emulator.requests()
    assert counts["graph.batch"] == 1 and counts["graph.batch_item"] == 5
    assert counts["graph.listApplications"] == 5

    # an unknown segment, a wrong method and dependsOn after a failure are answered per item
    answer = _run(
        emu_settings,
        lambda c: _raw_batch(
            c,
            {
                "requests": [
                    {"id": "a", "method": "GET", "url": "/nope"},
                    {"id": "b", "method": "DELETE", "url": "/applications"},
                    {"id": "c", "method": "GET", "url": "/applications", "dependsOn": ["b"]},
                ]
            },
        ),
    )
    assert {r["id"]: r["status"] for r in answer["responses"]} == {"a": 400, "b": 405, "c": 424}


def test_per_app_rate_limit_answers_429_with_retry_after(emulator: EmulatorControl, emu_settings: Settings) -> None:
    emulator.reset(_estate([READ_ALL], limits={"graph_capacity": 2, "graph_refill": 0.2}))

    async def body(client: GraphServiceClient) -> ODataError:
        await client.applications.get(_config())
        await client.applications.get(_config())
        with pytest.raises(ODataError) as caught:
            await client.applications.get(_config())
        return caught.value

    err = _run(emu_settings, body)
    assert err.response_status_code == 429 and err.error is not None and err.error.code == "TooManyRequests"
    assert err.response_headers is not None
    retry_after: Any = err.response_headers.get("retry-after")  # kiota keeps header values as a set
    assert int(next(iter(retry_after))) >= 1


def test_unauthenticated_request_is_refused(emulator: EmulatorControl) -> None:
    response = httpx.get(f"{emulator.endpoint}/v1.0/applications", verify=emulator.ca_file)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "InvalidAuthenticationToken"
