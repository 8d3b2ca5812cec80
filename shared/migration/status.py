"""Migration progress for `GET /api/status`: the migrations the product ran, by the stage their audit trail
reached (a range query over the audit table's `migration-` partitions; the scan counts every cluster instead)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables.aio import TableClient, TableServiceClient

from shared.azure import StorageResource, table_service
from shared.migration.plan import Stage
from shared.settings import Settings

CLUSTER_PREFIX = "migration-"
APP_PREFIX = "migration-app-"
FAILED = "failed"


class MigrationTrails(StorageResource):
    def __init__(self, settings: Settings, credential: AsyncTokenCredential | None = None) -> None:
        super().__init__(settings, credential)
        self._service: TableServiceClient = table_service(settings, self._credential)
        self._audit: TableClient = self._service.get_table_client(settings.audit_table)

    def _clients(self) -> tuple[Any, ...]:
        return (self._audit, self._service)

    async def progress(self) -> dict[str, int]:
        """Migrations per stage reached, plus `failed` for those whose last row is a failure."""
        rows: dict[str, list[tuple[str, str, str]]] = {}
        query = "PartitionKey ge @low and PartitionKey lt @high"
        try:
            async for entity in self._audit.query_entities(
                query, parameters={"low": CLUSTER_PREFIX, "high": "migration."}
            ):
                key = str(entity["PartitionKey"])
                if not key.startswith(APP_PREFIX):
                    rows.setdefault(key, []).append(
                        (str(entity["RowKey"]), str(entity["step"]), str(entity["outcome"]))
                    )
        except ResourceNotFoundError:
            rows = {}
        counts: Counter[str] = Counter({s.value: 0 for s in Stage} | {FAILED: 0})
        for trail in rows.values():
            trail.sort()
            steps = {(step, outcome) for _, step, outcome in trail}
            if trail[-1][2] == FAILED:
                counts[FAILED] += 1
            elif ("verify", "succeeded") in steps:
                counts[Stage.MANAGED_IDENTITY.value] += 1
            elif ("switch", "succeeded") in steps:
                counts[Stage.CONTROL_PLANE_ON_IDENTITY.value] += 1
            else:
                counts[Stage.SERVICE_PRINCIPAL.value] += 1
        return dict(counts)


async def migration_status(settings: Settings) -> dict[str, int]:
    async with MigrationTrails(settings) as trails:
        return await trails.progress()
