"""ARM resource shapes: managed clusters, maintenance configurations, subscriptions and kubeconfigs as ARM
returns them (azure-rest-api-specs, Microsoft.ContainerService aks/stable), never with a secret."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from emulator.model import Estate
from emulator.records import Cluster, MaintenanceWindow, iso

CLUSTER_TYPE = "Microsoft.ContainerService/ManagedClusters"
CA_LIFETIME = timedelta(days=365 * 30)


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
        "powerState": {"code": c.power_state},
        "kubernetesVersion": c.kubernetes_version,
        "currentKubernetesVersion": c.kubernetes_version,
        "dnsPrefix": f"{c.name[:30]}-dns",
        "fqdn": fqdn(c),
        "azurePortalFQDN": fqdn(c).replace(".hcp.", ".portal.hcp."),
        "agentPoolProfiles": [
            {
                "name": pool.name,
                "count": pool.count if c.power_state == "Running" else 0,
                "vmSize": "Standard_D4ds_v5",
                "osDiskSizeGB": 128,
                "osDiskType": "Ephemeral",
                "maxPods": 110,
                "type": "VirtualMachineScaleSets",
                "provisioningState": c.provisioning_state,
                "powerState": {"code": c.power_state},
                "orchestratorVersion": c.kubernetes_version,
                "currentOrchestratorVersion": c.kubernetes_version,
                "mode": "System" if index == 0 else "User",
                "osType": "Linux",
                "osSKU": "Ubuntu",
                "nodeImageVersion": "AKSUbuntu-2204gen2containerd-202510.13.0",
                "enableFIPS": False,
            }
            for index, pool in enumerate(c.node_pools)
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
    if c.kubelet_identity and c.kubelet_resource_id:  # a pre-created kubelet identity (emulator.identity_migration)
        props["identityProfile"] = {
            "kubeletidentity": {
                "resourceId": c.kubelet_resource_id,
                "clientId": _guid(c.kubelet_resource_id, "client"),
                "objectId": _guid(c.kubelet_resource_id, "object"),
            }
        }
    elif c.kubelet_identity:
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
        uami = c.identity_resource_id or (
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
