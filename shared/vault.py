"""Key Vault secrets: keep every rotated secret as a tagged version of one secret per cluster.

One secret per cluster (`secret_name_for`), one version per rotated value. Versions are told apart by tags the
product writes (`cluster-id`, `app-id`, `key-id`, `rotation-id`, `state`, `managed-by`); `state` moves
pending -> current -> previous (or abandoned). Values never leave this module except as the return value of
`VaultStore.value`; errors carry the operation, the secret name and the service's error code only.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlparse

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.keyvault.secrets import SecretProperties

from shared.azure import ServiceError, secret_client
from shared.logs import log_event, register_secret
from shared.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

CONTENT_TYPE = "text/plain; aks-sp-secret"
MANAGED_BY_TAG = "managed-by"
MANAGED_BY = "aks-credential-rotator"
STATE_TAG = "state"
SECRET_PREFIX = "aks-sp-"  # every secret this product writes (one per cluster)  # noqa: S105 - a name prefix
_UNSAFE = re.compile(r"[^0-9a-z-]+")
_NAME_PART_MAX = 60
TAG_VALUE_LIMIT = 256  # Key Vault refuses longer tag values (a cluster resource id can be longer)


class VersionState(enum.StrEnum):
    """A version's staging label (the `state` tag): pending -> current -> previous, or abandoned / uncertain."""

    PENDING = "pending"
    CURRENT = "current"
    PREVIOUS = "previous"
    ABANDONED = "abandoned"
    UNCERTAIN = "uncertain"  # a reset went unanswered: the cluster may hold this version (runbook)


@dataclass(frozen=True)
class VersionTags:
    """The product's tags on a secret version, parsed once (raw tag strings stay in this module)."""

    managed: bool = False
    cluster_id: str = ""
    app_id: str = ""
    key_id: str = ""
    rotation_id: str = ""
    state: VersionState | None = None

    @classmethod
    def parse(cls, tags: Mapping[str, str] | None) -> VersionTags:
        tags = tags or {}
        try:
            state: VersionState | None = VersionState(tags.get(STATE_TAG, ""))
        except ValueError:
            state = None
        parts = [tags.get("cluster-id", "")]
        parts += [tags[f"cluster-id-{i}"] for i in range(1, 4) if f"cluster-id-{i}" in tags]
        return cls(
            managed=tags.get(MANAGED_BY_TAG) == MANAGED_BY,
            cluster_id="".join(parts),
            app_id=tags.get("app-id", "").lower(),
            key_id=tags.get("key-id", "").lower(),
            rotation_id=tags.get("rotation-id", ""),
            state=state,
        )

    def to_tags(self) -> dict[str, str]:
        """The tags to write (`managed-by` is added by `VaultStore.store`)."""
        # A resource id may exceed the 256-character tag value limit: continue it in cluster-id-1, -2, -3.
        chunks = [self.cluster_id[i : i + TAG_VALUE_LIMIT] for i in range(0, len(self.cluster_id), TAG_VALUE_LIMIT)]
        tags = {
            "cluster-id": chunks[0] if chunks else "",
            **{f"cluster-id-{i}": chunk for i, chunk in enumerate(chunks[1:4], start=1)},
            "app-id": self.app_id,
            "key-id": self.key_id,
            "rotation-id": self.rotation_id,
        }
        if self.state is not None:
            tags[STATE_TAG] = self.state.value
        return tags

    def of_app(self, app_id: str | None) -> bool:
        """Written by this product for `app_id`: only then does its `key-id` say which password a cluster holds."""
        return self.managed and self.app_id == (app_id or "").lower()

    def current_for(self, app_id: str | None) -> bool:
        return self.of_app(app_id) and self.state is VersionState.CURRENT and bool(self.key_id)


@dataclass(frozen=True)
class StoredVersion:
    name: str
    version: str
    tags: dict[str, str]
    expires_on: datetime | None
    created_on: datetime | None
    labels: VersionTags = field(default_factory=VersionTags)


def vault_name(key_vault_url: str) -> str:
    """`https://NAME.vault.azure.net` -> name; the emulator's `https://127.0.0.1:PORT/kv/NAME` -> name (lower case)."""
    parsed = urlparse(key_vault_url)
    path = parsed.path.strip("/")
    if path:
        return path.rsplit("/", 1)[-1].lower()
    return (parsed.hostname or "").split(".", 1)[0].lower()


class VaultError(ServiceError):
    """A Key Vault call failed. The message names the operation and secret, never a value."""


class VaultForbidden(VaultError):
    """403: the product's identity lacks a data action on the vault (RBAC), or the version is disabled."""


class VaultNotFound(VaultError):
    """404: no such secret or version."""


class VaultSecretDeleted(VaultError):
    """409 ObjectIsDeletedButRecoverable: the name is held by a soft-deleted secret until it is recovered or purged."""


def secret_name_for(cluster_id: str) -> str:
    """`aks-sp-{cluster name, sanitised, <= 60}-{sha256(lower(cluster id))[:12]}`: readable, unique, valid."""
    normalized = cluster_id.strip().rstrip("/").lower()
    readable = _UNSAFE.sub("-", normalized.rsplit("/", 1)[-1]).strip("-")
    readable = re.sub(r"-{2,}", "-", readable)[:_NAME_PART_MAX].strip("-") or "cluster"
    digest = hashlib.sha256(normalized.encode()).hexdigest()[:12]
    return f"{SECRET_PREFIX}{readable}-{digest}"


