"""Microsoft Graph: look up applications / service principals, add and remove passwords, app management policy.

* `lookup_apps` answers "which passwords do these appIds have" for thousands of ids with few HTTP requests: JSON
  `$batch` (20 sub-requests per batch) of `$filter=appId in (...)` (15 ids per sub-request, Graph's limit) against
  both `/applications` and `/servicePrincipals`, bounded concurrency, per-item retry after `Retry-After` (429) and
  backoff (5xx), `@odata.nextLink` followed inside later batches.
* Single calls (add/remove password, owners, policies) use msgraph-sdk with the SDK's own retry middleware
  switched off, so retries are ours and bounded: reads and idempotent writes retry 429/5xx/connection errors;
  `addPassword` retries only 429 (a throttled request was not executed; a 5xx one may have been).
* A new secret is registered with `shared.logs.register_secret` the moment it exists and is only ever held as a
  `SecretStr`. Exceptions carry a short operation name, HTTP status and Graph error code, never bodies.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from azure.core.credentials_async import AsyncTokenCredential
from kiota_abstractions.api_error import APIError
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_abstractions.headers_collection import HeadersCollection
from kiota_abstractions.method import Method
from kiota_abstractions.request_information import RequestInformation
from kiota_http.middleware.options.retry_handler_option import RetryHandlerOption
from msgraph.generated.applications.item.add_password.add_password_post_request_body import (
    AddPasswordPostRequestBody as AppAddPasswordBody,
)
from msgraph.generated.applications.item.application_item_request_builder import ApplicationItemRequestBuilder
from msgraph.generated.applications.item.remove_password.remove_password_post_request_body import (
    RemovePasswordPostRequestBody as AppRemovePasswordBody,
)
from msgraph.generated.models.app_credential_restriction_type import AppCredentialRestrictionType
from msgraph.generated.models.app_management_restriction_state import AppManagementRestrictionState
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.password_credential import PasswordCredential
from msgraph.generated.models.password_credential_configuration import PasswordCredentialConfiguration
from msgraph.generated.models.reference_create import ReferenceCreate
from msgraph.generated.service_principals.item.add_password.add_password_post_request_body import (
    AddPasswordPostRequestBody as SpAddPasswordBody,
)
from msgraph.generated.service_principals.item.remove_password.remove_password_post_request_body import (
    RemovePasswordPostRequestBody as SpRemovePasswordBody,
)
from msgraph.generated.service_principals.item.service_principal_item_request_builder import (
    ServicePrincipalItemRequestBuilder,
)
from msgraph.generated.service_principals_with_app_id.service_principals_with_app_id_request_builder import (
    ServicePrincipalsWithAppIdRequestBuilder,
)
from msgraph.graph_service_client import GraphServiceClient
from pydantic import SecretStr

from shared.azure import ServiceError, graph_client
from shared.logs import register_secret
from shared.settings import Settings

__all__ = [
    "AppCredentials",
    "GraphAuthorizationError",
    "GraphError",
    "GraphOps",
    "Holder",
    "NewPassword",
    "PasswordInfo",
    "PasswordPolicyError",
]

Holder = Literal["application", "servicePrincipal"]
T = TypeVar("T")

IDS_PER_FILTER = 15  # Graph: at most 15 values in one `in (...)` clause
BATCH_SIZE = 20  # Graph: at most 20 requests in one JSON batch
LOOKUP_SELECT = "id,appId,displayName,passwordCredentials"
LOOKUP_TOP = 999  # a 15-id filter never needs a second page; @odata.nextLink is followed anyway
POLICY_CODES = frozenset(
    {"CredentialTypeNotAllowedAsPerAppPolicy", "CredentialInvalidLifetimeAsPerAppPolicy", "TooManyAppPasswords"}
)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_NO_SDK_RETRY = RetryHandlerOption(delay=0, max_retries=0, should_retry=False)


# -- public types ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PasswordInfo:
    key_id: str
    display_name: str | None
    start: datetime | None
    end: datetime | None
    hint: str | None


@dataclass(frozen=True)
class AppCredentials:
    app_id: str
    application_object_id: str | None  # None if the application object is not visible (other tenant / no right)
    service_principal_object_id: str | None
    application_passwords: tuple[PasswordInfo, ...]
    service_principal_passwords: tuple[PasswordInfo, ...]


@dataclass(frozen=True)
class NewPassword:
    key_id: str
    end: datetime
    secret: SecretStr


class GraphError(ServiceError):
    """A Graph call failed. The message names the operation, HTTP status and Graph error code only."""


class PasswordPolicyError(GraphError):
    """addPassword refused by an app management policy or the credential-count limit."""


class GraphAuthorizationError(GraphError):
    """403 Authorization_RequestDenied: the product lacks the permission or does not own the object."""


# -- helpers --------------------------------------------------------------------------------------------------
_FRACTION = re.compile(r"\.(\d+)")


def _parse_time(value: str | None) -> datetime | None:
    """Graph timestamps ("2021-09-09T19:50:29.3086381Z": up to 7 fractional digits) as aware UTC datetimes."""
    if not value:
        return None
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), value.replace("Z", "+00:00"), count=1)
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _password_from_json(doc: dict[str, Any]) -> PasswordInfo:
    return PasswordInfo(
        key_id=str(doc.get("keyId", "")).lower(),
        display_name=doc.get("displayName"),
        start=_parse_time(doc.get("startDateTime")),
        end=_parse_time(doc.get("endDateTime")),
        hint=doc.get("hint"),
    )


def _password_from_model(model: PasswordCredential) -> PasswordInfo:
    def aware(value: datetime | None) -> datetime | None:
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)

    return PasswordInfo(
        key_id=str(model.key_id).lower() if model.key_id is not None else "",
        display_name=model.display_name,
        start=aware(model.start_date_time),
        end=aware(model.end_date_time),
        hint=model.hint,
    )


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    try:
        raw = headers.get("retry-after") or headers.get("Retry-After")
    except AttributeError:
        return None
    if isinstance(raw, set | list | tuple):  # kiota's HeadersCollection keeps value sets
        raw = next(iter(raw), None)
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except (TypeError, ValueError):
        return None


def _odata_code(exc: APIError) -> str | None:
    if isinstance(exc, ODataError) and exc.error is not None:
        return exc.error.code
    return None


def _quote_values(values: Sequence[str]) -> str:
    return ",".join("'" + v.replace("'", "''") + "'" for v in values)


def _relative(url: str, base: str) -> str:
    """An absolute @odata.nextLink as the relative URL a batch item needs (path after /v1.0, plus query)."""
    if url.startswith(base):
        return url[len(base) :] or "/"
    parts = urlsplit(url)
    path = parts.path
    if path.startswith("/v1.0"):
        path = path[len("/v1.0") :]
    return path + ("?" + parts.query if parts.query else "")


@dataclass
class _Item:
    """One pending sub-request of the lookup."""

    kind: Holder
    url: str
    attempts: int = 0
    not_before: float = 0.0


# -- the client -----------------------------------------------------------------------------------------------
class GraphOps:
    """Microsoft Graph operations the rotator needs. Use as an async context manager (closes its HTTP client).

    `max_attempts` bounds every retry loop (1 = no retry); `backoff_seconds` is the first 5xx/connection-error
    delay (doubled per attempt, capped at `max_backoff_seconds`); a `Retry-After` above `max_retry_after_seconds`
    is not waited for (the call fails instead).
    """

    def __init__(
        self,
        settings: Settings,
        credential: AsyncTokenCredential,
        *,
        client: GraphServiceClient | None = None,
        max_attempts: int = 6,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 20.0,
        max_retry_after_seconds: float = 120.0,
        concurrency: int | None = None,
    ) -> None:
        self._settings = settings
        self._client = client if client is not None else graph_client(settings, credential)
        self._owns_client = client is None
        self._max_attempts = max(1, max_attempts)
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._max_retry_after = max_retry_after_seconds
        self._concurrency = max(1, concurrency or settings.discovery_concurrency)
        self._base = settings.graph_endpoint.rstrip("/") + "/v1.0"

    async def __aenter__(self) -> GraphOps:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if not self._owns_client:
            return
        http = getattr(self._client.request_adapter, "_http_client", None)
        if isinstance(http, httpx.AsyncClient):
            await http.aclose()

    # -- retry plumbing --------------------------------------------------------------------------------------
    def _delay(self, attempt: int) -> float:
        base: float = min(self._max_backoff, self._backoff * (2 ** (attempt - 1)))
        return base * (0.5 + random.random() / 2)

    def _config(self, query: Any = None) -> RequestConfiguration[Any]:
        return RequestConfiguration(query_parameters=query, options=[_NO_SDK_RETRY])

    async def _call(
        self, operation: str, factory: Callable[[], Awaitable[T]], retry_statuses: frozenset[int] = RETRY_STATUSES
    ) -> T:
        """Run one SDK call with bounded retries; map failures to GraphError types (no bodies, no chaining)."""
        error: GraphError
        attempt = 0
        while True:
            attempt += 1
            try:
                return await factory()
            except APIError as exc:
                status = exc.response_status_code
                code = _odata_code(exc)
                retryable = status in retry_statuses
                wait = _retry_after(exc.response_headers) if status == 429 else None
                if retryable and attempt < self._max_attempts and (wait is None or wait <= self._max_retry_after):
                    await asyncio.sleep(wait if wait is not None else self._delay(attempt))
                    continue
                error = self._mapped(operation, status, code)
            except (TimeoutError, httpx.TransportError) as exc:
                if attempt < self._max_attempts and 500 in retry_statuses:
                    await asyncio.sleep(self._delay(attempt))
                    continue
                error = GraphError(f"{operation}: connection failed ({type(exc).__name__})")
            # Raised outside the except block: no __context__ link to kiota's error (whose response may hold
            # secretText) survives on ours.
            raise error

    @staticmethod
    def _mapped(operation: str, status: int | None, code: str | None) -> GraphError:
        text = f"{operation}: HTTP {status}" + (f" {code}" if code else "")
        if code in POLICY_CODES:
            return PasswordPolicyError(text, status, code)
        if status == 403:
            return GraphAuthorizationError(text, status, code)
        return GraphError(text, status, code)

    # -- lookup (batched) ------------------------------------------------------------------------------------
    async def lookup_apps(self, app_ids: Iterable[str]) -> dict[str, AppCredentials]:
        """Applications and service principals (with their passwords) for these appIds; absent when in neither."""
        wanted = list(dict.fromkeys(a.strip().lower() for a in app_ids if a and a.strip()))
        pending: list[_Item] = []
        for i in range(0, len(wanted), IDS_PER_FILTER):
            clause = quote(f"appId in ({_quote_values(wanted[i : i + IDS_PER_FILTER])})", safe="(),'")
            query = f"$filter={clause}&$select={LOOKUP_SELECT}&$top={LOOKUP_TOP}"
            pending.append(_Item("application", f"/applications?{query}"))
            pending.append(_Item("servicePrincipal", f"/servicePrincipals?{query}"))
        apps: dict[str, dict[str, Any]] = {}
        sps: dict[str, dict[str, Any]] = {}
        semaphore = asyncio.Semaphore(self._concurrency)
        loop = asyncio.get_running_loop()

        async def run(chunk: list[_Item]) -> list[_Item]:
            async with semaphore:
                return await self._run_batch(chunk, apps, sps)

        while pending:
            start = max(item.not_before for item in pending)
            if start > loop.time():
                await asyncio.sleep(start - loop.time())
            chunks = [pending[i : i + BATCH_SIZE] for i in range(0, len(pending), BATCH_SIZE)]
            try:
                async with asyncio.TaskGroup() as group:  # a failure cancels the sibling batches
                    tasks = [group.create_task(run(chunk)) for chunk in chunks]
            except BaseExceptionGroup as failed:
                first: BaseException = failed
                while isinstance(first, BaseExceptionGroup):
                    first = first.exceptions[0]
                raise first from None
            pending = [item for task in tasks for item in task.result()]
        out: dict[str, AppCredentials] = {}
        for app_id in wanted:
            app, sp = apps.get(app_id), sps.get(app_id)
            if app is None and sp is None:
                continue
            out[app_id] = AppCredentials(
                app_id=app_id,
                application_object_id=app.get("id") if app else None,
                service_principal_object_id=sp.get("id") if sp else None,
                application_passwords=tuple(_password_from_json(p) for p in (app or {}).get("passwordCredentials", [])),
                service_principal_passwords=tuple(
                    _password_from_json(p) for p in (sp or {}).get("passwordCredentials", [])
                ),
            )
        return out

    def _requeue(self, item: _Item, wait: float | None, reason: str) -> _Item:
        item.attempts += 1
        if item.attempts >= self._max_attempts:
            raise GraphError(f"lookup_apps: gave up after {item.attempts} attempts ({reason})")
        if wait is not None and wait > self._max_retry_after:
            raise GraphError(f"lookup_apps: Retry-After {wait:.0f}s exceeds the limit ({reason})")
        delay = wait if wait is not None else self._delay(item.attempts)
        item.not_before = asyncio.get_running_loop().time() + delay
        return item

    async def _run_batch(
        self, chunk: list[_Item], apps: dict[str, dict[str, Any]], sps: dict[str, dict[str, Any]]
    ) -> list[_Item]:
        """Send one $batch; record found objects; return the items to send again (retries and next pages)."""
        payload = {
            "requests": [{"id": str(i), "method": "GET", "url": item.url} for i, item in enumerate(chunk, start=1)]
        }
        info = RequestInformation(Method.POST, self._base + "/$batch")
        info.headers = HeadersCollection()
        info.headers.try_add("Accept", "application/json")
        info.set_stream_content(json.dumps(payload).encode(), "application/json")
        info.add_request_options([_NO_SDK_RETRY])
        adapter = self._client.request_adapter
        errors: dict[str, Any] = {"XXX": ODataError}
        try:
            raw: Any = await adapter.send_primitive_async(info, "bytes", errors)
        except APIError as exc:
            status = exc.response_status_code
            if status in RETRY_STATUSES:
                wait = _retry_after(exc.response_headers) if status == 429 else None
                return [self._requeue(item, wait, f"batch HTTP {status}") for item in chunk]
            raise self._mapped("lookup_apps $batch", status, _odata_code(exc)) from None
        except (TimeoutError, httpx.TransportError) as exc:
            return [self._requeue(item, None, type(exc).__name__) for item in chunk]
        try:
            responses = json.loads(raw or b"{}").get("responses", [])
        except (ValueError, AttributeError):
            raise GraphError("lookup_apps: the $batch response is not JSON") from None
        by_id = {str(r.get("id")): r for r in responses if isinstance(r, dict)}
        again: list[_Item] = []
        for i, item in enumerate(chunk, start=1):
            answer = by_id.get(str(i))
            if answer is None:
                again.append(self._requeue(item, None, "missing batch response"))
                continue
            status = int(answer.get("status", 0))
            raw_body = answer.get("body")
            body: dict[str, Any] = raw_body if isinstance(raw_body, dict) else {}
            if status == 200:
                target = apps if item.kind == "application" else sps
                for obj in body.get("value", []):
                    app_id = str(obj.get("appId", "")).lower()
                    if app_id:
                        target[app_id] = obj
                next_link = body.get("@odata.nextLink")
                if isinstance(next_link, str) and next_link:
                    again.append(_Item(item.kind, _relative(next_link, self._base)))
                continue
            code = (body.get("error") or {}).get("code") if isinstance(body.get("error"), dict) else None
            if status in RETRY_STATUSES:
                wait = _retry_after(answer.get("headers") or {}) if status == 429 else None
                again.append(self._requeue(item, wait, f"HTTP {status}"))
                continue
            raise self._mapped(f"lookup_apps {item.kind}", status, code)
        return again

    # -- passwords -------------------------------------------------------------------------------------------
    async def add_password(self, holder: Holder, object_id: str, display_name: str, end: datetime) -> NewPassword:
        """addPassword; the secret is registered for log redaction at once and returned as a SecretStr."""
        credential = PasswordCredential(display_name=display_name, end_date_time=end)
        config = self._config()
        if holder == "application":
            app_builder = self._client.applications.by_application_id(object_id).add_password
            body_app = AppAddPasswordBody(password_credential=credential)

            def send() -> Awaitable[PasswordCredential | None]:
                return app_builder.post(body_app, request_configuration=config)
        else:
            sp_builder = self._client.service_principals.by_service_principal_id(object_id).add_password
            body_sp = SpAddPasswordBody(password_credential=credential)

            def send() -> Awaitable[PasswordCredential | None]:
                return sp_builder.post(body_sp, request_configuration=config)

        # Only a throttled addPassword is certainly not executed; anything else is reconciled by the caller.
        result = await self._call(f"addPassword ({holder})", send, retry_statuses=frozenset({429}))
        if result is None or not result.secret_text or result.key_id is None:
            raise GraphError(f"addPassword ({holder}): the response has no secret")
        secret = SecretStr(result.secret_text)
        register_secret(secret)
        result.secret_text = None
        expiry = result.end_date_time or end
        return NewPassword(
            key_id=str(result.key_id).lower(),
            end=expiry if expiry.tzinfo else expiry.replace(tzinfo=UTC),
            secret=secret,
        )

    async def remove_password(self, holder: Holder, object_id: str, key_id: str) -> None:
        """removePassword; a keyId that is already gone is success (idempotent)."""
        key = uuid.UUID(key_id)
        config = self._config()
        if holder == "application":
            app_builder = self._client.applications.by_application_id(object_id).remove_password
            body_app = AppRemovePasswordBody(key_id=key)

            def send() -> Awaitable[None]:
                return app_builder.post(body_app, request_configuration=config)
        else:
            sp_builder = self._client.service_principals.by_service_principal_id(object_id).remove_password
            body_sp = SpRemovePasswordBody(key_id=key)

            def send() -> Awaitable[None]:
                return sp_builder.post(body_sp, request_configuration=config)

        try:
            await self._call(f"removePassword ({holder})", send)
        except GraphError as exc:
            if exc.status not in (400, 404):
                raise
            # Graph refuses an unknown keyId; if the holder exists and the key is absent, it is already removed.
            current = await self.passwords(holder, object_id)
            if any(p.key_id == str(key) for p in current):
                raise
            return

    async def passwords(self, holder: Holder, object_id: str) -> tuple[PasswordInfo, ...]:
        """The holder's password credentials (metadata only; Graph never returns secret values on reads)."""
        if holder == "application":
            app_query = ApplicationItemRequestBuilder.ApplicationItemRequestBuilderGetQueryParameters(
                select=["id", "passwordCredentials"]
            )
            app_builder = self._client.applications.by_application_id(object_id)
            app = await self._call("get application", lambda: app_builder.get(self._config(app_query)))
            creds = app.password_credentials if app is not None else None
        else:
            sp_query = ServicePrincipalItemRequestBuilder.ServicePrincipalItemRequestBuilderGetQueryParameters(
                select=["id", "passwordCredentials"]
            )
            sp_builder = self._client.service_principals.by_service_principal_id(object_id)
            sp = await self._call("get servicePrincipal", lambda: sp_builder.get(self._config(sp_query)))
            creds = sp.password_credentials if sp is not None else None
        return tuple(_password_from_model(p) for p in creds or [])

    # -- policy ----------------------------------------------------------------------------------------------
    @staticmethod
    def _lifetime(configs: Sequence[PasswordCredentialConfiguration] | None) -> timedelta | None:
        limits = [
            c.max_lifetime
            for c in configs or []
            if c.restriction_type == AppCredentialRestrictionType.PasswordLifetime
            and c.max_lifetime is not None
            and c.state != AppManagementRestrictionState.Disabled
        ]
        return min(limits) if limits else None

    async def max_password_lifetime(self, application_object_id: str) -> timedelta | None:
        """Max password lifetime from the app's own management policy, else the tenant default; None if none
        applies or the product may not read policies (403)."""
        builder = self._client.applications.by_application_id(application_object_id).app_management_policies
        try:
            assigned = await self._call("list appManagementPolicies", lambda: builder.get(self._config()))
            policies = [p for p in (assigned.value if assigned else None) or [] if p.is_enabled is not False]
            if policies:
                found = [
                    self._lifetime(p.restrictions.password_credentials if p.restrictions else None) for p in policies
                ]
                values = [f for f in found if f is not None]
                return min(values) if values else None
            default_builder = self._client.policies.default_app_management_policy
            default = await self._call("get defaultAppManagementPolicy", lambda: default_builder.get(self._config()))
        except GraphAuthorizationError:
            return None
        if default is None or not default.is_enabled or default.application_restrictions is None:
            return None
        return self._lifetime(default.application_restrictions.password_credentials)

    # -- owners ----------------------------------------------------------------------------------------------
    def _owners_builder(self, holder: Holder, object_id: str) -> Any:
        if holder == "application":
            return self._client.applications.by_application_id(object_id).owners
        return self._client.service_principals.by_service_principal_id(object_id).owners

    async def owners(self, holder: Holder, object_id: str) -> list[str]:
        """Owner object ids of the application or service principal (all pages)."""
        builder = self._owners_builder(holder, object_id)
        page = await self._call(f"list {holder} owners", lambda: builder.get(self._config()))
        out: list[str] = []
        while page is not None:
            out.extend(o.id for o in page.value or [] if o.id)
            link = page.odata_next_link
            if not link:
                break
            next_builder = builder.with_url(link)
            page = await self._call(f"list {holder} owners", lambda b=next_builder: b.get(self._config()))  # type: ignore[misc]
        return out

    async def add_owner(self, holder: Holder, object_id: str, principal_object_id: str) -> None:
        """Add an owner; already being an owner is success."""
        builder = self._owners_builder(holder, object_id).ref
        body = ReferenceCreate(odata_id=f"{self._base}/directoryObjects/{principal_object_id}")
        try:
            await self._call(f"add {holder} owner", lambda: builder.post(body, request_configuration=self._config()))
        except GraphError as exc:
            if exc.status != 400:
                raise
            if principal_object_id.lower() not in {o.lower() for o in await self.owners(holder, object_id)}:
                raise

    async def service_principal_id(self, app_id: str) -> str | None:
        """Object id of the service principal of `app_id`, or None if the tenant has none."""
        # Not `self._client.service_principals_with_app_id(app_id)`: that generated builder writes `appId` into the
        # client's own path-parameter dict (shared by every builder), so concurrent look-ups all asked for the last
        # app id. A copy per call keeps each request its own.
        builder = ServicePrincipalsWithAppIdRequestBuilder(
            self._client.request_adapter, dict(self._client.path_parameters), app_id
        )
        try:
            sp = await self._call("get service principal", lambda: builder.get(self._config()))
        except GraphError as exc:
            if exc.status == 404:
                return None
            raise
        return sp.id if sp is not None else None
