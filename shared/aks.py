"""AKS through Azure Resource Manager: clusters, maintenance configurations, resetServicePrincipalProfile,
certificate rotation and the cluster CA expiry (from the user kubeconfig).

Long-running operations are started with the SDK but never polled by it: `begin_*` returns the operation's
`Azure-AsyncOperation` URL (safe to persist: it carries no request data), and `operation_status` GETs that URL
through the same authenticated pipeline. An azure-core continuation token must never be persisted: it pickles
the initial response, whose request body carries the secret.
"""

from __future__ import annotations

import base64
import fnmatch
import re
from collections import OrderedDict
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote, urlparse

import aiohttp
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError
from azure.core.polling import AsyncNoPolling
from azure.core.rest import HttpRequest
from azure.mgmt.containerservice.aio import ContainerServiceClient
from azure.mgmt.containerservice.models import ManagedClusterServicePrincipalProfile
from cryptography import x509

from shared.azure import ServiceError, container_service, pooled_transport, shared_session
from shared.settings import Settings
from shared.windows import MaintenanceWindow

_NO_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
CLIENTS_KEPT = 64  # per-subscription SDK clients kept by one AksClient
T = TypeVar("T")
_CLUSTER_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.ContainerService/"
    r"managedClusters/(?P<name>[^/]+)$",
    re.IGNORECASE,
)
# Operation URLs as ARM sends them (docs/emulator.md, "Long-running operations"): an Azure-AsyncOperation status
# resource (`operations/{id}`) or a Location result (`operationresults/{id}`), under the subscription or a resource
# group, any case. The URL is opaque to clients; this only keeps our token on the provider's own locations/ paths.
_OPERATION_PATH = re.compile(
    r"^/subscriptions/[^/]+(?:/resourceGroups/[^/]+)?/providers/Microsoft\.ContainerService/locations/[^/]+"
    r"/(?P<kind>operations|operationresults)/[^/]+$",
    re.IGNORECASE,
)
_NOT_AN_OPERATION_RESULT = frozenset({401, 403, 404, 408, 429, 502, 503, 504})
_ACTION = re.compile(r"perform action '([^']+)' over scope '([^']*)'")
_CA_DATA = re.compile(r"certificate-authority-data:\s*(\S+)")


# -- errors ----------------------------------------------------------------------------------------------------
class AksError(ServiceError):
    """An ARM/AKS call failed; `status` and `code` are ARM's (None when not an HTTP error)."""


class AuthorizationFailed(AksError):
    """403 AuthorizationFailed: the product's identity lacks `action` on `scope`."""

    def __init__(self, action: str, scope: str, code: str = "AuthorizationFailed") -> None:
        super().__init__(f"not authorized to perform '{action}' over '{scope}'", 403, code)
        self.action = action
        self.scope = scope


class ClusterNotFound(AksError):
    """404: the cluster (or its resource group / subscription) does not exist."""


class ClusterBusy(AksError):
    """409 OperationNotAllowed: another operation is in progress on the cluster."""


class CredentialsRejected(AksError):
    """400 from resetServicePrincipalProfile: AKS could not sign in with the new secret (e.g. not yet replicated)."""


# -- models ----------------------------------------------------------------------------------------------------
def _matches(action: str, patterns: Iterable[str]) -> bool:
    wanted = action.lower()
    return any(fnmatch.fnmatchcase(wanted, p.lower()) for p in patterns)


def effective_actions(permissions: Sequence[Mapping[str, Any]], wanted: Iterable[str]) -> set[str]:
    """Which of `wanted` ARM permission blocks (`AksClient.permissions`) allow: some block's `actions` match and
    its `notActions` do not."""
    allowed: set[str] = set()
    for action in wanted:
        for block in permissions:
            if _matches(action, block.get("actions") or ()) and not _matches(action, block.get("notActions") or ()):
                allowed.add(action)
                break
    return allowed


@dataclass(frozen=True)
class ClusterInfo:
    id: str
    subscription_id: str
    resource_group: str
    name: str
    location: str
    tags: dict[str, str]
    sp_client_id: str | None
    identity_type: str | None
    kubelet_on_sp: bool
    legacy_aad_server_app_id: str | None
    provisioning_state: str
    node_count: int
    kubernetes_version: str
    power_state: str = "Running"  # properties.powerState.code: "Running" | "Stopped"

    @property
    def stopped(self) -> bool:
        return self.power_state.lower() == "stopped"


@dataclass(frozen=True)
class OperationStatus:
    status: str  # "InProgress" | "Succeeded" | "Failed" | "Canceled"
    error: str | None
    credentials_rejected: bool = False  # the error (or one of its details) says the new secret was refused


