"""ARM role-based access: which role assignments cover a scope, and ARM's `AuthorizationFailed` answer.

Shared by ARM, Resource Graph and the permissions read-back; assignments are prefix scopes with action patterns.
"""

from __future__ import annotations

import fnmatch

from aiohttp import web

from emulator.model import Estate
from emulator.tokens import Claims
from emulator.wire import error

AUTH_FAILED = (
    "The client '{app}' with object id '{oid}' does not have authorization to perform action '{action}' over scope "
    "'{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials."
)


def under(scope: str, assigned: str) -> bool:
    scope = scope.lower().rstrip("/")
    return scope == assigned or scope.startswith(assigned + "/")


def can(estate: Estate, principal: str, action: str, scope: str) -> bool:
    """True if some role assignment of `principal` covers `scope` (prefix) with an action matching `action`."""
    wanted = action.lower()
    for ra in estate.role_assignments:
        if ra.principal.lower() != principal.lower() or not under(scope, ra.scope):
            continue
        if any(fnmatch.fnmatchcase(wanted, pattern.lower()) for pattern in ra.actions):
            return True
    return False


def authorization_failed(surface: str, claims: Claims, action: str, scope: str) -> web.Response:
    message = AUTH_FAILED.format(app=claims.app_id, oid=claims.object_id, action=action, scope=scope)
    return error(surface, 403, "AuthorizationFailed", message)


def visible_subscriptions(estate: Estate, principal: str) -> list[str]:
    """Subscriptions of the estate on (or under) which the principal has any role assignment."""
    result = []
    for sub in estate.subscriptions:
        scope = f"/subscriptions/{sub}".lower()
        if any(
            ra.principal.lower() == principal.lower() and (under(scope, ra.scope) or under(ra.scope, scope))
            for ra in estate.role_assignments
        ):
            result.append(sub)
    return result
