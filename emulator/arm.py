"""Azure Resource Manager: subscriptions and AKS managed clusters (Microsoft.ContainerService).

Shapes follow the azure-rest-api-specs for Microsoft.ContainerService (aks/stable) and ARM's RPC: paged lists with
`nextLink`, `ResourceNotFound` bodies, async operations answered 202 with `Azure-AsyncOperation` + `Location`, an
operation-status resource, RBAC (`AuthorizationFailed`) and per-principal read/write throttling headers.
Every request first settles due AKS operations (`Estate.settle_operations`), so the estate advances lazily with
the emulator clock. A reset never keeps the secret: it is hashed the moment the body is parsed.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import math
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from emulator.server import Emulator, Reply, emulator_of, error, json_body, throttled
from emulator.state import Cluster, Estate, MaintenanceWindow, Operation, iso, secret_hash
from emulator.tokens import Claims

PROVIDER = "Microsoft.ContainerService"
CLUSTER_TYPE = "Microsoft.ContainerService/ManagedClusters"
SUB = "/subscriptions/{subscription}"
RG = SUB + "/resourceGroups/{resource_group}"
CLUSTERS = RG + "/providers/Microsoft.ContainerService/managedClusters"
CLUSTER = CLUSTERS + "/{name}"
OPERATIONS = SUB + "/providers/Microsoft.ContainerService/locations/{location}"
MAX_SECRET_BYTES = 190
CA_LIFETIME = timedelta(days=365 * 30)
AUTH_FAILED = (
    "The client '{app}' with object id '{oid}' does not have authorization to perform action '{action}' over scope "
    "'{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials."
)
INVALID_SP = (
    "The credentials in ServicePrincipalProfile were invalid. Please see https://aka.ms/aks-sp-help for more details. "
    "(Details: adal: Refresh request failed. Status Code = '401'. Response body: "
    '{{"error":"invalid_client","error_description":"{refusal}"}})'
)
BUSY = (
    "Operation is not allowed: Another operation (Updating) is in progress, please wait for it to finish before "
    "starting a new operation. See https://aka.ms/aks-pending-operation for more details"
)

Handler = Callable[[web.Request, "Call"], Awaitable[web.Response]]


# -- authorization ---------------------------------------------------------------------------------------------
def _under(scope: str, assigned: str) -> bool:
    scope = scope.lower().rstrip("/")
    return scope == assigned or scope.startswith(assigned + "/")


def can(estate: Estate, principal: str, action: str, scope: str) -> bool:
    """True if some role assignment of `principal` covers `scope` (prefix) with an action matching `action`."""
    wanted = action.lower()
    for ra in estate.role_assignments:
        if ra.principal.lower() != principal.lower() or not _under(scope, ra.scope):
            continue
        if any(fnmatch.fnmatchcase(wanted, pattern.lower()) for pattern in ra.actions):
            return True
    return False


def authorization_failed(surface: str, claims: Claims, action: str, scope: str) -> web.Response:
    message = AUTH_FAILED.format(app=claims.app_id, oid=claims.object_id, action=action, scope=scope)
    return error(surface, 403, "AuthorizationFailed", message)


def visible_subscriptions(estate: Estate, principal: str) -> list[str]:
    """Subscriptions of the estate on (or under) which the principal has any role assignment."""
    result = []
    for sub in estate.subscriptions:
        scope = f"/subscriptions/{sub}".lower()
        if any(
            ra.principal.lower() == principal.lower() and (_under(scope, ra.scope) or _under(ra.scope, scope))
            for ra in estate.role_assignments
        ):
            result.append(sub)
    return result


# -- resource shapes -------------------------------------------------------------------------------------------
def _guid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts).lower()))


def node_resource_group(c: Cluster) -> str:
    return f"MC_{c.resource_group}_{c.name}_{c.location}"


def fqdn(c: Cluster) -> str:
    suffix = hashlib.sha256(c.id.lower().encode()).hexdigest()[:8]
    return f"{c.name[:30]}-dns-{suffix}.hcp.{c.location}.azmk8s.io"


def cluster_json(c: Cluster, tenant_id: str) -> dict[str, Any]:
    """A managed cluster as ARM's GET returns it (never with a secret)."""
    props: dict[str, Any] = {
        "provisioningState": c.provisioning_state,
        "powerState": {"code": "Running"},
        "kubernetesVersion": c.kubernetes_version,
        "currentKubernetesVersion": c.kubernetes_version,
        "dnsPrefix": f"{c.name[:30]}-dns",
        "fqdn": fqdn(c),
        "azurePortalFQDN": fqdn(c).replace(".hcp.", ".portal.hcp."),
        "agentPoolProfiles": [
            {
                "name": "nodepool1",
                "count": c.node_count,
                "vmSize": "Standard_D4ds_v5",
                "osDiskSizeGB": 128,
                "osDiskType": "Ephemeral",
                "maxPods": 110,
                "type": "VirtualMachineScaleSets",
                "provisioningState": c.provisioning_state,
                "powerState": {"code": "Running"},
                "orchestratorVersion": c.kubernetes_version,
                "currentOrchestratorVersion": c.kubernetes_version,
                "mode": "System",
                "osType": "Linux",
                "osSKU": "Ubuntu",
                "nodeImageVersion": "AKSUbuntu-2204gen2containerd-202510.13.0",
                "enableFIPS": False,
            }
        ],
        "servicePrincipalProfile": {"clientId": c.client_id},
        "nodeResourceGroup": node_resource_group(c),
        "enableRBAC": True,
        "supportPlan": "KubernetesOfficial",
        "networkProfile": {
            "networkPlugin": "azure",
            "networkPluginMode": "overlay",
            "loadBalancerSku": "standard",
            "podCidr": "10.244.0.0/16",
            "serviceCidr": "10.0.0.0/16",
            "dnsServiceIP": "10.0.0.10",
            "outboundType": "loadBalancer",
        },
        "maxAgentPools": 100,
        "disableLocalAccounts": False,
    }
    if c.aad_profile is not None:
        aad = {k: v for k, v in c.aad_profile.items() if k.lower() != "serverappsecret"}
        aad["managed"] = bool(aad.get("managed", False))
        props["aadProfile"] = aad
    if c.kubelet_identity:
        mc = node_resource_group(c)
        props["identityProfile"] = {
            "kubeletidentity": {
                "resourceId": f"/subscriptions/{c.subscription_id}/resourcegroups/{mc}/providers/"
                f"Microsoft.ManagedIdentity/userAssignedIdentities/{c.name}-agentpool",
                "clientId": _guid(c.id, "kubelet-client"),
                "objectId": _guid(c.id, "kubelet-object"),
            }
        }
    body: dict[str, Any] = {
        "id": c.id,
        "location": c.location,
        "name": c.name,
        "tags": dict(c.tags),
        "type": CLUSTER_TYPE,
        "sku": {"name": "Base", "tier": "Free"},
        "properties": props,
    }
    if c.identity_type == "SystemAssigned":
        body["identity"] = {
            "type": "SystemAssigned",
            "principalId": _guid(c.id, "identity"),
            "tenantId": tenant_id,
        }
    elif c.identity_type == "UserAssigned":
        uami = (
            f"/subscriptions/{c.subscription_id}/resourceGroups/{c.resource_group}/providers/"
            f"Microsoft.ManagedIdentity/userAssignedIdentities/{c.name}-identity"
        )
        body["identity"] = {
            "type": "UserAssigned",
            "userAssignedIdentities": {
                uami: {"principalId": _guid(uami, "object"), "clientId": _guid(uami, "client")},
            },
        }
    return body


