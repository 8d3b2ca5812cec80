"""Executing a migration, one idempotent step per call (`Executor.advance`), like the rotation machine: each call
reads the cluster as it is now, does the next step or says how long to wait (`Step.retry_after`, a delayed
re-check), and audits what it did under the migration's id. Order, and why:

1. identities: create the control-plane and kubelet user-assigned identities (PUT is idempotent);
2. grants: give them every role the service principal used (`plan.needed_grants`) and wait until ARM lists each
   (grants take up to an hour to propagate: a switch before that breaks load balancers and image pulls);
3. switch: the managed-cluster identity update (an LRO), inside the maintenance window unless urgent;
4. node pools: one node image upgrade at a time, inside the window unless the SP credential is urgent; until the
   last one, kubelet on the other pools still uses the SP secret, which the rotation engine keeps rotating;
5. verify: `identityProfile.kubeletidentity` present and `servicePrincipalProfile.clientId == "msi"`; then, when no
   visible cluster uses the application any more, retire it (`retire.py`: its product-created passwords removed,
   their Key Vault versions disabled) and report it ready to delete (never delete it).
A failure (a failed LRO, a refused request, a blocker) alerts `migration.failed` (once per reason).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from shared.aks import AksError, ClusterBusy, ClusterInfo, ClusterNotFound, cluster_info
from shared.inventory import inventory
from shared.logs import EVENT_MIGRATION_FAILED, alert
from shared.migration.arm import Assignment
from shared.migration.collect import Sources, collect, sharing_clusters, window_of
from shared.migration.plan import ClusterPlan, Grant, Stage, stage_of
from shared.migration.retire import note_moved, retire_application
from shared.store import RotationStore

log = logging.getLogger(__name__)
ENDED = frozenset({"succeeded", "failed"})
RUNNING = frozenset({"updating", "upgrading", "creating", "deleting", "starting", "stopping", "canceling"})


class Phase(StrEnum):
    IDENTITIES = "identities"
    GRANTS = "grants"
    PROPAGATION = "propagation"
    WINDOW = "window"
    BUSY = "busy"
    SWITCH = "switch"
    POOL = "pool"
    VERIFY = "verify"
    RETIRE = "retire"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Step:
    cluster_id: str
    phase: Phase
    detail: str
    retry_after: float | None = None  # seconds until the next call; None: done or failed (a person acts)


def migration_id(cluster_id: str) -> str:
    return "migration-" + str(uuid.uuid5(uuid.NAMESPACE_URL, cluster_id.lower()))


def _pending(trail: list[Any]) -> list[Any]:
    """Operations this migration started whose end it has not recorded yet (the latest start of each)."""
    out = []
    for index, row in enumerate(trail):
        if row.outcome != "started" or row.step not in (Phase.SWITCH.value, Phase.POOL.value):
            continue
        later = trail[index + 1 :]
        if not any(r.step == row.step and r.detail == row.detail and r.outcome in ENDED for r in later):
            out.append(row)
    return out


def _held(rows: list[Assignment], grant: Grant) -> bool:
    scope = grant.scope.lower().rstrip("/")
    return any(
        r.role_id == grant.role_id and (scope == r.scope.lower().rstrip("/") or scope.startswith(r.scope.lower() + "/"))
        for r in rows
    )


class Executor:
    """Runs migration steps for an administrator (`migrate --execute`) or for clusters opted in by tag."""

    def __init__(
        self,
        src: Sources,
        store: RotationStore,
        *,
        poll_seconds: float,
        requeue_seconds: float,
        identity: str | None = None,
    ) -> None:
        self.src, self.store = src, store
        self.poll, self.requeue = poll_seconds, requeue_seconds
        self.identity = identity  # the operator's control-plane identity (`--identity`), else id-aks-<cluster>

    async def _audit(self, cluster_id: str, phase: Phase, outcome: str, detail: str, **fields: Any) -> None:
        await self.store.audit(migration_id(cluster_id), phase.value, outcome, detail, cluster_id=cluster_id, **fields)

    async def _trail(self, cluster_id: str) -> list[Any]:
        return await self.store.audit_log(migration_id(cluster_id))

    async def _fail(self, cluster_id: str, phase: Phase, reason: str) -> Step:
        trail = await self._trail(cluster_id)
        if not any(r.step == phase.value and r.outcome == "failed" and r.detail == reason for r in trail):
            await self._audit(cluster_id, phase, "failed", reason)
            alert(
                log,
                EVENT_MIGRATION_FAILED,
                f"migration of {cluster_id} stopped at {phase}: {reason}",
                cluster_id=cluster_id,
            )
        return Step(cluster_id, Phase.FAILED, reason)

    async def _urgent(self, app_id: str | None, now: datetime) -> bool:
        """The SP credential is urgent when even its latest current password ends within URGENT_DAYS."""
        if not app_id:
            return False
        creds = (await self.src.graph.lookup_apps([app_id])).get(app_id)
        if creds is None:
            return False
        ends = [p.end for p in creds.application_passwords + creds.service_principal_passwords if p.end and p.end > now]
        return not ends or max(ends) <= now + timedelta(days=self.src.settings.urgent_days)

    async def _grants_visible(self, cluster_id: str, plan: ClusterPlan, principals: dict[str, str]) -> list[Grant]:
        """Create every missing grant; the grants ARM does not list yet."""
        missing: list[Grant] = []
        for grant in plan.grants:
            principal = principals[grant.identity.lower()]
            sub = grant.scope.split("/")[2]
            if _held(await self.src.arm.assignments_for(sub, principal), grant):
                continue
            if await self.src.arm.create_assignment(grant.scope, principal, grant.role_id) is not None:
                await self._audit(
                    cluster_id, Phase.GRANTS, "granted", f"{grant.role} on {grant.scope}", role=grant.role
                )
            missing.append(grant)
        return missing

    async def _in_window(self, plan: ClusterPlan, info: ClusterInfo, now: datetime) -> tuple[bool, float]:
        opens, _ = await window_of(self.src, info, now)
        if opens is not None and opens <= now:
            return True, 0.0
        if await self._urgent(plan.app_id, now):
            await self._audit(
                plan.cluster_id, Phase.WINDOW, "urgent", "the SP credential is urgent: outside the window"
            )
            return True, 0.0
        return False, (opens - now).total_seconds() if opens else 86400.0

    async def advance(self, cluster_id: str, now: datetime) -> Step:
        try:
            doc = await self.src.arm.cluster(cluster_id)
        except (ClusterNotFound, AksError) as exc:
            if isinstance(exc, ClusterNotFound) or exc.status == 404:
                return Step(cluster_id, Phase.DONE, "the cluster is gone")
            raise
        state = str((doc.get("properties") or {}).get("provisioningState") or "").lower()
        if state in RUNNING:
            return Step(cluster_id, Phase.BUSY, f"provisioningState {state}", self.poll)
        trail = await self._trail(cluster_id)
        pending = _pending(trail)
        if state == "failed" and pending:
            # Ours failed: recorded as such (so a later run retries the step; a Failed cluster accepts operations).
            for row in pending:
                await self._audit(cluster_id, Phase(row.step), "failed", row.detail)
            reason = f"{pending[-1].step} {pending[-1].detail} ended Failed: see the cluster's activity log, then rerun"
            return await self._fail(cluster_id, Phase.FAILED, reason)
        for row in pending:
            await self._audit(cluster_id, Phase(row.step), "succeeded", row.detail)
        succeeded = [r for r in trail if r.outcome == "succeeded"] + pending  # pending: just recorded as succeeded
        done_pools = sorted({r.detail for r in succeeded if r.step == Phase.POOL.value})
        info = cluster_info(doc)
        if stage_of(info) is Stage.MANAGED_IDENTITY:
            return await self._verify(cluster_id, doc, trail)
        done = {cluster_id.lower(): done_pools}
        collected = await collect(self.src, now=now, cluster_id=cluster_id, pools_done=done, identity=self.identity)
        if not collected.plans:
            return Step(cluster_id, Phase.DONE, "not a service-principal cluster")
        plan = collected.plans[0]
        if not plan.executable:
            return await self._fail(
                cluster_id, Phase.GRANTS, "; ".join(b.text for b in plan.blockers if b.stops_execution)
            )
        tags = {"aks-rotator-migration": info.name}
        made = {
            resource_id.lower(): await self.src.arm.ensure_identity(resource_id, info.location, tags)
            for resource_id in (plan.control_plane_identity, plan.kubelet_identity)
        }
        principals = {key: identity.principal_id for key, identity in made.items()}
        if not any(r.step == Phase.IDENTITIES.value for r in trail):
            await self._audit(
                cluster_id, Phase.IDENTITIES, "ensured", plan.control_plane_identity, app_id=plan.app_id or ""
            )
        if missing := await self._grants_visible(cluster_id, plan, principals):
            detail = f"{len(missing)} grant(s) not visible yet"
            return Step(cluster_id, Phase.PROPAGATION, detail, self.requeue)
        open_now, wait = await self._in_window(plan, info, now)
        if not open_now:
            return Step(cluster_id, Phase.WINDOW, "waiting for the maintenance window", max(wait, self.requeue))
        try:
            if plan.stage is Stage.SERVICE_PRINCIPAL:
                cp, kubelet = made[plan.control_plane_identity.lower()], made[plan.kubelet_identity.lower()]
                await self.src.arm.begin_identity_update(cluster_id, cp, kubelet)
                await self._audit(cluster_id, Phase.SWITCH, "started", "identity update")
                return Step(cluster_id, Phase.SWITCH, "identity update started", self.poll)
            if not plan.pools:
                return await self._fail(
                    cluster_id, Phase.VERIFY, "every pool was upgraded but kubelet still uses the SP"
                )
            pool = plan.pools[0].name
            await self.src.arm.begin_node_image_upgrade(cluster_id, pool)
            await self._audit(cluster_id, Phase.POOL, "started", pool)
            return Step(cluster_id, Phase.POOL, f"node image upgrade of {pool} started", self.poll)
        except ClusterBusy as exc:
            return Step(cluster_id, Phase.BUSY, str(exc), self.poll)
        except AksError as exc:
            if exc.status == 409:
                return Step(cluster_id, Phase.BUSY, str(exc), self.poll)
            return await self._fail(cluster_id, Phase.SWITCH, str(exc))

    async def _verify(self, cluster_id: str, doc: dict[str, Any], trail: list[Any]) -> Step:
        props = doc.get("properties") or {}
        kubelet = (props.get("identityProfile") or {}).get("kubeletidentity")
        client = (props.get("servicePrincipalProfile") or {}).get("clientId")
        if not kubelet or str(client).lower() != "msi":
            return await self._fail(cluster_id, Phase.VERIFY, "identityProfile.kubeletidentity or clientId msi missing")
        if not any(r.step == Phase.VERIFY.value for r in trail):
            await self._audit(cluster_id, Phase.VERIFY, "succeeded", "kubelet and control plane on managed identity")
        app_id = next((str(r.fields.get("app_id")) for r in trail if r.fields.get("app_id")), "")
        if not app_id:
            return Step(cluster_id, Phase.DONE, "on managed identity")
        await note_moved(self.store, app_id, cluster_id)
        listing = await inventory(self.src.settings, self.src.credential, self.src.aks)
        users = sharing_clusters(listing.clusters, app_id)
        if users:
            return Step(
                cluster_id,
                Phase.DONE,
                f"on managed identity; application {app_id} still used by {len(users)} cluster(s)",
            )
        await retire_application(self.src, self.store, app_id, cluster_id)  # once, whichever cluster moved last
        return Step(cluster_id, Phase.DONE, f"on managed identity; application {app_id} ready to delete")
