"""The one way a rotation starts (discovery, Key Vault events, the HTTP API, the CLI): dedup, record, queue."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from shared import clock
from shared.aks import AksClient
from shared.azure import ARM_AUDIENCE, product_credential
from shared.caller import Caller, token_caller
from shared.credentials import passwords
from shared.graph import GraphOps
from shared.logs import log_event
from shared.messages import (
    CredentialKind,
    RotationMessage,
    new_correlation_id,
    new_rotation_message,
    parse_cluster_id,
    rotation_id_for,
)
from shared.queues import RotationQueues, open_queues
from shared.record import RotationRecord, RotationState
from shared.settings import Settings
from shared.store import AlreadyExists, RotationStore, StaleRecord

log = logging.getLogger("shared.rotation")

RETRIED_REASONS = frozenset({"due", "urgent", "expired", "keyvault_event"})
# A pending row no delivery has touched for this long lost its first message (see `resend_if_unsent`). Well above
# the queue's usual latency; a copy sent to a row whose message was only slow is harmless (it supersedes it).
UNSENT_AFTER = timedelta(minutes=30)
Status = Literal["queued", "duplicate", "already_active", "dry_run"]


@dataclass(frozen=True)
class SubmitResult:
    rotation_id: str
    cluster_id: str
    kind: str
    status: Status
    detail: str
    message_id: str | None = None


def retry_id(message: RotationMessage, now: datetime) -> str:
    """The id of the day's retry of a failed or skipped rotation: deterministic, so scans and events dedup on it."""
    generation = f"retry-{now.date().isoformat()}-of-{message.rotation_id}"
    return rotation_id_for(message.cluster_id, message.kind, message.app_id, generation)


async def submit(
    settings: Settings,
    message: RotationMessage,
    *,
    store: RotationStore | None = None,
    queues: RotationQueues | None = None,
    caller: Caller | None = None,
) -> SubmitResult:
    """Dedup (by rotation id, then one rotation per cluster and kind: the claim), record, queue.

    The row is written before its message is sent: the worker acts only on a message whose rotation row exists
    (`machine._deliver`), so a message nobody submitted changes nothing. A crash between the two leaves a pending
    row without a message; the next submit of the same cluster and kind (the daily scan's included) sends it again
    (`resend_if_unsent`). `caller` (an on-demand request) goes into the audit row of every outcome.
    """
    async with contextlib.AsyncExitStack() as stack:
        if store is None or queues is None:
            credential = product_credential(settings)
            stack.push_async_callback(credential.close)
            if store is None:
                store = await stack.enter_async_context(RotationStore(settings, credential))
                await store.ensure()
            if queues is None:
                queues = await stack.enter_async_context(open_queues(settings, credential))
                await queues.ensure()
        kind = message.kind.value
        existing = await store.get(message.rotation_id)
        if existing is not None and existing.resubmittable and message.reason in RETRIED_REASONS:
            # A failed rotation alerted (the credential still expires), or a skipped one was not due then (it may
            # be now): try again, at most once per UTC day.
            message = message.model_copy(update={"rotation_id": retry_id(message, clock.now())})
            existing = await store.get(message.rotation_id)

        async def result(status: Status, detail: str, message_id: str | None = None) -> SubmitResult:
            if caller is not None or status == "queued":
                await store.audit(
                    message.rotation_id,
                    "submit",
                    status,
                    detail,
                    correlation_id=message.correlation_id,
                    **(caller.fields() if caller else {}),
                )
            return SubmitResult(message.rotation_id, message.cluster_id, kind, status, detail, message_id)

        if existing is not None:
            if await resend_if_unsent(store, queues, existing):
                return await result("duplicate", "rotation already pending: its message was sent again")
            return await result("duplicate", f"rotation already {existing.state} at {existing.phase}")
        active = await store.active_for(message.cluster_id, kind)  # also rows from before claims existed
        holder = active.rotation_id if active is not None else None
        if holder is None:
            holder = await store.claim(message.cluster_id, kind, message.rotation_id)
        if holder == message.rotation_id:
            return await result("duplicate", "raced another submit")
        if holder is not None:
            held = active if active is not None else await store.get(holder)
            if held is not None:
                await resend_if_unsent(store, queues, held)
            return await result("already_active", f"rotation {holder} of this cluster is in progress")
        try:
            await store.create(record_for(message))
        except AlreadyExists:
            return await result("duplicate", "raced another submit")
        message_id = await queues.send(message.to_json())
        return await result("queued", f"reason {message.reason}", message_id)


