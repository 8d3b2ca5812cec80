"""The ARM calls migration makes, through the Azure SDK pipeline (auth, retries, CA bundle, pinned api-versions):
role assignments (list for a principal, create), user-assigned identities, Resource Graph's `authorizationresources`,
the managed-cluster identity update and node image upgrades (both LROs polled with `AksClient.operation_status`).

Wire shapes and their sources: docs/emulator.md, "Role assignments and managed identities" and "Managed identity
migration". The product's rotation identity does not hold the write rights used here (docs/permissions.md).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.rest import HttpRequest
from azure.mgmt.containerservice.aio import ContainerServiceClient
from azure.mgmt.resourcegraph.models import QueryRequest, QueryRequestOptions

from shared.aks import AksError, AuthorizationFailed, parse_cluster_id
from shared.azure import container_service, resource_graph
from shared.settings import Settings

AUTHORIZATION_API_VERSION = "2022-04-01"
IDENTITY_API_VERSION = "2023-01-31"
AKS_API_VERSION = "2024-09-01"
ROLE_ASSIGNMENTS = "/providers/Microsoft.Authorization/roleAssignments"
_NO_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
# Must stay identical (modulo whitespace) to emulator.role_assignments.ASSIGNMENTS_QUERY; a test checks it.
ASSIGNMENTS_QUERY = """authorizationresources
| where type =~ 'microsoft.authorization/roleassignments'
| project id, name, type, subscriptionId, properties
| order by id asc"""


@dataclass(frozen=True)
class Assignment:
    """One role assignment: who holds which role definition (GUID) at which scope."""

    id: str
    principal_id: str
    role_id: str
    scope: str

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Assignment:
        props = doc.get("properties") or {}
        return cls(
            id=str(doc.get("id") or ""),
            principal_id=str(props.get("principalId") or "").lower(),
            role_id=str(props.get("roleDefinitionId") or "").rstrip("/").rsplit("/", 1)[-1].lower(),
            scope=str(props.get("scope") or ""),
        )


@dataclass(frozen=True)
class Identity:
    resource_id: str
    principal_id: str
    client_id: str


class MigrationArm:
    """ARM for migration; one SDK client (its pipeline) for every raw request. The credential is the caller's."""

    def __init__(self, settings: Settings, credential: AsyncTokenCredential, **client_kwargs: Any) -> None:
        self._settings = settings
        self._credential = credential
        self._kwargs = client_kwargs
        self._client: ContainerServiceClient = container_service(
            settings, credential, _NO_SUBSCRIPTION, **client_kwargs
        )

    async def __aenter__(self) -> MigrationArm:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()

    async def _send(self, method: str, path: str, api_version: str, body: Any = None, what: str = "") -> Any:
        url = f"{self._settings.arm_endpoint}{quote(path)}?api-version={api_version}"
        request = HttpRequest(method, url, json=body) if body is not None else HttpRequest(method, url)
        response = await self._client.send_request(request)
        text = response.text() if response.content else ""
        try:
            doc = json.loads(text) if text else {}
        except ValueError:
            doc = {}
        if response.status_code >= 400:
            error = (doc.get("error") or {}) if isinstance(doc, dict) else {}
            code, message = error.get("code"), str(error.get("message") or response.reason)
            if response.status_code == 403:
                raise AuthorizationFailed(_action(message) or what, path)
            raise AksError(f"{what} failed: {response.status_code} {code}: {message}", response.status_code, code)
        if isinstance(doc, dict):
            doc["_headers"] = {k.lower(): v for k, v in response.headers.items()}
        return doc

    # -- role assignments -----------------------------------------------------------------------------------
    async def assignments_for(self, subscription_id: str, principal_id: str) -> list[Assignment]:
        """Role assignments of `principal_id` at, above or below the subscription (ARM's `principalId eq` filter)."""
        path = f"/subscriptions/{subscription_id}{ROLE_ASSIGNMENTS}"
        doc = await self._send_filter(path, f"principalId eq '{principal_id}'")
        return [Assignment.from_json(v) for v in doc.get("value") or []]

    async def _send_filter(self, path: str, flt: str) -> Any:
        url = f"{self._settings.arm_endpoint}{quote(path)}?api-version={AUTHORIZATION_API_VERSION}&$filter={quote(flt)}"
        response = await self._client.send_request(HttpRequest("GET", url))
        doc = response.json() if response.content else {}
        if response.status_code == 403:
            raise AuthorizationFailed(
                _action(str((doc.get("error") or {}).get("message"))) or "roleAssignments/read", path
            )
        if response.status_code >= 400:
            raise AksError(f"list role assignments failed: {response.status_code}", response.status_code)
        return doc

    async def assignments_graph(self, subscriptions: list[str]) -> list[Assignment]:
        """Every role assignment row of `authorizationresources` in `subscriptions` (paged)."""
        out: list[Assignment] = []
        async with resource_graph(self._settings, self._credential, **self._kwargs) as client:
            token: str | None = None
            for _ in range(1000):
                options = QueryRequestOptions(top=1000, skip_token=token, result_format="objectArray")
                result = await client.resources(
                    QueryRequest(subscriptions=subscriptions or None, query=ASSIGNMENTS_QUERY, options=options)
                )
                rows: list[Any] = list(result.data or [])
                out += [Assignment.from_json(row) for row in rows if isinstance(row, dict)]
                token = result.skip_token
                if not token:
                    break
        return out

    async def create_assignment(self, scope: str, principal_id: str, role_id: str) -> Assignment | None:
        """Grant `role_id` at `scope` (principalType ServicePrincipal: no directory lookup, so a new identity is
        not refused while Entra replicates it). None when it already exists (409 `RoleAssignmentExists`)."""
        sub = scope.split("/")[2] if scope.lower().startswith("/subscriptions/") else ""
        name = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{scope}|{principal_id}|{role_id}".lower()))
        body = {
            "properties": {
                "roleDefinitionId": f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{role_id}",
                "principalId": principal_id,
                "principalType": "ServicePrincipal",
            }
        }
        try:
            doc = await self._send("PUT", f"{scope}{ROLE_ASSIGNMENTS}/{name}", AUTHORIZATION_API_VERSION, body, "grant")
        except AksError as exc:
            if exc.code == "RoleAssignmentExists":
                return None
            raise
        return Assignment.from_json(doc)

    # -- identities -----------------------------------------------------------------------------------------
    async def ensure_identity(self, resource_id: str, location: str, tags: dict[str, str]) -> Identity:
        """Create the user-assigned identity, or read it back if it exists (PUT is idempotent)."""
        doc = await self._send(
            "PUT", resource_id, IDENTITY_API_VERSION, {"location": location, "tags": tags}, "create identity"
        )
        props = doc.get("properties") or {}
        return Identity(resource_id, str(props.get("principalId") or ""), str(props.get("clientId") or ""))

    # -- clusters -------------------------------------------------------------------------------------------
    async def cluster(self, cluster_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = await self._send("GET", cluster_id, AKS_API_VERSION, what=f"get {cluster_id}")
        doc.pop("_headers", None)
        return doc

    async def begin_identity_update(self, cluster_id: str, cp: Identity, kubelet: Identity) -> str | None:
        """`az aks update --enable-managed-identity --assign-identity <cp> --assign-kubelet-identity <kubelet>`:
        the cluster as read, with the identities set; returns the operation URL (None: nothing to change)."""
        parse_cluster_id(cluster_id)
        body = await self.cluster(cluster_id)
        body["identity"] = {"type": "UserAssigned", "userAssignedIdentities": {cp.resource_id: {}}}
        props = body.setdefault("properties", {})
        props["servicePrincipalProfile"] = {"clientId": "msi"}
        props["identityProfile"] = {
            "kubeletidentity": {
                "resourceId": kubelet.resource_id,
                "clientId": kubelet.client_id,
                "objectId": kubelet.principal_id,
            }
        }
        doc = await self._send("PUT", cluster_id, AKS_API_VERSION, body, f"identity update of {cluster_id}")
        headers = doc.get("_headers") or {}
        return headers.get("azure-asyncoperation") or headers.get("location")

    async def begin_node_image_upgrade(self, cluster_id: str, pool: str) -> str | None:
        """`az aks nodepool upgrade --node-image-only`; returns the operation URL."""
        path = f"{cluster_id}/agentPools/{pool}/upgradeNodeImageVersion"
        doc = await self._send("POST", path, AKS_API_VERSION, {}, f"node image upgrade of {pool}")
        headers = doc.get("_headers") or {}
        return headers.get("azure-asyncoperation") or headers.get("location")


def _action(message: str) -> str | None:
    marker = "perform action '"
    if marker not in message:
        return None
    return message.split(marker, 1)[1].split("'", 1)[0]
