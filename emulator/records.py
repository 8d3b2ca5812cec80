"""The typed records the emulated world is made of: passwords, applications, clusters and their node pools,
vaults and secret versions, role assignments, AKS operations, and the emulator clock. Secret values are never
stored here except a Key Vault version's value (returned to authorised readers); passwords keep a SHA-256.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def secret_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_secret() -> str:
    """Entra-like client secret: 40 characters, with the 3-character hint as prefix (one urandom call: a
    100,000-cluster estate creates 110,000 of them at start-up)."""
    return secrets.token_urlsafe(30)


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class Clock:
    """Emulator time = real time + an offset that tests advance (`POST /_emulator/clock`)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def timestamp(self) -> float:
        return time.time() + self.offset

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp(), UTC)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.offset += seconds


@dataclass
class Password:
    key_id: str
    display_name: str | None
    start: datetime
    end: datetime
    hash: str
    hint: str
    created: float  # emulator timestamp; replication delay counts from here
    created_by: str = "seed"  # appId of the Graph caller, "seed", or "human" (a control-surface credential event)

    def current(self, now: datetime) -> bool:
        return self.start <= now < self.end

    def graph(self, secret_text: str | None = None) -> dict[str, Any]:
        return {
            "customKeyIdentifier": None,
            "displayName": self.display_name,
            "endDateTime": iso(self.end),
            "hint": self.hint,
            "keyId": self.key_id,
            "secretText": secret_text,
            "startDateTime": iso(self.start),
        }

    def truth(self) -> dict[str, Any]:
        return {
            "keyId": self.key_id,
            "displayName": self.display_name,
            "start": iso(self.start),
            "end": iso(self.end),
            "secretSha256": self.hash,
            "createdBy": self.created_by,
        }


@dataclass
class RemovedPassword:
    """A password that is gone, kept for the truth: who removed it and when (invariants judge removals)."""

    password: Password
    holder: str  # "application" | "servicePrincipal"
    removed_by: str
    removed_at: float

    def truth(self) -> dict[str, Any]:
        return {
            **self.password.truth(),
            "holder": self.holder,
            "removedBy": self.removed_by,
            "removedAt": iso(datetime.fromtimestamp(self.removed_at, UTC)),
        }


@dataclass
class PasswordPolicy:
    """The part of an app management policy that bites rotation."""

    max_lifetime_days: int | None = None
    block_addition: bool = False

    @property
    def is_set(self) -> bool:
        """Whether this policy restricts anything (an app without one falls back to the tenant default)."""
        return self.block_addition or self.max_lifetime_days is not None


@dataclass
class ServicePrincipal:
    object_id: str
    app_id: str
    display_name: str
    passwords: list[Password] = field(default_factory=list)
    owners: set[str] = field(default_factory=set)  # service principal object ids (Graph: servicePrincipal owners)


@dataclass
class Application:
    object_id: str
    app_id: str
    display_name: str
    owners: set[str] = field(default_factory=set)  # service principal object ids
    passwords: list[Password] = field(default_factory=list)
    password_limit: int | None = None
    policy: PasswordPolicy = field(default_factory=PasswordPolicy)
    sp: ServicePrincipal | None = None
    removed: list[RemovedPassword] = field(default_factory=list)
    # Graph read lag (mode `graph_read_lag_seconds`): reads show `lagged` (app, SP passwords) until `lag_until`.
    lagged: tuple[list[Password], list[Password]] | None = None
    lag_until: float = 0.0


@dataclass
class MaintenanceWindow:
    """A maintenance configuration: `default` uses `timeInWeek` (allowed UTC hours per weekday) and
    `notAllowedTime`; `aksManagedAutoUpgradeSchedule` / `aksManagedNodeOSUpgradeSchedule` use `maintenanceWindow`.
    Seed keys: `name`, `time_in_week` ([{day, hourSlots}]), `not_allowed_time` ([{start, end}]),
    `maintenance_window` (the ARM `maintenanceWindow` object verbatim)."""

    name: str
    time_in_week: list[dict[str, Any]]
    not_allowed_time: list[dict[str, Any]] = field(default_factory=list)
    maintenance_window: dict[str, Any] | None = None

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> MaintenanceWindow:
        return cls(
            name=spec["name"],
            time_in_week=list(spec.get("time_in_week", [])),
            not_allowed_time=list(spec.get("not_allowed_time", [])),
            maintenance_window=spec.get("maintenance_window"),
        )


