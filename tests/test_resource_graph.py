"""Resource Graph: the emulator's /providers/Microsoft.ResourceGraph/resources and shared.resource_graph."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from emulator import resource_graph as emu_rg
from emulator import seeds
from emulator.sandbox import EmulatorControl
from shared.aks import ClusterInfo
from shared.azure import product_credential
from shared.resource_graph import (
    CLUSTERS_QUERY,
    LIMIT_HIT_HEADER,
    ResourceGraphRefused,
    SubscriptionLimitHit,
    parse_resets_after,
    query_clusters,
)
from shared.settings import Settings

URL = "/providers/Microsoft.ResourceGraph/resources"
API = {"api-version": "2021-03-01"}


def _reset(emulator: EmulatorControl, doc: dict[str, Any]) -> None:
    doc["product"]["secret"] = emulator.ready["client_secret"]
    emulator.reset(doc)


def _query(settings: Settings, subscriptions: list[str] | None = None, **kwargs: Any) -> list[ClusterInfo]:
    async def main() -> list[ClusterInfo]:
        credential = product_credential(settings)
        try:
            return await query_clusters(settings, credential, subscriptions, **kwargs)
        finally:
            await credential.close()

    return asyncio.run(main())


def _http(emulator: EmulatorControl, settings: Settings) -> httpx.Client:
    async def token() -> str:
        credential = product_credential(settings)
        try:
            return (await credential.get_token("https://management.azure.com/.default")).token
        finally:
            await credential.close()

    return httpx.Client(
        base_url=emulator.endpoint,
        verify=emulator.ssl_context(),
        headers={"Authorization": f"Bearer {asyncio.run(token())}"},
    )


def test_emulator_answers_exactly_the_product_query() -> None:
    assert emu_rg.normalize(CLUSTERS_QUERY) in emu_rg.QUERIES


def test_2500_clusters_in_three_pages_match_arm(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = seeds.generate(clusters=2500, subscriptions=4)
    _reset(emulator, doc)
    emulator.clear_requests()
    clusters = _query(emu_settings)
    assert emulator.requests()["resourcegraph.resources"] == 3
    assert len(clusters) == 2500 == len({c.id for c in clusters})
    by_name = {c.name: c for c in clusters}
    for spec in doc["clusters"][:50]:
        info = by_name[spec["name"]]
        assert info.subscription_id == spec["subscription_id"]
        assert info.resource_group.lower() == spec["resource_group"].lower()
        assert info.node_count == spec["node_count"]
        assert info.sp_client_id == (None if spec["client_id"] == "msi" else spec["client_id"])
    legacy = [c for c in doc["clusters"] if "aad_profile" in c]
    assert legacy and all(
        by_name[c["name"]].legacy_aad_server_app_id == c["aad_profile"]["serverAppID"] for c in legacy
    )
    one_sub = _query(emu_settings, [doc["subscriptions"][1]["id"]])
    assert len(one_sub) == 625 and {c.subscription_id for c in one_sub} == {doc["subscriptions"][1]["id"]}


def test_shape_quota_headers_table_format_and_bad_query(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = seeds.demo()
    doc["limits"] = {"resourcegraph_queries": 5, "resourcegraph_window": 5}
    _reset(emulator, doc)
    with _http(emulator, emu_settings) as http:
        first = http.post(URL, params=API, json={"query": CLUSTERS_QUERY, "options": {"$top": 2}})
        assert first.status_code == 200
        body = first.json()
        assert body["totalRecords"] == 5 and body["count"] == 2 and body["resultTruncated"] == "false"
        assert body["facets"] == [] and body["$skipToken"]
        assert set(body["data"][0]) == {
            "id",
            "name",
            "type",
            "location",
            "resourceGroup",
            "subscriptionId",
            "tags",
            "identity",
            "properties",
        }
        assert body["data"][0]["type"] == "microsoft.containerservice/managedclusters"
        assert first.headers["x-ms-user-quota-remaining"] == "4"
        assert first.headers["x-ms-user-quota-resets-after"] in ("00:00:05", "00:00:04")
        table = http.post(
            URL,
            params=API,
            json={
                "query": CLUSTERS_QUERY,
                "options": {"$skipToken": body["$skipToken"], "$top": 2, "resultFormat": "table"},
            },
        ).json()
        assert [c["name"] for c in table["data"]["columns"]][:2] == ["id", "name"]
        assert len(table["data"]["rows"]) == 2 and table["data"]["rows"][0][0] != body["data"][0]["id"]
        bad = http.post(URL, params=API, json={"query": "resources | take 1"})
        assert bad.status_code == 400
        error = bad.json()["error"]
        assert error["code"] == "BadRequest" and error["message"].startswith("Please provide below info")
        assert error["details"][0]["code"] == "InvalidQuery"
        http.post(URL, params=API, json={"query": CLUSTERS_QUERY})
        http.post(URL, params=API, json={"query": CLUSTERS_QUERY})
        over = http.post(URL, params=API, json={"query": CLUSTERS_QUERY})
        assert over.status_code == 429 and over.json()["error"]["code"] == "RateLimiting"
        assert over.headers["x-ms-user-quota-remaining"] == "0" and int(over.headers["Retry-After"]) >= 1


def test_quota_exhaustion_waits_for_the_reset(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = seeds.generate(clusters=2500, subscriptions=2)
    doc["limits"] = {"resourcegraph_queries": 1, "resourcegraph_window": 1}
    _reset(emulator, doc)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    clusters = _query(emu_settings, sleep=sleep)
    assert len(clusters) == 2500
    assert len(waits) == 2 and all(0 < w <= 1 for w in waits)
    assert emulator.requests()["resourcegraph.resources"] == 3  # no 429 was needed


def test_429_is_honoured_when_the_sdk_does_not_retry(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = seeds.demo()
    _reset(emulator, doc)
    emulator.add_faults({"kind": "throttle", "surface": "resourcegraph", "retry_after": 1, "times": 1})
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    assert len(_query(emu_settings, sleep=sleep, retry_total=0)) == 5
    assert waits == [1.0]


def test_refused_resource_graph_raises_refused(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = seeds.demo()
    doc["resource_graph_enabled"] = False
    _reset(emulator, doc)
    with pytest.raises(ResourceGraphRefused) as info:
        _query(emu_settings, retry_total=0)
    assert info.value.status == 403 and info.value.code == "AuthorizationFailed"
    _reset(emulator, seeds.demo())
    emulator.add_faults({"kind": "status", "surface": "resourcegraph", "status": 403, "message": "Forbidden"})
    with pytest.raises(ResourceGraphRefused):
        _query(emu_settings, retry_total=0)


def test_rows_only_where_the_caller_can_read(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = seeds.demo()
    readable = doc["subscriptions"][0]["id"]
    doc["role_assignments"] = [ra for ra in doc["role_assignments"] if ra["scope"] == f"/subscriptions/{readable}"]
    _reset(emulator, doc)
    clusters = _query(emu_settings)
    assert {c.subscription_id for c in clusters} == {readable} and len(clusters) == 2
    assert _query(emu_settings, [doc["subscriptions"][1]["id"]]) == []


def test_parse_resets_after() -> None:
    assert parse_resets_after("00:00:05") == 5
    assert parse_resets_after("01:02:03") == 3723
    assert parse_resets_after("00:00:00.500") == 0.5
    assert parse_resets_after(None) == 0 and parse_resets_after("junk") == 0


def test_tenant_subscription_limit_is_flagged_and_names_no_rows_past_it(
    emulator: EmulatorControl, emu_settings: Settings
) -> None:
    doc = seeds.generate(clusters=40, subscriptions=4)
    doc["limits"] = {"resourcegraph_tenant_subscriptions": 2}
    _reset(emulator, doc)
    subscriptions = sorted(s["id"].lower() for s in doc["subscriptions"])
    body = {"query": CLUSTERS_QUERY, "options": {"$top": 1000}}
    with _http(emulator, emu_settings) as http:
        unscoped = http.post(URL, params=API, json=body)
        scoped = http.post(URL, params=API, json={**body, "subscriptions": subscriptions})
    assert unscoped.headers[LIMIT_HIT_HEADER] == "true"
    assert {r["subscriptionId"].lower() for r in unscoped.json()["data"]} == set(subscriptions[:2])
    assert LIMIT_HIT_HEADER not in scoped.headers and scoped.json()["count"] == 40
    with pytest.raises(SubscriptionLimitHit):
        _query(emu_settings)
    assert len(_query(emu_settings, subscriptions)) == 40