async def resend_if_unsent(store: RotationStore, queues: RotationQueues, row: RotationRecord) -> bool:
    """Send the first message of a rotation that no delivery has touched for UNSENT_AFTER (its submit stopped
    between writing the row and sending; or the message is just slow: then the copy sent here supersedes it).

    As everywhere (`delivery` module docstring) the message is sent before the row is saved, with the next attempt
    number, so exactly one of the two copies is live."""
    if row.state is not RotationState.PENDING or clock.now() - row.updated_at < UNSENT_AFTER:
        return False
    attempt = row.attempts + 1
    await queues.send(message_for(row, attempt).to_json())
    try:
        await store.save(row.model_copy(update={"attempts": attempt}))
    except StaleRecord:
        return True  # a delivery started meanwhile: the copy is a duplicate, harmless as every duplicate is
    await store.audit(row.rotation_id, "submit", "resent", f"no delivery since {row.updated_at:%Y-%m-%d %H:%M} UTC")
    return True


async def resend_pending(store: RotationStore, queues: RotationQueues, rotation_id: str) -> bool:
    """`resend_if_unsent` by rotation id (the scan knows the ids of the rotations in progress)."""
    row = await store.get(rotation_id)
    return row is not None and await resend_if_unsent(store, queues, row)


def record_for(message: RotationMessage) -> RotationRecord:
    """The row `submit` writes before it sends `message`: what the rotation is, decided here, not by a message."""
    return RotationRecord(
        rotation_id=message.rotation_id,
        cluster_id=message.cluster_id,
        kind=message.kind,
        app_id=message.app_id,
        observed_expiry=message.observed_expiry,
        reason=message.reason,
        correlation_id=message.correlation_id,
        attempts=message.attempt,
    )


def message_for(row: RotationRecord, attempt: int) -> RotationMessage:
    """The first-step message of a recorded rotation (`record_for` the other way round)."""
    return RotationMessage.model_validate(
        {
            "rotation_id": row.rotation_id,
            "cluster_id": row.cluster_id,
            "kind": row.kind,
            "app_id": row.app_id,
            "observed_expiry": row.observed_expiry,
            "reason": row.reason,
            "correlation_id": row.correlation_id or new_correlation_id(),
            "attempt": attempt,
        }
    )


async def rotate_now(
    settings: Settings, cluster_id: str, *, dry_run: bool, caller: Caller | None = None
) -> SubmitResult:
    """On demand (`aks-rotator rotate`, `POST /api/rotations`): rotate the cluster's service-principal secret now
    (one per day; the maintenance window still holds unless the key the cluster holds is urgent). Audited and logged
    with `caller`; None: whoever this process signs in as (the CLI), from its access token."""
    parse_cluster_id(cluster_id)  # InvalidInput (a ValueError) for anything else
    credential = product_credential(settings)
    try:
        if caller is None:
            caller = token_caller((await credential.get_token(f"{ARM_AUDIENCE}/.default")).token)
        async with AksClient(settings, credential) as aks, GraphOps(settings, credential) as graph:
            cluster = await aks.get_cluster(cluster_id)
            if cluster.sp_client_id is None:
                raise ValueError("the cluster uses a managed identity: there is no secret to rotate")
            found = await graph.lookup_apps([cluster.sp_client_id])
        creds = found.get(cluster.sp_client_id.lower())
        ends = [h.password.end for h in passwords(creds)] if creds else []
        expiry = min((e for e in ends if e is not None), default=None)
        message = new_rotation_message(
            cluster_id=cluster.id, kind=CredentialKind.SP_SECRET, reason="on_demand", app_id=cluster.sp_client_id
        )
        message = message.model_copy(update={"observed_expiry": expiry})
        if dry_run:
            when = f"; earliest password expiry {expiry:%Y-%m-%d}" if expiry else ""
            result = SubmitResult(
                message.rotation_id,
                cluster.id,
                message.kind.value,
                "dry_run",
                f"would rotate the secret of application {cluster.sp_client_id}{when}",
            )
        else:
            result = await submit(settings, message, caller=caller)
    finally:
        await credential.close()
    log_event(
        log,
        logging.INFO,
        "rotation.requested",
        f"on-demand rotation requested by {caller.name}: {result.status}",
        rotation_id=result.rotation_id,
        cluster_id=result.cluster_id,
        status=result.status,
        correlation_id=message.correlation_id,
        **caller.fields(),
    )
    return result