def maintenance_json(c: Cluster, window: MaintenanceWindow) -> dict[str, Any]:
    props: dict[str, Any] = {}
    if window.maintenance_window is not None:
        props["maintenanceWindow"] = window.maintenance_window
    else:
        props["timeInWeek"] = window.time_in_week
        props["notAllowedTime"] = window.not_allowed_time
    return {
        "id": f"{c.id}/maintenanceConfigurations/{window.name}",
        "name": window.name,
        "type": "Microsoft.ContainerService/managedClusters/maintenanceConfigurations",
        "properties": props,
    }


def subscription_json(estate: Estate, sub: str) -> dict[str, Any]:
    spec = estate.subscriptions[sub]
    return {
        "id": f"/subscriptions/{sub}",
        "authorizationSource": "RoleBased",
        "managedByTenants": [],
        "subscriptionId": sub,
        "tenantId": estate.tenant_id,
        "displayName": spec.get("display_name", sub),
        "state": spec.get("state", "Enabled"),
        "subscriptionPolicies": {
            "locationPlacementId": "Public_2014-09-01",
            "quotaId": "PayAsYouGo_2014-09-01",
            "spendingLimit": "Off",
        },
    }


# -- kubeconfig ------------------------------------------------------------------------------------------------
_CA_CACHE: dict[tuple[str, str], bytes] = {}


