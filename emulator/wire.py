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
