"""Microsoft Graph v1.0: applications, service principals, passwords, owners, app management policies, $batch.

Every operation is a plain function of a `Call` (caller claims, path parameters, query, body). The same function
answers a direct HTTPS request and a `$batch` sub-request: `_OPS` is the one routing table, used both to register
the aiohttp routes (named `graph.<operation>`) and to dispatch batch items. Error bodies come from
`emulator.wire.error`, so batch items carry exactly the shape a direct call would.

Permissions follow the Graph permissions reference (see docs/emulator.md, "Microsoft Graph"):
`Application.Read.All` reads; `Application.ReadWrite.OwnedBy` reads everything and writes only objects whose
owners include the caller's service principal; `Application.ReadWrite.All` does everything. Reading app
management policies additionally needs `Policy.Read.All` (or `Policy.Read[Write].ApplicationConfiguration`).
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from aiohttp import web
from multidict import MultiDict

from emulator import graph_reports
from emulator.core import Emulator, emulator_of
from emulator.faults import refusals
from emulator.records import Application, Password, PasswordPolicy, ServicePrincipal, parse_time
from emulator.tokens import Claims
from emulator.wire import MUTATING, Reply, error, json_body, throttled

SURFACE = "graph"
BASE = "/v1.0"
MAX_BATCH = 20
MAX_IN_VALUES = 15
DEFAULT_TOP = 100
MAX_TOP = 999
ODATA_JSON = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"

READ_ROLES = frozenset(
    {
        "Application.Read.All",
        "Application.ReadWrite.OwnedBy",
        "Application.ReadWrite.All",
        "Directory.Read.All",
        "Directory.ReadWrite.All",
    }
)
WRITE_ALL_ROLES = frozenset({"Application.ReadWrite.All", "Directory.ReadWrite.All"})
OWNED_BY_ROLE = "Application.ReadWrite.OwnedBy"
POLICY_READ_ROLES = frozenset(
    {"Policy.Read.All", "Policy.Read.ApplicationConfiguration", "Policy.ReadWrite.ApplicationConfiguration"}
)

DENIED = "Insufficient privileges to complete the operation."

Holder = Literal["application", "servicePrincipal"]


class GraphFailure(Exception):
    """Raised by an operation: answered with Graph's error body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


@dataclass
class Call:
    emu: Emulator
    claims: Claims
    method: str
    path: str  # after /v1.0, e.g. "/applications"
    params: dict[str, str]
    query: MultiDict[str]
    body: Any


@dataclass
class Result:
    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


OpFunc = Callable[[Call], Result]


# -- errors and authorization ---------------------------------------------------------------------------------
def denied() -> GraphFailure:
    return GraphFailure(403, "Authorization_RequestDenied", DENIED)


def not_found(ref: str) -> GraphFailure:
    message = f"Resource '{ref}' does not exist or one of its queried reference-property objects are not present."
    return GraphFailure(404, "Request_ResourceNotFound", message)


def bad_request(message: str, code: str = "Request_BadRequest") -> GraphFailure:
    return GraphFailure(400, code, message)


def require_read(claims: Claims) -> None:
    if not READ_ROLES & set(claims.roles):
        raise denied()


def _require_write_role(claims: Claims) -> None:
    roles = set(claims.roles)
    if not (roles & WRITE_ALL_ROLES or OWNED_BY_ROLE in roles):
        raise denied()


def _require_owner(claims: Claims, owners: set[str]) -> None:
    """OwnedBy may write only objects it owns; ReadWrite.All may write anything."""
    roles = set(claims.roles)
    if roles & WRITE_ALL_ROLES:
        return
    if OWNED_BY_ROLE in roles and claims.object_id in owners:
        return
    raise denied()


# -- lookups --------------------------------------------------------------------------------------------------
def _app_by_app_id(call: Call, app_id: str) -> Application | None:
    apps = call.emu.estate.applications
    found = apps.get(app_id) or apps.get(app_id.lower())
    if found is None:
        found = next((a for a in apps.values() if a.app_id.lower() == app_id.lower()), None)
    return found


def _application(call: Call) -> Application:
    if "appId" in call.params:
        app = _app_by_app_id(call, call.params["appId"])
        ref = call.params["appId"]
    else:
        ref = call.params["id"]
        app = call.emu.estate.app_by_object_id(ref)
    if app is None:
        raise not_found(ref)
    return app


