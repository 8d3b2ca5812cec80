"""The one place that turns settings into credentials and SDK clients.

Endpoint overrides and the CA bundle are applied here, so every other module is the same code in Azure and
against the local emulator.
"""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlparse

import aiohttp
import httpx
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.pipeline.transport import AioHttpTransport
from azure.data.tables.aio import TableServiceClient
from azure.identity.aio import ClientSecretCredential, ManagedIdentityCredential
from azure.keyvault.secrets.aio import SecretClient
from azure.mgmt.containerservice.aio import ContainerServiceClient
from azure.mgmt.resourcegraph.aio import ResourceGraphClient
from azure.storage.blob.aio import BlobServiceClient
from azure.storage.queue.aio import QueueServiceClient
from kiota_authentication_azure.azure_identity_authentication_provider import (
    AzureIdentityAuthenticationProvider,
)
from msgraph.graph_request_adapter import GraphRequestAdapter
from msgraph.graph_service_client import GraphServiceClient
from msgraph_core import GraphClientFactory

from shared.settings import Settings

PUBLIC_AUTHORITY = "https://login.microsoftonline.com"
# The public cloud's token audiences (settings ARM_AUDIENCE / GRAPH_AUDIENCE: a sovereign cloud has its own); an
# audience is the cloud's, whatever endpoint the requests are sent to (the emulator accepts these).
ARM_AUDIENCE = "https://management.azure.com"
GRAPH_AUDIENCE = "https://graph.microsoft.com"
VAULT_AUDIENCE = "https://vault.azure.net"


def arm_scope(settings: Settings) -> str:
    """The token scope of every ARM and Resource Graph call."""
    return _scope(settings.arm_audience)


def graph_scope(settings: Settings) -> str:
    """The token scope of every Microsoft Graph call."""
    return _scope(settings.graph_audience)


def vault_audience(settings: Settings) -> str:
    """Key Vault's audience is its DNS suffix (`https://vault.azure.net`, `https://vault.usgovcloudapi.net`, ...),
    read from KEY_VAULT_URL; a vault URL without one (the emulator's) gets the public cloud's."""
    host = urlparse(settings.key_vault_url).hostname or ""
    _, dot, suffix = host.partition(".")
    return f"https://{suffix}" if dot and suffix.startswith("vault.") else VAULT_AUDIENCE


def _verify(settings: Settings) -> str | bool:
    return settings.ca_bundle or True


def _ssl_context(settings: Settings) -> ssl.SSLContext | bool:
    """httpx wants an SSLContext (a CA path is deprecated there)."""
    return ssl.create_default_context(cafile=settings.ca_bundle) if settings.ca_bundle else True


def _transport_kwargs(settings: Settings) -> dict[str, Any]:
    return {"connection_verify": _verify(settings)}


def _scope(endpoint: str) -> str:
    return endpoint.rstrip("/") + "/.default"


def _identity_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"authority": settings.authority_host, **_transport_kwargs(settings)}
    if settings.authority_host != PUBLIC_AUTHORITY:
        # A sovereign or emulated authority: do not resolve it through login.microsoftonline.com.
        kwargs["disable_instance_discovery"] = True
    return kwargs


def product_credential(settings: Settings) -> AsyncTokenCredential:
    """The product's own identity: a client secret locally, the user-assigned managed identity in Azure."""
    if settings.client_secret is not None:
        return ClientSecretCredential(
            settings.tenant_id,
            settings.client_id,
            settings.client_secret.get_secret_value(),
            **_identity_kwargs(settings),
        )
    return ManagedIdentityCredential(client_id=settings.client_id)


def secret_credential(settings: Settings, app_id: str, secret: str, **kwargs: Any) -> ClientSecretCredential:
    """A credential for an arbitrary app + secret, used to prove Entra accepts a new secret."""
    return ClientSecretCredential(settings.tenant_id, app_id, secret, **_identity_kwargs(settings), **kwargs)


def container_service(
    settings: Settings, credential: AsyncTokenCredential, subscription_id: str, **kwargs: Any
) -> ContainerServiceClient:
    """AKS management, on the pinned `AKS_API_VERSION` (the SDK's default moves with every release)."""
    return ContainerServiceClient(
        credential,
        subscription_id,
        base_url=settings.arm_endpoint,
        credential_scopes=[arm_scope(settings)],
        **_transport_kwargs(settings),
        **{"api_version": settings.aks_api_version, **kwargs},
    )


