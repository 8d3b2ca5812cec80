"""The HTTP front door: `GET /api/status` and `POST /api/rotations` (auth level FUNCTION).

Both answer JSON. A request body is validated exactly like a queue message (`shared.messages`); a rejected one
gets a 400 naming the problem and a correlation id, and is recorded like every other rejected input.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from typing import Any

from shared import clock, edge, rotation
from shared.aks import AuthorizationFailed, ClusterNotFound
from shared.caller import Caller, app_service_auth_in_front, http_caller
from shared.messages import InvalidInput, check_allowed, parse_rotation_request
from shared.migration.status import migration_status
from shared.settings import Settings
from shared.store import RotationStore

NEXT_EXPIRIES = 10
FAILED_SHOWN = 20


@dataclasses.dataclass(frozen=True)
class ApiResponse:
    status: int
    body: dict[str, Any]


async def status_summary(settings: Settings) -> ApiResponse:
    """Estate summary from the state table: counts by state, the nearest expiries, failed rotations."""
    async with RotationStore(settings) as store:
        await store.ensure()
        rows = await store.list()
    now = clock.now()
    upcoming = sorted((r for r in rows if not r.terminal and r.observed_expiry), key=lambda r: r.observed_expiry or now)
    failed = sorted((r for r in rows if r.state == "failed"), key=lambda r: r.updated_at, reverse=True)
    return ApiResponse(
        200,
        {
            "generatedAt": now.isoformat(),
            "rotations": dict(Counter(r.state for r in rows)),
            "migrations": await migration_status(settings),  # by stage reached (docs/migration.md)
            "nextExpiries": [
                {
                    "clusterId": r.cluster_id,
                    "kind": r.kind,
                    "expiresOn": r.observed_expiry.isoformat() if r.observed_expiry else None,
                    "state": r.state,
                    "step": r.progress,
                }
                for r in upcoming[:NEXT_EXPIRIES]
            ],
            "failed": [
                {"rotationId": r.rotation_id, "clusterId": r.cluster_id, "reason": r.failure_reason or ""}
                for r in failed[:FAILED_SHOWN]
            ],
        },
    )


async def request_rotation(settings: Settings, body: bytes, headers: Mapping[str, str] | None = None) -> ApiResponse:
    """Validate the body like a queue message, then take the same path as `aks-rotator rotate`, audited with the
    caller (`shared.caller`: the principal headers count only behind App Service authentication).

    400: invalid body or a subscription outside SUBSCRIPTION_ALLOWLIST; 404: no such cluster, or one the product
    cannot read (another tenant's or subscription's id); 409: the cluster has no secret to rotate. Each is recorded
    as a rejected input (logged with the caller) and changes nothing.
    """
    caller = http_caller(headers or {}, auth_in_front=app_service_auth_in_front())
    try:
        request = parse_rotation_request(body)
        if request.kind.value != "sp_secret":
            raise InvalidInput("only kind sp_secret can be requested over HTTP", "kind")
        check_allowed(settings, request.cluster_id)
        result = await rotation.rotate_now(settings, request.cluster_id, dry_run=False, caller=caller)
    except InvalidInput as problem:
        return await _rejected(settings, 400, problem, body, caller)
    except (ClusterNotFound, AuthorizationFailed):
        unknown = InvalidInput("cluster_id: no such cluster, or not one the rotator can read", "cluster_id")
        return await _rejected(settings, 404, unknown, body, caller)
    except ValueError as exc:  # rotate_now: the cluster uses a managed identity (nothing to rotate)
        return await _rejected(settings, 409, InvalidInput(f"cluster_id: {exc}", "cluster_id"), body, caller)
    status = 202 if result.status == "queued" else 200
    return ApiResponse(status, {k: v for k, v in dataclasses.asdict(result).items() if v is not None})


async def _rejected(settings: Settings, status: int, problem: InvalidInput, body: bytes, caller: Caller) -> ApiResponse:
    async with RotationStore(settings) as store:
        await store.ensure()
        correlation_id = await edge.reject(store, "http", problem, body, **caller.fields())
    return ApiResponse(status, {"error": problem.reason, "field": problem.field, "correlationId": correlation_id})
