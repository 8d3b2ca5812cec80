"""Moving a service-principal cluster to managed identities, as AKS does it (docs/emulator.md, "Managed identity
migration"):

* `PUT .../managedClusters/{name}` with `identity` (`UserAssigned` + `userAssignedIdentities`, or `SystemAssigned`)
  and optionally `properties.identityProfile.kubeletidentity` (a pre-created kubelet identity): an LRO (200 with the
  cluster, `provisioningState: Updating`, and the polling headers). When it completes, the control plane uses the
  identity at once; every node pool's kubelet keeps the service principal (and its secret) until that pool's node
  image upgrade. The emulator updates existing clusters only; any other change in the body is ignored.
* `POST .../managedClusters/{name}/agentPools/{pool}/upgradeNodeImageVersion`: an LRO (202). On a cluster whose
  control plane moved, the pool's kubelet moves to the kubelet identity when it completes; once every pool has,
  `identityProfile.kubeletidentity` appears and `servicePrincipalProfile.clientId` becomes `msi`.
Each switch checks the cluster's needs against the new principal's effective grants (`emulator.identities.check`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from emulator import identities
from emulator.aks_operations import accepted, duration, ensure_idle, start
from emulator.arm_call import CLUSTER, Call, route
from emulator.arm_shapes import cluster_json
from emulator.model import Estate
from emulator.records import Cluster
from emulator.wire import Reply, error, json_body

IDENTITY_TYPES = ("SystemAssigned", "UserAssigned")


def _invalid(message: str) -> Reply:
    return Reply(error("arm", 400, "InvalidParameter", message))


def _requested(estate: Estate, body: Any) -> tuple[str, str | None, str | None]:
    """(identity type, control-plane identity id, kubelet identity id) the PUT body asks for."""
    identity = body.get("identity") if isinstance(body, dict) else None
    if not isinstance(identity, dict) or identity.get("type") not in IDENTITY_TYPES:
        raise _invalid("The emulator updates only a cluster's identity: give identity.type.")
    kind = str(identity["type"])
    cp_id: str | None = None
    if kind == "UserAssigned":
        ids = list((identity.get("userAssignedIdentities") or {}).keys())
        if len(ids) != 1:
            raise _invalid("The value of parameter identity.userAssignedIdentities is invalid: give exactly one.")
        cp_id = str(ids[0])
        if cp_id.lower() not in estate.identity.identities:
            raise _invalid(f"The user assigned identity '{cp_id}' was not found.")
    props = body.get("properties") or {}
    kubelet = ((props.get("identityProfile") or {}).get("kubeletidentity") or {}).get("resourceId")
    if kubelet is not None and str(kubelet).lower() not in estate.identity.identities:
        raise _invalid(f"The kubelet identity '{kubelet}' was not found.")
    return kind, cp_id, str(kubelet) if kubelet else None


async def put_cluster(request: web.Request, call: Call) -> web.Response:
    cluster = call.cluster("Microsoft.ContainerService/managedClusters/write")
    estate = call.emu.estate
    kind, cp_id, kubelet_id = _requested(estate, json_body(await request.text(), "arm"))
    same = cluster.identity_type == kind and (cp_id or "").lower() == (cluster.identity_resource_id or "").lower()
    if same:
        return web.json_response(cluster_json(cluster, estate.tenant_id))  # nothing to change
    ensure_idle(cluster, "updateIdentity")
    if cluster.identity_type != "None":
        raise _invalid("The emulator models only the move of a service-principal cluster to a managed identity.")

    def apply(estate: Estate, target: Cluster, at: float) -> tuple[str, str] | None:
        estate.account(target, at=at)
        target.identity_type, target.identity_resource_id, target.kubelet_resource_id = kind, cp_id, kubelet_id
        identities.check(estate, target, at)
        return None

    op = start(call, cluster, "updateIdentity", apply, duration(estate, cluster))
    response = accepted(call, cluster, op)
    return web.json_response(cluster_json(cluster, estate.tenant_id), status=200, headers=dict(response.headers))


def switch_pool(estate: Estate, cluster: Cluster, pool_name: str, at: float) -> None:
    """A node image upgrade of `pool_name` completed: its kubelet moves to the identity if the control plane did."""
    if cluster.identity_type == "None":
        return
    estate.account(cluster, at=at)
    for pool in cluster.node_pools:
        if pool.name == pool_name:
            pool.kubelet_identity = True
    if all(p.kubelet_identity for p in cluster.node_pools):
        cluster.kubelet_identity = True
        cluster.client_id = "msi"
    identities.check(estate, cluster, at)


async def upgrade_node_image(request: web.Request, call: Call) -> web.Response:
    cluster = call.cluster("Microsoft.ContainerService/managedClusters/agentPools/upgradeNodeImageVersion/action")
    name = request.match_info["pool"]
    if not any(p.name == name for p in cluster.node_pools):
        message = f"Agent pool '{name}' of managed cluster '{cluster.name}' was not found."
        raise Reply(error("arm", 404, "NotFound", message))
    ensure_idle(cluster, "upgradeNodeImageVersion")
    pool = next(p for p in cluster.node_pools if p.name == name)
    estate = call.emu.estate
    seconds = estate.lro_base_seconds + estate.lro_per_node_seconds * pool.count

    def apply(estate: Estate, target: Cluster, at: float) -> tuple[str, str] | None:
        switch_pool(estate, target, name, at)
        return None

    op = start(call, cluster, "upgradeNodeImageVersion", apply, seconds)
    op.running_state = cluster.provisioning_state = "Upgrading"
    return accepted(call, cluster, op)


def setup(app: web.Application) -> None:
    r = app.router
    r.add_put(CLUSTER, route(True, put_cluster), name="arm.createOrUpdate")
    r.add_post(
        CLUSTER + "/agentPools/{pool}/upgradeNodeImageVersion",
        route(True, upgrade_node_image),
        name="arm.upgradeNodeImageVersion",
    )
