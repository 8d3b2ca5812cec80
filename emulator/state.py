"""The emulated tenant: applications, service principals, clusters, vaults, role assignments, and the clock.

Everything lives in memory. Secret values are never stored: a password credential keeps a SHA-256 of its secret,
which is all the token endpoint needs to accept or refuse it. `truth()` is what tests judge the product by.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# The product's custom roles, as infra/ grants them with certificate handling on (the default role plus the opt-in
# certificate role): the estates give the product exactly these actions.
ROTATOR_ARM_ACTIONS: tuple[str, ...] = tuple(
    action
    for name in ("rotator-role-actions.json", "rotator-cert-role-actions.json")
    for action in json.loads((Path(__file__).resolve().parent.parent / "infra" / "app" / name).read_text())
)


def secret_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_secret() -> str:
    """Entra-like client secret: 40 characters, with the 3-character hint as prefix."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789~._-"
    return "".join(secrets.choice(alphabet) for _ in range(40))


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
class Cluster:
    subscription_id: str
    resource_group: str
    name: str
    location: str
    client_id: str  # appId, or "msi"
    identity_type: str  # "None" (SP) | "SystemAssigned" | "UserAssigned"
    tags: dict[str, str]
    node_count: int
    cert_expiry: datetime
    kubernetes_version: str
    aad_profile: dict[str, Any] | None
    kubelet_identity: bool  # False after a switch to managed identity until node pools are upgraded
    maintenance: list[MaintenanceWindow]
    held_hash: str | None  # hash of the SP secret the cluster holds
    held_key_id: str | None
    provisioning_state: str = "Succeeded"
    outage_seconds: float = 0.0
    accounted_until: float = 0.0

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
class Vault:
    name: str
    secrets: dict[str, list[SecretVersion]] = field(default_factory=dict)


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


