"""The emulator's own control surface (`/_emulator/...`): truth, reset, clock, faults, request counts.

Nothing here exists in Azure. `/_emulator/canaries` returns every secret value the emulator ever issued or was
seeded with, so tests can grep captured output for them; `/_emulator/state` carries hashes only.
"""

from __future__ import annotations

from aiohttp import web

from emulator.core import emulator_of
from emulator.faults import FaultRule
from emulator.truth import truth


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def state(request: web.Request) -> web.Response:
    return web.json_response(truth(emulator_of(request).estate))


async def reset(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    seed = await request.json() if request.can_read_body else None
    if seed is not None and not isinstance(seed, dict):
        return _bad("body must be an estate document")
    try:
        emu.reset(seed)
    except (KeyError, ValueError, TypeError) as exc:
        return _bad(f"invalid estate: {exc!r}")
    return web.json_response({"now": emu.clock.now().isoformat(), "clusters": len(emu.estate.clusters)})


async def clock(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    body = await request.json() if request.can_read_body else {}
    try:
        emu.clock.advance(float(body.get("advance_seconds", 0)))
    except (TypeError, ValueError) as exc:
        return _bad(str(exc))
    return web.json_response({"now": emu.clock.now().isoformat(), "timestamp": emu.clock.timestamp()})


async def faults_get(request: web.Request) -> web.Response:
    return web.json_response({"rules": [r.public() for r in emulator_of(request).faults.rules]})


async def faults_add(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    body = await request.json()
    specs = body.get("rules", [body]) if isinstance(body, dict) else body
    try:
        rules = [FaultRule.parse(spec) for spec in specs]
    except (TypeError, ValueError) as exc:
        return _bad(str(exc))
    emu.faults.rules.extend(rules)
    return web.json_response({"rules": [r.public() for r in rules]}, status=201)


async def faults_clear(request: web.Request) -> web.Response:
    emulator_of(request).faults.rules.clear()
    return web.Response(status=204)


async def counts(request: web.Request) -> web.Response:
    return web.json_response(dict(emulator_of(request).counts))


async def counts_clear(request: web.Request) -> web.Response:
    emulator_of(request).counts.clear()
    emulator_of(request).api_versions.clear()
    return web.Response(status=204)


async def api_versions(request: web.Request) -> web.Response:
    """`{"arm.get": {"2026-08-01": 3}, ...}`: the api-version each request carried, per route (cleared with the
    request counts)."""
    answer: dict[str, dict[str, int]] = {}
    for (route, version), n in sorted(emulator_of(request).api_versions.items()):
        answer.setdefault(route, {})[version] = n
    return web.json_response(answer)


async def canaries(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    return web.json_response({"secrets": [emu.estate.product_secret, *emu.estate.issued_secrets]})


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/_emulator/state", state, name="control.state")
    r.add_post("/_emulator/reset", reset, name="control.reset")
    r.add_post("/_emulator/clock", clock, name="control.clock")
    r.add_get("/_emulator/faults", faults_get, name="control.faults_get")
    r.add_post("/_emulator/faults", faults_add, name="control.faults_add")
    r.add_delete("/_emulator/faults", faults_clear, name="control.faults_clear")
    r.add_get("/_emulator/requests", counts, name="control.requests")
    r.add_delete("/_emulator/requests", counts_clear, name="control.requests_clear")
    r.add_get("/_emulator/api-versions", api_versions, name="control.api_versions")
    r.add_get("/_emulator/canaries", canaries, name="control.canaries")
