"""The one way a rotation starts (discovery, Key Vault events, the HTTP API, the CLI): dedup, queue, record."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from shared import clock
from shared.aks import AksClient
from shared.azure import product_credential
from shared.credentials import passwords
from shared.graph import GraphOps
from shared.messages import CredentialKind, RotationMessage, new_rotation_message, parse_cluster_id, rotation_id_for
from shared.queues import RotationQueues, open_queues
from shared.rotation.machine import record_for
from shared.settings import Settings
from shared.store import AlreadyExists, RotationStore

RETRIED_REASONS = frozenset({"due", "urgent", "expired", "keyvault_event"})


@dataclass(frozen=True)
class SubmitResult:
    rotation_id: str
    cluster_id: str
    kind: str
    status: Literal["queued", "duplicate", "already_active", "dry_run"]
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
) -> SubmitResult:
    """Dedup (by rotation id, then one rotation per cluster and kind: the claim), queue, record."""
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
        if existing is not None:
            return SubmitResult(
                message.rotation_id,
                message.cluster_id,
                kind,
                "duplicate",
                f"rotation already {existing.state} at {existing.phase}",
            )
        active = await store.active_for(message.cluster_id, kind)  # also rows from before claims existed
        holder = active.rotation_id if active is not None else None
        if holder is None:
            holder = await store.claim(message.cluster_id, kind, message.rotation_id)
        if holder == message.rotation_id:
            return SubmitResult(message.rotation_id, message.cluster_id, kind, "duplicate", "raced another submit")
        if holder is not None:
            return SubmitResult(
                message.rotation_id,
                message.cluster_id,
                kind,
                "already_active",
                f"rotation {holder} of this cluster is in progress",
            )
        # Queue first, then record: a crash in between leaves a message whose worker creates the row.
        message_id = await queues.send(message.to_json())
        try:
            await store.create(record_for(message))
        except AlreadyExists:
            return SubmitResult(message.rotation_id, message.cluster_id, kind, "duplicate", "raced another submit")
        await store.audit(
            message.rotation_id, "submit", "queued", f"reason {message.reason}", correlation_id=message.correlation_id
        )
        return SubmitResult(
            message.rotation_id, message.cluster_id, kind, "queued", f"reason {message.reason}", message_id
        )


async def rotate_now(settings: Settings, cluster_id: str, *, dry_run: bool) -> SubmitResult:
    """On demand (`aks-rotator rotate`): rotate the cluster's service-principal secret now (one per day)."""
    parse_cluster_id(cluster_id)  # InvalidInput (a ValueError) for anything else
    credential = product_credential(settings)
    try:
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
            return SubmitResult(
                message.rotation_id,
                cluster.id,
                message.kind.value,
                "dry_run",
                f"would rotate the secret of application {cluster.sp_client_id}{when}",
            )
        return await submit(settings, message)
    finally:
        await credential.close()
