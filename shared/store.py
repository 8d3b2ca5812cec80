"""Rotation rows (ETag-guarded) and the audit trail, in Azure Table storage.

* State table: one row per rotation, PartitionKey "rotation", RowKey = rotation_id. Writes after the first are
  conditional on the ETag read (`save()` raises `StaleRecord` when someone else wrote meanwhile).
* State table, partition "claim": one row per (cluster, credential kind) naming the rotation that owns it, created
  if absent (`claim()`): every way a rotation starts races through it, so exactly one rotation runs at a time.
* Audit table: PartitionKey = rotation_id, RowKey = zero-padded microsecond timestamp + random suffix, so a
  rotation's trail reads back in order. Partition "rejected" holds inbound payloads that failed validation.

Every query is a parameterised filter; user input is never concatenated into filter text. No secret values are
ever written here (the callers' duty; the audit `detail` and rejection `excerpt` must already be redacted).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableEntity, UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from shared import clock
from shared.azure import StorageResource, table_service
from shared.record import ROTATION_PARTITION, RotationRecord, RotationState, as_utc, check_key
from shared.settings import Settings

REJECTED_PARTITION = "rejected"
CLAIM_PARTITION = "claim"
# A claim whose rotation has no row: its submit stopped between claiming and writing the row (it writes the row
# right after claiming, before it queues anything); after this long nothing will, and the claim may be taken over.
CLAIM_ORPHAN_AFTER = timedelta(hours=1)
EXCERPT_LIMIT = 200
DETAIL_LIMIT = 8000  # characters; a table property holds at most 64 KiB

_AUDIT_RESERVED = frozenset(
    {"PartitionKey", "RowKey", "Timestamp", "odata", "rotation_id", "step", "outcome", "detail", "at", "etag"}
)


class StoreError(Exception):
    """Base class for store outcomes the caller is expected to handle."""


class AlreadyExists(StoreError):
    """`create()` found a row with that rotation id already (a duplicate message)."""

    def __init__(self, rotation_id: str) -> None:
        super().__init__(f"rotation {rotation_id!r} already exists")
        self.rotation_id = rotation_id


class StaleRecord(StoreError):
    """`save()` lost a race: the row changed (or vanished) since it was read. Re-read and decide again."""

    def __init__(self, rotation_id: str) -> None:
        super().__init__(f"rotation {rotation_id!r} was changed by someone else; re-read it")
        self.rotation_id = rotation_id


@dataclass(frozen=True)
class AuditRow:
    rotation_id: str
    step: str
    outcome: str
    detail: str
    at: datetime
    row_key: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejection:
    source: str
    reason: str
    correlation_id: str
    excerpt: str
    at: datetime
    row_key: str


class _Clock:
    """Strictly increasing microsecond timestamps within this process (audit RowKeys sort in write order)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            now = int(clock.now().timestamp() * 1_000_000)
            self._last = now if now > self._last else self._last + 1
            return self._last


_clock = _Clock()


def audit_row_key() -> tuple[str, datetime]:
    """(RowKey, time): 19-digit microseconds since the epoch + '-' + 8 random hex digits."""
    micros = _clock.next()
    at = datetime.fromtimestamp(micros / 1_000_000, tz=UTC)
    return f"{micros:019d}-{secrets.token_hex(4)}", at


def _property_value(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, datetime):
        return as_utc(value)
    return json.dumps(value, default=str, sort_keys=True)


