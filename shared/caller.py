"""Who asked for an on-demand rotation: the caller recorded in its audit rows and log lines (never a secret).

* HTTP (`POST /api/rotations`): the Functions host checks the function key but does not tell a Python function
  which key it was (the Python library builds `HttpRequest` from method, URL, headers, query, route parameters and
  body only), so the key is recorded as `FUNCTION_KEY`. With App Service authentication in front
  (`APP_AUTH_ENABLED`; the platform then sets `WEBSITE_AUTH_ENABLED=True` in the app's environment), the caller's
  Entra identity comes from the `X-MS-CLIENT-PRINCIPAL*` headers App Service injects; App Service does not let
  external requests set them. Without it anyone holding a key can send those headers, so they are ignored.
* CLI (`aks-rotator rotate`): the identity the command signed in as, from the claims of the access token
  azure-identity returned (object id, user principal name or application id; never the token).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

FUNCTION_KEY = "function key (name not exposed by the host)"
NO_AUTH_IN_FRONT = "unknown (no App Service authentication in front)"
MAX_PRINCIPAL_BYTES = 16 * 1024  # the base64 X-MS-CLIENT-PRINCIPAL header; larger ones are ignored
_FIELD_CHARS = 128
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")

# Claim types as App Service maps them (X-MS-CLIENT-PRINCIPAL) and as they appear in access tokens.
_OBJECT_ID = ("http://schemas.microsoft.com/identity/claims/objectidentifier", "oid")
_NAME = (
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn",
    "upn",
    "preferred_username",
    "unique_name",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
    "name",
)
_APP_ID = ("appid", "azp")


@dataclass(frozen=True)
class Caller:
    via: Literal["http", "cli"]
    name: str  # a user principal name, an application id, or what is known
    principal_id: str | None = None  # Entra object id
    app_id: str | None = None  # the client application the token was issued to
    key: str | None = None  # HTTP: the function key, as far as the host tells

    def fields(self) -> dict[str, Any]:
        """Audit-row and log-line properties."""
        named = {
            "caller": self.name,
            "caller_via": self.via,
            "caller_id": self.principal_id,
            "caller_app_id": self.app_id,
            "caller_key": self.key,
        }
        return {k: v for k, v in named.items() if v}


def _clean(value: Any) -> str | None:
    """A short printable string, or None: header and claim values are echoed into logs and the audit table."""
    if not isinstance(value, str):
        return None
    text = _UNPRINTABLE.sub("?", value.strip())[:_FIELD_CHARS]
    return text or None


def _first(claims: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    return next((v for v in (_clean(claims.get(n)) for n in names) if v), None)


def app_service_auth_in_front(environ: Mapping[str, str] = os.environ) -> bool:
    """The platform sets WEBSITE_AUTH_ENABLED=True when App Service authentication is on; no request can set it."""
    return environ.get("WEBSITE_AUTH_ENABLED", "").strip().lower() == "true"


def _principal_claims(encoded: str | None) -> dict[str, Any]:
    """The claims of X-MS-CLIENT-PRINCIPAL (base64 JSON `{"claims": [{"typ", "val"}]}`); {} if malformed."""
    if not encoded or len(encoded) > MAX_PRINCIPAL_BYTES:
        return {}
    try:
        doc = json.loads(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError, RecursionError):
        return {}
    claims = doc.get("claims") if isinstance(doc, dict) else None
    if not isinstance(claims, list):
        return {}
    found: dict[str, Any] = {}
    for claim in claims:
        if isinstance(claim, dict) and isinstance(claim.get("typ"), str):
            found.setdefault(claim["typ"], claim.get("val"))
    return found


def http_caller(headers: Mapping[str, str], *, auth_in_front: bool) -> Caller:
    """The caller of an HTTP request; the principal headers count only behind App Service authentication."""
    if not auth_in_front:
        return Caller("http", NO_AUTH_IN_FRONT, key=FUNCTION_KEY)
    lower = {k.lower(): v for k, v in headers.items()}
    claims = _principal_claims(lower.get("x-ms-client-principal"))
    object_id = _clean(lower.get("x-ms-client-principal-id")) or _first(claims, _OBJECT_ID)
    app_id = _first(claims, _APP_ID)
    name = _clean(lower.get("x-ms-client-principal-name")) or _first(claims, _NAME) or app_id or object_id
    return Caller("http", name or "unknown", object_id, app_id, FUNCTION_KEY)


def token_caller(access_token: str) -> Caller:
    """The identity an access token was issued to (its claims are read, not verified: this labels our own token)."""
    parts = access_token.split(".")
    claims: Any = None
    if len(parts) == 3:
        try:
            claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except (binascii.Error, ValueError, RecursionError):
            claims = None
    if not isinstance(claims, dict):
        return Caller("cli", "unknown (the access token carries no readable claims)")
    app_id = _first(claims, _APP_ID)
    object_id = _first(claims, _OBJECT_ID)
    name = _first(claims, _NAME) or app_id or object_id
    return Caller("cli", name or "unknown", object_id, app_id)
