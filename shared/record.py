"""The rotation row: typed state a rotation's steps branch on (`Phase`, `RotationState`, `RotationRecord`).

Rows written before the state was typed packed the progress into one `step` string (`prove:3:1700000000`,
`applying:1700000000:2`, `verify:uncertain`, `cleanup:prove`); `RotationRecord.from_entity` converts them on read,
so a rotation in flight during an upgrade continues where it was.
"""

from __future__ import annotations

import enum
import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from azure.data.tables import TableEntity
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from shared import clock
from shared.messages import CredentialKind

ROTATION_PARTITION = "rotation"
Holder = Literal["application", "servicePrincipal"]

# Characters Table storage forbids in PartitionKey/RowKey.
_BAD_KEY = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_DATETIME_FIELDS = (
    "not_before",
    "observed_expiry",
    "created_at",
    "updated_at",
    "proof_started",
    "waiting_since",
    "added_at",
    "switched_at",
)


class RotationState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (RotationState.SUCCEEDED, RotationState.FAILED)


class Phase(enum.StrEnum):
    """Where a rotation is. What each phase means (handler, message step, clean-up rules) is the table in
    `shared.rotation.phases`."""

    START = "start"
    CREATE = "create"
    STORE = "store"
    PROVE = "prove"
    APPLY = "apply"
    VERIFY = "verify"
    FINISH = "finish"
    RETIRE = "retire"
    CLEANUP = "cleanup"
    DONE = "done"
    SKIPPED = "skipped"


def as_utc(value: datetime) -> datetime:
    """A plain tz-aware UTC datetime (also turns the SDK's TablesEntityDatetime into a datetime)."""
    value = value.astimezone(UTC)
    return datetime.combine(value.date(), value.time(), tzinfo=UTC)


def check_key(value: str, what: str = "key") -> str:
    if not value or len(value) > 512 or _BAD_KEY.search(value):
        raise ValueError(f"{what} must be 1-512 characters without / \\ # ? or control characters")
    return value


