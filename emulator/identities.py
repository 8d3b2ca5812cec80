"""Cluster identities and their Azure role assignments: what a cluster's service principal or managed identities
may do, and what breaks when the identity in use lacks a role the service principal had.

Kept apart from `RoleAssignment` (the product's own ARM rights, `emulator.rbac`): these are the grants of the
*clusters'* principals (service principals, user-assigned identities), by role name at a scope. A grant created
through ARM takes `propagation_seconds` to take effect and to appear in lists (Microsoft: "Permissions granted to
a service principal associated with a cluster may take up to 60 minutes to propagate", docs/emulator.md).

A cluster's `needs` are what it actually does with Azure (the control plane joins load balancers to a custom
subnet; kubelet pulls from a registry). Whenever the identity a component uses changes, each need is checked
against the grants effective at that instant; a need no longer met is a `Broken` operation in the truth.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from emulator.records import iso

if TYPE_CHECKING:
    from emulator.model import Estate
    from emulator.records import Cluster

# Built-in role definition ids (Azure built-in roles reference, docs/emulator.md).
ROLE_IDS: dict[str, str] = {
    "Contributor": "b24988ac-6180-42a0-ab88-20f7382dd24c",
    "Reader": "acdd72a7-3385-48ef-bd42-f606fba81ae7",
    "Network Contributor": "4d97b98b-1d4f-4787-a291-c67834d212e7",
    "AcrPull": "7f951dda-4ed3-4680-a7ca-43fe172d538d",
    "Managed Identity Operator": "f1a07417-d97a-45cb-824c-7a7467783830",
    "Virtual Machine Contributor": "9980e02c-c2be-4d73-94e8-173b1dc7cf3c",
    "Private DNS Zone Contributor": "b12aa53e-6015-4669-85d0-8515ebb3ae7f",
    "DNS Zone Contributor": "befefa01-2a29-4197-83a8-272ff33ce314",
}
ROLE_NAMES = {guid: name for name, guid in ROLE_IDS.items()}
CONTROL_PLANE = "controlPlane"
# What a missing role breaks, as the truth names it.
OPERATIONS = {"AcrPull": "image pull", "Network Contributor": "load balancer / subnet join"}


def guid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts).lower()))


def covers(assigned: str, scope: str) -> bool:
    assigned, scope = assigned.lower().rstrip("/"), scope.lower().rstrip("/")
    return scope == assigned or scope.startswith(assigned + "/")


def role_id(role: str) -> str:
    """A role name or id (or a roleDefinitionId path) as the role definition GUID."""
    tail = role.rstrip("/").rsplit("/", 1)[-1]
    return ROLE_IDS.get(role, tail).lower()


@dataclass
class Grant:
    name: str  # the role assignment's GUID name
    scope: str
    principal_id: str
    principal_type: str
    role: str  # role definition GUID
    created: float
    created_by: str = "seed"

    def id(self) -> str:
        return f"{self.scope}/providers/Microsoft.Authorization/roleAssignments/{self.name}"


@dataclass
class Identity:
    """A user-assigned managed identity (principal and client ids derive from its resource id)."""

    resource_id: str
    location: str
    tags: dict[str, str]
    created: float

    @property
    def principal_id(self) -> str:
        return guid(self.resource_id, "object")

    @property
    def client_id(self) -> str:
        return guid(self.resource_id, "client")


@dataclass(frozen=True)
class Need:
    component: str  # "controlPlane" or "kubelet" (every node pool)
    role: str  # role definition GUID
    scope: str


@dataclass
class Broken:
    cluster_id: str
    component: str  # "controlPlane" or a node pool name
    role: str
    scope: str
    principal_id: str
    at: float

    def truth(self) -> dict[str, Any]:
        name = ROLE_NAMES.get(self.role, self.role)
        return {
            "clusterId": self.cluster_id,
            "component": self.component,
            "role": name,
            "scope": self.scope,
            "principalId": self.principal_id,
            "operation": OPERATIONS.get(name, "operation needing " + name),
            "at": iso(datetime.fromtimestamp(self.at, UTC)),
        }


@dataclass
class IdentityWorld:
    grants: list[Grant] = field(default_factory=list)
    identities: dict[str, Identity] = field(default_factory=dict)  # by lower-cased resource id
    needs: dict[str, list[Need]] = field(default_factory=dict)  # by lower-cased cluster id
    broken: list[Broken] = field(default_factory=list)
    propagation_seconds: float = 0.0

    @classmethod
    def load(cls, seed: dict[str, Any], now: float) -> IdentityWorld:
        """Seed keys: `grants` [{principal_id, role, scope, principal_type?}], per cluster `needs`
        [{component, role, scope}] (read by `add_needs`), `rbac_propagation_seconds`."""
        world = cls(propagation_seconds=float(seed.get("rbac_propagation_seconds", 0)))
        for spec in seed.get("grants", []):
            world.grants.append(
                Grant(
                    name=spec.get("name") or guid(spec["principal_id"], spec["role"], spec["scope"]),
                    scope=spec["scope"],
                    principal_id=spec["principal_id"],
                    principal_type=spec.get("principal_type", "ServicePrincipal"),
                    role=role_id(spec["role"]),
                    created=now - 86400 * 365,
                )
            )
        return world

    def add_needs(self, cluster_id: str, specs: list[dict[str, Any]]) -> None:
        self.needs[cluster_id.lower()] = [Need(s["component"], role_id(s["role"]), s["scope"]) for s in specs]

    def effective(self, grant: Grant, at: float) -> bool:
        return grant.created + (0.0 if grant.created_by == "seed" else self.propagation_seconds) <= at

    def allowed(self, principal_id: str, role: str, scope: str, at: float) -> bool:
        return any(
            g.principal_id.lower() == principal_id.lower()
            and g.role == role
            and covers(g.scope, scope)
            and self.effective(g, at)
            for g in self.grants
        )

    def known_principal(self, estate: Estate, principal_id: str) -> bool:
        wanted = principal_id.lower()
        if estate.sp_by_object_id(principal_id) is not None:
            return True
        return any(i.principal_id == wanted for i in self.identities.values())


def sp_principal(estate: Estate, cluster: Cluster) -> str:
    app = estate.applications.get(cluster.client_id)
    return app.sp.object_id if app is not None and app.sp is not None else ""


def control_plane_principal(estate: Estate, cluster: Cluster) -> str:
    if cluster.identity_type == "None":
        return sp_principal(estate, cluster)
    if cluster.identity_resource_id:
        return guid(cluster.identity_resource_id, "object")
    return guid(cluster.id, "identity")


def kubelet_principal(estate: Estate, cluster: Cluster, on_identity: bool) -> str:
    if not on_identity:
        return sp_principal(estate, cluster)
    if cluster.kubelet_resource_id:
        return guid(cluster.kubelet_resource_id, "object")
    return guid(cluster.id, "kubelet-object")


def check(estate: Estate, cluster: Cluster, at: float) -> None:
    """Record every need of `cluster` its components' current principals cannot meet at `at` (once each)."""
    world = estate.identity
    components: list[tuple[str, str, str]] = []  # (component name, need kind, principal)
    for need_kind in {n.component for n in world.needs.get(cluster.id.lower(), [])}:
        if need_kind == CONTROL_PLANE:
            components.append((CONTROL_PLANE, need_kind, control_plane_principal(estate, cluster)))
        else:
            for pool in cluster.node_pools:
                on_identity = cluster.kubelet_identity or pool.kubelet_identity
                components.append((pool.name, need_kind, kubelet_principal(estate, cluster, on_identity)))
    seen = {(b.cluster_id.lower(), b.component, b.role, b.scope.lower()) for b in world.broken}
    for name, kind, principal in components:
        for need in world.needs.get(cluster.id.lower(), []):
            if need.component != kind or world.allowed(principal, need.role, need.scope, at):
                continue
            key = (cluster.id.lower(), name, need.role, need.scope.lower())
            if key not in seen:
                seen.add(key)
                world.broken.append(Broken(cluster.id, name, need.role, need.scope, principal, at))
