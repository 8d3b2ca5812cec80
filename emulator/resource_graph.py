"""Azure Resource Graph: `POST /providers/Microsoft.ResourceGraph/resources` (api-version 2021-03-01 shapes).

Only the KQL texts in `QUERIES` are understood (compared with whitespace collapsed); anything else is refused with
Resource Graph's `BadRequest` / `InvalidQuery` error. Rows are visible only where the caller can read the cluster
(role assignments), pages are capped at 1000 rows (`$top`, default 100) and continue with `$skipToken`, and the
per-principal user quota is reported in `x-ms-user-quota-remaining` / `x-ms-user-quota-resets-after`.
The estate flag `resource_graph_enabled: false` makes every query answer 403.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
import math
import uuid
import weakref
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from emulator import role_assignments
from emulator.api_versions import query_refusal as api_version_refusal
from emulator.arm_shapes import cluster_json
from emulator.core import Emulator, emulator_of
from emulator.faults import refusals
from emulator.model import Estate
from emulator.rbac import authorization_failed
from emulator.records import Cluster
from emulator.tokens import Claims
from emulator.wire import Reply, json_body

PAGE_MAX = 1000
PAGE_DEFAULT = 100

# Must stay identical (modulo whitespace) to shared.resource_graph.CLUSTERS_QUERY; a test checks it.
CLUSTERS_QUERY = """resources
| where type =~ 'microsoft.containerservice/managedclusters'
| project id, name, type, location, resourceGroup, subscriptionId, tags, identity, properties
| order by id asc"""


def normalize(query: str) -> str:
    return " ".join(query.split())


Row = dict[str, Any]
COLUMN_TYPES = {"tags": "object", "identity": "object", "properties": "object"}


def _cluster_row(emu: Emulator, c: Cluster) -> Row:
    arm = cluster_json(c, emu.estate.tenant_id)
    return {
        "id": arm["id"],
        "name": arm["name"],
        "type": arm["type"].lower(),
        "tenantId": emu.estate.tenant_id,
        "kind": "",
        "location": arm["location"],
        "resourceGroup": c.resource_group.lower(),
        "subscriptionId": c.subscription_id,
        "managedBy": "",
        "sku": arm["sku"],
        "plan": None,
        "properties": arm["properties"],
        "tags": arm["tags"],
        "identity": arm.get("identity"),
        "zones": None,
        "extendedLocation": None,
    }


QUERIES: dict[str, list[str]] = {
    normalize(CLUSTERS_QUERY): [
        "id",
        "name",
        "type",
        "location",
        "resourceGroup",
        "subscriptionId",
        "tags",
        "identity",
        "properties",
    ],
}
READ_ACTION = "microsoft.containerservice/managedclusters/read"

# Visible cluster keys (lower-case ids, sorted) per estate, caller and requested subscriptions. A page is then a
# slice of this list plus 1,000 live rows, instead of a rebuild and authorization of the whole estate per page.
# Valid while the estate object, its cluster and role-assignment counts and the mutation count are unchanged.
_Visible = tuple[list[str], bool]  # (sorted cluster keys, whether the tenant's subscription limit cut the scope)
_VISIBLE: weakref.WeakKeyDictionary[Estate, dict[tuple[str, frozenset[str]], tuple[tuple[int, ...], _Visible]]]
_VISIBLE = weakref.WeakKeyDictionary()
TENANT_SUBSCRIPTION_LIMIT = 10_000  # an unscoped query covers at most this many subscriptions (docs/emulator.md)
LIMIT_HIT_HEADER = "x-ms-tenant-subscription-limit-hit"


def _generation(emu: Emulator) -> tuple[int, ...]:
    estate = emu.estate
    return (len(estate.clusters), len(estate.role_assignments), emu.counts["mutations"])


def _prefixes(resource_id: str) -> list[str]:
    """Every ARM scope at or above `resource_id` (lower-case), as `_under` would match them: "", "/subscriptions/x",
    "/subscriptions/x/resourcegroups", ..., the id itself."""
    parts = resource_id.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _visible_keys(emu: Emulator, principal: str, requested: set[str]) -> _Visible:
    """Sorted keys of the clusters `principal` may read (`Microsoft.ContainerService/managedClusters/read` by role
    assignment, as `emulator.arm.can` decides), within `requested` subscriptions or every visible subscription
    (as `emulator.arm.visible_subscriptions` decides) — of those, an unscoped query covers only the first
    `limits.resourcegraph_tenant_subscriptions` (and says so: the flag)."""
    estate = emu.estate
    key = (principal.lower(), frozenset(requested))
    generation = _generation(emu)
    per_estate = _VISIBLE.setdefault(estate, {})
    cached = per_estate.get(key)
    if cached is not None and cached[0] == generation:
        return cached[1]
    mine = [ra for ra in estate.role_assignments if ra.principal.lower() == key[0]]
    readable = {
        ra.scope for ra in mine if any(fnmatch.fnmatchcase(READ_ACTION, pattern.lower()) for pattern in ra.actions)
    }
    touched = {_subscription_of(ra.scope) for ra in mine}
    broad = any(ra.scope.count("/") < 2 for ra in mine)  # at or above /subscriptions: every subscription
    visible = {s.lower() for s in estate.subscriptions if broad or s.lower() in touched}
    scope = (requested & visible) if requested else visible
    limit = int(emu.seed.get("limits", {}).get("resourcegraph_tenant_subscriptions", TENANT_SUBSCRIPTION_LIMIT))
    limit_hit = not requested and len(scope) > limit
    if limit_hit:
        scope = set(sorted(scope)[:limit])
    keys = sorted(
        k
        for k, c in estate.clusters.items()
        if c.subscription_id.lower() in scope and any(p in readable for p in _prefixes(k))
    )
    per_estate[key] = (generation, (keys, limit_hit))
    return keys, limit_hit


def _subscription_of(scope: str) -> str:
    parts = scope.split("/")
    return parts[2] if len(parts) > 2 and parts[1] == "subscriptions" else ""


def _support_message() -> str:
    stamp = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    return f"Please provide below info when asking for support: timestamp = {stamp}, correlationId = {uuid.uuid4()}."


def _error(status: int, code: str, details: list[dict[str, Any]], headers: dict[str, str] | None = None) -> Reply:
    body = {"error": {"code": code, "message": _support_message(), "details": details}}
    extra = {"x-ms-request-id": str(uuid.uuid4()), **(headers or {})}
    return Reply(web.json_response(body, status=status, headers=extra))


def _resets_after(seconds: float) -> str:
    total = max(0, math.ceil(seconds))
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def _token(offset: int, fingerprint: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset, "f": fingerprint}).encode()).decode()


def _offset(token: str, fingerprint: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        if data["f"] == fingerprint:
            return int(data["o"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        pass
    raise _error(400, "BadRequest", [{"code": "InvalidSkipToken", "message": "The skip token is invalid."}])


async def resources(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    claims = emu.authenticate(request, "resourcegraph")
    if emu.estate.modes.strict_api_versions and (refused := api_version_refusal(request.path, request.query)):
        return refused
    text = await request.text()
    allowed, remaining, resets = emu.rg_quota.take(claims.app_id)
    refusals(emu).record(emu.counts, "resourcegraph", (claims.app_id, text), not allowed)
    quota = {"x-ms-user-quota-remaining": str(remaining), "x-ms-user-quota-resets-after": _resets_after(resets)}
    if not allowed:
        detail = (
            "Client application has been throttled and should not attempt to repeat the request until an amount of "
            "time has elapsed. Please see https://aka.ms/resourcegraph-throttling for help."
        )
        headers = {**quota, "Retry-After": str(max(1, math.ceil(resets)))}
        raise _error(429, "RateLimiting", [{"code": "RateLimiting", "message": detail}], headers)
    try:
        response = _answer(emu, claims_app=claims.app_id, body=json_body(text, "resourcegraph"))
    except Reply as reply:
        reply.response.headers.update(quota)
        raise
    response.headers.update(quota)
    return response


def _answer(emu: Emulator, claims_app: str, body: Any) -> web.Response:
    if not emu.seed.get("resource_graph_enabled", True):
        object_id = emu.estate.principal_object_id(claims_app) or ""
        claims = Claims(claims_app, object_id, "", (), 0)
        raise Reply(authorization_failed("resourcegraph", claims, "Microsoft.ResourceGraph/resources/read", "/"))
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        raise _error(400, "BadRequest", [{"code": "InvalidRequestContent", "message": "The query is required."}])
    if normalize(body["query"]) == normalize(role_assignments.ASSIGNMENTS_QUERY):
        return role_assignments.graph_answer(emu.estate, claims_app, body)
    entry = QUERIES.get(normalize(body["query"]))
    if entry is None:
        details = [
            {
                "code": "InvalidQuery",
                "message": "Query is invalid. Please refer to the documentation for the Azure Resource Graph service "
                "and fix the error before retrying.",
            },
            {"code": "UnsupportedQuery", "message": "This emulator answers only the queries the product sends."},
        ]
        raise _error(400, "BadRequest", details)
    columns = entry
    options = body.get("options") or {}
    fmt = str(options.get("resultFormat") or "objectArray")
    try:
        top = int(options.get("$top") or PAGE_DEFAULT)
        skip = int(options.get("$skip") or 0)
    except (TypeError, ValueError):
        raise _error(400, "BadRequest", [{"code": "InvalidOptions", "message": "$top/$skip are invalid."}]) from None
    if not 1 <= top <= PAGE_MAX or skip < 0:
        message = f"The $top value must be between 1 and {PAGE_MAX}, $skip must not be negative."
        raise _error(400, "BadRequest", [{"code": "InvalidOptions", "message": message}])
    requested = {s.lower() for s in body.get("subscriptions") or []}
    keys, limit_hit = _visible_keys(emu, claims_app, requested)
    fingerprint = hashlib.sha256(
        (normalize(body["query"]) + "|" + ",".join(sorted(requested)) + f"|{skip}").encode()
    ).hexdigest()[:16]
    start = skip + (_offset(str(options["$skipToken"]), fingerprint) if options.get("$skipToken") else 0)
    clusters = emu.estate.clusters
    page = [_cluster_row(emu, clusters[k]) for k in keys[start : start + top] if k in clusters]
    projected = [{k: row.get(k) for k in columns} for row in page]
    data: Any
    if fmt.lower() == "table":
        data = {
            "columns": [{"name": k, "type": COLUMN_TYPES.get(k, "string")} for k in columns],
            "rows": [[row[k] for k in columns] for row in projected],
        }
    else:
        data = projected
    result: dict[str, Any] = {
        "totalRecords": max(0, len(keys) - skip),
        "count": len(page),
        "data": data,
        "facets": [],
        "resultTruncated": "false",
    }
    if start + top < len(keys):
        result["$skipToken"] = _token(start - skip + top, fingerprint)
    return web.json_response(result, headers={LIMIT_HIT_HEADER: "true"} if limit_hit else None)


def setup(app: web.Application) -> None:
    app.router.add_post("/providers/Microsoft.ResourceGraph/resources", resources, name="resourcegraph.resources")
