"""Authorization read-backs: ARM `Microsoft.Authorization/permissions` and Graph service-principal owners.

* `GET {scope}/providers/Microsoft.Authorization/permissions?api-version=2022-04-01` (route `arm.permissions`) at
  subscription, resource group and managed-cluster scope. As in Azure, any principal with a valid ARM token may
  read its own permissions: no action is required. The answer has one permission block per role assignment of the
  caller whose scope is the requested scope or one of its ancestors (so the blocks together are the union of
  the actions the caller holds there), in the REST shape `{"value": [{"actions", "notActions", "dataActions",
  "notDataActions"}], "nextLink": null}`. The estate's role assignments carry actions only (no notActions).
* `GET /v1.0/servicePrincipals/{id}/owners` and `POST /v1.0/servicePrincipals/{id}/owners/$ref` (routes
  `graph.listServicePrincipalOwners`, `graph.addServicePrincipalOwner`): the service-principal counterparts of
  the application owner operations in `emulator.graph`, with the same permission rules (any read role to list;
  `Application.ReadWrite.All` to add, since `OwnedBy` is not sufficient to add owners). Direct requests only
  (not dispatched inside `$batch`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from aiohttp import web

from emulator import graph
from emulator.arm_call import SUB, Call, route
from emulator.rbac import under
from emulator.wire import Reply, error

PERMISSIONS = "/providers/Microsoft.Authorization/permissions"
# Optional resource group and managed cluster below the subscription (one route, one name: `arm.permissions`).
_TAIL = r"(?:/[rR]esource[gG]roups/[^/]+(?:/providers/Microsoft\.ContainerService/managedClusters/[^/]+)?)?"


def _permission_blocks(call: Call, scope: str) -> list[dict[str, Any]]:
    principal = call.claims.app_id.lower()
    return [
        {"actions": list(ra.actions), "notActions": [], "dataActions": [], "notDataActions": []}
        for ra in call.emu.estate.role_assignments
        if ra.principal.lower() == principal and under(scope, ra.scope)
    ]


async def permissions(request: web.Request, call: Call) -> web.Response:
    sub = call.subscription()
    scope = f"/subscriptions/{sub}"
    parts = request.match_info["tail"].strip("/").split("/")  # ["resourceGroups", rg, "providers", ns, type, name]
    rg = parts[1] if len(parts) >= 2 else None
    name = parts[5] if len(parts) == 6 else None
    if rg is not None:
        known = {
            c.resource_group.lower(): c.resource_group
            for c in call.emu.estate.clusters.values()
            if c.subscription_id.lower() == sub
        }
        if rg.lower() not in known:
            raise Reply(error("arm", 404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found."))
        scope += f"/resourceGroups/{rg}"
    if name is not None:
        scope += f"/providers/Microsoft.ContainerService/managedClusters/{name}"
        if scope.lower() not in call.emu.estate.clusters:
            message = (
                f"The Resource 'Microsoft.ContainerService/managedClusters/{name}' under resource group "
                f"'{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
            )
            raise Reply(error("arm", 404, "ResourceNotFound", message))
    return web.json_response({"value": _permission_blocks(call, scope), "nextLink": None})


# -- Graph: service principal owners ----------------------------------------------------------------------------
def list_service_principal_owners(call: graph.Call) -> graph.Result:
    graph.require_read(call.claims)
    _, sp = graph.find_service_principal(call)
    docs = [graph.directory_object(call, oid) for oid in sorted(sp.owners)]
    return graph.Result(200, {"@odata.context": graph.odata_context(call, "directoryObjects"), "value": docs})


def add_service_principal_owner(call: graph.Call) -> graph.Result:
    if not graph.WRITE_ALL_ROLES & set(call.claims.roles):
        raise graph.denied()
    _, sp = graph.find_service_principal(call)
    body = call.body if isinstance(call.body, dict) else {}
    ref = body.get("@odata.id")
    match = graph.DIRECTORY_REF.search(ref) if isinstance(ref, str) else None
    if match is None:
        raise graph.bad_request("Invalid object identifier: the '@odata.id' value is not a directoryObjects URL.")
    object_id = unquote(match["id"])
    estate = call.emu.estate
    if estate.sp_by_object_id(object_id) is None and estate.app_by_object_id(object_id) is None:
        raise graph.not_found(object_id)
    if object_id in sp.owners:
        message = "One or more added object references already exist for the following modified properties: 'owners'."
        raise graph.bad_request(message)
    sp.owners.add(object_id)
    return graph.Result(204)


_GRAPH_OPS = (
    graph.Op("listServicePrincipalOwners", "GET", "/servicePrincipals/{id}/owners", list_service_principal_owners),
    graph.Op("addServicePrincipalOwner", "POST", "/servicePrincipals/{id}/owners/$ref", add_service_principal_owner),
)


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get(SUB + "{tail:" + _TAIL + "}" + PERMISSIONS, route(False, permissions), name="arm.permissions")
    for op in _GRAPH_OPS:
        r.add_route(op.method, op.route, graph.route_handler(op), name=f"graph.{op.name}")
