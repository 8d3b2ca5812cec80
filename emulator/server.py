"""The emulator's HTTPS server: one aiohttp app on 127.0.0.1 serving every surface.

Each surface module registers its routes with names `"<surface>.<operation>"`; the middleware here uses that
name for fault injection, request counting and error shapes. Surfaces raise `Reply` to answer early.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from pathlib import Path

import trustme
from aiohttp import web

from emulator import (
    arm,
    authorization,
    control,
    entra,
    graph,
    identity_migration,
    keyvault,
    keyvault_deleted,
    metadata,
    resource_graph,
    role_assignments,
    world,
)
from emulator.core import EMULATOR_KEY, Emulator, emulator_of
from emulator.wire import MUTATING, Handler, Reply, error, surface_of, throttled, unmatched

# Reads that go through POST but change nothing (queries, token requests, batches are counted per item).
READ_ONLY_POSTS = frozenset({"resourcegraph.resources", "entra.token", "arm.listClusterUserCredential", "graph.batch"})


@web.middleware
async def _pipeline(request: web.Request, handler: Handler) -> web.StreamResponse:
    emu = emulator_of(request)
    surface, operation = surface_of(request)
    if request.match_info.http_exception is not None:
        return unmatched(request.path, request.match_info.http_exception.status)
    if surface in ("", "control"):
        try:
            return await handler(request)
        except Reply as reply:
            return reply.response
    key = f"{surface}.{operation}"
    emu.counts[key] += 1
    if "api-version" in request.query:
        emu.api_versions[(key, request.query["api-version"])] += 1
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


def build_app(emu: Emulator) -> web.Application:
    app = web.Application(middlewares=[_pipeline], client_max_size=4 * 1024 * 1024)
    app[EMULATOR_KEY] = emu
    for module in (
        control,
        world,
        metadata,
        entra,
        arm,
        authorization,
        resource_graph,
        graph,
        keyvault,
        keyvault_deleted,
        role_assignments,
        identity_migration,
    ):
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
