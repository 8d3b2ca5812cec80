"""The emulated world (`Estate`): applications, service principals, clusters, vaults, role assignments, operations.

Everything lives in memory. Secret values are never stored: a password credential keeps a SHA-256 of its secret,
which is all the token endpoint needs to accept or refuse it. `emulator.truth` reports it to tests.
"""

from __future__ import annotations

import random
import secrets
import uuid
from datetime import datetime, timedelta
from typing import Any

from emulator import signins
from emulator.identities import IdentityWorld
from emulator.modes import Modes
from emulator.records import (
    Application,
    Clock,
    Cluster,
    Holding,
    MaintenanceWindow,
    NodePool,
    Operation,
    Password,
    PasswordPolicy,
    RemovedPassword,
    RoleAssignment,
    ServicePrincipal,
    Vault,
    new_secret,
    parse_time,
    secret_hash,
)


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
        self.deleted_clusters: list[dict[str, Any]] = []  # truth of clusters removed by the world event `delete`
        self.signins: dict[str, float] = {}  # keyId -> last recorded sign-in (emulator.signins)
        self.modes = Modes()
        self.identity = IdentityWorld.load(seed, clock.timestamp())
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
                cert_expiry=parse_time(spec["cert_expiry"])
                if "cert_expiry" in spec
                else now + timedelta(days=float(spec.get("cert_expires_in_days", 3650))),
                kubernetes_version=spec.get("kubernetes_version", "1.33.2"),
                aad_profile=spec.get("aad_profile"),
                kubelet_identity=bool(spec.get("kubelet_identity", spec.get("client_id", "msi") == "msi")),
                maintenance=[MaintenanceWindow.from_spec(m) for m in spec.get("maintenance", [])],
                control_plane=Holding(held_key, held_hash, accounted_until=self.clock.timestamp()),
                node_pools=[
                    NodePool(
                        p["name"], int(p.get("count", 3)), Holding(held_key, held_hash, 0.0, self.clock.timestamp())
                    )
                    for p in spec.get("node_pools", [{"name": "nodepool1", "count": spec.get("node_count", 3)}])
                ],
            )
            self.clusters[cluster.id.lower()] = cluster
            self.identity.add_needs(cluster.id, spec.get("needs", []))
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

    # -- password writes (Graph and the world events share them) ----------------------------------------------
    def _passwords_of(self, app: Application, holder: str) -> list[Password]:
        if holder == "application":
            return app.passwords
        assert app.sp is not None
        return app.sp.passwords

    def _before_password_write(self, app: Application) -> None:
        """Mode `graph_read_lag_seconds`: Graph reads keep showing the passwords as they were before the first
        write of a burst until the lag has passed since the last one."""
        lag = self.modes.graph_read_lag_seconds
        if lag <= 0:
            return
        now = self.clock.timestamp()
        if app.lagged is None or now >= app.lag_until:
            app.lagged = (list(app.passwords), list(app.sp.passwords) if app.sp else [])
        app.lag_until = now + lag

    def visible_passwords(self, app: Application, holder: str) -> list[Password]:
        """What a Graph read shows now (lagging writes when the mode is on)."""
        if app.lagged is not None and self.clock.timestamp() < app.lag_until:
            return app.lagged[0 if holder == "application" else 1]
        return self._passwords_of(app, holder)

    def add_password(
        self, app: Application, holder: str, start: datetime, end: datetime, display_name: str | None, by: str
    ) -> tuple[Password, str]:
        """A new password (value returned once, kept only as a hash) created by `by` (appId or "human")."""
        secret = new_secret()
        self.issued_secrets.append(secret)
        password = Password(
            key_id=str(uuid.uuid4()),
            display_name=display_name,
            start=start,
            end=end,
            hash=secret_hash(secret),
            hint=secret[:3],
            created=self.clock.timestamp(),
            created_by=by,
        )
        self._before_password_write(app)
        self._passwords_of(app, holder).append(password)
        return password, secret

    def remove_password(self, app: Application, holder: str, password: Password, by: str) -> None:
        """Remove a password, accounting outage up to now first (validity changes here)."""
        self.account_app(app.app_id)
        self._before_password_write(app)
        self._passwords_of(app, holder).remove(password)
        app.removed.append(RemovedPassword(password, holder, by, self.clock.timestamp()))

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
        """Add to each component's outage the part of [accounted_until, now] during which its secret was invalid.

        Between mutations, validity changes only when a password's end passes, so the interval is split there.
        Mutations that change validity (removePassword, reset) call this first. `at` (emulator timestamp) is used
        by completing AKS operations; without it, due operations are settled first. A stopped cluster runs
        nothing, so it has no outage while stopped.
        """
        if at is None:
            self.settle_operations()
        now_ts = self.clock.timestamp() if at is None else at
        app = self.applications.get(cluster.client_id)
        for _, holding in cluster.holdings():
            since = holding.accounted_until
            holding.accounted_until = max(since, now_ts)
            if now_ts <= since or cluster.power_state == "Stopped":
                continue
            pw = None
            if app is not None and holding.hash is not None:
                pw = next((p for p in self.all_passwords(app) if p.hash == holding.hash), None)
            if pw is None:
                holding.outage_seconds += now_ts - since
                continue
            start, end = pw.start.timestamp(), pw.end.timestamp()
            valid = max(0.0, min(now_ts, end) - max(since, start))
            holding.outage_seconds += (now_ts - since) - valid

    def account_app(self, app_id: str) -> None:
        for cluster in self.clusters_of_app(app_id):
            self.account(cluster)

    def hold(self, cluster: Cluster, secret: tuple[str, str], at: float, pools: list[NodePool] | None = None) -> None:
        """From `at`, the control plane and `pools` (default: every pool) hold `secret` (hash, keyId)."""
        self.account(cluster, at=at)
        signins.record_cluster(self, cluster, at)  # what it held, it signed in with until now
        digest, key_id = secret
        for holding in [cluster.control_plane, *(p.holding for p in (cluster.node_pools if pools is None else pools))]:
            holding.hash, holding.key_id = digest, key_id

    # -- AKS operations --------------------------------------------------------------------------------------
    def settle_operations(self) -> None:
        """Complete every due AKS operation, in completion order, as of its own completion time (AKS's own
        retries of a failed reset are operations too, so they settle in the same loop)."""
        now_ts = self.clock.timestamp()
        while True:
            due = [op for op in self.operations.values() if op.status == "InProgress" and op.done_at <= now_ts]
            if not due:
                return
            self._complete(min(due, key=lambda op: op.done_at))

    def _complete(self, op: Operation) -> None:
        cluster = self.clusters.get(op.cluster_id.lower())
        failure: tuple[str, str] | None = None
        if op.fail_message is not None:
            failure = (op.fail_code, op.fail_message)
        elif cluster is not None and op.apply is not None:
            failure = op.apply(self, cluster, op.done_at)
        op.ended = op.done_at
        op.apply = None
        op.status = "Succeeded" if failure is None else "Failed"
        if failure is not None:
            op.fail_code, op.fail_message = failure
        if cluster is None:
            return
        cluster.provisioning_state = "Failed" if failure is not None else "Succeeded"
        if failure is not None and op.secret is not None and self.modes.node_image_upgrade:
            self.hold(cluster, op.secret, op.done_at, cluster.node_pools[:-1])
        if failure is not None and op.secret is not None and op.retries_left > 0:
            self._retry(cluster, op)

    def _retry(self, cluster: Cluster, failed: Operation) -> None:
        """AKS retries the reset in the background: the same secret, every pool, if Entra still accepts it."""
        secret = failed.secret
        assert secret is not None

        def apply(estate: Estate, target: Cluster, at: float) -> tuple[str, str] | None:
            app = estate.applications.get(target.client_id)
            valid = app is not None and any(
                p.hash == secret[0] and p.start.timestamp() <= at < p.end.timestamp() for p in estate.all_passwords(app)
            )
            if not valid:
                return failed.fail_code, failed.fail_message or ""
            estate.hold(target, secret, at)
            return None

        start = failed.done_at + self.modes.aks_retry_seconds
        retry = Operation(
            id=str(uuid.uuid4()),
            cluster_id=failed.cluster_id,
            location=failed.location,
            subscription_id=failed.subscription_id,
            kind=failed.kind + ".retry",
            started=start,
            done_at=start + (failed.done_at - failed.started),
            fail_message=None,
            apply=apply,
            secret=secret,
            retries_left=failed.retries_left - 1,
        )
        self.operations[retry.id] = retry
        cluster.provisioning_state = "Updating"
