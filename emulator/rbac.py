"""ARM role-based access: which role assignments cover a scope, and ARM's `AuthorizationFailed` answer.

Shared by ARM, Resource Graph and the permissions read-back; assignments are prefix scopes with action patterns.
"""

from __future__ import annotations

import fnmatch
import weakref

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


# Role assignments per (principal, scope), both lower-case, per estate: ARM authorizes every request, and a large
# estate has thousands of assignments (one per subscription). Assignments are only added when an estate is loaded,
# so the index is rebuilt when their count changes.
_Index = dict[tuple[str, str], list[tuple[str, ...]]]
_INDEX: weakref.WeakKeyDictionary[Estate, tuple[int, _Index]] = weakref.WeakKeyDictionary()


def _index(estate: Estate) -> _Index:
    cached = _INDEX.get(estate)
    if cached is not None and cached[0] == len(estate.role_assignments):
        return cached[1]
    index: _Index = {}
    for ra in estate.role_assignments:
        index.setdefault((ra.principal.lower(), ra.scope), []).append(tuple(p.lower() for p in ra.actions))
    _INDEX[estate] = (len(estate.role_assignments), index)
    return index


def can(estate: Estate, principal: str, action: str, scope: str) -> bool:
    """True if some role assignment of `principal` covers `scope` (prefix) with an action matching `action`:
    the assignments at each prefix of `scope` (what `under` matches), looked up instead of scanned."""
    wanted = action.lower()
    who = principal.lower()
    index = _index(estate)
    parts = scope.lower().rstrip("/").split("/")
    for end in range(len(parts), 0, -1):
        for patterns in index.get((who, "/".join(parts[:end])), ()):
            if any(fnmatch.fnmatchcase(wanted, pattern) for pattern in patterns):
                return True
    return False


def authorization_failed(surface: str, claims: Claims, action: str, scope: str) -> web.Response:
    message = AUTH_FAILED.format(app=claims.app_id, oid=claims.object_id, action=action, scope=scope)
    return error(surface, 403, "AuthorizationFailed", message)


def visible_subscriptions(estate: Estate, principal: str) -> list[str]:
    """Subscriptions of the estate on (or under) which the principal has any role assignment."""
    who = principal.lower()
    scopes = [scope for (owner, scope) in _index(estate) if owner == who]
    broad = any(scope in ("", "/subscriptions") for scope in scopes)  # at or above every subscription
    touched = {scope.split("/")[2] for scope in scopes if scope.startswith("/subscriptions/")}
    return [sub for sub in estate.subscriptions if broad or sub.lower() in touched]
