"""ARM role assignments (Microsoft.Authorization, api-version 2022-04-01), user-assigned managed identities
(Microsoft.ManagedIdentity) and the Resource Graph `authorizationresources` rows of the role assignments.

* `GET {scope}/providers/Microsoft.Authorization/roleAssignments` with `$filter` `atScope()` (at or above the
  scope), `principalId eq '{id}'` / `assignedTo('{id}')` (at, above or below, for the principal) or none (at,
  above or below): needs `Microsoft.Authorization/roleAssignments/read`. A grant appears only once it has
  propagated (`rbac_propagation_seconds`).
* `PUT {scope}/providers/Microsoft.Authorization/roleAssignments/{guid}`: 201 with the assignment; 409
  `RoleAssignmentExists` when the principal already holds the role at that scope; 400 `PrincipalNotFound` for a
  principal the directory does not know unless `principalType` is given (ARM then skips the lookup); 400
  `InvalidRoleAssignmentId` for a name that is not a GUID. Needs `Microsoft.Authorization/roleAssignments/write`.
* `PUT|GET .../providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}`: 201 created / 200 existing, with
  `properties.principalId` and `clientId`.
Sources: docs/emulator.md, "Role assignments and managed identities".
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from aiohttp import web

from emulator.arm_call import RG, SUB, Call, route
from emulator.identities import Grant, Identity, covers, role_id
from emulator.model import Estate
from emulator.rbac import can
from emulator.wire import Reply, error, json_body

PROVIDER = "/providers/Microsoft.Authorization/roleAssignments"
TYPE = "Microsoft.Authorization/roleAssignments"
IDENTITY = RG + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{identity}"
_SCOPE_TAIL = r"(?:/.*?)?"
_FILTER_PRINCIPAL = re.compile(r"^\s*(?:principalId\s+eq\s+'([^']+)'|assignedTo\('([^']+)'\))\s*$", re.I)
READ = "Microsoft.Authorization/roleAssignments/read"
WRITE = "Microsoft.Authorization/roleAssignments/write"

# Must stay identical (modulo whitespace) to shared.migration.roles.ASSIGNMENTS_QUERY.
ASSIGNMENTS_QUERY = """authorizationresources
| where type =~ 'microsoft.authorization/roleassignments'
| project id, name, type, subscriptionId, properties
| order by id asc"""


def _scope(call: Call) -> str:
    return f"/subscriptions/{call.request.match_info['subscription']}{call.request.match_info['tail']}"


def assignment_json(estate: Estate, grant: Grant) -> dict[str, Any]:
    sub = grant.scope.split("/")[2] if grant.scope.lower().startswith("/subscriptions/") else ""
    return {
        "id": grant.id(),
        "name": grant.name,
        "type": TYPE,
        "properties": {
            "roleDefinitionId": f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{grant.role}",
            "principalId": grant.principal_id,
            "principalType": grant.principal_type,
            "scope": grant.scope,
            "condition": None,
            "conditionVersion": None,
            "createdBy": grant.created_by,
            "updatedBy": grant.created_by,
            "delegatedManagedIdentityResourceId": None,
            "description": None,
        },
    }


def visible(estate: Estate, grant: Grant) -> bool:
    return estate.identity.effective(grant, estate.clock.timestamp())


async def list_assignments(request: web.Request, call: Call) -> web.Response:
    scope = _scope(call)
    call.subscription()
    call.authorize(READ, scope)
    estate = call.emu.estate
    text = request.query.get("$filter", "")
    principal: str | None = None
    at_scope = False
    if text.strip().lower() == "atscope()":
        at_scope = True
    elif text:
        match = _FILTER_PRINCIPAL.match(text)
        if match is None:
            raise Reply(error("arm", 400, "UnsupportedQuery", f"The filter '{text}' is not supported."))
        principal = (match[1] or match[2]).lower()
    rows = []
    for grant in estate.identity.grants:
        if not visible(estate, grant) or (principal and grant.principal_id.lower() != principal):
            continue
        above = covers(grant.scope, scope)
        if above or (not at_scope and covers(scope, grant.scope)):
            rows.append(assignment_json(estate, grant))
    return web.json_response({"value": rows, "nextLink": None})


async def create_assignment(request: web.Request, call: Call) -> web.Response:
    scope = _scope(call)
    name = request.match_info["name"]
    call.subscription()
    call.authorize(WRITE, scope)
    estate = call.emu.estate
    try:
        uuid.UUID(name)
    except ValueError:
        message = f"The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID."
        raise Reply(error("arm", 400, "InvalidRoleAssignmentId", message)) from None
    body = json_body(await request.text(), "arm")
    props = body.get("properties") if isinstance(body, dict) else None
    if not isinstance(props, dict) or not props.get("principalId") or not props.get("roleDefinitionId"):
        message = "The request is invalid: properties.principalId and properties.roleDefinitionId are required."
        raise Reply(error("arm", 400, "InvalidRequestContent", message))
    principal, role = str(props["principalId"]), role_id(str(props["roleDefinitionId"]))
    principal_type = props.get("principalType")
    if principal_type is None and not estate.identity.known_principal(estate, principal):
        message = (
            f"Principal {principal.replace('-', '')} does not exist in the directory {estate.tenant_id}. Check that "
            "you have the correct principal ID. If you are creating this principal and then immediately assigning a "
            "role, this error might be related to a replication delay. In this case, set the role assignment "
            "principalType property to a value, such as ServicePrincipal, User, or Group."
        )
        raise Reply(error("arm", 400, "PrincipalNotFound", message))
    for grant in estate.identity.grants:
        same_scope = grant.scope.lower().rstrip("/") == scope.lower().rstrip("/")
        if grant.principal_id.lower() == principal.lower() and grant.role == role and same_scope:
            raise Reply(error("arm", 409, "RoleAssignmentExists", "The role assignment already exists."))
    grant = Grant(
        name=name,
        scope=scope,
        principal_id=principal,
        principal_type=str(principal_type or "ServicePrincipal"),
        role=role,
        created=call.emu.clock.timestamp(),
        created_by=call.claims.object_id or call.claims.app_id,
    )
    estate.identity.grants.append(grant)
    return web.json_response(assignment_json(estate, grant), status=201)


# -- user-assigned managed identities ---------------------------------------------------------------------------
def identity_id(call: Call) -> str:
    info = call.request.match_info
    return (
        f"/subscriptions/{info['subscription']}/resourceGroups/{info['resource_group']}"
        f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{info['identity']}"
    )


def identity_json(estate: Estate, identity: Identity) -> dict[str, Any]:
    return {
        "id": identity.resource_id,
        "name": identity.resource_id.rsplit("/", 1)[-1],
        "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
        "location": identity.location,
        "tags": identity.tags,
        "properties": {
            "tenantId": estate.tenant_id,
            "principalId": identity.principal_id,
            "clientId": identity.client_id,
        },
    }


async def put_identity(request: web.Request, call: Call) -> web.Response:
    resource_id = identity_id(call)
    call.authorize("Microsoft.ManagedIdentity/userAssignedIdentities/write", resource_id)
    call.resource_group(call.subscription())
    body = json_body(await request.text(), "arm")
    body = body if isinstance(body, dict) else {}
    estate = call.emu.estate
    existing = estate.identity.identities.get(resource_id.lower())
    if existing is not None:
        existing.tags = {str(k): str(v) for k, v in (body.get("tags") or existing.tags).items()}
        return web.json_response(identity_json(estate, existing))
    if not body.get("location"):
        raise Reply(error("arm", 400, "LocationRequired", "The location property is required for this definition."))
    identity = Identity(
        resource_id,
        str(body["location"]),
        {str(k): str(v) for k, v in (body.get("tags") or {}).items()},
        call.emu.clock.timestamp(),
    )
    estate.identity.identities[resource_id.lower()] = identity
    return web.json_response(identity_json(estate, identity), status=201)


async def get_identity(request: web.Request, call: Call) -> web.Response:
    resource_id = identity_id(call)
    call.authorize("Microsoft.ManagedIdentity/userAssignedIdentities/read", resource_id)
    identity = call.emu.estate.identity.identities.get(resource_id.lower())
    if identity is None:
        message = (
            f"The Resource 'Microsoft.ManagedIdentity/userAssignedIdentities/{request.match_info['identity']}' under "
            f"resource group '{request.match_info['resource_group']}' was not found. For more details please go to "
            "https://aka.ms/ARMResourceNotFoundFix"
        )
        raise Reply(error("arm", 404, "ResourceNotFound", message))
    return web.json_response(identity_json(call.emu.estate, identity))


# -- Resource Graph ---------------------------------------------------------------------------------------------
def graph_rows(estate: Estate, principal: str, subscriptions: set[str]) -> list[dict[str, Any]]:
    """`authorizationresources` role-assignment rows the caller may read (roleAssignments/read at the
    assignment's subscription), propagated grants only, ordered by id."""
    rows = []
    for grant in estate.identity.grants:
        sub = grant.scope.split("/")[2].lower() if grant.scope.lower().startswith("/subscriptions/") else ""
        if subscriptions and sub not in subscriptions:
            continue
        if not visible(estate, grant) or not can(estate, principal, READ, f"/subscriptions/{sub}"):
            continue
        arm = assignment_json(estate, grant)
        rows.append(
            {
                "id": arm["id"].lower(),
                "name": arm["name"],
                "type": TYPE.lower(),
                "subscriptionId": sub,
                "properties": arm["properties"],
            }
        )
    rows.sort(key=lambda r: r["id"])
    return rows


def setup(app: web.Application) -> None:
    r = app.router
    listing = SUB + "{tail:" + _SCOPE_TAIL + "}" + PROVIDER
    r.add_get(listing, route(False, list_assignments), name="arm.listRoleAssignments")
    r.add_put(listing + "/{name}", route(True, create_assignment), name="arm.createRoleAssignment")
    r.add_put(IDENTITY, route(True, put_identity), name="arm.createUserAssignedIdentity")
    r.add_get(IDENTITY, route(False, get_identity), name="arm.getUserAssignedIdentity")


def graph_answer(estate: Estate, principal: str, body: dict[str, Any]) -> web.Response:
    """The Resource Graph answer for `ASSIGNMENTS_QUERY` (objectArray; `$top` capped at 1000, `$skipToken`)."""
    options = body.get("options") or {}
    try:
        top = max(1, min(1000, int(options.get("$top") or 100)))
        start = int(options.get("$skipToken") or 0)
    except (TypeError, ValueError):
        raise Reply(error("resourcegraph", 400, "BadRequest", "$top/$skipToken are invalid.")) from None
    rows = graph_rows(estate, principal, {str(s).lower() for s in body.get("subscriptions") or []})
    result: dict[str, Any] = {
        "totalRecords": len(rows),
        "count": len(rows[start : start + top]),
        "data": rows[start : start + top],
        "facets": [],
        "resultTruncated": "false",
    }
    if start + top < len(rows):
        result["$skipToken"] = str(start + top)
    return web.json_response(result)