def cluster_ca_pem(c: Cluster) -> bytes:
    """A real self-signed CA certificate whose notAfter is the cluster's certificate expiry (cached per cluster)."""
    key = (c.id.lower(), iso(c.cert_expiry) or "")
    cached = _CA_CACHE.get(key)
    if cached is not None:
        return cached
    if len(_CA_CACHE) > 20000:
        _CA_CACHE.clear()
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")])
    not_after = c.cert_expiry.astimezone(UTC).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - CA_LIFETIME)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    _CA_CACHE[key] = pem
    return pem


def kubeconfig(c: Cluster) -> str:
    ca = base64.b64encode(cluster_ca_pem(c)).decode()
    user = f"clusterUser_{c.resource_group}_{c.name}"
    if c.aad_profile is not None:
        auth = (
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      command: kubelogin\n"
            "      args:\n      - get-token\n      - --login\n      - devicecode\n"
        )
    else:
        auth = f"    token: {hashlib.sha256(('token:' + c.id.lower()).encode()).hexdigest()}\n"
    return (
        "apiVersion: v1\nclusters:\n- cluster:\n"
        f"    certificate-authority-data: {ca}\n    server: https://{fqdn(c)}:443\n  name: {c.name}\n"
        f"contexts:\n- context:\n    cluster: {c.name}\n    user: {user}\n  name: {c.name}\n"
        f"current-context: {c.name}\nkind: Config\npreferences: {{}}\nusers:\n- name: {user}\n  user:\n{auth}"
    )