def find_service_principal(call: Call) -> tuple[Application, ServicePrincipal]:
    if "appId" in call.params:
        ref = call.params["appId"]
        app = _app_by_app_id(call, ref)
        if app is None or app.sp is None:
            raise not_found(ref)
        return app, app.sp
    ref = call.params["id"]
    for app in call.emu.estate.applications.values():
        if app.sp is not None and app.sp.object_id == ref:
            return app, app.sp
    raise not_found(ref)


def _holder(call: Call, holder: Holder) -> tuple[Application, Application | ServicePrincipal, set[str]]:
    if holder == "application":
        app = _application(call)
        return app, app, app.owners
    app, sp = find_service_principal(call)
    return app, sp, sp.owners


# -- JSON shapes ----------------------------------------------------------------------------------------------
def _app_json(call: Call, app: Application) -> dict[str, Any]:
    return {
        "id": app.object_id,
        "deletedDateTime": None,
        "appId": app.app_id,
        "applicationTemplateId": None,
        "createdDateTime": None,
        "description": None,
        "displayName": app.display_name,
        "identifierUris": [],
        "publisherDomain": None,
        "signInAudience": "AzureADMyOrg",
        "tags": [],
        "keyCredentials": [],
        "passwordCredentials": [p.graph() for p in call.emu.estate.visible_passwords(app, "application")],
    }


def _sp_json(call: Call, app: Application, sp: ServicePrincipal) -> dict[str, Any]:
    return {
        "id": sp.object_id,
        "deletedDateTime": None,
        "accountEnabled": True,
        "appDisplayName": app.display_name,
        "appId": sp.app_id,
        "appOwnerOrganizationId": call.emu.estate.tenant_id,
        "displayName": sp.display_name,
        "servicePrincipalNames": [sp.app_id],
        "servicePrincipalType": "Application",
        "signInAudience": "AzureADMyOrg",
        "tags": [],
        "keyCredentials": [],
        "passwordCredentials": [p.graph() for p in call.emu.estate.visible_passwords(app, "servicePrincipal")],
    }


def odata_context(call: Call, fragment: str) -> str:
    return f"{call.emu.endpoint}{BASE}/$metadata#{fragment}"


def _selected(call: Call, entity_type: str) -> list[str] | None:
    raw = call.query.get("$select")
    if raw is None:
        return None
    fields = [f.strip() for f in raw.split(",") if f.strip()]
    if not fields:
        raise bad_request("Invalid $select: the value is empty.")
    return fields


def _project(doc: dict[str, Any], fields: list[str] | None, entity_type: str) -> dict[str, Any]:
    if fields is None:
        return doc
    out: dict[str, Any] = {}
    names = {k.lower(): k for k in doc}
    for name in fields:
        match = names.get(name.lower())
        if match is None:
            raise bad_request(f"Could not find a property named '{name}' on type 'microsoft.graph.{entity_type}'.")
        out[match] = doc[match]
    return out


# -- $filter / paging -----------------------------------------------------------------------------------------
_QUOTED = r"'(?:[^']|'')*'"
_IN = re.compile(rf"^\s*(?P<prop>\w+)\s+in\s*\((?P<values>\s*{_QUOTED}\s*(?:,\s*{_QUOTED}\s*)*)\)\s*$", re.IGNORECASE)
_EQ = re.compile(rf"^\s*(?P<prop>\w+)\s+eq\s+(?P<value>{_QUOTED})\s*$", re.IGNORECASE)
_FILTERABLE = {"appid": "appId", "id": "id"}
# `az ad sp show --id <appId>` looks the service principal up by name (azure-cli `_resolve_service_principal`).
_ANY_NAME = re.compile(
    rf"^\s*servicePrincipalNames/any\(\s*(?P<var>\w+)\s*:\s*(?P=var)\s+eq\s+(?P<value>{_QUOTED})\s*\)\s*$",
    re.IGNORECASE,
)


