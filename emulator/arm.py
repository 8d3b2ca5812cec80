"""Azure Resource Manager: subscriptions and AKS managed clusters (Microsoft.ContainerService).

Shapes follow the azure-rest-api-specs for Microsoft.ContainerService (aks/stable) and ARM's RPC: paged lists with
`nextLink`, `ResourceNotFound` bodies, async operations (`emulator.aks_operations`), RBAC (`AuthorizationFailed`)
and per-principal read/write throttling headers (`emulator.arm_call`). Every request first settles due AKS
operations, so the estate advances lazily with the emulator clock. A reset never keeps the secret: it is hashed
the moment the body is parsed.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from emulator import aks_operations
from emulator.aks_operations import accepted, duration, ensure_idle, start
from emulator.arm_call import CLUSTER, CLUSTERS, SUB, Call, page, route
from emulator.arm_shapes import CA_LIFETIME, cluster_json, kubeconfig, maintenance_json, subscription_json
from emulator.model import Estate
from emulator.rbac import authorization_failed, can, visible_subscriptions
from emulator.records import Cluster, secret_hash
from emulator.wire import Reply, error, json_body

MAX_SECRET_BYTES = 190
INVALID_SP = (
    "The credentials in ServicePrincipalProfile were invalid. Please see https://aka.ms/aks-sp-help for more details. "
    "(Details: adal: Refresh request failed. Status Code = '401'. Response body: "
    '{{"error":"invalid_client","error_description":"{refusal}"}})'
)
TERMINAL_FAILED = "The resource operation completed with terminal provisioning state 'Failed'."


# -- handlers --------------------------------------------------------------------------------------------------
async def list_subscriptions(request: web.Request, call: Call) -> web.Response:
    estate = call.emu.estate
    subs = [subscription_json(estate, s) for s in visible_subscriptions(estate, call.claims.app_id)]
    return web.json_response({"value": subs, "count": {"type": "Total", "value": len(subs)}})


async def get_subscription(request: web.Request, call: Call) -> web.Response:
    sub = request.match_info["subscription"].lower()
    call.authorize("Microsoft.Resources/subscriptions/read", f"/subscriptions/{sub}")
    return web.json_response(subscription_json(call.emu.estate, call.subscription()))


def _readable_clusters(call: Call, sub: str, rg: str | None) -> list[dict[str, Any]]:
    estate = call.emu.estate
    clusters = [
        c
        for c in estate.clusters.values()
        if c.subscription_id.lower() == sub and (rg is None or c.resource_group.lower() == rg.lower())
    ]
    action = "Microsoft.ContainerService/managedClusters/read"
    scope = f"/subscriptions/{sub}" + (f"/resourceGroups/{rg}" if rg else "")
    if can(estate, call.claims.app_id, action, scope):
        visible = clusters
    else:
        visible = [c for c in clusters if can(estate, call.claims.app_id, action, c.id)]
        if not visible:
            raise Reply(authorization_failed("arm", call.claims, action, scope))
    visible.sort(key=lambda c: c.id.lower())
    return [cluster_json(c, estate.tenant_id) for c in visible]


async def list_clusters(request: web.Request, call: Call) -> web.Response:
    sub = call.subscription()
    return page(call, _readable_clusters(call, sub, None), request.path)


async def list_clusters_by_rg(request: web.Request, call: Call) -> web.Response:
    sub = call.subscription()
    rg = call.resource_group(sub)
    return page(call, _readable_clusters(call, sub, rg), request.path)


async def get_cluster(request: web.Request, call: Call) -> web.Response:
    cluster = call.cluster("Microsoft.ContainerService/managedClusters/read")
    return web.json_response(cluster_json(cluster, call.emu.estate.tenant_id))


async def list_maintenance(request: web.Request, call: Call) -> web.Response:
    cluster = call.cluster("Microsoft.ContainerService/managedClusters/maintenanceConfigurations/read")
    return web.json_response({"value": [maintenance_json(cluster, w) for w in cluster.maintenance]})


async def get_maintenance(request: web.Request, call: Call) -> web.Response:
    cluster = call.cluster("Microsoft.ContainerService/managedClusters/maintenanceConfigurations/read")
    config = request.match_info["config"]
    for window in cluster.maintenance:
        if window.name.lower() == config.lower():
            return web.json_response(maintenance_json(cluster, window))
    message = f"Maintenance configuration '{config}' of managed cluster '{cluster.name}' was not found."
    raise Reply(error("arm", 404, "NotFound", message))


async def list_user_credential(request: web.Request, call: Call) -> web.Response:
    cluster = call.cluster("Microsoft.ContainerService/managedClusters/listClusterUserCredential/action")
    value = base64.b64encode(kubeconfig(cluster).encode()).decode()
    return web.json_response({"kubeconfigs": [{"name": "clusterUser", "value": value}]})


async def reset_service_principal(request: web.Request, call: Call) -> web.Response:
    cluster = call.cluster("Microsoft.ContainerService/managedClusters/resetServicePrincipalProfile/action")
    raw = await request.text()
    body = json_body(raw, "arm")
    del raw
    client_id = str(body.get("clientId") or "") if isinstance(body, dict) else ""
    secret = body.get("secret") if isinstance(body, dict) else None
    del body
    if not isinstance(secret, str) or not secret:
        raise Reply(
            error("arm", 400, "InvalidParameter", "The value of parameter servicePrincipalProfile.secret is invalid.")
        )
    digest = secret_hash(secret)
    too_long = len(secret.encode()) > MAX_SECRET_BYTES
    estate = call.emu.estate
    refusal = None if too_long else call.emu.entra_refusal(client_id, secret)
    found = None if too_long else estate.find_password(client_id, secret)
    del secret
    ensure_idle(cluster, "resetServicePrincipalProfile")
    if cluster.client_id == "msi":
        message = "This action cannot be performed on a cluster that is not using a service principal."
        raise Reply(error("arm", 400, "BadRequest", message))
    if not client_id:
        raise Reply(
            error("arm", 400, "InvalidParameter", "The value of parameter servicePrincipalProfile.clientId is invalid.")
        )
    if too_long:
        message = (
            f"The value of parameter servicePrincipalProfile.secret is invalid: it must not exceed "
            f"{MAX_SECRET_BYTES} bytes."
        )
        raise Reply(error("arm", 400, "InvalidParameter", message))
    if client_id.lower() != cluster.client_id.lower():
        message = (
            "The value of parameter servicePrincipalProfile.clientId is invalid: it must be the service principal "
            f"the cluster uses ('{cluster.client_id}')."
        )
        raise Reply(error("arm", 400, "InvalidParameter", message))
    modes = estate.modes
    if refusal is not None or found is None:
        invalid = INVALID_SP.format(refusal=refusal or "")
        if not modes.invalid_secret_async:
            raise Reply(error("arm", 400, "BadRequest", invalid))
        op = start(call, cluster, "resetServicePrincipalProfile", _never, duration(estate, cluster))
        op.fail_code, op.fail_message = "ResourceOperationFailure", TERMINAL_FAILED
        op.fail_details = [{"code": "BadRequest", "message": invalid}]
        return accepted(call, cluster, op)
    held = (digest, found.key_id)

    def apply(estate: Estate, target: Cluster, at: float) -> tuple[str, str] | None:
        app = estate.applications.get(target.client_id)
        password = next((p for p in estate.all_passwords(app) if p.hash == digest), None) if app else None
        if password is None or not password.start.timestamp() <= at < password.end.timestamp():
            refused = f"AADSTS7000215: Invalid client secret provided for app '{target.client_id}'."
            return "BadRequest", INVALID_SP.format(refusal=refused)
        estate.hold(target, held, at)
        return None

    if modes.reset_sync_200:
        estate.hold(cluster, held, call.emu.clock.timestamp())
        return web.Response(status=200)
    op = start(call, cluster, "resetServicePrincipalProfile", apply, duration(estate, cluster), held)
    return accepted(call, cluster, op)


def _never(estate: Estate, target: Cluster, at: float) -> tuple[str, str] | None:
    return None


async def reset_aad_profile(request: web.Request, call: Call) -> web.Response:
    cluster = call.cluster("Microsoft.ContainerService/managedClusters/resetAADProfile/action")
    body = json_body(await request.text(), "arm")
    ensure_idle(cluster, "resetAADProfile")
    fields = body.items() if isinstance(body, dict) else ()
    public = {k: v for k, v in fields if k in ("clientAppID", "serverAppID", "tenantID")}
    del body

    def apply(estate: Estate, target: Cluster, at: float) -> tuple[str, str] | None:
        target.aad_profile = {**(target.aad_profile or {}), **public, "managed": False}
        return None

    op = start(call, cluster, "resetAADProfile", apply, duration(call.emu.estate, cluster))
    return accepted(call, cluster, op)


async def rotate_certificates(request: web.Request, call: Call) -> web.Response:
    cluster = call.cluster("Microsoft.ContainerService/managedClusters/rotateClusterCertificates/action")
    ensure_idle(cluster, "rotateClusterCertificates")

    def apply(estate: Estate, target: Cluster, at: float) -> tuple[str, str] | None:
        target.cert_expiry = datetime.fromtimestamp(at, UTC) + CA_LIFETIME
        return None

    op = start(call, cluster, "rotateClusterCertificates", apply, duration(call.emu.estate, cluster))
    return accepted(call, cluster, op)


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/subscriptions", route(False, list_subscriptions), name="arm.listSubscriptions")
    r.add_get(SUB, route(False, get_subscription), name="arm.getSubscription")
    r.add_get(
        SUB + "/providers/Microsoft.ContainerService/managedClusters", route(False, list_clusters), name="arm.list"
    )
    r.add_get(CLUSTERS, route(False, list_clusters_by_rg), name="arm.listByResourceGroup")
    r.add_get(CLUSTER, route(False, get_cluster), name="arm.get")
    r.add_post(
        CLUSTER + "/resetServicePrincipalProfile",
        route(True, reset_service_principal),
        name="arm.resetServicePrincipalProfile",
    )
    r.add_post(CLUSTER + "/resetAADProfile", route(True, reset_aad_profile), name="arm.resetAADProfile")
    r.add_post(
        CLUSTER + "/rotateClusterCertificates", route(True, rotate_certificates), name="arm.rotateClusterCertificates"
    )
    r.add_get(
        CLUSTER + "/maintenanceConfigurations",
        route(False, list_maintenance),
        name="arm.listMaintenanceConfigurations",
    )
    r.add_get(
        CLUSTER + "/maintenanceConfigurations/{config}",
        route(False, get_maintenance),
        name="arm.getMaintenanceConfiguration",
    )
    r.add_post(
        CLUSTER + "/listClusterUserCredential",
        route(True, list_user_credential),
        name="arm.listClusterUserCredential",
    )
    aks_operations.setup(app)
