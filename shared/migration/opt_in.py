"""Migration opted into by a cluster tag, run unattended: the timer's scan submits one migration per tagged
service-principal cluster through the one submit path rotations use (`shared.rotation.submit`: the row before the
message; the worker acts only on messages whose row exists, docs/security.md). The worker then advances it
(`shared.migration.queued`). The tag is the only way in: the HTTP API cannot request a migration."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from shared.aks import ClusterInfo
from shared.cluster_tags import tag_set
from shared.messages import CredentialKind, RotationMessage, new_rotation_message

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

    from shared.rotation.submit import SubmitResult
    from shared.settings import Settings

MIGRATE_TAG = "aks-rotator-migrate"


def opted_in(cluster: ClusterInfo) -> bool:
    """A service-principal cluster (or a half-migrated one) carrying `aks-rotator-migrate=true`."""
    return bool(cluster.sp_client_id) and tag_set(cluster.tags, MIGRATE_TAG)


def migration_message(cluster: ClusterInfo, correlation_id: str) -> RotationMessage:
    """One migration per cluster and application: the id is deterministic, so daily scans dedup on it; a failed one
    stays failed (reason on_demand: the scan never retries it; a person acts, `migrate --execute`)."""
    assert cluster.sp_client_id is not None
    return new_rotation_message(
        cluster_id=cluster.id,
        kind=CredentialKind.MIGRATION,
        reason="on_demand",
        app_id=cluster.sp_client_id,
        correlation_id=correlation_id,
        generation="migration",
    )


async def submit_tagged(
    settings: Settings, clusters: Iterable[ClusterInfo], credential: AsyncTokenCredential, correlation_id: str
) -> list[SubmitResult]:
    """Submit a migration for every opted-in cluster among `clusters` (the scan's inventory)."""
    from shared.queues import open_queues
    from shared.rotation.submit import submit
    from shared.store import RotationStore

    tagged = [c for c in clusters if opted_in(c)]
    if not tagged:
        return []
    async with RotationStore(settings, credential) as store, open_queues(settings, credential) as queues:
        await store.ensure()
        await queues.ensure()
        return [
            await submit(settings, migration_message(c, correlation_id), store=store, queues=queues) for c in tagged
        ]