def _parse_filter(raw: str, entity_type: str) -> tuple[str, list[str]]:
    """(property, values) for `prop in ('a','b')` or `prop eq 'a'` on appId or id, or for
    `servicePrincipalNames/any(c:c eq 'a')` on service principals."""
    named = _ANY_NAME.match(raw)
    if named is not None and entity_type == "servicePrincipal":
        return "servicePrincipalNames", [named["value"][1:-1].replace("''", "'")]
    match = _IN.match(raw) or _EQ.match(raw)
    if match is None:
        raise bad_request("Unsupported or invalid query filter clause specified.", "Request_UnsupportedQuery")
    prop = _FILTERABLE.get(match["prop"].lower())
    if prop is None:
        message = (
            f"Unsupported or invalid query filter clause specified for property '{match['prop']}' "
            f"of resource '{entity_type[0].upper()}{entity_type[1:]}'."
        )
        raise bad_request(message, "Request_UnsupportedQuery")
    text = match.groupdict().get("values") or match.groupdict().get("value") or ""
    values = [v[1:-1].replace("''", "'") for v in re.findall(_QUOTED, text)]
    if len(values) > MAX_IN_VALUES:
        message = (
            f"Too many child clauses specified in search filter expression containing 'OR' operators: "
            f"{len(values)}. Max allowed: {MAX_IN_VALUES}."
        )
        raise bad_request(message, "Request_UnsupportedQuery")
    return prop, values


def _top(call: Call) -> int:
    raw = call.query.get("$top")
    if raw is None:
        return DEFAULT_TOP
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_TOP:
        raise bad_request(f"Invalid page size specified: '{raw}'. Must be between 1 and {MAX_TOP} inclusive.")
    return int(raw)


def _skip(call: Call) -> int:
    raw = call.query.get("$skiptoken")
    if raw is None:
        return 0
    try:
        decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        kind, _, number = decoded.partition(":")
        if kind != "emu-offset" or not number.isdigit():
            raise ValueError(decoded)
    except ValueError:
        raise bad_request("Invalid skip token.") from None
    return int(number)


def _next_link(call: Call, offset: int) -> str:
    token = base64.urlsafe_b64encode(f"emu-offset:{offset}".encode()).decode().rstrip("=")
    parts = [f"{k}={quote(v, safe=chr(39) + '(),$=')}" for k, v in call.query.items() if k != "$skiptoken"]
    parts.append(f"$skiptoken={token}")
    return f"{call.emu.endpoint}{BASE}{call.path}?{'&'.join(parts)}"


def _page(call: Call, docs: list[dict[str, Any]], collection: str, fields: list[str] | None) -> Result:
    top = _top(call)
    offset = _skip(call)
    page = docs[offset : offset + top]
    fragment = f"{collection}({','.join(fields)})" if fields else collection
    body: dict[str, Any] = {"@odata.context": odata_context(call, fragment), "value": page}
    if offset + top < len(docs):
        body["@odata.nextLink"] = _next_link(call, offset + top)
    return Result(200, body)


def _filtered_apps(call: Call, entity_type: str) -> list[Application]:
    raw = call.query.get("$filter")
    if raw is None:
        return list(call.emu.estate.applications.values())
    prop, values = _parse_filter(raw, entity_type)
    if prop == "appId":  # an index look-up per value (in the filter's order): no scan of the tenant
        found = {a.app_id: a for a in (_app_by_app_id(call, v) for v in values) if a is not None}
        return list(found.values())
    wanted = {v.lower() for v in values}
    apps = call.emu.estate.applications.values()
    if prop == "servicePrincipalNames":
        return [a for a in apps if a.sp is not None and a.sp.app_id.lower() in wanted]
    if entity_type == "application":
        return [a for a in apps if a.object_id.lower() in wanted]
    return [a for a in apps if a.sp is not None and a.sp.object_id.lower() in wanted]


# -- operations: reads ----------------------------------------------------------------------------------------
def list_applications(call: Call) -> Result:
    require_read(call.claims)
    fields = _selected(call, "application")
    docs = [_project(_app_json(call, a), fields, "application") for a in _filtered_apps(call, "application")]
    return _page(call, docs, "applications", fields)


def get_application(call: Call) -> Result:
    require_read(call.claims)
    fields = _selected(call, "application")
    app = _application(call)
    fragment = f"applications({','.join(fields)})/$entity" if fields else "applications/$entity"
    doc = _project(_app_json(call, app), fields, "application")
    return Result(200, {"@odata.context": odata_context(call, fragment), **doc})


