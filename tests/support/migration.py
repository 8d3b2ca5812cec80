"""Estates for migration tests: custom-VNet clusters (the control plane needs Network Contributor on a subnet in
another resource group), ACR-attached clusters (kubelet needs AcrPull on a shared registry) and an application
shared by two clusters; the service principals hold exactly what their clusters need, the emulator records any
operation a later identity cannot perform (truth `brokenOperations`)."""

from __future__ import annotations

import uuid
from typing import Any

from emulator.seeds import PRODUCT_APP_ID
from shared.permissions import MIGRATION_ARM_ACTIONS
from tests.support import world

NETWORK, ACR = "Network Contributor", "AcrPull"


def scopes(doc: dict[str, Any]) -> tuple[str, str]:
    sub = doc["subscriptions"][0]["id"]
    subnet = (
        f"/subscriptions/{sub}/resourceGroups/rg-net/providers/Microsoft.Network/virtualNetworks/vnet-hub/subnets/aks"
    )
    registry = f"/subscriptions/{sub}/resourceGroups/rg-acr/providers/Microsoft.ContainerRegistry/registries/acrshared"
    return subnet, registry


def estate(
    clusters: list[dict[str, Any]], *, propagation_seconds: float = 1800, lro_seconds: float = 600, seed: int = 11
) -> dict[str, Any]:
    """`world.estate` plus, per cluster spec: `vnet: true` (control plane on a custom subnet), `acr: true` (kubelet
    pulls from the shared registry), `pools` (node pool names, 2 nodes each); the product also holds migration's
    rights (the administrator of these tests)."""
    doc = world.estate(clusters, lro_seconds=lro_seconds, per_node_seconds=60, seed=seed)
    subnet, registry = scopes(doc)
    doc["rbac_propagation_seconds"] = propagation_seconds
    doc["grants"] = []
    sub = doc["subscriptions"][0]["id"]
    doc["role_assignments"].append(
        {"principal": PRODUCT_APP_ID, "scope": f"/subscriptions/{sub}", "actions": list(MIGRATION_ARM_ACTIONS)}
    )
    for app in doc["applications"]:
        app.setdefault("service_principal", {})["object_id"] = str(
            uuid.uuid5(uuid.NAMESPACE_URL, "sp:" + app["app_id"])
        )
    apps = {a["app_id"]: a for a in doc["applications"]}
    for spec, cluster in zip(clusters, doc["clusters"], strict=True):
        if spec.get("msi"):
            continue
        cluster["node_pools"] = [{"name": p, "count": 2} for p in spec.get("pools", ["system", "user"])]
        sp = apps[cluster["client_id"]]["service_principal"]["object_id"]
        needs = []
        if spec.get("vnet"):
            needs.append({"component": "controlPlane", "role": NETWORK, "scope": subnet})
        if spec.get("acr"):
            needs.append({"component": "kubelet", "role": ACR, "scope": registry})
        cluster["needs"] = needs
        for need in needs:
            grant = {"principal_id": sp, "role": need["role"], "scope": need["scope"]}
            if grant not in doc["grants"]:
                doc["grants"].append(grant)
        if "maintenance" in spec:
            cluster["maintenance"] = spec["maintenance"]
    return doc