class RotationRecord(BaseModel):
    """One rotation's state. `etag` comes from the row's metadata and is not stored."""

    model_config = ConfigDict(validate_assignment=True, extra="ignore")

    rotation_id: str
    cluster_id: str
    kind: CredentialKind
    app_id: str | None = None
    holder: Holder | None = None
    state: RotationState = RotationState.PENDING
    phase: Phase = Phase.START
    proof_count: int = Field(default=0, ge=0)  # consecutive token requests Entra accepted
    proof_started: AwareDatetime | None = None  # when proving began (PROOF_TIMEOUT_SECONDS counts from here)
    apply_tries: int = Field(default=0, ge=0)  # resets sent whose answer was never seen
    reset_unanswered: bool = False  # a reset may have reached AKS unseen: the cluster may hold the new secret
    reset_accepted: bool = False  # AKS accepted a reset of this rotation once: some nodes may hold the new secret
    resends: int = Field(default=0, ge=0)  # resets sent again after an accepted one ended Failed/Canceled
    waiting_since: AwareDatetime | None = None  # since when the current wait (stopped, busy, operation) lasts
    wait_alerted: bool = False  # the current wait was alerted
    trouble_count: int = Field(default=0, ge=0)  # transient errors waited out in a row (finish/retire backoff)
    failed_phase: Phase | None = None  # the phase that failed (kept while cleaning up)
    new_key_id: str | None = None
    added_at: AwareDatetime | None = None  # when addPassword was last sent (Graph may not show its password at once)
    old_key_ids: list[str] = Field(default_factory=list)
    vault_version: str | None = None
    operation_url: str | None = None
    not_before: AwareDatetime | None = None
    switched_at: AwareDatetime | None = None  # when finish saw the cluster on the new secret (sign-in evidence)
    observed_expiry: AwareDatetime | None = None
    reason: str = ""
    failure_reason: str | None = None
    attempts: int = Field(default=0, ge=0)
    correlation_id: str = ""
    created_at: AwareDatetime = Field(default_factory=clock.now)
    updated_at: AwareDatetime = Field(default_factory=clock.now)
    etag: str | None = None

    @field_validator("rotation_id")
    @classmethod
    def _row_key(cls, value: str) -> str:
        return check_key(value, "rotation_id")

    @field_validator(*_DATETIME_FIELDS)
    @classmethod
    def _to_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else as_utc(value)

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    @property
    def cluster_may_hold_new(self) -> bool:
        """A reset of this rotation was accepted or went unanswered: some part of the cluster may hold the new
        secret, so nothing may remove it (only a deleted cluster lifts this)."""
        return self.reset_accepted or self.reset_unanswered

    @property
    def resubmittable(self) -> bool:
        """A later submit of the same credential starts a new rotation (the day's retry id) instead of being a
        duplicate: a failed one (the credential still expires) or a skipped one (not due then, maybe due now)."""
        return self.state is RotationState.FAILED or self.phase is Phase.SKIPPED

    @property
    def progress(self) -> str:
        """The phase as a person reads it (`prove 3`, `apply (unanswered reset)`)."""
        if self.phase is Phase.PROVE:
            return f"prove {self.proof_count}"
        if self.reset_unanswered and self.phase in (Phase.APPLY, Phase.VERIFY):
            return f"{self.phase} (unanswered reset)"
        return str(self.phase)

    def to_entity(self) -> dict[str, Any]:
        """The table row (without the ETag). `cluster_key` is the lower-cased cluster id, for queries."""
        entity: dict[str, Any] = self.model_dump(exclude={"rotation_id", "etag"})
        for name, value in entity.items():
            if isinstance(value, enum.Enum):
                entity[name] = value.value
        entity["old_key_ids"] = json.dumps(self.old_key_ids)
        entity["cluster_key"] = self.cluster_id.lower()
        entity["PartitionKey"] = ROTATION_PARTITION
        entity["RowKey"] = self.rotation_id
        return entity

    @classmethod
    def from_entity(cls, entity: TableEntity) -> RotationRecord:
        data = {k: v for k, v in entity.items() if k not in ("PartitionKey", "RowKey", "cluster_key")}
        data["rotation_id"] = entity["RowKey"]
        data["old_key_ids"] = json.loads(data.get("old_key_ids") or "[]")
        data["etag"] = entity.metadata.get("etag")
        packed = data.pop("step", None)
        if "phase" not in data and isinstance(packed, str):
            data.update(unpack_step(packed))
        return cls.model_validate(data)


def unpack_step(step: str) -> dict[str, Any]:
    """The typed fields of a row written with a packed `step` string (the version before typed state)."""
    head, _, rest = step.partition(":")
    parts = rest.split(":") if rest else []

    def number(index: int) -> int | None:
        try:
            return int(float(parts[index]))
        except (IndexError, ValueError):
            return None

    def started(index: int) -> datetime | None:
        value = number(index)
        return None if value is None else datetime.fromtimestamp(value, tz=UTC)

    if head == "prove":
        return {"phase": Phase.PROVE, "proof_count": number(0) or 0, "proof_started": started(1)}
    if head == "apply":
        return {"phase": Phase.APPLY, "proof_started": started(0)}
    if head == "applying":
        return {
            "phase": Phase.APPLY,
            "proof_started": started(0),
            "apply_tries": number(1) or 0,
            "reset_unanswered": True,
        }
    if head == "verify":
        return {"phase": Phase.VERIFY, "reset_unanswered": rest == "uncertain"}
    if head == "cleanup":
        failed = unpack_step(rest) if rest else {}
        return {"phase": Phase.CLEANUP, "failed_phase": failed.get("phase")}
    try:
        return {"phase": Phase(head)}
    except ValueError:
        return {"phase": Phase.START}