def list_service_principals(call: Call) -> Result:
    require_read(call.claims)
    fields = _selected(call, "servicePrincipal")
    docs = [
        _project(_sp_json(call, a, a.sp), fields, "servicePrincipal")
        for a in _filtered_apps(call, "servicePrincipal")
        if a.sp is not None
    ]
    return _page(call, docs, "servicePrincipals", fields)


def get_service_principal(call: Call) -> Result:
    require_read(call.claims)
    fields = _selected(call, "servicePrincipal")
    app, sp = find_service_principal(call)
    fragment = f"servicePrincipals({','.join(fields)})/$entity" if fields else "servicePrincipals/$entity"
    doc = _project(_sp_json(call, app, sp), fields, "servicePrincipal")
    return Result(200, {"@odata.context": odata_context(call, fragment), **doc})


# -- operations: passwords ------------------------------------------------------------------------------------
def _policy_id(scope: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "appManagementPolicy:" + scope))


def _tenant_policy(emu: Emulator) -> PasswordPolicy:
    spec = emu.estate.seed.get("default_app_management_policy", {})
    return PasswordPolicy(
        max_lifetime_days=spec.get("max_password_lifetime_days"),
        block_addition=bool(spec.get("block_password_addition", False)),
    )


def _effective_policy(emu: Emulator, app: Application) -> tuple[PasswordPolicy, str]:
    """The app's own policy when it has one, else the tenant default (and the policy id errors name)."""
    if app.policy.is_set:
        return app.policy, _policy_id(app.object_id)
    return _tenant_policy(emu), "00000000-0000-0000-0000-000000000000"


def add_years(value: datetime, years: int) -> datetime:
    try:
        return value.replace(year=value.year + years)
    except ValueError:  # 29 February
        return value.replace(year=value.year + years, day=28)


def _time(pc: dict[str, Any], name: str) -> datetime | None:
    raw = pc.get(name)
    if raw is None:
        return None
    try:
        if not isinstance(raw, str):
            raise ValueError(raw)
        return parse_time(raw)
    except ValueError:
        raise bad_request(f"Invalid value specified for property '{name}' of resource 'PasswordCredential'.") from None


def _add_password(call: Call, holder: Holder) -> Result:
    _require_write_role(call.claims)
    app, target, owners = _holder(call, holder)
    _require_owner(call.claims, owners)
    body = call.body if isinstance(call.body, dict) else {}
    pc = body.get("passwordCredential") or {}
    if not isinstance(pc, dict):
        raise bad_request("Invalid value specified for property 'passwordCredential'.")
    now = call.emu.clock.now()
    start = _time(pc, "startDateTime") or now
    end = _time(pc, "endDateTime") or add_years(start, 2)
    if end <= start:
        raise bad_request("Invalid value specified for property 'endDateTime' of resource 'PasswordCredential'.")
    policy, policy_id = _effective_policy(call.emu, app)
    if policy.block_addition:
        raise bad_request(
            "Credential type not allowed as per assigned policy.", "CredentialTypeNotAllowedAsPerAppPolicy"
        )
    if policy.max_lifetime_days is not None and end - start > timedelta(days=policy.max_lifetime_days):
        message = f"Credential lifetime exceeds the max value allowed as per assigned policy '{policy_id}'."
        raise bad_request(message, "CredentialInvalidLifetimeAsPerAppPolicy")
    if app.password_limit is not None and len(target.passwords) >= app.password_limit:
        message = (
            f"Not allowed to add {len(target.passwords) + 1} passwords. "
            f"You can only add a maximum of {app.password_limit} passwords."
        )
        raise bad_request(message, "TooManyAppPasswords")
    display_name = pc.get("displayName")
    password, secret = call.emu.estate.add_password(
        app, holder, start, end, display_name if isinstance(display_name, str) else None, call.claims.app_id
    )
    doc = {"@odata.context": odata_context(call, "microsoft.graph.passwordCredential"), **password.graph(secret)}
    return Result(200, doc)


