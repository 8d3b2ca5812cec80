"""One ARM request: authentication, per-principal read/write throttling, api-version checks, settling due AKS
operations, RBAC and the 404s of missing subscriptions, resource groups and clusters (shared by every ARM route)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from emulator.api_versions import refusal as api_version_refusal
from emulator.core import Emulator, emulator_of
from emulator.rbac import authorization_failed, can
from emulator.records import Cluster
from emulator.tokens import Claims
from emulator.wire import Reply, error, throttled

SUB = "/subscriptions/{subscription}"
RG = SUB + "/resourceGroups/{resource_group}"
CLUSTERS = RG + "/providers/Microsoft.ContainerService/managedClusters"
CLUSTER = CLUSTERS + "/{name}"
OPERATIONS = SUB + "/providers/Microsoft.ContainerService/locations/{location}"

Handler = Callable[[web.Request, "Call"], Awaitable[web.Response]]


class Call:
    """One authenticated, throttled ARM request."""

    def __init__(self, emu: Emulator, claims: Claims, request: web.Request) -> None:
        self.emu = emu
        self.claims = claims
        self.request = request
        self.api_version = request.query.get("api-version", "")

    def authorize(self, action: str, scope: str) -> None:
        if not can(self.emu.estate, self.claims.app_id, action, scope):
            raise Reply(authorization_failed("arm", self.claims, action, scope))

    def subscription(self) -> str:
        sub = self.request.match_info["subscription"].lower()
        if sub not in self.emu.estate.subscriptions:
            raise Reply(error("arm", 404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found."))
        return sub

    def resource_group(self, sub: str) -> str:
        rg = self.request.match_info["resource_group"]
        if not any(
            c.subscription_id.lower() == sub and c.resource_group.lower() == rg.lower()
            for c in self.emu.estate.clusters.values()
        ):
            raise Reply(error("arm", 404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found."))
        return rg

    def cluster(self, action: str) -> Cluster:
        info = self.request.match_info
        sub = info["subscription"].lower()
        scope = (
            f"/subscriptions/{sub}/resourceGroups/{info['resource_group']}/providers/"
            f"Microsoft.ContainerService/managedClusters/{info['name']}"
        )
        self.authorize(action, scope)
        sub = self.subscription()
        cluster = self.emu.estate.clusters.get(scope.lower())
        if cluster is None:
            self.resource_group(sub)  # which 404: the resource group's or the cluster's (a scan of every cluster)
            message = (
                f"The Resource 'Microsoft.ContainerService/managedClusters/{info['name']}' under resource group "
                f"'{info['resource_group']}' was not found. For more details please go to "
                "https://aka.ms/ARMResourceNotFoundFix"
            )
            raise Reply(error("arm", 404, "ResourceNotFound", message))
        return cluster

    def url(self, path: str, **query: str) -> str:
        params = "&".join(f"{k}={v}" for k, v in {"api-version": self.api_version, **query}.items())
        return f"{self.emu.endpoint}{path}?{params}"


def route(write: bool, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        emu = emulator_of(request)
        claims = emu.authenticate(request, "arm")
        bucket, header = (
            (emu.arm_writes, "x-ms-ratelimit-remaining-subscription-writes")
            if write
            else (emu.arm_reads, "x-ms-ratelimit-remaining-subscription-reads")
        )
        # Per subscription, per principal and per operation type (docs/emulator.md, ARM "Throttling").
        scope = request.match_info.get("subscription", "").lower()
        allowed, remaining, wait = bucket.take(f"{claims.app_id}/{scope}")
        if not allowed:
            response = throttled("arm", wait)
            response.headers[header] = "0"
            return response
        try:
            if "api-version" not in request.query:
                message = "The api-version query parameter (?api-version=) is required for all requests."
                raise Reply(error("arm", 400, "MissingApiVersionParameter", message))
            if emu.estate.modes.strict_api_versions:
                refused = api_version_refusal(request.path, request.query["api-version"])
                if refused is not None:
                    raise Reply(refused)
            emu.estate.settle_operations()
            response = await handler(request, Call(emu, claims, request))
        except Reply as reply:
            response = reply.response
        response.headers[header] = str(remaining)
        return response

    return wrapped


def page(call: Call, items: list[dict[str, Any]], path: str) -> web.Response:
    size = max(1, int(call.emu.seed.get("limits", {}).get("arm_page_size", 100)))
    try:
        start = max(0, int(call.request.query.get("$skipToken", "0")))
    except ValueError:
        raise Reply(error("arm", 400, "InvalidSkipToken", "The skip token is invalid.")) from None
    body: dict[str, Any] = {"value": items[start : start + size]}
    if start + size < len(items):
        body["nextLink"] = call.url(path, **{"$skipToken": str(start + size)})
    return web.json_response(body)
