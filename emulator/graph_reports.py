"""Microsoft Graph beta `reports/appCredentialSignInActivities`: when each application credential was last used.

Sign-ins per keyId come from `emulator.signins` (token endpoint and clusters). A credential never used has no
entry. The permission is `AuditLog.Read.All` (or
`Directory.Read.All`); without it, 403 `Authorization_RequestDenied` (docs/emulator.md, "Sign-in activity").
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from emulator.core import emulator_of
from emulator.model import Estate
from emulator.records import iso
from emulator.signins import last_signins
from emulator.wire import error

SURFACE = "graph"
ROUTE = "/beta/reports/appCredentialSignInActivities"
REPORT_ROLES = frozenset({"AuditLog.Read.All", "Directory.Read.All"})
_FILTER = re.compile(r"^\s*(appId|keyId)\s+eq\s+'([^']*)'\s*$")


def _entries(estate: Estate) -> list[dict[str, Any]]:
    seen = last_signins(estate)
    out = []
    for app in estate.applications.values():
        holders = [("application", app.passwords)] + ([("servicePrincipal", app.sp.passwords)] if app.sp else [])
        for origin, held in holders:
            for pw in held:
                at = seen.get(pw.key_id.lower())
                if at is None:
                    continue
                out.append(
                    {
                        "id": f"{pw.key_id}|{origin}",
                        "appId": app.app_id,
                        "appObjectId": app.object_id,
                        "servicePrincipalObjectId": app.sp.object_id if app.sp else None,
                        "keyId": pw.key_id,
                        "keyType": "clientSecret",
                        "keyUsage": "verify",
                        "credentialOrigin": origin,
                        "expirationDate": iso(pw.end),
                        "createdDateTime": iso(pw.start),
                        "signInActivity": {
                            "lastSignInDateTime": iso(datetime.fromtimestamp(at, tz=UTC)),
                            "lastSignInRequestId": str(uuid.uuid5(uuid.NAMESPACE_OID, f"{pw.key_id}/{int(at)}")),
                        },
                    }
                )
    return out


async def list_app_credential_sign_in_activities(request: web.Request) -> web.StreamResponse:
    emu = emulator_of(request)
    claims = emu.authenticate(request, SURFACE)
    if not REPORT_ROLES & set(claims.roles):
        return error(SURFACE, 403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
    entries = _entries(emu.estate)
    raw = request.query.get("$filter")
    if raw is not None:
        match = _FILTER.match(raw)
        if match is None:
            return error(SURFACE, 400, "Request_UnsupportedQuery", f"Unsupported filter: {raw[:100]}")
        name, value = match.groups()
        entries = [e for e in entries if str(e[name]).lower() == value.lower()]
    context = f"{emu.endpoint}/beta/$metadata#reports/appCredentialSignInActivities"
    return web.json_response({"@odata.context": context, "value": entries})


def setup(app: web.Application) -> None:
    app.router.add_get(ROUTE, list_app_credential_sign_in_activities, name="graph.listAppCredentialSignInActivities")