def resource_graph(settings: Settings, credential: AsyncTokenCredential, **kwargs: Any) -> ResourceGraphClient:
    """Resource Graph, on the pinned `RESOURCE_GRAPH_API_VERSION`."""
    return ResourceGraphClient(
        credential,
        base_url=settings.arm_endpoint,
        credential_scopes=[arm_scope(settings)],
        **_transport_kwargs(settings),
        **{"api_version": settings.resource_graph_api_version, **kwargs},
    )


def secret_client(settings: Settings, credential: AsyncTokenCredential, **kwargs: Any) -> SecretClient:
    return SecretClient(
        settings.key_vault_url,
        credential,
        verify_challenge_resource=urlparse(settings.key_vault_url).hostname != "127.0.0.1",
        **_transport_kwargs(settings),
        **kwargs,
    )


def graph_client(settings: Settings, credential: AsyncTokenCredential) -> GraphServiceClient:
    """msgraph-sdk on the configured Graph endpoint (see docs: base_url must be set explicitly)."""
    host = urlparse(settings.graph_endpoint).hostname or "graph.microsoft.com"
    auth = AzureIdentityAuthenticationProvider(credential, scopes=[graph_scope(settings)], allowed_hosts=[host])
    http = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(verify=_ssl_context(settings), timeout=httpx.Timeout(30.0))
    )
    adapter = GraphRequestAdapter(auth, client=http)
    adapter.base_url = settings.graph_endpoint + "/v1.0"
    return GraphServiceClient(request_adapter=adapter)


def shared_session(settings: Settings) -> aiohttp.ClientSession:
    """One connection pool for many SDK clients (close it after them), verifying against the CA bundle with one
    SSL context. (azure-core builds a new SSLContext per request from a CA path in `connection_verify`, and aiohttp
    pools connections per context: every request would open and handshake a new TLS connection.)"""
    verify = _ssl_context(settings)
    connector = aiohttp.TCPConnector(ssl=verify if isinstance(verify, ssl.SSLContext) else True)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)


def pooled_transport(session: aiohttp.ClientSession) -> AioHttpTransport:
    """An SDK transport on `session` (see `shared_session`), which it does not close."""
    return AioHttpTransport(session=session, session_owner=False, connection_verify=True)


def _storage_url(settings: Settings, service: str) -> str:
    return f"https://{settings.storage_account_name}.{service}.core.windows.net"


def queue_service(settings: Settings, credential: AsyncTokenCredential) -> QueueServiceClient:
    if settings.storage_connection_string is not None:
        return QueueServiceClient.from_connection_string(settings.storage_connection_string.get_secret_value())
    return QueueServiceClient(_storage_url(settings, "queue"), credential=credential)


def blob_service(settings: Settings, credential: AsyncTokenCredential) -> BlobServiceClient:
    if settings.storage_connection_string is not None:
        return BlobServiceClient.from_connection_string(settings.storage_connection_string.get_secret_value())
    return BlobServiceClient(_storage_url(settings, "blob"), credential=credential)


def table_service(settings: Settings, credential: AsyncTokenCredential) -> TableServiceClient:
    if settings.storage_connection_string is not None:
        return TableServiceClient.from_connection_string(settings.storage_connection_string.get_secret_value())
    return TableServiceClient(_storage_url(settings, "table"), credential=credential)


class ServiceError(Exception):
    """An Azure call failed. `status` and `code` are the service's (None when not an HTTP error); the message
    names the operation only, never a request body."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class StorageResource:
    """Base of the storage-backed helpers (queues, locks, state): owns its SDK clients and, when not given one,
    the credential; an async context manager that closes them."""

    def __init__(self, settings: Settings, credential: AsyncTokenCredential | None) -> None:
        self.settings = settings
        self._owned_credential = credential is None
        self._credential = credential if credential is not None else product_credential(settings)

    def _clients(self) -> tuple[Any, ...]:
        """The SDK clients to close, innermost first."""
        raise NotImplementedError

    async def close(self) -> None:
        try:
            for client in self._clients():
                await client.close()
        finally:
            if self._owned_credential:
                await self._credential.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
