"""What a migration plan is made of, read from the estate: the SP clusters (the inventory), each service
principal's role assignments (Resource Graph `authorizationresources`, ARM's role-assignment list per subscription
when Resource Graph refuses or fails), node pools, maintenance windows and the applications clusters share."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError

from shared.aks import AksClient, AksError, ClusterInfo
from shared.azure import product_credential
from shared.graph import GraphOps
from shared.inventory import inventory
from shared.migration.arm import Assignment, MigrationArm
from shared.migration.plan import ClusterPlan, Held, Stage, build, stage_of
from shared.settings import Settings
from shared.windows import describe, effective_windows, next_open


@dataclass
class Collected:
    plans: list[ClusterPlan]
    clusters: list[ClusterInfo]  # every visible cluster (the application-sharing rule reads them)
    used_arm_fallback: bool = False
    errors: list[str] = field(default_factory=list)


class Sources:
    """The clients a plan reads through (opened by the caller, shared with the executor)."""

    def __init__(
        self, settings: Settings, credential: AsyncTokenCredential, aks: AksClient, arm: MigrationArm, graph: GraphOps
    ) -> None:
        self.settings, self.credential, self.aks, self.arm, self.graph = settings, credential, aks, arm, graph


@contextlib.asynccontextmanager
async def open_sources(settings: Settings) -> AsyncIterator[Sources]:
    """The product's credential and the clients a plan or a migration step reads through, closed on the way out."""
    credential = product_credential(settings)
    try:
        async with (
            AksClient(settings, credential) as aks,
            MigrationArm(settings, credential) as arm,
            GraphOps(settings, credential) as graph,
        ):
            yield Sources(settings, credential, aks, arm, graph)
    finally:
        await credential.close()


async def _assignments(
    src: Sources, principals: set[str], subscriptions: list[str]
) -> tuple[dict[str, list[Assignment]], bool]:
    """principal object id -> its role assignments; True when ARM had to be asked per subscription."""
    found: dict[str, list[Assignment]] = defaultdict(list)
    try:
        rows = await src.arm.assignments_graph(subscriptions)
    except (AzureError, AksError):
        rows = None
    if rows is not None:
        for row in rows:
            if row.principal_id in principals:
                found[row.principal_id].append(row)
        return found, False
    for principal in principals:
        for sub in subscriptions:
            for row in await src.arm.assignments_for(sub, principal):
                if row not in found[principal]:
                    found[principal].append(row)
    return found, True


async def pools_of(src: Sources, cluster_id: str) -> list[str]:
    doc = await src.arm.cluster(cluster_id)
    return [str(p.get("name")) for p in (doc.get("properties") or {}).get("agentPoolProfiles") or []]


async def window_of(src: Sources, cluster: ClusterInfo, now: datetime) -> tuple[datetime | None, str]:
    windows = effective_windows(await src.aks.maintenance_windows(cluster.id), src.settings.maintenance_window)
    return next_open(windows, now), describe(windows)


async def collect(
    src: Sources,
    *,
    now: datetime,
    cluster_id: str | None = None,
    identity: str | None = None,
    pools_done: dict[str, list[str]] | None = None,
) -> Collected:
    """Plans of every SP cluster (or of `cluster_id`), stage `service_principal` or `control_plane_on_identity`."""
    listing = await inventory(src.settings, src.credential, src.aks)
    clusters = listing.clusters
    targets = [
        c
        for c in clusters
        if stage_of(c) is not Stage.MANAGED_IDENTITY and (cluster_id is None or c.id.lower() == cluster_id.lower())
    ]
    users: dict[str, list[str]] = defaultdict(list)
    for c in clusters:
        if c.sp_client_id:
            users[c.sp_client_id.lower()].append(c.name)
    apps = sorted({c.sp_client_id for c in targets if c.sp_client_id})
    sp_ids = dict(zip(apps, await asyncio.gather(*(src.graph.service_principal_id(app) for app in apps)), strict=True))
    principals = {v.lower() for v in sp_ids.values() if v}
    subscriptions = sorted({c.subscription_id.lower() for c in clusters})
    held, fallback = await _assignments(src, principals, subscriptions)
    out = Collected([], clusters, fallback)
    for cluster in targets:
        app = cluster.sp_client_id or ""
        principal = (sp_ids.get(app) or "").lower()
        problems = [] if principal else [f"application {app} has no service principal the product can read"]
        pools = await pools_of(src, cluster.id)
        opens, windows = await window_of(src, cluster, now)
        out.plans.append(
            build(
                cluster,
                [Held(a.role_id, a.scope) for a in held.get(principal, [])],
                pools=pools,
                pools_done=(pools_done or {}).get(cluster.id.lower(), []),
                window_opens=opens,
                windows=windows,
                sharing=[n for n in users.get(app.lower(), []) if n != cluster.name],
                identity=identity,
                problems=problems,
            )
        )
    return out


def sharing_clusters(clusters: Sequence[ClusterInfo], app_id: str) -> list[ClusterInfo]:
    """Visible clusters whose kubelet or control plane still use `app_id`."""
    return [c for c in clusters if (c.sp_client_id or "").lower() == app_id.lower()]
