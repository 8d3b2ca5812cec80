"""The wire pieces every surface shares: early answers (`Reply`), each service's error body, throttling and JSON
bodies. Route names are `"<surface>.<operation>"`; `surface_of` reads them back for the middleware in `server`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

AUDIENCES = {
    "arm": "https://management.azure.com",
    "resourcegraph": "https://management.azure.com",
    "graph": "https://graph.microsoft.com",
    "keyvault": "https://vault.azure.net",
}
# Every audience a token for the surface may carry: Entra issues `aud` as the resource the scope names (with or
# without a trailing slash; az asks `https://management.core.windows.net//.default`), and ARM accepts both the
# management.azure.com and the management.core.windows.net audiences.
ARM_AUDIENCES = frozenset(
    {
        "https://management.azure.com",
        "https://management.azure.com/",
        "https://management.core.windows.net",
        "https://management.core.windows.net/",
    }
)
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"


def accepted_audiences(surface: str, endpoint: str) -> frozenset[str]:
    """The `aud` values the surface accepts. Graph also accepts the emulator's own URL, which `az cloud register`
    makes the Microsoft Graph resource id (see `emulator.metadata`)."""
    if surface in ("arm", "resourcegraph"):
        return ARM_AUDIENCES
    if surface == "graph":
        return frozenset({AUDIENCES["graph"], AUDIENCES["graph"] + "/", GRAPH_APP_ID, endpoint, endpoint + "/"})
    return frozenset({AUDIENCES[surface], AUDIENCES[surface] + "/"})


def scope_audience(scope: str, endpoint: str) -> tuple[str, str] | None:
    """(surface, aud) for a client-credentials scope `<resource>/.default`, or None if no surface serves it."""
    if not scope.endswith("/.default"):
        return None
    resource = scope.removesuffix("/.default")
    for surface in ("arm", "graph", "keyvault"):
        if resource in accepted_audiences(surface, endpoint):
            return surface, resource
    return None


class Reply(Exception):
    """Raised by a handler to answer with `response` at once."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def error(surface: str, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """An error body in the shape the real service uses."""
    request_id = str(uuid.uuid4())
    body: dict[str, Any]
    extra = dict(headers or {})
    if surface == "entra":
        body = {
            "error": code,
            "error_description": f"{message}\r\nTrace ID: {request_id}\r\nCorrelation ID: {uuid.uuid4()}\r\n"
            f"Timestamp: {datetime.now(UTC):%Y-%m-%d %H:%M:%SZ}",
            "error_codes": [int(message[6:].split(":")[0])] if message.startswith("AADSTS") else [],
            "timestamp": f"{datetime.now(UTC):%Y-%m-%d %H:%M:%SZ}",
            "trace_id": request_id,
            "correlation_id": str(uuid.uuid4()),
        }
    elif surface == "graph":
        body = {
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                    "request-id": request_id,
                    "client-request-id": request_id,
                },
            }
        }
        extra.setdefault("request-id", request_id)
    elif surface == "keyvault":
        body = {"error": {"code": code, "message": message}}
        extra.setdefault("x-ms-request-id", request_id)
    else:  # arm, resourcegraph
        body = {"error": {"code": code, "message": message}}
        extra.setdefault("x-ms-request-id", request_id)
        extra.setdefault("x-ms-correlation-request-id", request_id)
    return web.json_response(body, status=status, headers=extra)


def surface_of(request: web.Request) -> tuple[str, str]:
    name = request.match_info.route.name or ""
    surface, _, operation = name.partition(".")
    return surface, operation


def throttled(surface: str, retry_after: float) -> web.Response:
    seconds = max(1, int(retry_after + 0.999))
    headers = {"Retry-After": str(seconds)}
    if surface == "graph":
        return error(surface, 429, "TooManyRequests", "Too many requests, please retry later.", headers)
    if surface == "keyvault":
        message = "Request was not allowed because application has exceeded the maximum number of requests."
        return error(surface, 429, "Throttled", message, headers)
    if surface == "entra":
        return error(
            surface, 429, "temporarily_unavailable", "AADSTS50196: The server terminated an operation.", headers
        )
    message = "The request is being throttled as the limit has been reached for operation type."
    return error(surface, 429, "TooManyRequests", message, headers)


def json_body(request_text: str, surface: str) -> Any:
    try:
        return json.loads(request_text) if request_text else {}
    except json.JSONDecodeError:
        raise Reply(error(surface, 400, "BadRequest", "The request body is not valid JSON.")) from None


def unmatched(path: str, status: int) -> web.Response:
    """A path (or method) no route serves, answered in the JSON error body of the service that owns the path
    (never aiohttp's plain-text 404)."""
    lowered = path.lower()
    method_not_allowed = status == 405
    if lowered.startswith(("/v1.0", "/beta")):
        segment = path.rstrip("/").split("/")[-1] or path
        if method_not_allowed:
            return error(
                "graph", 405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target."
            )
        return error("graph", 400, "BadRequest", f"Resource not found for the segment '{segment}'.")
    if lowered.startswith(("/kv/", "/secrets", "/deletedsecrets")):
        code = "MethodNotAllowed" if method_not_allowed else "NotFound"
        return error("keyvault", status, code, f"The requested operation or path '{path}' is not supported.")
    if "/oauth2/" in lowered or "/discovery/" in lowered or "/.well-known/" in lowered:
        message = f"AADSTS900561: The endpoint only accepts POST, OPTIONS requests. Path '{path}'."
        return error("entra", 404 if not method_not_allowed else 405, "invalid_request", message)
    if method_not_allowed:
        return error("arm", 405, "MethodNotAllowed", f"The requested method is not allowed for the path '{path}'.")
    message = f"The requested resource '{path}' does not exist or its resource type is not served by this host."
    return error("arm", 404, "NotFound", message)
