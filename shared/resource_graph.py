"""Cluster inventory through Azure Resource Graph: one KQL query, paged with `$skipToken`, within the user quota.

Resource Graph allows a handful of queries per principal per few seconds; every answer says how many remain
(`x-ms-user-quota-remaining`) and when the window resets (`x-ms-user-quota-resets-after`, hh:mm:ss). When the
quota hits 0 with pages left, we wait for the reset before asking for the next page; a 429 is waited out per its
`Retry-After`. Both waits are bounded. A 400/403 means Resource Graph is not usable for this identity:
`ResourceGraphRefused`, and discovery falls back to ARM lists. An unscoped query that reaches the tenant's
subscription limit (`x-ms-tenant-subscription-limit-hit: true`) raises `SubscriptionLimitHit`: its rows cover only
some subscriptions, so discovery asks again naming them (up to 1,000 per request).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.rest import HttpRequest

from shared.aks import ClusterInfo, cluster_info
from shared.azure import pooled_transport, resource_graph, shared_session
from shared.settings import Settings

CLUSTERS_QUERY = """resources
| where type =~ 'microsoft.containerservice/managedclusters'
| project id, name, type, location, resourceGroup, subscriptionId, tags, identity, properties
| order by id asc"""

PAGE_SIZE = 1000
SUBSCRIPTIONS_PER_QUERY = 1000  # Resource Graph's limit on the subscriptions of one request
MAX_WAIT_SECONDS = 60.0
MAX_THROTTLED = 5
MAX_PAGES = 10000
RESOURCES_PATH = "/providers/Microsoft.ResourceGraph/resources"
LIMIT_HIT_HEADER = "x-ms-tenant-subscription-limit-hit"
_ACCEPT = {"Accept": "application/json"}

Sleep = Callable[[float], Awaitable[None]]


class ResourceGraphRefused(Exception):
    """Resource Graph refused the query (400/403): fall back to ARM lists."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class SubscriptionLimitHit(Exception):
    """An unscoped (tenant) query reached the tenant's subscription limit: the answer covers only the first
    subscriptions (`x-ms-tenant-subscription-limit-hit: true`). Raised before any row of it is yielded."""


class ResourceGraphError(Exception):
    """Resource Graph failed in another way (throttled beyond our bounds, 5xx after retries)."""


def parse_resets_after(value: str | None) -> float:
    """Seconds from `x-ms-user-quota-resets-after` (hh:mm:ss, possibly with fractions); 0 when absent/invalid."""
    if not value:
        return 0.0
    try:
        parts = [float(p) for p in value.strip().split(":")]
    except ValueError:
        return 0.0
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return max(0.0, seconds)


def _retry_after(headers: Mapping[str, str]) -> float:
    value = headers.get("Retry-After") or headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
    return parse_resets_after(headers.get("x-ms-user-quota-resets-after")) or 1.0


async def query_clusters(
    settings: Settings,
    credential: AsyncTokenCredential,
    subscriptions: Sequence[str] | None,
    *,
    sleep: Sleep = asyncio.sleep,
    **client_kwargs: Any,
) -> list[ClusterInfo]:
    """Every managed cluster visible to the product (in `subscriptions`, or all it can read when None)."""
    result: list[ClusterInfo] = []
    async for page in cluster_pages(settings, credential, subscriptions, sleep=sleep, **client_kwargs):
        result.extend(page)
    return result


async def cluster_pages(
    settings: Settings,
    credential: AsyncTokenCredential,
    subscriptions: Sequence[str] | None,
    *,
    sleep: Sleep = asyncio.sleep,
    **client_kwargs: Any,
) -> AsyncIterator[list[ClusterInfo]]:
    """The same clusters as `query_clusters`, one page (up to `PAGE_SIZE`) at a time as Resource Graph answers, so
    a caller can work on a page and let it go before the next one arrives."""
    if subscriptions is not None and not subscriptions:
        return
    chunks: list[list[str] | None] = (
        [None]
        if subscriptions is None
        else [
            list(subscriptions[i : i + SUBSCRIPTIONS_PER_QUERY])
            for i in range(0, len(subscriptions), SUBSCRIPTIONS_PER_QUERY)
        ]
    )
    async with (
        shared_session(settings) as session,
        resource_graph(settings, credential, transport=pooled_transport(session), **client_kwargs) as client,
    ):
        for chunk in chunks:
            async for page in _query(client, chunk, sleep):
                yield page


def _request(client: Any, subscriptions: list[str] | None, skip_token: str | None) -> HttpRequest:
    """The `resources` POST as the SDK's QueryRequest would serialize it, on the client's pinned api-version."""
    options: dict[str, Any] = {"$top": PAGE_SIZE, "resultFormat": "objectArray"}
    if skip_token:
        options["$skipToken"] = skip_token
    body: dict[str, Any] = {"query": CLUSTERS_QUERY, "options": options}
    if subscriptions is not None:
        body["subscriptions"] = subscriptions
    return HttpRequest(
        "POST", RESOURCES_PATH, params={"api-version": client._config.api_version}, json=body, headers=_ACCEPT
    )


async def _query(client: Any, subscriptions: list[str] | None, sleep: Sleep) -> AsyncIterator[list[ClusterInfo]]:
    """Pages of one request scope. The answer is read as plain JSON through the client's pipeline (its auth and
    retry policies): the SDK's model deserializer walks every value of every row, most of a scan's CPU."""
    skip_token: str | None = None
    throttled = 0
    for _ in range(MAX_PAGES):
        response = await client._send_request(_request(client, subscriptions, skip_token))
        status = response.status_code
        if status != 200:
            code = _error_code(response)
            if status in (400, 403):
                raise ResourceGraphRefused(f"Resource Graph refused the query: {status} {code}", status, code)
            if status == 429 and throttled < MAX_THROTTLED:
                throttled += 1
                await sleep(min(MAX_WAIT_SECONDS, _retry_after(response.headers)))
                continue
            raise ResourceGraphError(f"Resource Graph query failed: {status} {code}")
        throttled = 0
        headers = response.headers
        if subscriptions is None and headers.get(LIMIT_HIT_HEADER, "").strip().lower() == "true":
            raise SubscriptionLimitHit(
                "Resource Graph answered for only part of the tenant's subscriptions "
                f"({LIMIT_HIT_HEADER}: true); the query must name its subscriptions"
            )
        remaining = headers.get("x-ms-user-quota-remaining")
        resets = headers.get("x-ms-user-quota-resets-after")
        document = response.json()
        del response
        rows = document.get("data") if isinstance(document, dict) else None
        skip_token = document.get("$skipToken") if isinstance(document, dict) else None
        del document
        yield [cluster_info(row) for row in rows] if isinstance(rows, list) else []
        del rows
        if not skip_token:
            return
        if remaining is not None and remaining.strip() == "0":
            wait = parse_resets_after(resets)
            await sleep(min(MAX_WAIT_SECONDS, math.ceil(wait * 1000) / 1000))
    raise ResourceGraphError("Resource Graph paging did not end")


def _error_code(response: Any) -> str | None:
    """ARM's error code from an error answer (`{"error": {"code": ...}}`), None when the body has none."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return None
    return str(error.get("code")) if isinstance(error, dict) and error.get("code") else None