@dataclass(frozen=True)
class Accepted:
    """AKS accepted an operation: `operation_url` to poll, or None when it answered 200 (complete at once)."""

    operation_url: str | None


def parse_cluster_id(cluster_id: str) -> tuple[str, str, str]:
    """(subscription, resource group, name) of a managed cluster resource id."""
    match = _CLUSTER_ID.match(cluster_id.rstrip("/"))
    if match is None:
        raise ValueError(f"not a managed cluster resource id: {cluster_id!r}")
    return match["sub"], match["rg"], match["name"]


def cluster_info(resource: Mapping[str, Any]) -> ClusterInfo:
    """A ClusterInfo from a managed cluster's JSON (ARM GET or a Resource Graph row)."""
    props: Mapping[str, Any] = resource.get("properties") or {}
    sub, rg, name = parse_cluster_id(str(resource["id"]))
    client_id = (props.get("servicePrincipalProfile") or {}).get("clientId")
    identity = resource.get("identity") or {}
    identity_type = identity.get("type")
    kubelet = (props.get("identityProfile") or {}).get("kubeletidentity")
    aad = props.get("aadProfile") or {}
    pools = props.get("agentPoolProfiles") or []
    return ClusterInfo(
        id=str(resource["id"]),
        subscription_id=sub,
        resource_group=rg,
        name=str(resource.get("name") or name),
        location=str(resource.get("location") or ""),
        tags={str(k): str(v) for k, v in (resource.get("tags") or {}).items()},
        sp_client_id=None if not client_id or str(client_id).lower() == "msi" else str(client_id),
        identity_type=None if not identity_type or identity_type == "None" else str(identity_type),
        kubelet_on_sp=kubelet is None and bool(client_id) and str(client_id).lower() != "msi",
        legacy_aad_server_app_id=aad.get("serverAppID") if aad and not aad.get("managed") else None,
        provisioning_state=str(props.get("provisioningState") or "Unknown"),
        node_count=sum(int(p.get("count") or 0) for p in pools),
        kubernetes_version=str(props.get("currentKubernetesVersion") or props.get("kubernetesVersion") or ""),
        power_state=str((props.get("powerState") or {}).get("code") or "Running"),
    )


# -- the client ------------------------------------------------------------------------------------------------
class _CaptureInitial(AsyncNoPolling[None]):
    """A polling method that only records the initial 202's operation URL and never polls."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.operation_url: str | None = None

    def initialize(self, client: Any, initial_response: Any, deserialization_callback: Any) -> None:
        super().initialize(client, initial_response, deserialization_callback)
        headers = initial_response.http_response.headers
        # Azure-AsyncOperation when ARM sends it; else Location (a 202 may carry only that); a 200 carries neither.
        self.operation_url = headers.get("Azure-AsyncOperation") or headers.get("Location")
        self.status_code: int = initial_response.http_response.status_code


def _rejects_credentials(message: str) -> bool:
    """AKS's words for "Entra refused the secret in the request" (synchronous 400, or a failed operation's error)."""
    return "ServicePrincipalProfile were invalid" in message


def _error(exc: HttpResponseError, what: str) -> AksError:
    """ARM's error as ours: status, code and message only (never the request, whose body may hold a secret)."""
    status = exc.status_code
    code = exc.error.code if exc.error is not None else None
    message = exc.error.message if exc.error is not None and exc.error.message else exc.reason or str(status)
    if status == 403:
        match = _ACTION.search(message)
        if match:
            return AuthorizationFailed(match[1], match[2], code or "AuthorizationFailed")
        return AuthorizationFailed("unknown", what, code or "Forbidden")
    if status == 404:
        return ClusterNotFound(f"{what}: {code}: {message}", status, code)
    if status == 409 and code == "OperationNotAllowed":
        return ClusterBusy(f"{what}: {message}", status, code)
    if status == 400 and _rejects_credentials(message):
        return CredentialsRejected(f"{what}: {message}", status, code)
    return AksError(f"{what} failed: {status} {code}: {message}", status, code)


async def _guarded(call: Awaitable[T], what: str) -> T:
    """Await an SDK call; raise our error *outside* the except block so it does not even carry the SDK error
    (and its request) as __context__."""
    try:
        return await call
    except HttpResponseError as exc:
        error = _error(exc, what)
    raise error