@dataclass
class Holding:
    """One component's copy of the SP secret (the control plane or a node pool) and its outage so far."""

    key_id: str | None
    hash: str | None
    outage_seconds: float = 0.0
    accounted_until: float = 0.0


@dataclass
class NodePool:
    """A node pool: its kubelet holds its own copy of the SP secret until a reset reimages it."""

    name: str
    count: int
    holding: Holding
    kubelet_identity: bool = False  # this pool's kubelet moved to the managed identity (its node image upgrade)


@dataclass
class Cluster:
    subscription_id: str
    resource_group: str
    name: str
    location: str
    client_id: str  # appId, or "msi"
    identity_type: str  # "None" (SP) | "SystemAssigned" | "UserAssigned"
    tags: dict[str, str]
    cert_expiry: datetime
    kubernetes_version: str
    aad_profile: dict[str, Any] | None
    kubelet_identity: bool  # False after a switch to managed identity until node pools are upgraded
    maintenance: list[MaintenanceWindow]
    control_plane: Holding  # the control plane's copy of the SP secret (hash only)
    node_pools: list[NodePool]
    provisioning_state: str = "Succeeded"
    power_state: str = "Running"  # "Running" | "Stopped" (world event `stop` / `start`)
    identity_resource_id: str | None = None  # the control plane's user-assigned identity (emulator.identity_migration)
    kubelet_resource_id: str | None = None  # the kubelet identity requested with it

    @property
    def node_count(self) -> int:
        return sum(pool.count for pool in self.node_pools)

    @property
    def held_hash(self) -> str | None:
        return self.control_plane.hash

    @property
    def held_key_id(self) -> str | None:
        return self.control_plane.key_id

    def holdings(self) -> list[tuple[str, Holding]]:
        """The components that need the SP secret: the control plane unless it runs on a managed identity
        (`identity_type` not "None"), and every node pool unless kubelet runs on a managed identity."""
        if self.client_id == "msi":
            return []
        parts: list[tuple[str, Holding]] = []
        if self.identity_type == "None":
            parts.append(("controlPlane", self.control_plane))
        if not self.kubelet_identity:
            parts += [(pool.name, pool.holding) for pool in self.node_pools if not pool.kubelet_identity]
        return parts

    @property
    def outage_seconds(self) -> float:
        """The worst component's outage (each component is accounted on its own)."""
        return max((h.outage_seconds for _, h in self.holdings()), default=0.0)

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.ContainerService/managedClusters/{self.name}"
        )


@dataclass
class SecretVersion:
    version: str
    value_hash: str
    value: str  # Key Vault returns values to authorised readers; never exposed by truth()
    content_type: str | None
    tags: dict[str, str]
    enabled: bool
    not_before: int | None
    expires: int | None
    created: int
    updated: int


@dataclass
class DeletedSecret:
    """A soft-deleted secret: all its versions, recoverable until purged (or `scheduled_purge`)."""

    versions: list[SecretVersion]
    deleted: int
    scheduled_purge: int


@dataclass
class Vault:
    name: str
    secrets: dict[str, list[SecretVersion]] = field(default_factory=dict)
    deleted: dict[str, DeletedSecret] = field(default_factory=dict)


@dataclass
class RoleAssignment:
    principal: str  # appId of the caller
    scope: str  # ARM scope, lower-cased prefix match
    actions: tuple[str, ...]


@dataclass
class Operation:
    """An AKS long-running operation (reset / rotate), finishing at `done_at` emulator time.

    `apply(estate, cluster, at)` runs once when the operation completes (at emulator time `at`) and returns None
    on success or `(code, message)` to fail it. Nothing secret is kept here (a reset keeps only a hash).
    """

    id: str
    cluster_id: str
    location: str
    subscription_id: str
    kind: str
    started: float
    done_at: float
    fail_message: str | None
    apply: Any  # callable applied once when the operation completes successfully
    status: str = "InProgress"
    fail_code: str = "InternalOperationError"
    ended: float | None = None
    running_state: str = "Updating"  # the cluster's provisioningState while this runs
    secret: tuple[str, str] | None = None  # (hash, keyId) a reset hands the cluster
    fail_details: list[dict[str, str]] = field(default_factory=list)
    retries_left: int = 0  # AKS retries a failed reset this many times (mode `aks_retries_failed_reset`)