class Estate:
    """The whole emulated world, rebuilt from a seed document by `reset`."""

    def __init__(self, seed: dict[str, Any], clock: Clock) -> None:
        self.seed = seed
        self.clock = clock
        self.rng = random.Random(seed.get("random_seed", 7))
        self.tenant_id: str = seed["tenant_id"]
        product = seed["product"]
        self.product_app_id: str = product["app_id"]
        self.product_secret: str = product["secret"]
        self.subscriptions: dict[str, dict[str, Any]] = {s["id"]: s for s in seed.get("subscriptions", [])}
        self.applications: dict[str, Application] = {}  # by appId
        self.clusters: dict[str, Cluster] = {}  # by lower-cased resource id
        self.vaults: dict[str, Vault] = {v["name"]: Vault(v["name"]) for v in seed.get("vaults", [])}
        self.role_assignments: list[RoleAssignment] = []
        self.graph_roles: dict[str, set[str]] = {k: set(v) for k, v in seed.get("graph_app_roles", {}).items()}
        self.vault_roles: dict[tuple[str, str], set[str]] = {}
        self.operations: dict[str, Operation] = {}
        lro = seed.get("lro", {})
        self.lro_base_seconds: float = float(lro.get("base_seconds", 2))
        self.lro_per_node_seconds: float = float(lro.get("per_node_seconds", 0.5))
        self.replication_seconds: float = float(seed.get("replication_seconds", 0))
        self.issued_secrets: list[str] = []  # every secret value handed out: the canary list for tests
        self._load(seed)

    # -- loading ---------------------------------------------------------------------------------------------
    def _password(self, spec: dict[str, Any], now: datetime) -> tuple[Password, str]:
        secret = spec.get("secret") or new_secret()
        self.issued_secrets.append(secret)
        start = parse_time(spec["start"]) if "start" in spec else now - timedelta(days=365)
        if "end" in spec:
            end = parse_time(spec["end"])
        else:
            end = now + timedelta(days=float(spec.get("expires_in_days", 365)))
        pw = Password(
            key_id=spec.get("key_id") or str(uuid.uuid4()),
            display_name=spec.get("display_name"),
            start=start,
            end=end,
            hash=secret_hash(secret),
            hint=secret[:3],
            created=self.clock.timestamp() - 86400 * 365,
        )
        return pw, secret

    def _load(self, seed: dict[str, Any]) -> None:
        now = self.clock.now()
        product_app = Application(
            object_id=str(uuid.uuid5(uuid.NAMESPACE_URL, "app:" + self.product_app_id)),
            app_id=self.product_app_id,
            display_name=seed["product"].get("display_name", "aks-credential-rotator"),
        )
        pw, _ = self._password({"secret": self.product_secret, "expires_in_days": 3650}, now)
        product_app.passwords.append(pw)
        product_app.sp = ServicePrincipal(
            object_id=seed["product"].get("sp_object_id")
            or str(uuid.uuid5(uuid.NAMESPACE_URL, "sp:" + self.product_app_id)),
            app_id=self.product_app_id,
            display_name=product_app.display_name,
        )
        self.applications[self.product_app_id] = product_app
        secrets_by_key: dict[str, str] = {}
        for spec in seed.get("applications", []):
            app = Application(
                object_id=spec.get("object_id") or str(uuid.uuid4()),
                app_id=spec["app_id"],
                display_name=spec.get("display_name", spec["app_id"]),
                owners=set(spec.get("owners", [])),
                password_limit=spec.get("password_limit"),
                policy=PasswordPolicy(
                    max_lifetime_days=spec.get("policy", {}).get("max_password_lifetime_days"),
                    block_addition=bool(spec.get("policy", {}).get("block_password_addition", False)),
                ),
            )
            if spec.get("owned_by_product", True):
                app.owners.add(self.product_sp.object_id)
            for pspec in spec.get("password_credentials", []):
                pw, secret = self._password(pspec, now)
                app.passwords.append(pw)
                secrets_by_key[pw.key_id] = secret
            sp_spec = spec.get("service_principal", {})
            app.sp = ServicePrincipal(
                object_id=sp_spec.get("object_id") or str(uuid.uuid4()),
                app_id=app.app_id,
                display_name=app.display_name,
                owners=set(sp_spec.get("owners", [])),
            )
            if spec.get("owned_by_product", True):
                app.sp.owners.add(self.product_sp.object_id)
            for pspec in sp_spec.get("password_credentials", []):
                pw, secret = self._password(pspec, now)
                app.sp.passwords.append(pw)
                secrets_by_key[pw.key_id] = secret
            self.applications[app.app_id] = app
        for spec in seed.get("clusters", []):
            held_key = spec.get("held_key_id")
            held_hash = secret_hash(secrets_by_key[held_key]) if held_key in secrets_by_key else None
            if held_key is None and spec.get("client_id", "msi") != "msi":
                owner = self.applications.get(spec["client_id"])
                first = self.all_passwords(owner)[0] if owner and self.all_passwords(owner) else None
                if first is not None:
                    held_key, held_hash = first.key_id, first.hash
            cluster = Cluster(
                subscription_id=spec["subscription_id"],
                resource_group=spec["resource_group"],
                name=spec["name"],
                location=spec.get("location", "westeurope"),
                client_id=spec.get("client_id", "msi"),
                identity_type=spec.get(
                    "identity_type", "None" if spec.get("client_id", "msi") != "msi" else "SystemAssigned"
                ),
                tags=dict(spec.get("tags", {})),
                node_count=int(spec.get("node_count", 3)),
                cert_expiry=parse_time(spec["cert_expiry"])
                if "cert_expiry" in spec
                else now + timedelta(days=float(spec.get("cert_expires_in_days", 3650))),
                kubernetes_version=spec.get("kubernetes_version", "1.33.2"),
                aad_profile=spec.get("aad_profile"),
                kubelet_identity=bool(spec.get("kubelet_identity", spec.get("client_id", "msi") == "msi")),
                maintenance=[MaintenanceWindow.from_spec(m) for m in spec.get("maintenance", [])],
                held_hash=held_hash,
                held_key_id=held_key,
                accounted_until=self.clock.timestamp(),
            )
            self.clusters[cluster.id.lower()] = cluster
        for ra in seed.get("role_assignments", []):
            self.role_assignments.append(
                RoleAssignment(ra["principal"], ra["scope"].lower().rstrip("/"), tuple(ra.get("actions", ["*"])))
            )
        for vr in seed.get("vault_roles", []):
            self.vault_roles.setdefault((vr["principal"], vr["vault"]), set()).add(vr["role"])

    # -- lookups ---------------------------------------------------------------------------------------------
    @property
    def product_sp(self) -> ServicePrincipal:
        sp = self.applications[self.product_app_id].sp
        assert sp is not None
        return sp

    def all_passwords(self, app: Application) -> list[Password]:
        return app.passwords + (app.sp.passwords if app.sp else [])

    def app_by_object_id(self, object_id: str) -> Application | None:
        for app in self.applications.values():
            if app.object_id == object_id:
                return app
        return None

    def sp_by_object_id(self, object_id: str) -> ServicePrincipal | None:
        for app in self.applications.values():
            if app.sp is not None and app.sp.object_id == object_id:
                return app.sp
        return None

    def principal_object_id(self, app_id: str) -> str | None:
        app = self.applications.get(app_id)
        return app.sp.object_id if app and app.sp else None

    def clusters_of_app(self, app_id: str) -> list[Cluster]:
        return [c for c in self.clusters.values() if c.client_id == app_id]

    # -- Entra's view of a secret ----------------------------------------------------------------------------
    def find_password(self, app_id: str, secret: str) -> Password | None:
        app = self.applications.get(app_id)
        if app is None:
            return None
        digest = secret_hash(secret)
        for pw in self.all_passwords(app):
            if secrets.compare_digest(pw.hash, digest):
                return pw
        return None

    def replicated(self, pw: Password, delay_seconds: float) -> bool:
        """Intermittent replication: refusal probability falls linearly to 0 over the delay."""
        if delay_seconds <= 0:
            return True
        elapsed = self.clock.timestamp() - pw.created
        if elapsed >= delay_seconds:
            return True
        return self.rng.random() < elapsed / delay_seconds

    def hash_valid(self, app_id: str, digest: str | None) -> bool:
        """Would Entra accept the secret with this hash right now (ignoring replication)?"""
        app = self.applications.get(app_id)
        if app is None or digest is None:
            return False
        now = self.clock.now()
        return any(pw.hash == digest and pw.current(now) for pw in self.all_passwords(app))

    # -- outage accounting -----------------------------------------------------------------------------------
    def account(self, cluster: Cluster, at: float | None = None) -> None:
        """Add to outage_seconds the part of [accounted_until, now] during which the held secret was invalid.

        Between mutations, validity changes only when a password's end passes, so the interval is split there.
        Mutations that change validity (removePassword, reset) call this first. `at` (emulator timestamp) is used
        by completing AKS operations; without it, due operations are settled first.
        """
        if at is None:
            self.settle_operations()
        now_ts = self.clock.timestamp() if at is None else at
        since = cluster.accounted_until
        cluster.accounted_until = max(since, now_ts)
        if now_ts <= since or cluster.client_id == "msi":
            return
        app = self.applications.get(cluster.client_id)
        pw = None
        if app is not None and cluster.held_hash is not None:
            pw = next((p for p in self.all_passwords(app) if p.hash == cluster.held_hash), None)
        if pw is None:
            cluster.outage_seconds += now_ts - since
            return
        start, end = pw.start.timestamp(), pw.end.timestamp()
        valid = max(0.0, min(now_ts, end) - max(since, start))
        cluster.outage_seconds += (now_ts - since) - valid

    def account_app(self, app_id: str) -> None:
        for cluster in self.clusters_of_app(app_id):
            self.account(cluster)

    # -- truth -----------------------------------------------------------------------------------------------
    def settle_operations(self) -> None:
        """Complete every due AKS operation, in completion order, as of its own completion time."""
        now_ts = self.clock.timestamp()
        due = sorted(
            (op for op in self.operations.values() if op.status == "InProgress" and op.done_at <= now_ts),
            key=lambda op: op.done_at,
        )
        for op in due:
            cluster = self.clusters.get(op.cluster_id.lower())
            failure: tuple[str, str] | None = None
            if op.fail_message is not None:
                failure = (op.fail_code, op.fail_message)
            elif cluster is not None and op.apply is not None:
                failure = op.apply(self, cluster, op.done_at)
            op.ended = op.done_at
            op.apply = None
            if failure is not None:
                op.status = "Failed"
                op.fail_code, op.fail_message = failure
            else:
                op.status = "Succeeded"
            if cluster is not None:
                cluster.provisioning_state = "Failed" if failure is not None else "Succeeded"

    def truth(self) -> dict[str, Any]:
        self.settle_operations()
        now = self.clock.now()
        clusters = []
        for c in self.clusters.values():
            self.account(c)
            clusters.append(
                {
                    "id": c.id,
                    "clientId": c.client_id,
                    "heldKeyId": c.held_key_id,
                    "heldSecretSha256": c.held_hash,
                    "heldValid": self.hash_valid(c.client_id, c.held_hash) if c.held_hash else None,
                    "outage_seconds": round(c.outage_seconds, 3),
                    "provisioningState": c.provisioning_state,
                    "certExpiry": iso(c.cert_expiry),
                    "tags": c.tags,
                }
            )
        apps = []
        for app in self.applications.values():
            apps.append(
                {
                    "appId": app.app_id,
                    "objectId": app.object_id,
                    "displayName": app.display_name,
                    "passwordCredentials": [p.truth() for p in app.passwords],
                    "servicePrincipal": {
                        "objectId": app.sp.object_id if app.sp else None,
                        "passwordCredentials": [p.truth() for p in app.sp.passwords] if app.sp else [],
                    },
                }
            )
        vaults = []
        for vault in self.vaults.values():
            vaults.append(
                {
                    "name": vault.name,
                    "secrets": {
                        name: [
                            {
                                "version": v.version,
                                "valueSha256": v.value_hash,
                                "tags": v.tags,
                                "contentType": v.content_type,
                                "enabled": v.enabled,
                                "exp": v.expires,
                                "created": v.created,
                            }
                            for v in versions
                        ]
                        for name, versions in vault.secrets.items()
                    },
                }
            )
        return {
            "now": iso(now),
            "tenantId": self.tenant_id,
            "clusters": clusters,
            "applications": apps,
            "vaults": vaults,
            "operations": [
                {"id": op.id, "clusterId": op.cluster_id, "kind": op.kind, "status": op.status}
                for op in self.operations.values()
            ],
        }
