"""Status views of rotations (the CLI's `status`, the HTTP API's `GET /api/status`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from shared.azure import product_credential
from shared.record import RotationRecord
from shared.settings import Settings
from shared.store import AuditRow, RotationStore


@dataclass(frozen=True)
class AuditView:
    at: datetime
    step: str
    outcome: str
    detail: str


@dataclass(frozen=True)
class RotationView:
    rotation_id: str
    cluster_id: str
    kind: str
    app_id: str | None
    state: str
    progress: str
    reason: str
    failure_reason: str | None
    not_before: datetime | None
    new_key_id: str | None
    created_at: datetime
    updated_at: datetime
    audit: tuple[AuditView, ...] = ()


@dataclass(frozen=True)
class ForeignKept:
    """A password the product did not create, left to expire by a retire (audit `kept_foreign`)."""

    key_id: str
    app_id: str
    cluster_id: str
    ends: datetime | None
    reason: str
    at: datetime


async def foreign_left(settings: Settings, now: datetime) -> list[ForeignKept]:
    """Foreign passwords left to expire that have not expired yet, the latest report per key (soonest end first)."""
    credential = product_credential(settings)
    try:
        async with RotationStore(settings, credential) as store:
            await store.ensure()
            rows = {r.rotation_id: r for r in await store.list()}
            trail = [a for a in await store.audit_log() if a.outcome == "kept_foreign"]
    finally:
        await credential.close()
    latest: dict[str, ForeignKept] = {}
    for entry in trail:
        row = rows.get(entry.rotation_id)
        ends = entry.fields.get("ends")
        key = str(entry.fields.get("key_id", "")).lower()
        if not key or (isinstance(ends, datetime) and ends <= now):
            continue
        latest[key] = ForeignKept(
            key_id=key,
            app_id=str(entry.fields.get("app_id") or (row.app_id if row else "") or ""),
            cluster_id=row.cluster_id if row else "",
            ends=ends if isinstance(ends, datetime) else None,
            reason=entry.detail,
            at=entry.at,
        )
    return sorted(latest.values(), key=lambda f: (f.ends is None, f.ends or now, f.key_id))


async def status(settings: Settings, rotation_id: str | None = None) -> list[RotationView]:
    """Rotation rows (newest first); with `rotation_id`, that rotation with its audit trail."""
    credential = product_credential(settings)
    try:
        async with RotationStore(settings, credential) as store:
            await store.ensure()
            if rotation_id is not None:
                row = await store.get(rotation_id)
                rows = [row] if row is not None else []
                trail = await store.audit_log(rotation_id) if row is not None else []
            else:
                rows = await store.list()
                trail = []
    finally:
        await credential.close()
    rows.sort(key=lambda r: r.created_at, reverse=True)
    return [view(r, trail if rotation_id else []) for r in rows]


def view(row: RotationRecord, trail: Sequence[AuditRow] = ()) -> RotationView:
    return RotationView(
        rotation_id=row.rotation_id,
        cluster_id=row.cluster_id,
        kind=str(row.kind),
        app_id=row.app_id,
        state=str(row.state),
        progress=row.progress,
        reason=row.reason,
        failure_reason=row.failure_reason,
        not_before=row.not_before,
        new_key_id=row.new_key_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        audit=tuple(AuditView(a.at, a.step, a.outcome, a.detail) for a in trail),
    )