class AksClient:
    """AKS management for the product; one ContainerServiceClient per subscription, created on demand.

    `client_kwargs` go to every SDK client (e.g. `retry_total=0`, `retry_backoff_factor`, `polling_interval`).
    The credential belongs to the caller and is not closed here.
    """

    def __init__(self, settings: Settings, credential: AsyncTokenCredential, **client_kwargs: Any) -> None:
        self._settings = settings
        self._credential = credential
        self._kwargs = client_kwargs
        self._clients: OrderedDict[str, ContainerServiceClient] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None
        arm = urlparse(settings.arm_endpoint)
        self._arm_origin = (arm.scheme.lower(), arm.netloc.lower())

    async def __aenter__(self) -> AksClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), OrderedDict()
        for client in clients:
            await client.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self, subscription_id: str) -> ContainerServiceClient:
        key = subscription_id.lower()
        client = self._clients.get(key)
        if client is not None:
            self._clients.move_to_end(key)
        else:
            # One connection pool for every subscription's client: a scan touching thousands of subscriptions
            # (CA reads) must not open a TLS connection per subscription.
            if self._session is None:
                self._session = shared_session(self._settings)
            transport = pooled_transport(self._session)
            client = container_service(self._settings, self._credential, key, transport=transport, **self._kwargs)
            self._clients[key] = client
            # Only the most recently used are kept: a client is ~35 KB of SDK configuration and holds nothing else
            # (the pool is the shared session), so one dropped needs no close, and memory does not grow with the
            # subscriptions a scan touches.
            while len(self._clients) > CLIENTS_KEPT:
                self._clients.popitem(last=False)
        return client

    async def _get_json(self, url: str, what: str) -> tuple[int, dict[str, Any]]:
        client = self._client(_NO_SUBSCRIPTION)
        response = await client.send_request(HttpRequest("GET", url))
        body: dict[str, Any] = {}
        if response.content:
            try:
                parsed = response.json()
                body = parsed if isinstance(parsed, dict) else {}
            except ValueError:
                body = {}
        if response.status_code >= 400:
            error = body.get("error") or {}
            message = str(error.get("message") or response.reason)
            code = error.get("code")
            if response.status_code == 403:
                match = _ACTION.search(message)
                raise AuthorizationFailed(match[1] if match else "unknown", match[2] if match else what)
            raise AksError(f"{what} failed: {response.status_code} {code}: {message}", response.status_code, code)
        return response.status_code, body

    async def list_subscriptions(self) -> list[str]:
        url = f"{self._settings.arm_endpoint}/subscriptions?api-version={self._settings.subscriptions_api_version}"
        result: list[str] = []
        pages = 0
        while url and pages < 1000:
            _, body = await self._get_json(url, "list subscriptions")
            result += [
                str(s["subscriptionId"]) for s in body.get("value", []) if s.get("state", "Enabled") != "Disabled"
            ]
            url = self._on_arm(body["nextLink"]) if body.get("nextLink") else ""
            pages += 1
        return result

    async def permissions(self, scope: str) -> list[dict[str, Any]]:
        """The caller's own `Microsoft.Authorization/permissions` blocks at `scope` (needs no extra right)."""
        url = (
            f"{self._settings.arm_endpoint}{quote(scope)}/providers/Microsoft.Authorization/permissions"
            f"?api-version={self._settings.authorization_api_version}"
        )
        blocks: list[dict[str, Any]] = []
        pages = 0
        while url and pages < 100:
            _, body = await self._get_json(url, "read permissions")
            blocks += [b for b in body.get("value") or [] if isinstance(b, dict)]
            url = self._on_arm(body["nextLink"]) if body.get("nextLink") else ""
            pages += 1
        return blocks

    async def list_clusters(self, subscription_id: str) -> list[ClusterInfo]:
        client = self._client(subscription_id)

        async def listing() -> list[ClusterInfo]:
            return [cluster_info(mc.as_dict()) async for mc in client.managed_clusters.list()]

        return await _guarded(listing(), f"list clusters in {subscription_id}")

    async def get_cluster(self, cluster_id: str) -> ClusterInfo:
        sub, rg, name = parse_cluster_id(cluster_id)
        mc = await _guarded(self._client(sub).managed_clusters.get(rg, name), f"get {cluster_id}")
        return cluster_info(mc.as_dict())

    async def maintenance_windows(self, cluster_id: str) -> list[MaintenanceWindow]:
        sub, rg, name = parse_cluster_id(cluster_id)
        client = self._client(sub)

        async def listing() -> list[Any]:
            return [c async for c in client.maintenance_configurations.list_by_managed_cluster(rg, name)]

        configs = await _guarded(listing(), f"maintenance configurations of {cluster_id}")
        return [
            MaintenanceWindow.from_arm(str(c.name), (c.properties.as_dict() if c.properties else {})) for c in configs
        ]

    async def begin_reset_service_principal(self, cluster_id: str, client_id: str, secret: str) -> Accepted:
        """Start resetServicePrincipalProfile; returns the operation URL to poll (the secret is not in it)."""
        sub, rg, name = parse_cluster_id(cluster_id)
        capture = _CaptureInitial()
        await _guarded(
            self._client(sub).managed_clusters.begin_reset_service_principal_profile(
                rg, name, ManagedClusterServicePrincipalProfile(client_id=client_id, secret=secret), polling=capture
            ),
            f"resetServicePrincipalProfile on {cluster_id}",
        )
        return self._operation_url(capture, cluster_id)

    async def begin_rotate_certificates(self, cluster_id: str) -> Accepted:
        sub, rg, name = parse_cluster_id(cluster_id)
        capture = _CaptureInitial()
        await _guarded(
            self._client(sub).managed_clusters.begin_rotate_cluster_certificates(rg, name, polling=capture),
            f"rotateClusterCertificates on {cluster_id}",
        )
        return self._operation_url(capture, cluster_id)

    def _operation_url(self, capture: _CaptureInitial, cluster_id: str) -> Accepted:
        if capture.operation_url:
            return Accepted(self._on_arm(capture.operation_url))
        if capture.status_code == 200:
            return Accepted(None)  # complete at once (the operation's responses are 200 and 202)
        raise AksError(f"AKS accepted the operation on {cluster_id} without an operation URL")

    def _on_arm(self, url: str) -> str:
        """Refuse any URL that is not on the configured ARM endpoint (our bearer token must not go elsewhere)."""
        parsed = urlparse(url)
        if (parsed.scheme.lower(), parsed.netloc.lower()) != self._arm_origin:
            raise AksError(f"refusing a URL outside the configured ARM endpoint: {parsed.scheme}://{parsed.netloc}")
        return url

    async def operation_status(self, operation_url: str) -> OperationStatus:
        """An Azure-AsyncOperation status resource (`{"status": ...}`) or a Location result (202 while running,
        200/204 when done, an error status when it failed)."""
        url = self._on_arm(operation_url)
        match = _OPERATION_PATH.match(urlparse(url).path.rstrip("/"))
        if match is None:
            raise AksError("not an AKS operation status URL")
        if match["kind"].lower() == "operationresults":
            try:
                code, body = await self._get_json(url, "operation result")
            except AksError as exc:
                # ARM RPC: a failed operation's Location answers the operation's error status (4xx or 5xx) with its
                # error body. Only the statuses of our own request (auth, not found, throttling, gateways) are not.
                if exc.status is not None and exc.status >= 400 and exc.status not in _NOT_AN_OPERATION_RESULT:
                    return OperationStatus("Failed", str(exc), _rejects_credentials(str(exc)))
                raise
            return OperationStatus("InProgress" if code == 202 else "Succeeded", None)
        _, body = await self._get_json(url, "operation status")
        status = str(body.get("status") or "InProgress")
        error = body.get("error") if isinstance(body.get("error"), dict) else None
        if status not in ("Failed", "Canceled") or error is None:
            return OperationStatus(status, None if status not in ("Failed", "Canceled") else "no detail")
        texts = [f"{error.get('code')}: {error.get('message')}"]
        texts += [f"{d.get('code')}: {d.get('message')}" for d in error.get("details") or [] if isinstance(d, dict)]
        return OperationStatus(status, "; ".join(texts), any(_rejects_credentials(t) for t in texts))

    async def ca_expiry(self, cluster_id: str) -> datetime:
        """notAfter of the cluster CA certificate in the user kubeconfig (certificate-authority-data)."""
        sub, rg, name = parse_cluster_id(cluster_id)
        result = await _guarded(
            self._client(sub).managed_clusters.list_cluster_user_credentials(rg, name),
            f"listClusterUserCredential on {cluster_id}",
        )
        kubeconfigs = result.kubeconfigs or []
        if not kubeconfigs or not kubeconfigs[0].value:
            raise AksError(f"no kubeconfig returned for {cluster_id}")
        value = kubeconfigs[0].value
        text = (value if isinstance(value, bytes) else base64.b64decode(value)).decode()
        match = _CA_DATA.search(text)
        if match is None:
            raise AksError(f"the kubeconfig of {cluster_id} has no certificate-authority-data")
        cert = x509.load_pem_x509_certificate(base64.b64decode(match[1]))
        return cert.not_valid_after_utc