def _replicated_for_write(call: Call, app: Application, holder: Holder, password: Password) -> bool:
    """Mode `graph_remove_lag`: the replica that serves a removePassword is as far behind as the lagging reads, so a
    password added within `graph_read_lag_seconds` is not found yet (docs/emulator.md, "Field modes")."""
    estate = call.emu.estate
    if not estate.modes.graph_remove_lag:
        return True
    return any(p is password for p in estate.visible_passwords(app, holder))


def _remove_password(call: Call, holder: Holder) -> Result:
    _require_write_role(call.claims)
    app, target, owners = _holder(call, holder)
    _require_owner(call.claims, owners)
    body = call.body if isinstance(call.body, dict) else {}
    key_id = body.get("keyId")
    try:
        key = str(uuid.UUID(str(key_id)))
    except ValueError:
        raise bad_request("Invalid value specified for property 'keyId' of resource 'PasswordCredential'.") from None
    password = next((p for p in target.passwords if p.key_id.lower() == key), None)
    if password is not None and not _replicated_for_write(call, app, holder, password):
        password = None
    if password is None:
        raise bad_request(f"No password credential found with keyId '{key}'.")
    call.emu.estate.remove_password(app, holder, password, call.claims.app_id)
    return Result(204)


def add_application_password(call: Call) -> Result:
    return _add_password(call, "application")


def remove_application_password(call: Call) -> Result:
    return _remove_password(call, "application")


def add_service_principal_password(call: Call) -> Result:
    return _add_password(call, "servicePrincipal")


def remove_service_principal_password(call: Call) -> Result:
    return _remove_password(call, "servicePrincipal")


# -- operations: owners ---------------------------------------------------------------------------------------
def directory_object(call: Call, object_id: str) -> dict[str, Any]:
    estate = call.emu.estate
    sp = estate.sp_by_object_id(object_id)
    if sp is not None:
        return {
            "@odata.type": "#microsoft.graph.servicePrincipal",
            "id": sp.object_id,
            "appId": sp.app_id,
            "displayName": sp.display_name,
            "servicePrincipalType": "Application",
        }
    app = estate.app_by_object_id(object_id)
    if app is not None:
        return {"@odata.type": "#microsoft.graph.application", "id": app.object_id, "displayName": app.display_name}
    return {"@odata.type": "#microsoft.graph.user", "id": object_id}


def list_owners(call: Call) -> Result:
    require_read(call.claims)
    app = _application(call)
    docs = [directory_object(call, oid) for oid in sorted(app.owners)]
    return Result(200, {"@odata.context": odata_context(call, "directoryObjects"), "value": docs})


DIRECTORY_REF = re.compile(r"/directoryObjects/(?P<id>[^/?#]+)$")


def add_owner(call: Call) -> Result:
    # Graph: "Application.ReadWrite.OwnedBy isn't sufficient to add another owner."
    if not WRITE_ALL_ROLES & set(call.claims.roles):
        raise denied()
    app = _application(call)
    body = call.body if isinstance(call.body, dict) else {}
    ref = body.get("@odata.id")
    match = DIRECTORY_REF.search(ref) if isinstance(ref, str) else None
    if match is None:
        raise bad_request("Invalid object identifier: the '@odata.id' value is not a directoryObjects URL.")
    object_id = unquote(match["id"])
    estate = call.emu.estate
    if estate.sp_by_object_id(object_id) is None and estate.app_by_object_id(object_id) is None:
        raise not_found(object_id)
    if object_id in app.owners:
        message = "One or more added object references already exist for the following modified properties: 'owners'."
        raise bad_request(message)
    app.owners.add(object_id)
    return Result(204)


# -- operations: app management policies ----------------------------------------------------------------------
def _restrictions(policy: PasswordPolicy) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if policy.block_addition:
        out.append(
            {
                "restrictionType": "passwordAddition",
                "state": "enabled",
                "maxLifetime": None,
                "restrictForAppsCreatedAfterDateTime": None,
            }
        )
    if policy.max_lifetime_days is not None:
        out.append(
            {
                "restrictionType": "passwordLifetime",
                "state": "enabled",
                "maxLifetime": f"P{policy.max_lifetime_days}D",
                "restrictForAppsCreatedAfterDateTime": None,
            }
        )
    return out


def _require_policy_read(claims: Claims) -> None:
    if not POLICY_READ_ROLES & set(claims.roles):
        raise denied()


