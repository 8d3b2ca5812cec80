"""The migration plan's pure rules (shared/migration/plan.py), table-driven: stages, which identity needs which
role, what blocks, and the commands and Bicep the plan prints."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from shared.aks import ClusterInfo
from shared.migration import plan as rules
from shared.migration.plan import Component, Held, Stage

SUB = "00000000-0000-4000-8000-000000000001"
NETWORK, ACR, CONTRIBUTOR = (
    "4d97b98b-1d4f-4787-a291-c67834d212e7",
    "7f951dda-4ed3-4680-a7ca-43fe172d538d",
    "b24988ac-6180-42a0-ab88-20f7382dd24c",
)
SUBNET = f"/subscriptions/{SUB}/resourceGroups/rg-net/providers/Microsoft.Network/virtualNetworks/v/subnets/s"
REGISTRY = f"/subscriptions/{SUB}/resourceGroups/rg-acr/providers/Microsoft.ContainerRegistry/registries/r"
NODE_RG = f"/subscriptions/{SUB}/resourceGroups/MC_rg-a_aks-a_westeurope"
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
CLUSTER = ClusterInfo(
    id=f"/subscriptions/{SUB}/resourceGroups/rg-a/providers/Microsoft.ContainerService/managedClusters/aks-a",
    subscription_id=SUB,
    resource_group="rg-a",
    name="aks-a",
    location="westeurope",
    tags={},
    sp_client_id="11111111-0000-4000-8000-000000000001",
    identity_type=None,
    kubelet_on_sp=True,
    legacy_aad_server_app_id=None,
    provisioning_state="Succeeded",
    node_count=4,
    kubernetes_version="1.33.2",
)


@pytest.mark.parametrize(
    ("changes", "stage"),
    [
        ({}, Stage.SERVICE_PRINCIPAL),
        ({"identity_type": "UserAssigned"}, Stage.CONTROL_PLANE_ON_IDENTITY),
        ({"identity_type": "UserAssigned", "sp_client_id": None, "kubelet_on_sp": False}, Stage.MANAGED_IDENTITY),
    ],
)
def test_stages(changes: dict[str, object], stage: Stage) -> None:
    assert rules.stage_of(replace(CLUSTER, **changes)) is stage  # type: ignore[arg-type]


def test_counts_keep_every_stage() -> None:
    counts = rules.count_stages({}, [CLUSTER, replace(CLUSTER, identity_type="SystemAssigned")])
    assert counts == {"service_principal": 1, "control_plane_on_identity": 1, "managed_identity": 0}


def test_kubelet_gets_acr_pull_the_control_plane_the_rest_and_the_node_resource_group_is_left_to_aks() -> None:
    cp, kubelet = rules.identity_ids(CLUSTER)
    held = [Held(NETWORK, SUBNET), Held(ACR, REGISTRY), Held(CONTRIBUTOR, NODE_RG), Held(NETWORK, SUBNET)]
    grants = rules.needed_grants(CLUSTER, held, cp, kubelet)
    assert [(g.component, g.role, g.identity) for g in grants] == [
        (Component.KUBELET, "AcrPull", kubelet),
        (Component.CONTROL_PLANE, "Network Contributor", cp),
        (Component.CONTROL_PLANE, "Managed Identity Operator", cp),  # over the pre-created kubelet identity
    ]
    assert grants[-1].scope == kubelet and cp.endswith("/id-aks-aks-a") and kubelet.endswith("/id-aks-aks-a-kubelet")


def test_an_operator_identity_replaces_the_control_plane_one_and_is_not_created() -> None:
    given = f"/subscriptions/{SUB}/resourceGroups/ops/providers/Microsoft.ManagedIdentity/userAssignedIdentities/ops"
    plan = rules.build(CLUSTER, [], pools=["system"], window_opens=NOW, windows="any time", identity=given)
    assert plan.control_plane_identity == given
    assert [c for c in plan.commands if c.startswith("az identity create")] == [
        "az identity create -g rg-a -n id-aks-aks-a-kubelet -l westeurope"
    ]


@pytest.mark.parametrize(
    ("changes", "kwargs", "stops", "text"),
    [
        ({"power_state": "Stopped"}, {}, True, "stopped"),
        ({}, {"window_opens": None}, True, "no maintenance window will open"),
        ({}, {"problems": ["no service principal"]}, True, "no service principal"),
        ({}, {"sharing": ["aks-b", "aks-c"]}, False, "also used by 2 other cluster(s): aks-b, aks-c"),
    ],
)
def test_blockers(changes: dict[str, object], kwargs: dict[str, object], stops: bool, text: str) -> None:
    args: dict[str, object] = {"pools": ["system"], "window_opens": NOW, "windows": "default", **kwargs}
    plan = rules.build(replace(CLUSTER, **changes), [], **args)  # type: ignore[arg-type]
    found = [b for b in plan.blockers if text in b.text]
    assert len(found) == 1 and found[0].stops_execution is stops and plan.executable is not stops


def test_pools_already_upgraded_are_not_planned_again() -> None:
    half = replace(CLUSTER, identity_type="UserAssigned")
    plan = rules.build(half, [], pools=["system", "user"], pools_done=["system"], window_opens=NOW, windows="w")
    assert [p.name for p in plan.pools] == ["user"]
    assert [c for c in plan.commands if "nodepool upgrade" in c] == [
        "az aks nodepool upgrade -g rg-a --cluster-name aks-a -n user --node-image-only"
    ]


def test_bicep_declares_each_scope_and_grants_at_it() -> None:
    cp, kubelet = rules.identity_ids(CLUSTER)
    text = rules.bicep(
        rules.needed_grants(
            CLUSTER,
            [Held(NETWORK, SUBNET), Held(CONTRIBUTOR, f"/subscriptions/{SUB}/resourceGroups/rg-aci")],
            cp,
            kubelet,
        )
    )
    assert (
        "resource scope1 'Microsoft.Network/virtualNetworks/subnets@2023-09-01' existing = {\n  name: 'v/s'\n}" in text
    )
    assert "name: guid(resourceGroup().id, controlPlanePrincipalId, 'b24988ac-6180-42a0-ab88-20f7382dd24c')" in text
    assert text.count("principalType: 'ServicePrincipal'") == 3
