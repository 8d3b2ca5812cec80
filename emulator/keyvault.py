"""Azure Key Vault secrets (data plane) under `/kv/{vault}`: set, get, list versions, list, update.

Wire shapes follow the Key Vault REST reference (SecretBundle / SecretItem / KeyVaultError). Authorization is
Azure RBAC with the real built-in roles' data actions; throttling is a token bucket per vault. The secret
identifier omits the `/kv/{vault}` prefix (`{endpoint}/secrets/{name}/{version}`) because the SDK's
`KeyVaultSecretIdentifier` only accepts two or three path segments (see docs/emulator.md, "Key Vault").
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import re
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from emulator.core import Emulator, emulator_of
from emulator.faults import TokenBucket
from emulator.model import Estate
from emulator.records import SecretVersion, Vault, secret_hash
from emulator.tokens import Claims
from emulator.wire import Reply, json_body, throttled

SURFACE = "keyvault"
NAME_RE = re.compile(r"[0-9a-zA-Z-]{1,127}")
MAX_VALUE_BYTES = 25 * 1024
MAX_TAGS = 15
MAX_CONTENT_TYPE = 255
PAGE_MAX = 25
RECOVERY_LEVEL = "Recoverable+Purgeable"
RECOVERABLE_DAYS = 90
# Service limit: 4,000 secret transactions per vault per 10 seconds (seed `limits` may override).
DEFAULT_CAPACITY = 4000.0
DEFAULT_REFILL = 400.0

ACTION_PREFIX = "Microsoft.KeyVault/vaults/secrets/"
SET = ACTION_PREFIX + "setSecret/action"
GET = ACTION_PREFIX + "getSecret/action"
READ_METADATA = ACTION_PREFIX + "readMetadata/action"
UPDATE = ACTION_PREFIX + "update/action"

PRODUCT_VAULT_ROLE = "aks credential rotator secrets"

# Data actions of the built-in Key Vault roles (Azure built-in roles reference, Security category).
ROLE_DATA_ACTIONS: dict[str, tuple[str, ...]] = {
    "key vault administrator": ("Microsoft.KeyVault/vaults/*",),
    "key vault secrets officer": ("Microsoft.KeyVault/vaults/secrets/*",),
    "key vault secrets user": (GET, READ_METADATA),
    "key vault reader": ("Microsoft.KeyVault/vaults/*/read", READ_METADATA),
    # The product's custom data role, as infra/ defines it (its name there also carries the environment).
    PRODUCT_VAULT_ROLE: tuple(
        json.loads((Path(__file__).resolve().parent.parent / "infra/app/vault-role-data-actions.json").read_text())
    ),
}
ROLE_IDS = {
    "00482a5a-887f-4fb3-b363-3b7fe8e74483": "key vault administrator",
    "b86a8fe4-44ce-4948-aee5-eccb2c155cd7": "key vault secrets officer",
    "4633458b-17de-408a-b874-0445c86b69e6": "key vault secrets user",
    "21090545-7ca7-4776-b22c-e363652d74d2": "key vault reader",
}

_buckets: weakref.WeakKeyDictionary[Estate, TokenBucket] = weakref.WeakKeyDictionary()


# -- errors ---------------------------------------------------------------------------------------------------
def kv_error(
    status: int, code: str, message: str, inner: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """A KeyVaultError body: `{"error": {"code", "message", "innererror"?}}`."""
    err: dict[str, Any] = {"code": code, "message": message}
    if inner is not None:
        err["innererror"] = {"code": inner}
    extra = {"x-ms-request-id": str(uuid.uuid4())}
    extra.update(headers or {})
    return web.json_response({"error": err}, status=status, headers=extra)


def not_found(name: str, version: str | None = None) -> Reply:
    ident = f"{name}/{version}" if version else name
    message = (
        f"A secret with (name/id) {ident} was not found in this key vault. If you recently deleted this secret you "
        "may be able to recover it using the correct recovery command. For help resolving this issue, please see "
        "https://go.microsoft.com/fwlink/?linkid=2125182"
    )
    return Reply(kv_error(404, "SecretNotFound", message))


def bad(message: str) -> Reply:
    return Reply(kv_error(400, "BadParameter", message))


# -- context --------------------------------------------------------------------------------------------------
@dataclass
class KvCall:
    emu: Emulator
    claims: Claims
    vault: Vault


def _vault_meta(emu: Emulator, name: str) -> dict[str, str]:
    specs: list[dict[str, Any]] = emu.seed.get("vaults", [])
    spec = next((v for v in specs if v.get("name") == name), {})
    subscription = spec.get("subscription_id") or next(
        iter(emu.estate.subscriptions), "00000000-0000-0000-0000-000000000000"
    )
    return {
        "subscription_id": str(subscription),
        "resource_group": str(spec.get("resource_group", "rg-aks-credential-rotator")),
        "location": str(spec.get("location", "westeurope")),
    }


def _resource(emu: Emulator, vault: str, secret: str | None) -> str:
    meta = _vault_meta(emu, vault)
    rid = (
        f"/subscriptions/{meta['subscription_id']}/resourcegroups/{meta['resource_group']}"
        f"/providers/microsoft.keyvault/vaults/{vault}"
    )
    return (rid + (f"/secrets/{secret}" if secret else "")).lower()


def _allowed(roles: set[str], action: str) -> bool:
    for role in roles:
        key = ROLE_IDS.get(role.lower(), role.lower())
        for pattern in ROLE_DATA_ACTIONS.get(key, ()):
            if fnmatch.fnmatchcase(action.lower(), pattern.lower()):
                return True
    return False


def _forbidden(call: KvCall, action: str, secret: str | None) -> Reply:
    emu, claims, vault = call.emu, call.claims, call.vault.name
    message = (
        "Caller is not authorized to perform action on resource.\r\n"
        "If role assignments, deny assignments or role definitions were changed recently, please observe "
        "propagation time.\r\n"
        f"Caller: appid={claims.app_id};oid={claims.object_id};iss=https://sts.windows.net/{emu.estate.tenant_id}/\r\n"
        f"Action: '{action}'\r\n"
        f"Resource: '{_resource(emu, vault, secret)}'\r\n"
        "Assignment: (not found)\r\n"
        "DenyAssignmentId: null\r\n"
        "DecisionReason: 'DeniedWithNoValidRBAC' \r\n"
        f"Vault: {vault};location={_vault_meta(emu, vault)['location']}\r\n"
    )
    return Reply(kv_error(403, "Forbidden", message, inner="ForbiddenByRbac"))


def _bucket(emu: Emulator) -> TokenBucket:
    bucket = _buckets.get(emu.estate)
    if bucket is None:
        limits = emu.seed.get("limits", {})
        bucket = TokenBucket(
            float(limits.get("keyvault_capacity", DEFAULT_CAPACITY)),
            float(limits.get("keyvault_refill", DEFAULT_REFILL)),
        )
        _buckets[emu.estate] = bucket
    return bucket


def begin(request: web.Request, action: str, secret: str | None) -> KvCall:
    """Authenticate (401 challenge), find the vault, throttle per vault, validate the name, check RBAC."""
    emu = emulator_of(request)
    claims = emu.authenticate(request, SURFACE)
    vault_name = request.match_info.get("vault") or next(iter(emu.estate.vaults), "")
    vault = emu.estate.vaults.get(vault_name)
    if vault is None:
        message = (
            f"The vault '{vault_name}' does not exist in the emulated estate (in Azure its host name would not "
            "resolve)."
        )
        raise Reply(kv_error(404, "VaultNotFound", message))
    allowed, _, wait = _bucket(emu).take(vault.name)
    if not allowed:
        raise Reply(throttled(SURFACE, wait))
    call = KvCall(emu, claims, vault)
    if secret is not None and not NAME_RE.fullmatch(secret):
        raise bad(f"The request URI contains an invalid name: {secret}")
    if not _allowed(emu.estate.vault_roles.get((claims.app_id, vault.name), set()), action):
        raise _forbidden(call, action, secret)
    return call


# -- shapes ---------------------------------------------------------------------------------------------------
def secret_id(emu: Emulator, name: str, version: str | None = None) -> str:
    return f"{emu.endpoint}/secrets/{name}" + (f"/{version}" if version else "")


def attributes(v: SecretVersion) -> dict[str, Any]:
    attrs: dict[str, Any] = {"enabled": v.enabled}
    if v.not_before is not None:
        attrs["nbf"] = v.not_before
    if v.expires is not None:
        attrs["exp"] = v.expires
    attrs.update(
        {
            "created": v.created,
            "updated": v.updated,
            "recoverableDays": RECOVERABLE_DAYS,
            "recoveryLevel": RECOVERY_LEVEL,
        }
    )
    return attrs


def bundle(emu: Emulator, name: str, v: SecretVersion, with_value: bool) -> dict[str, Any]:
    """SecretBundle (value only for set/get)."""
    body: dict[str, Any] = {}
    if with_value:
        body["value"] = v.value
    if v.content_type is not None:
        body["contentType"] = v.content_type
    body["id"] = secret_id(emu, name, v.version)
    body["attributes"] = attributes(v)
    if v.tags:
        body["tags"] = dict(v.tags)
    return body


def item(emu: Emulator, name: str, v: SecretVersion, versioned: bool) -> dict[str, Any]:
    """SecretItem: no value; `versioned=False` for the vault listing (id without version, latest attributes)."""
    body: dict[str, Any] = {"id": secret_id(emu, name, v.version if versioned else None), "attributes": attributes(v)}
    if v.tags:
        body["tags"] = dict(v.tags)
    if v.content_type is not None:
        body["contentType"] = v.content_type
    return body


# -- request parsing -----------------------------------------------------------------------------------------
def _version_of(request: web.Request) -> str | None:
    """The `{version}` tail: "" or absent -> latest (None)."""
    tail = request.match_info.get("version", "").lstrip("/")
    return tail or None


def _timestamp(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(f"Property '{field}' has invalid value: expected a unix time in seconds.")
    return int(value)


def _tags(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise bad("Property 'tags' has invalid value: expected an object of string values.")
    if len(value) > MAX_TAGS:
        raise bad(f"The number of tags ({len(value)}) exceeds the maximum of {MAX_TAGS}.")
    for key, val in value.items():
        if len(key) > 512 or len(val) > 256:
            raise bad("A tag name is limited to 512 characters and a tag value to 256 characters.")
    return dict(value)


def _content_type(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_CONTENT_TYPE:
        raise bad("Property 'contentType' has invalid value.")
    return value


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad("The request body must be a JSON object.")
    return body


def _find(vault: Vault, name: str, version: str | None) -> SecretVersion:
    versions = vault.secrets.get(name)
    if not versions:
        raise not_found(name, version)
    if version is None:
        return versions[-1]
    found = next((v for v in versions if v.version == version.lower()), None)
    if found is None:
        raise not_found(name, version)
    return found


def _page_size(request: web.Request) -> int:
    raw = request.query.get("maxresults")
    if raw is None:
        return PAGE_MAX
    try:
        size = int(raw)
    except ValueError:
        raise bad("The value of the maxresults parameter is not a valid integer.") from None
    if not 1 <= size <= PAGE_MAX:
        raise bad(f"The value of the maxresults parameter must be between 1 and {PAGE_MAX}.")
    return size


def _marker(request: web.Request) -> str | None:
    token = request.query.get("$skiptoken")
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        marker = json.loads(base64.urlsafe_b64decode(padded))["NextMarker"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise bad("The $skiptoken parameter is invalid.") from None
    return str(marker)


def paged(request: web.Request, keyed: list[tuple[str, dict[str, Any]]], base_path: str) -> web.Response:
    """One page of `keyed` (sorted by key), continuing after the `$skiptoken` marker; absolute `nextLink`."""
    emu = emulator_of(request)
    size = _page_size(request)
    marker = _marker(request)
    remaining = [(k, v) for k, v in keyed if marker is None or k > marker]
    page, rest = remaining[:size], remaining[size:]
    next_link = None
    if rest:
        token = base64.urlsafe_b64encode(json.dumps({"NextMarker": page[-1][0], "TargetLocation": 0}).encode())
        api = request.query.get("api-version", "")
        next_link = (
            f"{emu.endpoint}{base_path}?api-version={api}&$skiptoken={token.decode().rstrip('=')}&maxresults={size}"
        )
    return web.json_response({"value": [v for _, v in page], "nextLink": next_link})


# -- handlers -------------------------------------------------------------------------------------------------
async def set_secret(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    call = begin(request, SET, name)
    body = _object(json_body(await request.text(), SURFACE))
    value = body.get("value")
    if not isinstance(value, str):
        raise bad("Property 'value' is required and must be a string.")
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise bad(f"The secret value exceeds the maximum size of {MAX_VALUE_BYTES} bytes.")
    attrs = body.get("attributes") or {}
    if not isinstance(attrs, dict):
        raise bad("Property 'attributes' has invalid value.")
    enabled = attrs.get("enabled", True)
    if not isinstance(enabled, bool):
        raise bad("Property 'enabled' has invalid value.")
    now = int(call.emu.clock.timestamp())
    version = SecretVersion(
        version=uuid.uuid4().hex,
        value_hash=secret_hash(value),
        value=value,
        content_type=_content_type(body.get("contentType")),
        tags=_tags(body.get("tags")),
        enabled=enabled,
        not_before=_timestamp(attrs.get("nbf"), "nbf"),
        expires=_timestamp(attrs.get("exp"), "exp"),
        created=now,
        updated=now,
    )
    if name in call.vault.deleted:
        message = (
            f"Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this "
            "state, the secret can only be recovered or purged."
        )
        raise Reply(kv_error(409, "Conflict", message, inner="ObjectIsDeletedButRecoverable"))
    call.vault.secrets.setdefault(name, []).append(version)
    return web.json_response(bundle(call.emu, name, version, with_value=True))


async def get_secret(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    call = begin(request, GET, name)
    found = _find(call.vault, name, _version_of(request))
    if not found.enabled:
        message = "Operation get is not allowed on a disabled secret."
        raise Reply(kv_error(403, "Forbidden", message, inner="SecretDisabled"))
    return web.json_response(bundle(call.emu, name, found, with_value=True))


async def get_secret_versions(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    call = begin(request, READ_METADATA, name)
    versions = call.vault.secrets.get(name, [])
    # The service lists versions in the order of their identifiers, not by creation time.
    keyed = sorted((v.version, item(call.emu, name, v, versioned=True)) for v in versions)
    return paged(request, keyed, f"/kv/{call.vault.name}/secrets/{name}/versions")


async def get_secrets(request: web.Request) -> web.Response:
    call = begin(request, READ_METADATA, None)
    keyed = sorted(
        (name, item(call.emu, name, versions[-1], versioned=False))
        for name, versions in call.vault.secrets.items()
        if versions
    )
    return paged(request, keyed, f"/kv/{call.vault.name}/secrets")


async def update_secret(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    call = begin(request, UPDATE, name)
    body = _object(json_body(await request.text(), SURFACE))
    found = _find(call.vault, name, _version_of(request))
    content_type = _content_type(body.get("contentType"))
    tags = _tags(body["tags"]) if body.get("tags") is not None else None
    attrs = body.get("attributes")
    if attrs is not None and not isinstance(attrs, dict):
        raise bad("Property 'attributes' has invalid value.")
    attrs = attrs or {}
    enabled = attrs.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise bad("Property 'enabled' has invalid value.")
    nbf = _timestamp(attrs.get("nbf"), "nbf")
    exp = _timestamp(attrs.get("exp"), "exp")
    # Only what the request carries changes; tags, when present, replace the whole set.
    if content_type is not None:
        found.content_type = content_type or None
    if tags is not None:
        found.tags = tags
    if enabled is not None:
        found.enabled = enabled
    if nbf is not None:
        found.not_before = nbf
    if exp is not None:
        found.expires = exp
    found.updated = int(call.emu.clock.timestamp())
    return web.json_response(bundle(call.emu, name, found, with_value=False))


def setup(app: web.Application) -> None:
    """Register the Key Vault routes (the `versions` listing before the `{version}` catch-all), under `/kv/{vault}`
    and, for the first vault, at the root too: the ids handed to clients (`{endpoint}/secrets/{name}/{version}`)
    then work when used again (`az keyvault secret show --id`, `KeyVaultSecretIdentifier`)."""
    tail = "{version:(/[^/]*)?}"
    for prefix, suffix in (("/kv/{vault}", ""), ("", "AtRoot")):
        base = prefix + "/secrets"
        r = app.router
        r.add_get(base + "/{name}/versions", get_secret_versions, name="keyvault.getSecretVersions" + suffix)
        r.add_get(base + "/{name}" + tail, get_secret, name="keyvault.getSecret" + suffix)
        r.add_get(base + "{slash:/?}", get_secrets, name="keyvault.getSecrets" + suffix)
        r.add_put(base + "/{name}", set_secret, name="keyvault.setSecret" + suffix)
        r.add_patch(base + "/{name}" + tail, update_secret, name="keyvault.updateSecret" + suffix)