class RotationStore(StorageResource):
    """Rotation rows and the audit trail. Use as an async context manager (closes the clients)."""

    def __init__(self, settings: Settings, credential: AsyncTokenCredential | None = None) -> None:
        super().__init__(settings, credential)
        self._service: TableServiceClient = table_service(settings, self._credential)
        self._state: TableClient = self._service.get_table_client(settings.state_table)
        self._audit: TableClient = self._service.get_table_client(settings.audit_table)

    def _clients(self) -> tuple[Any, ...]:
        return (self._state, self._audit, self._service)

    async def ensure(self) -> None:
        """Create the state and audit tables if they do not exist."""
        for client in (self._state, self._audit):
            with contextlib.suppress(ResourceExistsError):
                await client.create_table()

    # -- rotation rows ---------------------------------------------------------------------------------------
    async def get(self, rotation_id: str) -> RotationRecord | None:
        try:
            entity = await self._state.get_entity(ROTATION_PARTITION, check_key(rotation_id, "rotation_id"))
        except ResourceNotFoundError:
            return None
        return RotationRecord.from_entity(entity)

    async def create(self, record: RotationRecord) -> RotationRecord:
        """Insert a new row; `AlreadyExists` if the rotation id is taken. Returns the record with its ETag."""
        now = clock.now()
        stored = record.model_copy(update={"updated_at": now, "etag": None})
        try:
            meta = await self._state.create_entity(stored.to_entity())
        except ResourceExistsError:
            raise AlreadyExists(record.rotation_id) from None
        return stored.model_copy(update={"etag": meta.get("etag")})

    async def save(self, record: RotationRecord) -> RotationRecord:
        """Replace the row if it is unchanged since `record` was read; `StaleRecord` otherwise.

        Returns a copy with the new ETag and `updated_at`; `record` itself is left as it was.
        """
        if record.etag is None:
            raise ValueError("save() needs a record read from the store (it has no ETag); use create()")
        stored = record.model_copy(update={"updated_at": clock.now()})
        try:
            meta = await self._state.update_entity(
                stored.to_entity(),
                mode=UpdateMode.REPLACE,
                etag=record.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            raise StaleRecord(record.rotation_id) from None
        return stored.model_copy(update={"etag": meta.get("etag")})

    async def _query(self, conditions: builtins.list[str], parameters: dict[str, Any]) -> builtins.list[RotationRecord]:
        query = " and ".join(["PartitionKey eq @pk", *conditions])
        pager = self._state.query_entities(query, parameters={"pk": ROTATION_PARTITION, **parameters})
        return [RotationRecord.from_entity(entity) async for entity in pager]

    async def list(self, state: str | None = None, cluster_id: str | None = None) -> builtins.list[RotationRecord]:
        """Every rotation row (all pages), optionally only one state and/or one cluster (case-insensitive)."""
        conditions: builtins.list[str] = []
        parameters: dict[str, Any] = {}
        if state is not None:
            conditions.append("state eq @state")
            parameters["state"] = str(state)
        if cluster_id is not None:
            conditions.append("cluster_key eq @cluster")
            parameters["cluster"] = cluster_id.lower()
        return await self._query(conditions, parameters)

    async def active_for(self, cluster_id: str, kind: str) -> RotationRecord | None:
        """The non-terminal rotation of this kind for this cluster (the newest, should there be several)."""
        rows = await self._query(
            ["cluster_key eq @cluster", "kind eq @kind", "state ne @succeeded", "state ne @failed"],
            {
                "cluster": cluster_id.lower(),
                "kind": str(kind),
                "succeeded": str(RotationState.SUCCEEDED),
                "failed": str(RotationState.FAILED),
            },
        )
        return max(rows, key=lambda row: row.created_at, default=None)

    async def claim(self, cluster_id: str, kind: str, rotation_id: str) -> str | None:
        """Claim (cluster, kind) for `rotation_id`: None when it is ours now; else the rotation that holds it.

        Create-if-absent, and a conditional (ETag) takeover of a claim whose rotation ended (or never got a row,
        see CLAIM_ORPHAN_AFTER): of any number of concurrent submits exactly one wins."""
        key = claim_key(cluster_id, kind)
        entity = {
            "PartitionKey": CLAIM_PARTITION,
            "RowKey": key,
            "rotation_id": rotation_id,
            "claimed_at": clock.now(),
            "cluster_key": cluster_id.lower(),
            "kind": str(kind),
        }
        for _ in range(5):
            try:
                await self._state.create_entity(entity)
                return None
            except ResourceExistsError:
                pass
            try:
                current = await self._state.get_entity(CLAIM_PARTITION, key)
            except ResourceNotFoundError:
                continue
            holder = str(current.get("rotation_id", ""))
            row = await self.get(holder) if holder else None
            if row is not None:
                free = row.terminal
            else:
                claimed = current.get("claimed_at")
                free = not isinstance(claimed, datetime) or clock.now() - as_utc(claimed) > CLAIM_ORPHAN_AFTER
            if not free:
                return holder
            try:
                await self._state.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=current.metadata.get("etag"),
                    match_condition=MatchConditions.IfNotModified,
                )
                return None
            except (ResourceModifiedError, ResourceNotFoundError):
                continue  # another submit took it over first: look again
        raise StaleRecord(rotation_id)

    # -- audit trail -----------------------------------------------------------------------------------------
    async def _append(self, partition: str, properties: dict[str, Any]) -> tuple[str, datetime]:
        for _ in range(3):
            row_key, at = audit_row_key()
            try:
                await self._audit.create_entity({"PartitionKey": partition, "RowKey": row_key, "at": at, **properties})
                return row_key, at
            except ResourceExistsError:
                continue  # the same microsecond and suffix from another writer: draw again
        raise RuntimeError("could not allocate a unique audit row key")

    async def audit(self, rotation_id: str, step: str, outcome: str, detail: str, /, **fields: Any) -> AuditRow:
        """Append one audit row for a rotation. `detail` and `fields` must not contain secrets."""
        check_key(rotation_id, "rotation_id")
        if rotation_id == REJECTED_PARTITION:
            raise ValueError(f"{REJECTED_PARTITION!r} is reserved for rejected payloads")
        for name in fields:
            if name in _AUDIT_RESERVED or not name.isidentifier() or name.startswith("odata"):
                raise ValueError(f"audit field name {name!r} is reserved or not a valid property name")
        extra = {name: _property_value(value) for name, value in fields.items()}
        text = detail[:DETAIL_LIMIT]
        row_key, at = await self._append(rotation_id, {"step": step, "outcome": outcome, "detail": text, **extra})
        return AuditRow(
            rotation_id, step, outcome, text, at, row_key, {k: v for k, v in extra.items() if v is not None}
        )

    async def audit_log(self, rotation_id: str | None = None) -> builtins.list[AuditRow]:
        """A rotation's audit trail in write order; every rotation's (chronologically) when `rotation_id` is None."""
        if rotation_id is None:
            pager = self._audit.query_entities("PartitionKey ne @rejected", parameters={"rejected": REJECTED_PARTITION})
        else:
            pager = self._audit.query_entities(
                "PartitionKey eq @pk", parameters={"pk": check_key(rotation_id, "rotation_id")}
            )
        rows = [_audit_row(entity) async for entity in pager]
        rows.sort(key=lambda row: (row.row_key, row.rotation_id))
        return rows

    async def record_rejection(self, source: str, reason: str, correlation_id: str, excerpt: str) -> Rejection:
        """Record a rejected inbound payload. `excerpt` must already be redacted; it is cut to 200 characters."""
        properties = {
            "source": source[:200],
            "reason": reason[:DETAIL_LIMIT],
            "correlation_id": correlation_id[:200],
            "excerpt": excerpt[:EXCERPT_LIMIT],
        }
        row_key, at = await self._append(REJECTED_PARTITION, properties)
        return Rejection(at=at, row_key=row_key, **properties)

    async def rejections(self) -> builtins.list[Rejection]:
        """Every recorded rejection, oldest first."""
        pager = self._audit.query_entities("PartitionKey eq @pk", parameters={"pk": REJECTED_PARTITION})
        return [
            Rejection(
                source=str(entity.get("source", "")),
                reason=str(entity.get("reason", "")),
                correlation_id=str(entity.get("correlation_id", "")),
                excerpt=str(entity.get("excerpt", "")),
                at=as_utc(entity["at"]),
                row_key=str(entity["RowKey"]),
            )
            async for entity in pager
        ]


def claim_key(cluster_id: str, kind: str) -> str:
    """The claim's RowKey: cluster ids hold '/', which Table storage forbids in keys."""
    return hashlib.sha256(f"{cluster_id.lower()}\n{kind}".encode()).hexdigest()[:40]


def _audit_row(entity: TableEntity) -> AuditRow:
    known = {"PartitionKey", "RowKey", "step", "outcome", "detail", "at"}
    return AuditRow(
        rotation_id=str(entity["PartitionKey"]),
        step=str(entity.get("step", "")),
        outcome=str(entity.get("outcome", "")),
        detail=str(entity.get("detail", "")),
        at=as_utc(entity["at"]),
        row_key=str(entity["RowKey"]),
        fields={k: (as_utc(v) if isinstance(v, datetime) else v) for k, v in entity.items() if k not in known},
    )
