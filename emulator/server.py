"""The emulator's HTTPS server: one aiohttp app on 127.0.0.1 serving every surface.

Each surface module registers its routes with names `"<surface>.<operation>"`; the middleware here uses that
name for fault injection, request counting and error shapes. Surfaces raise `Reply` to answer early.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import trustme
from aiohttp import web

from emulator.faults import Faults, TokenBucket, WindowQuota
from emulator.state import Clock, Estate
from emulator.tokens import Claims, TokenIssuer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Reads that go through POST but change nothing (queries, token requests, batches are counted per item).
READ_ONLY_POSTS = frozenset({"resourcegraph.resources", "entra.token", "arm.listClusterUserCredential", "graph.batch"})

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


def _now_http() -> str:
    return format_datetime(datetime.now(UTC), usegmt=True)


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


class Emulator:
    """Everything a handler needs: the estate, clock, faults, tokens, limits and counters."""

    def __init__(self, seed: dict[str, Any], base_latency_ms: int = 0) -> None:
        self.seed = seed
        self.clock = Clock()
        self.endpoint = "https://127.0.0.1"
        self.base_latency_ms = base_latency_ms
        self.estate = Estate(seed, self.clock)
        self.faults = Faults(self.estate.rng)
        self.tokens = TokenIssuer(self.estate.tenant_id, self.endpoint)
        self.counts: Counter[str] = Counter()
        self._fresh_limits()

    def _fresh_limits(self) -> None:
        limits = self.seed.get("limits", {})
        self.arm_reads = TokenBucket(limits.get("arm_read_capacity", 250), limits.get("arm_read_refill", 25))
        self.arm_writes = TokenBucket(limits.get("arm_write_capacity", 200), limits.get("arm_write_refill", 10))
        self.rg_quota = WindowQuota(limits.get("resourcegraph_queries", 15), limits.get("resourcegraph_window", 5))
        # Graph identity and access: 8,000 resource units per 10 s per app and tenant (a large tenant).
        self.graph_rate = TokenBucket(limits.get("graph_capacity", 8000), limits.get("graph_refill", 800))

    def reset(self, seed: dict[str, Any] | None = None) -> None:
        if seed is not None:
            self.seed = seed
        self.clock.offset = 0.0
        self.estate = Estate(self.seed, self.clock)
        self.faults = Faults(self.estate.rng)
        if self.tokens.tenant_id != self.estate.tenant_id:
            self.tokens = TokenIssuer(self.estate.tenant_id, self.endpoint)
        self.counts.clear()
        self._fresh_limits()

    def set_endpoint(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.tokens = TokenIssuer(self.estate.tenant_id, endpoint)

    def entra_refusal(self, app_id: str, secret: str) -> str | None:
        """Why Entra would refuse this client secret right now (AADSTS text), or None if it accepts it.

        Used by the token endpoint and by AKS when a reset hands it a new secret. A `replication_delay` fault (or
        the estate's `replication_seconds`) makes a new password fail intermittently until replicas catch up.
        """
        invalid = (
            f"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the "
            f"client secret value, not the client secret ID, for a secret added to app '{app_id}'."
        )
        password = self.estate.find_password(app_id, secret)
        if password is None:
            return invalid
        now = self.clock.now()
        if now >= password.end:
            return f"AADSTS7000222: The provided client secret keys for app '{app_id}' are expired."
        if now < password.start:
            return invalid
        rule = self.faults.find("entra", "replication_delay", app_id)
        delay = rule.seconds if rule is not None else self.estate.replication_seconds
        if rule is not None and rule.probability < 1.0 and self.estate.rng.random() >= rule.probability:
            delay = 0.0
        return None if self.estate.replicated(password, delay) else invalid

    def authenticate(self, request: web.Request, surface: str) -> Claims:
        """Verify the bearer token for this surface's audience or raise `Reply` with the service's 401."""
        header = request.headers.get("Authorization", "")
        audience = AUDIENCES[surface]
        if not header.lower().startswith("bearer "):
            raise Reply(self.unauthorized(surface, "missing", audience))
        verdict = self.tokens.verify(header[7:].strip(), audience, self.clock.timestamp())
        if isinstance(verdict, str):
            raise Reply(self.unauthorized(surface, verdict, audience))
        return verdict

    def unauthorized(self, surface: str, reason: str, audience: str) -> web.Response:
        authority = f"{self.endpoint}/{self.estate.tenant_id}"
        if surface == "keyvault":
            challenge = f'Bearer authorization="{authority}", resource="{audience}"'
            code = "Unauthorized"
            message = "AKV10000: Request is missing a Bearer or PoP token." if reason == "missing" else reason
            return error(surface, 401, code, message, {"WWW-Authenticate": challenge})
        if surface == "graph":
            message = "Access token is empty." if reason == "missing" else f"Access token validation failure: {reason}."
            code = "InvalidAuthenticationToken"
            return error(surface, 401, code, message)
        challenge = f'Bearer authorization_uri="{authority}", error="invalid_token", error_description="{reason}"'
        if reason == "missing":
            return error(
                surface,
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
                {"WWW-Authenticate": challenge},
            )
        code = "ExpiredAuthenticationToken" if reason == "token expired" else "InvalidAuthenticationToken"
        return error(surface, 401, code, f"The access token is invalid: {reason}.", {"WWW-Authenticate": challenge})


EMULATOR_KEY = web.AppKey("emulator", Emulator)


def emulator_of(request: web.Request) -> Emulator:
    return request.app[EMULATOR_KEY]


@web.middleware
async def _pipeline(request: web.Request, handler: Handler) -> web.StreamResponse:
    emu = emulator_of(request)
    surface, operation = surface_of(request)
    if surface in ("", "control"):
        try:
            return await handler(request)
        except Reply as reply:
            return reply.response
    key = f"{surface}.{operation}"
    emu.counts[key] += 1
    if request.method in MUTATING and key not in READ_ONLY_POSTS:
        emu.counts["mutations"] += 1
        emu.counts[f"mutations.{surface}"] += 1
    delay = emu.base_latency_ms + emu.faults.latency_ms(surface, operation, request.path)
    if delay:
        await asyncio.sleep(delay / 1000)
    rule = emu.faults.take(surface, operation, ("status", "throttle", "drop"), request.path_qs)
    if rule is not None:
        if rule.kind == "drop":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        if rule.kind == "throttle":
            return throttled(surface, rule.retry_after)
        code = {500: "InternalServerError", 502: "BadGateway", 503: "ServiceUnavailable", 504: "GatewayTimeout"}
        return error(surface, rule.status, code.get(rule.status, "Failure"), rule.message or "Injected fault")
    try:
        return await handler(request)
    except Reply as reply:
        return reply.response


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


def build_app(emu: Emulator) -> web.Application:
    from emulator import arm, authorization, control, entra, graph, keyvault, resource_graph

    app = web.Application(middlewares=[_pipeline], client_max_size=4 * 1024 * 1024)
    app[EMULATOR_KEY] = emu
    for module in (control, entra, arm, authorization, resource_graph, graph, keyvault):
        module.setup(app)
    return app


def write_ca(state_dir: Path) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    ca_file = state_dir / "emulator-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return ca, ca_file


async def serve(
    emu: Emulator,
    port: int,
    state_dir: Path,
    ready_file: Path | None,
    stop: asyncio.Event,
) -> None:
    """Serve until `stop` is set; write the ready file once connections are accepted."""
    state_dir.mkdir(parents=True, exist_ok=True)
    ca, ca_file = write_ca(state_dir)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    runner = web.AppRunner(build_app(emu), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=context, backlog=1024)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1]
    emu.set_endpoint(f"https://127.0.0.1:{bound}")
    if ready_file is not None:
        ready = {
            "endpoint": emu.endpoint,
            "ca_file": str(ca_file),
            "tenant_id": emu.estate.tenant_id,
            "client_id": emu.estate.product_app_id,
            "client_secret": emu.estate.product_secret,
            "key_vault_url": f"{emu.endpoint}/kv/{next(iter(emu.estate.vaults), 'rotator-kv')}",
            "pid": os.getpid(),
        }
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(ready))
        tmp.replace(ready_file)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