# -- request plumbing ------------------------------------------------------------------------------------------
class Call:
    """One authenticated, throttled ARM request."""

    def __init__(self, emu: Emulator, claims: Claims, request: web.Request) -> None:
        self.emu = emu
        self.claims = claims
        self.request = request
        self.api_version = request.query.get("api-version", "")

    def authorize(self, action: str, scope: str) -> None:
        if not can(self.emu.estate, self.claims.app_id, action, scope):
            raise Reply(authorization_failed("arm", self.claims, action, scope))

    def subscription(self) -> str:
        sub = self.request.match_info["subscription"].lower()
        if sub not in self.emu.estate.subscriptions:
            raise Reply(error("arm", 404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found."))
        return sub

    def resource_group(self, sub: str) -> str:
        rg = self.request.match_info["resource_group"]
        if not any(
            c.subscription_id.lower() == sub and c.resource_group.lower() == rg.lower()
            for c in self.emu.estate.clusters.values()
        ):
            raise Reply(error("arm", 404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found."))
        return rg

    def cluster(self, action: str) -> Cluster:
        info = self.request.match_info
        sub = info["subscription"].lower()
        scope = (
            f"/subscriptions/{sub}/resourceGroups/{info['resource_group']}/providers/"
            f"Microsoft.ContainerService/managedClusters/{info['name']}"
        )
        self.authorize(action, scope)
        sub = self.subscription()
        self.resource_group(sub)
        cluster = self.emu.estate.clusters.get(scope.lower())
        if cluster is None:
            message = (
                f"The Resource 'Microsoft.ContainerService/managedClusters/{info['name']}' under resource group "
                f"'{info['resource_group']}' was not found. For more details please go to "
                "https://aka.ms/ARMResourceNotFoundFix"
            )
            raise Reply(error("arm", 404, "ResourceNotFound", message))
        return cluster

    def url(self, path: str, **query: str) -> str:
        params = "&".join(f"{k}={v}" for k, v in {"api-version": self.api_version, **query}.items())
        return f"{self.emu.endpoint}{path}?{params}"


def route(write: bool, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        emu = emulator_of(request)
        claims = emu.authenticate(request, "arm")
        bucket, header = (
            (emu.arm_writes, "x-ms-ratelimit-remaining-subscription-writes")
            if write
            else (emu.arm_reads, "x-ms-ratelimit-remaining-subscription-reads")
        )
        # Per subscription, per principal and per operation type (docs/emulator.md, ARM "Throttling").
        scope = request.match_info.get("subscription", "").lower()
        allowed, remaining, wait = bucket.take(f"{claims.app_id}/{scope}")
        if not allowed:
            response = throttled("arm", wait)
            response.headers[header] = "0"
            return response
        try:
            if "api-version" not in request.query:
                message = "The api-version query parameter (?api-version=) is required for all requests."
                raise Reply(error("arm", 400, "MissingApiVersionParameter", message))
            emu.estate.settle_operations()
            response = await handler(request, Call(emu, claims, request))
        except Reply as reply:
            response = reply.response
        response.headers[header] = str(remaining)
        return response

    return wrapped


def _page(call: Call, items: list[dict[str, Any]], path: str) -> web.Response:
    size = max(1, int(call.emu.seed.get("limits", {}).get("arm_page_size", 100)))
    try:
        start = max(0, int(call.request.query.get("$skipToken", "0")))
    except ValueError:
        raise Reply(error("arm", 400, "InvalidSkipToken", "The skip token is invalid.")) from None
    body: dict[str, Any] = {"value": items[start : start + size]}
    if start + size < len(items):
        body["nextLink"] = call.url(path, **{"$skipToken": str(start + size)})
    return web.json_response(body)


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
    return _page(call, _readable_clusters(call, sub, None), request.path)


async def list_clusters_by_rg(request: web.Request, call: Call) -> web.Response:
    sub = call.subscription()
    rg = call.resource_group(sub)
    return _page(call, _readable_clusters(call, sub, rg), request.path)


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


def _start(
    call: Call,
    cluster: Cluster,
    kind: str,
    apply: Callable[[Estate, Cluster, float], tuple[str, str] | None],
    seconds: float,
) -> web.Response:
    emu = call.emu
    now = emu.clock.timestamp()
    rule = emu.faults.take("arm", kind, ("lro_fail",), call.request.path)
    op = Operation(
        id=str(uuid.uuid4()),
        cluster_id=cluster.id,
        location=cluster.location,
        subscription_id=cluster.subscription_id,
        kind=kind,
        started=now,
        done_at=now + seconds,
        fail_message=(rule.message or f"Injected failure of {kind}.") if rule is not None else None,
        apply=apply,
    )
    emu.estate.operations[op.id] = op
    cluster.provisioning_state = "Updating"
    base = OPERATIONS.format(subscription=cluster.subscription_id, location=cluster.location)
    headers = {
        "Azure-AsyncOperation": call.url(f"{base}/operations/{op.id}"),
        "Location": call.url(f"{base}/operationresults/{op.id}"),
        "Retry-After": str(min(10, max(0, math.ceil(seconds)))),
    }
    return web.Response(status=202, headers=headers)


def _duration(estate: Estate, cluster: Cluster) -> float:
    return estate.lro_base_seconds + estate.lro_per_node_seconds * cluster.node_count


def _not_busy(cluster: Cluster) -> None:
    if cluster.provisioning_state == "Updating":
        raise Reply(error("arm", 409, "OperationNotAllowed", BUSY))


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
    _not_busy(cluster)
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
    if refusal is not None or found is None:
        raise Reply(error("arm", 400, "BadRequest", INVALID_SP.format(refusal=refusal or "")))
    key_id = found.key_id

    def apply(estate: Estate, target: Cluster, at: float) -> tuple[str, str] | None:
        app = estate.applications.get(target.client_id)
        password = next((p for p in estate.all_passwords(app) if p.hash == digest), None) if app else None
        if password is None or not password.start.timestamp() <= at < password.end.timestamp():
            refused = f"AADSTS7000215: Invalid client secret provided for app '{target.client_id}'."
            return "BadRequest", INVALID_SP.format(refusal=refused)
        estate.account(target, at=at)
        target.held_hash = digest
        target.held_key_id = key_id
        return None

    return _start(call, cluster, "resetServicePrincipalProfile", apply, _duration(estate, cluster))


async def reset_aad_profile(request: web.Request, call: Call) -> web.Response:
    cluster = call.cluster("Microsoft.ContainerService/managedClusters/resetAADProfile/action")
    body = json_body(await request.text(), "arm")
    _not_busy(cluster)
    fields = body.items() if isinstance(body, dict) else ()
    public = {k: v for k, v in fields if k in ("clientAppID", "serverAppID", "tenantID")}
    del body

    def apply(estate: Estate, target: Cluster, at: float) -> tuple[str, str] | None:
        target.aad_profile = {**(target.aad_profile or {}), **public, "managed": False}
        return None

    return _start(call, cluster, "resetAADProfile", apply, _duration(call.emu.estate, cluster))


async def rotate_certificates(request: web.Request, call: Call) -> web.Response:
    cluster = call.cluster("Microsoft.ContainerService/managedClusters/rotateClusterCertificates/action")
    _not_busy(cluster)

    def apply(estate: Estate, target: Cluster, at: float) -> tuple[str, str] | None:
        target.cert_expiry = datetime.fromtimestamp(at, UTC) + CA_LIFETIME
        return None

    return _start(call, cluster, "rotateClusterCertificates", apply, _duration(call.emu.estate, cluster))


def _operation(call: Call, action: str, kind: str) -> Operation:
    info = call.request.match_info
    sub = info["subscription"].lower()
    scope = f"{OPERATIONS.format(subscription=sub, location=info['location'])}/{kind}/{info['operation']}"
    call.authorize(action, scope)
    op = call.emu.estate.operations.get(info["operation"])
    if op is None or op.subscription_id.lower() != sub or op.location.lower() != info["location"].lower():
        raise Reply(error("arm", 404, "NotFound", f"The operation '{info['operation']}' could not be found."))
    return op


async def operation_status(request: web.Request, call: Call) -> web.Response:
    op = _operation(call, "Microsoft.ContainerService/locations/operations/read", "operations")
    body: dict[str, Any] = {
        "name": op.id,
        "status": op.status,
        "startTime": iso(datetime.fromtimestamp(op.started, UTC)),
    }
    if op.ended is not None:
        body["endTime"] = iso(datetime.fromtimestamp(op.ended, UTC))
    if op.status == "Failed":
        body["error"] = {"code": op.fail_code, "message": op.fail_message or ""}
    return web.json_response(body)


async def operation_result(request: web.Request, call: Call) -> web.Response:
    op = _operation(call, "Microsoft.ContainerService/locations/operationresults/read", "operationresults")
    if op.status == "InProgress":
        remaining = max(0, math.ceil(op.done_at - call.emu.clock.timestamp()))
        return web.Response(status=202, headers={"Location": str(request.url), "Retry-After": str(min(10, remaining))})
    if op.status == "Failed":
        status = 400 if op.fail_code == "BadRequest" else 500
        raise Reply(error("arm", status, op.fail_code, op.fail_message or ""))
    return web.Response(status=204)


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
    r.add_get(OPERATIONS + "/operations/{operation}", route(False, operation_status), name="arm.operationStatus")
    r.add_get(OPERATIONS + "/operationresults/{operation}", route(False, operation_result), name="arm.operationResult")
