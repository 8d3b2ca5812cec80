"""`GET /_emulator/state`: the truth tests and simulations judge the product by (hashes only, never a value).

Per cluster: which secret the control plane and every node pool hold, whether Entra accepts it now, and each
component's outage seconds; per application every password, current and removed, with who created and who
removed it; per vault every version; every AKS operation.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from emulator.model import Estate
from emulator.records import Cluster, Holding, Vault, iso


def _holding(estate: Estate, cluster: Cluster, holding: Holding) -> dict[str, Any]:
    return {
        "heldKeyId": holding.key_id,
        "heldSecretSha256": holding.hash,
        "heldValid": estate.hash_valid(cluster.client_id, holding.hash) if holding.hash else None,
        "outage_seconds": round(holding.outage_seconds, 3),
    }


def cluster_truth(estate: Estate, c: Cluster) -> dict[str, Any]:
    needs = {name for name, _ in c.holdings()}
    return {
        "id": c.id,
        "clientId": c.client_id,
        "identityType": c.identity_type,
        "identityResourceId": c.identity_resource_id,
        "kubeletIdentity": c.kubelet_identity,
        "heldKeyId": c.held_key_id,
        "heldSecretSha256": c.held_hash,
        "heldValid": estate.hash_valid(c.client_id, c.held_hash) if c.held_hash else None,
        "outage_seconds": round(c.outage_seconds, 3),
        "controlPlane": {**_holding(estate, c, c.control_plane), "usesSecret": "controlPlane" in needs},
        "nodePools": [
            {
                "name": p.name,
                "count": p.count,
                **_holding(estate, c, p.holding),
                "usesSecret": p.name in needs,
                "kubeletIdentity": c.kubelet_identity or p.kubelet_identity,
            }
            for p in c.node_pools
        ],
        "provisioningState": c.provisioning_state,
        "powerState": c.power_state,
        "certExpiry": iso(c.cert_expiry),
        "tags": c.tags,
    }


def _vault(vault: Vault) -> dict[str, Any]:
    def versions(items: list[Any]) -> list[dict[str, Any]]:
        return [
            {
                "version": v.version,
                "valueSha256": v.value_hash,
                "tags": v.tags,
                "contentType": v.content_type,
                "enabled": v.enabled,
                "exp": v.expires,
                "created": v.created,
            }
            for v in items
        ]

    return {
        "name": vault.name,
        "secrets": {name: versions(items) for name, items in vault.secrets.items()},
        "deletedSecrets": {name: versions(d.versions) for name, d in vault.deleted.items()},
    }


def truth(estate: Estate) -> dict[str, Any]:
    estate.settle_operations()
    for c in estate.clusters.values():
        estate.account(c)
    apps = [
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
        for app in estate.applications.values()
    ]
    return {
        "now": iso(estate.clock.now()),
        "tenantId": estate.tenant_id,
        "clusters": [cluster_truth(estate, c) for c in estate.clusters.values()],
        "deletedClusters": estate.deleted_clusters,
        "applications": apps,
        # Apart from `applications`, so that comparing applications before and after shows only live passwords.
        "removedPasswords": [
            {"appId": app.app_id, **r.truth()} for app in estate.applications.values() for r in app.removed
        ],
        "vaults": [_vault(v) for v in estate.vaults.values()],
        # Operations that failed because the identity a component uses lacks a role it needs (emulator.identities).
        "brokenOperations": [b.truth() for b in estate.identity.broken],
        "operations": [
            {
                "id": op.id,
                "clusterId": op.cluster_id,
                "kind": op.kind,
                "status": op.status,
                "started": iso(datetime.fromtimestamp(op.started, UTC)),
            }
            for op in estate.operations.values()
        ],
        "modes": estate.modes.public(),
    }
