"""Discovery's queue step: the due findings (`action="deferred"`), most urgent first, become rotations through
`shared.rotation.submit` (the one dedup + enqueue + record path), up to MAX_ROTATIONS_PER_RUN (urgent and expired
ones past it); a rotation already recorded is reported, not queued again."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, ResourceNotFoundError

from shared import clock
from shared.azure import product_credential
from shared.discovery.context import Scan
from shared.discovery.findings import Finding, urgency
from shared.messages import URGENT_REASONS, CredentialKind, InvalidInput, new_rotation_message
from shared.settings import Settings


def _message(finding: Finding, correlation_id: str) -> Any:
    assert finding.expires_on is not None and finding.reason is not None
    return new_rotation_message(
        cluster_id=finding.cluster_id,
        kind=CredentialKind(finding.kind),
        reason=finding.reason,
        app_id=finding.app_id if finding.kind == "sp_secret" else None,
        observed_expiry=finding.expires_on,
        correlation_id=correlation_id,
    )


async def _existing_rows(store: Any) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """(rotation id -> state, (cluster key, kind) -> id of the rotation still running), from one paged query."""
    try:
        rows = await store.list()
    except ResourceNotFoundError:  # the table does not exist yet (dry run before the first real run)
        return {}, {}
    states = {row.rotation_id: "resubmittable" if row.resubmittable else row.state for row in rows}
    active = {(row.cluster_id.lower(), row.kind): row.rotation_id for row in rows if not row.terminal}
    return states, active


async def queue_findings(
    run: Scan, findings: list[Finding], credential: AsyncTokenCredential, dry_run: bool, correlation_id: str
) -> list[Finding]:
    candidates = sorted(
        (i for i, f in enumerate(findings) if f.action == "deferred"), key=lambda i: urgency(findings[i])
    )
    if not candidates:
        return findings
    from shared import rotation  # late import: rotation imports a lot and is not needed for reporting
    from shared.queues import open_queues
    from shared.store import RotationStore

    out = list(findings)
    cap = run.settings.max_rotations_per_run
    queued = 0
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(RotationStore(run.settings, credential))
        queues = None
        if not dry_run:
            queues = await stack.enter_async_context(open_queues(run.settings, credential))
            await store.ensure()
            await queues.ensure()
        states, active = await _existing_rows(store)
        for position, index in enumerate(candidates, start=1):
            finding = out[index]
            try:
                message = _message(finding, correlation_id)
            except InvalidInput as exc:
                run.errors.append(f"{finding.cluster_name}: cannot build a rotation message ({exc})")
                out[index] = replace(finding, action="report_only", detail=str(exc))
                continue
            rid = message.rotation_id
            running = active.get((finding.cluster_id.lower(), finding.kind))
            retry = states.get(rid) == "resubmittable" and running is None  # submit retries it once a day
            if (rid in states and not retry) or running is not None:
                rid = running or rid
                state = states.get(rid)
                if state == "pending" and queues is not None:  # its first message may be lost: send it again
                    await rotation.resend_pending(store, queues, rid)
                detail = (
                    f"rotation {rid} failed: see `aks-rotator status --rotation {rid}`"
                    if state == "failed"
                    else f"rotation {rid} is {state}"
                    if state
                    else "another rotation of this credential kind is in progress on the cluster"
                )
                out[index] = replace(finding, action="already_queued", rotation_id=rid, detail=detail)
            elif queued >= cap and finding.reason not in URGENT_REASONS:
                # The blast radius never outlives a secret: urgent and expired credentials are queued past the cap.
                out[index] = replace(
                    finding,
                    action="deferred",
                    rotation_id=rid,
                    detail=f"blast radius: at most {cap} rotations are queued per run",
                )
            elif dry_run:
                queued += 1
                out[index] = replace(finding, action="would_queue", rotation_id=rid)
            else:
                try:
                    run.requests["rotation.submit"] += 1
                    result = await rotation.submit(run.settings, message, store=store, queues=queues)
                except (AzureError, OSError) as exc:
                    run.errors.append(f"queueing {finding.cluster_name} failed: {type(exc).__name__}")
                    out[index] = replace(finding, action="deferred", rotation_id=rid, detail="queueing failed")
                    continue
                if result.status == "queued":
                    queued += 1
                    detail = f"retry of failed rotation {rid}: {result.detail}" if retry else result.detail
                    out[index] = replace(finding, action="queued", rotation_id=result.rotation_id, detail=detail)
                else:
                    out[index] = replace(
                        finding, action="already_queued", rotation_id=result.rotation_id, detail=result.detail
                    )
            run.tick("queue", position, len(candidates))
    return out


async def queue_candidates(
    settings: Settings,
    candidates: list[Finding],
    *,
    dry_run: bool,
    correlation_id: str,
    credential: AsyncTokenCredential | None = None,
) -> tuple[list[Finding], list[str], dict[str, int]]:
    """The queue step over candidates collected elsewhere (the shards of one run): (settled findings, errors,
    requests), exactly as `scan` settles its own."""
    run = Scan(settings, clock.now(), None)
    async with contextlib.AsyncExitStack() as stack:
        if credential is None:
            credential = product_credential(settings)
            stack.push_async_callback(credential.close)
        settled = await queue_findings(run, candidates, credential, dry_run, correlation_id)
    return settled, run.errors, dict(run.requests)
