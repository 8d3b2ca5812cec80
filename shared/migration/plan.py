"""The migration plan of one service-principal cluster, as pure rules: where it stands (`Stage`), which of its
service principal's role assignments the new identities need (control plane vs kubelet), the identities to use
(named predictably), the grants as `az` lines and Bicep, the node pools still to upgrade and when their window
opens, and what blocks. Switching back is impossible once the service principal is gone: every plan says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from shared.aks import ClusterInfo
from shared.credentials import HeldPassword, product_created
from shared.rotation.plan import retire_candidates

IRREVERSIBLE = (
    "Once a cluster runs on a managed identity it cannot switch back to a service principal; keep the "
    "application (and a valid secret) until every node pool of every cluster that uses it has moved."
)
APP_VISIBILITY = (
    "Other users of the application (scripts, pipelines, clusters in subscriptions the product cannot read) are "
    "invisible to the product: check its sign-in logs before deleting it."
)
# Built-in role definition GUIDs (Azure built-in roles reference).
ROLE_NAMES: dict[str, str] = {
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "acdd72a7-3385-48ef-bd42-f606fba81ae7": "Reader",
    "4d97b98b-1d4f-4787-a291-c67834d212e7": "Network Contributor",
    "7f951dda-4ed3-4680-a7ca-43fe172d538d": "AcrPull",
    "f1a07417-d97a-45cb-824c-7a7467783830": "Managed Identity Operator",
    "9980e02c-c2be-4d73-94e8-173b1dc7cf3c": "Virtual Machine Contributor",
    "b12aa53e-6015-4669-85d0-8515ebb3ae7f": "Private DNS Zone Contributor",
    "befefa01-2a29-4197-83a8-272ff33ce314": "DNS Zone Contributor",
}
MANAGED_IDENTITY_OPERATOR = "f1a07417-d97a-45cb-824c-7a7467783830"
# Roles kubelet uses (pulling images); every other role the service principal holds serves the control plane
# (load balancers, subnets, disks, DNS, ACI): docs/migration.md.
KUBELET_ROLES = frozenset({"7f951dda-4ed3-4680-a7ca-43fe172d538d"})
_BICEP_TYPES = {
    "microsoft.network/virtualnetworks/subnets": "2023-09-01",
    "microsoft.network/virtualnetworks": "2023-09-01",
    "microsoft.containerregistry/registries": "2023-07-01",
    "microsoft.network/privatednszones": "2020-06-01",
    "microsoft.network/dnszones": "2018-05-01",
    "microsoft.managedidentity/userassignedidentities": "2023-01-31",
}


class Stage(StrEnum):
    """Migration progress of a cluster (discovery, `scan` and `GET /api/status` count each)."""

    SERVICE_PRINCIPAL = "service_principal"
    CONTROL_PLANE_ON_IDENTITY = "control_plane_on_identity"  # kubelet (some node pools) still on the SP
    MANAGED_IDENTITY = "managed_identity"


class Component(StrEnum):
    CONTROL_PLANE = "control_plane"
    KUBELET = "kubelet"


def stage_of(cluster: ClusterInfo) -> Stage:
    if cluster.sp_client_id is None:
        return Stage.MANAGED_IDENTITY
    if cluster.identity_type is not None:
        return Stage.CONTROL_PLANE_ON_IDENTITY
    return Stage.SERVICE_PRINCIPAL


def count_stages(counts: dict[str, int], clusters: Iterable[ClusterInfo]) -> dict[str, int]:
    """Add `clusters` to `counts` (clusters per stage, every stage present); discovery counts page by page."""
    for stage in Stage:
        counts.setdefault(stage.value, 0)
    for cluster in clusters:
        counts[stage_of(cluster).value] += 1
    return counts


def role_name(role_id: str) -> str:
    return ROLE_NAMES.get(role_id.lower(), role_id)


def identity_ids(cluster: ClusterInfo, override: str | None = None) -> tuple[str, str]:
    """(control-plane identity, kubelet identity) resource ids: `id-aks-<cluster>` and `id-aks-<cluster>-kubelet`
    in the cluster's resource group, or the operator's control-plane identity (`--identity`)."""
    base = (
        f"/subscriptions/{cluster.subscription_id}/resourceGroups/{cluster.resource_group}"
        "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/"
    )
    return override or f"{base}id-aks-{cluster.name}", f"{base}id-aks-{cluster.name}-kubelet"


@dataclass(frozen=True)
class Held:
    """A role assignment the service principal holds."""

    role_id: str
    scope: str

    @property
    def role(self) -> str:
        return role_name(self.role_id)


@dataclass(frozen=True)
class Grant:
    """A role assignment the new identity needs before it takes over."""

    component: Component
    role_id: str
    scope: str
    identity: str  # resource id of the identity that receives it

    @property
    def role(self) -> str:
        return role_name(self.role_id)


@dataclass(frozen=True)
class PoolStep:
    name: str
    window_opens: datetime | None  # None: no window will open; equal to now: open now
    windows: str


@dataclass(frozen=True)
class Blocker:
    text: str
    stops_execution: bool  # False: it blocks only retiring the application


@dataclass
class ClusterPlan:
    cluster_id: str
    name: str
    stage: Stage
    app_id: str | None
    held: list[Held] = field(default_factory=list)
    control_plane_identity: str = ""
    kubelet_identity: str = ""
    grants: list[Grant] = field(default_factory=list)
    pools: list[PoolStep] = field(default_factory=list)
    blockers: list[Blocker] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    bicep: str = ""
    irreversible: str = IRREVERSIBLE

    @property
    def executable(self) -> bool:
        return not any(b.stops_execution for b in self.blockers)


def _node_resource_group_scope(cluster: ClusterInfo, scope: str) -> bool:
    """AKS grants its own identities on the node resource group (MC_...): nothing to carry over there."""
    prefix = f"/subscriptions/{cluster.subscription_id}/resourcegroups/mc_".lower()
    return scope.lower().startswith(prefix)


def needed_grants(cluster: ClusterInfo, held: Sequence[Held], cp: str, kubelet: str) -> list[Grant]:
    """What the identities need: each role the SP holds outside the node resource group, for the component that
    uses it, plus Managed Identity Operator for the control plane over the kubelet identity (a pre-created kubelet
    identity needs it)."""
    grants: list[Grant] = []
    for h in sorted(set(held), key=lambda x: (x.scope.lower(), x.role_id)):
        if _node_resource_group_scope(cluster, h.scope):
            continue
        kubelet_role = h.role_id.lower() in KUBELET_ROLES
        component = Component.KUBELET if kubelet_role else Component.CONTROL_PLANE
        grants.append(Grant(component, h.role_id.lower(), h.scope, kubelet if kubelet_role else cp))
    grants.append(Grant(Component.CONTROL_PLANE, MANAGED_IDENTITY_OPERATOR, kubelet, cp))
    return grants


def _name(resource_id: str) -> str:
    return resource_id.rstrip("/").rsplit("/", 1)[-1]


def az_commands(
    cluster: ClusterInfo, grants: Sequence[Grant], cp: str, kubelet: str, pools: Sequence[str]
) -> list[str]:
    rg = cluster.resource_group
    lines = (
        [f"az identity create -g {rg} -n {_name(cp)} -l {cluster.location}"] if _name(cp).startswith("id-aks-") else []
    )
    lines.append(f"az identity create -g {rg} -n {_name(kubelet)} -l {cluster.location}")
    for grant in grants:
        principal = f"$(az identity show --ids {grant.identity} --query principalId -o tsv)"
        lines.append(
            f"az role assignment create --assignee-object-id {principal} --assignee-principal-type ServicePrincipal "
            f'--role "{grant.role}" --scope {grant.scope}'
        )
    lines.append(
        f"az aks update -g {rg} -n {cluster.name} --enable-managed-identity --assign-identity {cp} "
        f"--assign-kubelet-identity {kubelet}"
    )
    lines += [f"az aks nodepool upgrade -g {rg} --cluster-name {cluster.name} -n {p} --node-image-only" for p in pools]
    return lines


def _existing(index: int, scope: str) -> tuple[str, str]:
    """(Bicep declaration of the scope resource, symbol) for a resource scope; ("", "") for a resource group."""
    parts = scope.strip("/").split("/")
    if len(parts) <= 4:
        return "", ""
    tail = parts[5:]  # namespace, type, name, [type, name ...]
    namespace, rest = tail[0], tail[1:]
    types, names = rest[0::2], rest[1::2]
    full = "/".join([namespace, *types])
    version = _BICEP_TYPES.get(full.lower(), "<api-version>")
    symbol = f"scope{index}"
    return f"resource {symbol} '{full}@{version}' existing = {{\n  name: '{'/'.join(names)}'\n}}\n", symbol


def bicep(grants: Sequence[Grant]) -> str:
    """Role assignments as Bicep: one block per grant, to deploy in the resource group of its scope (the
    principal ids are parameters: the identities' `principalId` once created)."""
    out = [
        "// Deploy each block in the resource group of its scope (az deployment group create -g <rg> -f grants.bicep).",
        "param controlPlanePrincipalId string",
        "param kubeletPrincipalId string",
        "",
    ]
    for index, grant in enumerate(grants):
        declaration, symbol = _existing(index, grant.scope)
        principal = "kubeletPrincipalId" if grant.component is Component.KUBELET else "controlPlanePrincipalId"
        target = f"{symbol}.id" if symbol else "resourceGroup().id"
        out.append(f"// {grant.role} on {grant.scope}")
        if declaration:
            out.append(declaration.rstrip("\n"))
        out.append(f"resource grant{index} 'Microsoft.Authorization/roleAssignments@2022-04-01' = {{")
        out.append(f"  name: guid({target}, {principal}, '{grant.role_id}')")
        if symbol:
            out.append(f"  scope: {symbol}")
        out.append("  properties: {")
        role = f"subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '{grant.role_id}')"
        out.append(f"    roleDefinitionId: {role}")
        out.append(f"    principalId: {principal}")
        out.append("    principalType: 'ServicePrincipal'")
        out.append("  }")
        out.append("}")
        out.append("")
    return "\n".join(out)


def build(
    cluster: ClusterInfo,
    held: Sequence[Held],
    *,
    pools: Sequence[str],
    pools_done: Sequence[str] = (),
    window_opens: datetime | None,
    windows: str,
    sharing: Sequence[str] = (),
    identity: str | None = None,
    problems: Sequence[str] = (),
) -> ClusterPlan:
    """The plan of one cluster. `sharing`: other clusters using the same application; `problems`: what the
    collection could not read (each stops execution)."""
    stage = stage_of(cluster)
    cp, kubelet = identity_ids(cluster, identity)
    grants = needed_grants(cluster, held, cp, kubelet)
    remaining = [p for p in pools if p not in set(pools_done)] if stage is not Stage.MANAGED_IDENTITY else []
    plan = ClusterPlan(
        cluster_id=cluster.id,
        name=cluster.name,
        stage=stage,
        app_id=cluster.sp_client_id,
        held=list(held),
        control_plane_identity=cp,
        kubelet_identity=kubelet,
        grants=grants,
        pools=[PoolStep(p, window_opens, windows) for p in remaining],
        commands=az_commands(cluster, grants, cp, kubelet, remaining),
        bicep=bicep(grants),
    )
    plan.blockers += [Blocker(p, True) for p in problems]
    if cluster.stopped:
        plan.blockers.append(Blocker("the cluster is stopped: start it first", True))
    if window_opens is None and remaining:
        plan.blockers.append(Blocker(f"no maintenance window will open ({windows})", True))
    if sharing:
        listed = ", ".join(sorted(sharing)[:5]) + (" …" if len(sharing) > 5 else "")
        text = f"application {cluster.sp_client_id} is also used by {len(sharing)} other cluster(s): {listed}"
        plan.blockers.append(Blocker(text + "; it stays until they have migrated too", False))
    if stage is not Stage.MANAGED_IDENTITY:
        plan.blockers.append(Blocker(APP_VISIBILITY, False))
    return plan


def retirement(held: Sequence[HeldPassword]) -> tuple[list[HeldPassword], list[HeldPassword]]:
    """(remove, keep) among an application's passwords once no cluster may hold any of them. The rotation's retire
    rule (`retire_candidates`): the keys the product knows it created go; foreign ones stay and are reported —
    something the product cannot see (a script, a pipeline) may sign in with them."""
    present = {h.password.key_id.lower(): h for h in held}
    ours = [h.password.key_id for h in held if product_created(h.password) is not None]
    remove = [present[key] for key in retire_candidates(ours, None, present)]
    return remove, [h for h in held if h not in remove]