def _stored(props: SecretProperties) -> StoredVersion:
    if props.name is None or props.version is None:
        raise VaultError("Key Vault answered without a secret name or version")
    return StoredVersion(
        name=props.name,
        version=props.version,
        tags=dict(props.tags or {}),
        expires_on=props.expires_on,
        created_on=props.created_on,
        labels=VersionTags.parse(props.tags),
    )


def _newest_first(versions: list[StoredVersion]) -> list[StoredVersion]:
    """The service lists versions in identifier order; sort by creation time (then version) instead."""
    return sorted(versions, key=lambda v: (v.created_on is not None, v.created_on or datetime.min, v.version))[::-1]


def _translated(operation: str, name: str, exc: AzureError) -> VaultError:
    """A VaultError for an SDK error: operation, secret name, HTTP status and error codes; never a body or value."""
    if not isinstance(exc, HttpResponseError):
        return VaultError(f"Key Vault {operation} of secret '{name}' failed: {type(exc).__name__}")
    status = exc.status_code
    code = exc.error.code if exc.error is not None else None
    inner = _inner_code(exc)
    detail = f"HTTP {status}" + (f" {code}" if code else "") + (f"/{inner}" if inner else "")
    message = f"Key Vault {operation} of secret '{name}' failed: {detail}"
    if status == 403:
        return VaultForbidden(message, status, code)
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return VaultNotFound(message, status, code)
    if status == 409 and inner == "ObjectIsDeletedButRecoverable":
        return VaultSecretDeleted(message, status, code)
    return VaultError(message, status, code)


async def _guarded(operation: str, name: str, call: Awaitable[T]) -> T:
    """Await `call`, raising the translated error outside the `except` block.

    The SDK error keeps the request (whose body is the secret for a set), so it must not ride along as the
    new exception's `__context__`.
    """
    try:
        return await call
    except AzureError as exc:
        error = _translated(operation, name, exc)
    raise error


def _inner_code(exc: HttpResponseError) -> str | None:
    inner = getattr(exc.error, "innererror", None) if exc.error is not None else None
    if isinstance(inner, dict):
        code = inner.get("code")
        return str(code) if code else None
    return None


class VaultStore:
    """The product's secrets in one vault (`settings.key_vault_url`). Use as `async with VaultStore(...)`."""

    def __init__(self, settings: Settings, credential: AsyncTokenCredential, **client_kwargs: Any) -> None:
        self._client = secret_client(settings, credential, **client_kwargs)

    async def __aenter__(self) -> VaultStore:
        await self._client.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    async def store(self, name: str, value: str, expires_on: datetime, tags: dict[str, str]) -> StoredVersion:
        """Add `value` as a new version, tagged (plus `managed-by`), content type `text/plain; aks-sp-secret`."""
        register_secret(value)
        all_tags = {**tags, MANAGED_BY_TAG: MANAGED_BY}
        secret = await _guarded(
            "set",
            name,
            self._client.set_secret(name, value, content_type=CONTENT_TYPE, expires_on=expires_on, tags=all_tags),
        )
        stored = _stored(secret.properties)
        log_event(
            log, logging.INFO, "vault.stored", "stored a secret version", secret_name=name, version=stored.version
        )
        return stored

    async def versions(self, name: str) -> list[StoredVersion]:
        """Every version of `name` with its tags, newest first ([] when the secret does not exist)."""

        async def collect() -> list[StoredVersion]:
            return [_stored(props) async for props in self._client.list_properties_of_secret_versions(name)]

        try:
            found = await _guarded("list versions", name, collect())
        except VaultNotFound:
            return []
        return _newest_first(found)

    async def find_by_tag(self, name: str, tag: str, value: str) -> StoredVersion | None:
        """The newest version whose tag `tag` equals `value`, or None."""
        return next((v for v in await self.versions(name) if v.tags.get(tag) == value), None)

    async def value(self, name: str, version: str) -> str:
        """The secret value of one version (the caller must not log it)."""
        secret = await _guarded("get", name, self._client.get_secret(name, version))
        if secret.value is None:
            raise VaultError(f"Key Vault get of secret '{name}' returned no value")
        register_secret(secret.value)
        return secret.value

    async def set_tags(self, name: str, version: str, **tags: str) -> StoredVersion:
        """Merge `tags` into the version's tags (other tags are kept; the service replaces the whole set)."""
        existing = next((v for v in await self.versions(name) if v.version == version), None)
        if existing is None:
            raise VaultNotFound(f"Key Vault version {version} of secret '{name}' was not found", 404, "SecretNotFound")
        merged = {**existing.tags, **tags}
        props = await _guarded("update", name, self._client.update_secret_properties(name, version, tags=merged))
        return _stored(props)

    async def set_state(self, name: str, version: str, state: VersionState) -> StoredVersion:
        """Move a version to another staging label."""
        return await self.set_tags(name, version, **{STATE_TAG: state.value})

    async def disable(self, name: str, version: str) -> StoredVersion:
        """Disable a version (an abandoned secret must not be read back and used)."""
        props = await _guarded("update", name, self._client.update_secret_properties(name, version, enabled=False))
        return _stored(props)

    async def current(self, name: str) -> StoredVersion | None:
        """The version tagged `state=current` (the newest if several are)."""
        return next((v for v in await self.versions(name) if v.labels.state is VersionState.CURRENT), None)