def list_app_management_policies(call: Call) -> Result:
    require_read(call.claims)
    _require_policy_read(call.claims)
    app = _application(call)
    value = []
    if app.policy.is_set:
        value.append(
            {
                "id": _policy_id(app.object_id),
                "displayName": f"Credential policy for {app.display_name}",
                "description": "App management policy assigned to this application (emulated).",
                "isEnabled": True,
                "restrictions": {"passwordCredentials": _restrictions(app.policy), "keyCredentials": []},
            }
        )
    fragment = f"applications('{app.object_id}')/appManagementPolicies"
    return Result(200, {"@odata.context": odata_context(call, fragment), "value": value})


def get_default_app_management_policy(call: Call) -> Result:
    _require_policy_read(call.claims)
    policy = _tenant_policy(call.emu)
    restrictions = _restrictions(policy)
    doc = {
        "@odata.context": odata_context(call, "policies/defaultAppManagementPolicy/$entity"),
        "id": "00000000-0000-0000-0000-000000000000",
        "displayName": "Default app management tenant policy",
        "description": "Default tenant policy that enforces app management restrictions on applications and service "
        "principals. To apply policy to targeted resources, create a new policy under appManagementPolicies "
        "collection.",
        "isEnabled": policy.is_set,
        "applicationRestrictions": {"passwordCredentials": restrictions, "keyCredentials": []},
        "servicePrincipalRestrictions": {"passwordCredentials": restrictions, "keyCredentials": []},
    }
    return Result(200, doc)


# -- the routing table ----------------------------------------------------------------------------------------
_PARAM = re.compile(r"\{(id|appId)\}")
_PARAM_RE = {"id": r"[^/()']+", "appId": r"[^/()']+"}


@dataclass(frozen=True)
class Op:
    name: str
    method: str
    template: str  # relative to /v1.0, e.g. "/applications/{id}/addPassword"
    func: OpFunc

    def _regex(self, named: bool) -> str:
        out = ""
        for i, part in enumerate(_PARAM.split(self.template)):
            if i % 2 == 0:
                out += re.escape(part)
            else:
                out += f"(?P<{part}>{_PARAM_RE[part]})" if named else f"(?:{_PARAM_RE[part]})"
        return out

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(self._regex(named=True))

    @property
    def route(self) -> str:
        """aiohttp path: one regex variable (no named groups, no braces) covering the whole tail."""
        return f"{BASE}/{{graph_path:{self._regex(named=False).removeprefix('/')}}}"


_OPS: tuple[Op, ...] = (
    Op("listApplications", "GET", "/applications", list_applications),
    Op("getApplication", "GET", "/applications/{id}", get_application),
    Op("getApplicationByAppId", "GET", "/applications(appId='{appId}')", get_application),
    Op("listServicePrincipals", "GET", "/servicePrincipals", list_service_principals),
    Op("getServicePrincipal", "GET", "/servicePrincipals/{id}", get_service_principal),
    Op("getServicePrincipalByAppId", "GET", "/servicePrincipals(appId='{appId}')", get_service_principal),
    Op("addApplicationPassword", "POST", "/applications/{id}/addPassword", add_application_password),
    Op("addApplicationPasswordByAppId", "POST", "/applications(appId='{appId}')/addPassword", add_application_password),
    Op("removeApplicationPassword", "POST", "/applications/{id}/removePassword", remove_application_password),
    Op(
        "removeApplicationPasswordByAppId",
        "POST",
        "/applications(appId='{appId}')/removePassword",
        remove_application_password,
    ),
    Op("addServicePrincipalPassword", "POST", "/servicePrincipals/{id}/addPassword", add_service_principal_password),
    Op(
        "removeServicePrincipalPassword",
        "POST",
        "/servicePrincipals/{id}/removePassword",
        remove_service_principal_password,
    ),
    Op("listOwners", "GET", "/applications/{id}/owners", list_owners),
    Op("addOwner", "POST", "/applications/{id}/owners/$ref", add_owner),
    Op("listAppManagementPolicies", "GET", "/applications/{id}/appManagementPolicies", list_app_management_policies),
    Op(
        "getDefaultAppManagementPolicy",
        "GET",
        "/policies/defaultAppManagementPolicy",
        get_default_app_management_policy,
    ),
)
_COMPILED: tuple[tuple[Op, re.Pattern[str]], ...] = tuple((op, op.pattern) for op in _OPS)


def _resolve(method: str, path: str) -> tuple[Op, dict[str, str]] | GraphFailure:
    allowed = False
    for op, pattern in _COMPILED:
        match = pattern.fullmatch(path)
        if match is None:
            continue
        if op.method == method.upper():
            return op, match.groupdict()
        allowed = True
    if allowed:
        return GraphFailure(405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target.")
    segment = path.strip("/").split("/")[-1] or path
    return GraphFailure(400, "BadRequest", f"Resource not found for the segment '{segment}'.")


# -- execution (shared by direct requests and batch items) ----------------------------------------------------
def _failure_response(failure: GraphFailure) -> web.Response:
    return error(SURFACE, failure.status, failure.code, failure.message, failure.headers)


def resource_units(op: Op, method: str, query: MultiDict[str]) -> int:
    """What a request costs against the identity-and-access limit (docs/emulator.md, "Throttling"): GET
    `applications` 2, any other identity path 1; `$select` -1, `$expand` +1, `$top` below 20 -1; never below 1."""
    cost = 2 if method.upper() == "GET" and op.template == "/applications" else 1
    top = query.get("$top")
    cost += ("$expand" in query) - ("$select" in query) - (top is not None and top.isdigit() and int(top) < 20)
    return max(1, cost)


def _rate_limited(emu: Emulator, claims: Claims, units: int, request: tuple[str, str]) -> web.Response | None:
    """429 once the caller's resource units per app and tenant are spent, with Graph's throttling headers.
    `request` (method, URL) identifies retries of one request in the refusal record."""
    allowed, _, wait = emu.graph_rate.take(claims.app_id, units)
    refusals(emu).record(emu.counts, SURFACE, (claims.app_id, *request), not allowed)
    if allowed:
        return None
    response = throttled(SURFACE, wait)
    response.headers["x-ms-throttle-scope"] = f"Tenant_Application/ReadWrite/{claims.app_id}/{emu.estate.tenant_id}"
    response.headers["x-ms-throttle-information"] = "ResourceUnitLimitExceeded"
    return response


def _execute(op: Op, call: Call) -> web.Response:
    try:
        result = op.func(call)
    except GraphFailure as failure:
        return _failure_response(failure)
    headers = dict(result.headers)
    if result.body is None:
        return web.Response(status=result.status, headers=headers)
    headers.setdefault("Content-Type", ODATA_JSON)
    return web.Response(status=result.status, text=json.dumps(result.body), headers=headers)


def route_handler(op: Op) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.StreamResponse:
        emu = emulator_of(request)
        claims = emu.authenticate(request, SURFACE)
        query = MultiDict(request.query)
        units = resource_units(op, request.method, query)
        limited = _rate_limited(emu, claims, units, (request.method, request.path_qs))
        if limited is not None:
            return limited
        body = json_body(await request.text(), SURFACE) if request.method in MUTATING else None
        path = request.path[len(BASE) :]
        match = op.pattern.fullmatch(path)
        params = match.groupdict() if match else {}
        response = _execute(op, Call(emu, claims, request.method, path, params, query, body))
        response.headers["x-ms-resource-unit"] = str(units)
        return response

    return handle


# -- $batch ---------------------------------------------------------------------------------------------------
def _batch_item(status: int, item_id: str, response: web.Response | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": item_id, "status": status}
    if response is None:
        return out
    headers = {k: v for k, v in response.headers.items() if k.lower() in ("content-type", "retry-after", "location")}
    out["headers"] = headers
    raw = response.body
    if isinstance(raw, bytes | bytearray) and raw:
        out["body"] = json.loads(raw)
    return out


def _split_url(url: str) -> tuple[str, MultiDict[str]] | None:
    """A batch item's relative URL ("/applications?...", "applications?...") as (path after /v1.0, query)."""
    if "://" in url:
        return None
    parts = urlsplit(url if url.startswith("/") else "/" + url)
    path = unquote(parts.path)
    if path.startswith(BASE + "/"):
        path = path[len(BASE) :]
    query: MultiDict[str] = MultiDict()
    for pair in parts.query.split("&") if parts.query else []:
        key, _, value = pair.partition("=")
        query.add(unquote(key.replace("+", " ")), unquote(value.replace("+", " ")))
    return path, query


def _dispatch_item(emu: Emulator, claims: Claims, item: dict[str, Any]) -> dict[str, Any]:
    item_id = str(item["id"])
    method = str(item.get("method", "")).upper()
    split = _split_url(str(item.get("url", "")))
    if split is None:
        failure = GraphFailure(400, "BadRequest", "Invalid request URL: batch request URLs must be relative.")
        return _batch_item(400, item_id, _failure_response(failure))
    path, query = split
    resolved = _resolve(method, path)
    if isinstance(resolved, GraphFailure):
        return _batch_item(resolved.status, item_id, _failure_response(resolved))
    op, params = resolved
    emu.counts[f"graph.{op.name}"] += 1
    emu.counts["graph.batch_item"] += 1
    if method in MUTATING:
        emu.counts["mutations"] += 1
        emu.counts["mutations.graph"] += 1
    path_qs = BASE + path + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    rule = emu.faults.take(SURFACE, op.name, ("status", "throttle"), path_qs)
    if rule is not None:
        if rule.kind == "throttle":
            return _batch_item(429, item_id, throttled(SURFACE, rule.retry_after))
        failure = GraphFailure(rule.status, "ServiceUnavailable", rule.message or "Injected fault")
        return _batch_item(rule.status, item_id, _failure_response(failure))
    units = resource_units(op, method, query)
    limited = _rate_limited(emu, claims, units, (method, str(item.get("url", ""))))
    if limited is not None:
        return _batch_item(429, item_id, limited)
    body = item.get("body")
    if body is not None:
        headers = {str(k).lower(): v for k, v in (item.get("headers") or {}).items()}
        if "content-type" not in headers:
            failure = GraphFailure(400, "BadRequest", "Content-Type header is required when a body is specified.")
            return _batch_item(400, item_id, _failure_response(failure))
    call = Call(emu, claims, method, path, params, query, body)
    response = _execute(op, call)
    response.headers["x-ms-resource-unit"] = str(units)
    return _batch_item(response.status, item_id, response)


def _bad_batch(message: str) -> Reply:
    return Reply(error(SURFACE, 400, "BadRequest", message))


async def batch(request: web.Request) -> web.StreamResponse:
    emu = emulator_of(request)
    claims = emu.authenticate(request, SURFACE)
    doc = json_body(await request.text(), SURFACE)
    requests = doc.get("requests") if isinstance(doc, dict) else None
    if not isinstance(requests, list) or not requests:
        raise _bad_batch("Invalid batch payload format: 'requests' must be a non-empty array.")
    if len(requests) > MAX_BATCH:
        raise _bad_batch(f"The number of requests in the batch ({len(requests)}) exceeds the limit of {MAX_BATCH}.")
    seen: set[str] = set()
    for item in requests:
        if not isinstance(item, dict) or not item.get("id") or not item.get("method") or not item.get("url"):
            raise _bad_batch("Invalid batch payload format: every request needs 'id', 'method' and 'url'.")
        key = str(item["id"]).lower()
        if key in seen:
            raise _bad_batch(f"Batch request contains a duplicate id: '{item['id']}'.")
        seen.add(key)
    statuses: dict[str, int] = {}
    answers: list[dict[str, Any]] = []
    for item in requests:
        depends = [str(d).lower() for d in item.get("dependsOn") or []]
        if any(statuses.get(d, 424) >= 400 for d in depends):
            failure = GraphFailure(424, "FailedDependency", "The request depends on a request that failed.")
            answer = _batch_item(424, str(item["id"]), _failure_response(failure))
        else:
            answer = _dispatch_item(emu, claims, item)
        statuses[str(item["id"]).lower()] = int(answer["status"])
        answers.append(answer)
    answers.reverse()  # Graph answers in any order; the product must correlate by id
    return web.json_response({"responses": answers})


def setup(app: web.Application) -> None:
    """Register every Graph operation as `graph.<name>` plus `graph.batch`."""
    app.router.add_post(f"{BASE}/$batch", batch, name="graph.batch")
    graph_reports.setup(app)  # beta reports (sign-in activity): their own module
    for op in _OPS:
        app.router.add_route(op.method, op.route, route_handler(op), name=f"graph.{op.name}")
