"""AKS through Azure Resource Manager: clusters, maintenance configurations, resetServicePrincipalProfile,
certificate rotation and the cluster CA expiry (from the user kubeconfig).

Long-running operations are started with the SDK but never polled by it: `begin_*` returns the operation's
`Azure-AsyncOperation` URL (safe to persist: it carries no request data), and `operation_status` GETs that URL
through the same authenticated pipeline. An azure-core continuation token must never be persisted: it pickles
the initial response, whose request body carries the secret.
"""

from __future__ import annotations

import base64
import calendar
import fnmatch
import re
from collections.abc import Awaitable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote, urlparse

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError
from azure.core.polling import AsyncNoPolling
from azure.core.rest import HttpRequest
from azure.mgmt.containerservice.aio import ContainerServiceClient
from azure.mgmt.containerservice.models import ManagedClusterServicePrincipalProfile
from cryptography import x509

from shared.azure import ServiceError, container_service
from shared.settings import Settings

SUBSCRIPTIONS_API_VERSION = "2022-12-01"
_NO_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
PERMISSIONS_API_VERSION = "2022-04-01"
T = TypeVar("T")
_CLUSTER_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.ContainerService/"
    r"managedClusters/(?P<name>[^/]+)$",
    re.IGNORECASE,
)
_OPERATION_PATH = re.compile(
    r"^/subscriptions/[^/]+/providers/Microsoft\.ContainerService/locations/[^/]+/operations/[^/]+$", re.IGNORECASE
)
_ACTION = re.compile(r"perform action '([^']+)' over scope '([^']*)'")
_CA_DATA = re.compile(r"certificate-authority-data:\s*(\S+)")
_DAYS = {d: i for i, d in enumerate(("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))}
_WEEK_INDEX = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": 5}


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


@dataclass(frozen=True)
class OperationStatus:
    status: str  # "InProgress" | "Succeeded" | "Failed" | "Canceled"
    error: str | None


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
    )


# -- maintenance windows ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """A `maintenanceWindow` recurrence (aksManagedAutoUpgradeSchedule / aksManagedNodeOSUpgradeSchedule)."""

    kind: str  # "daily" | "weekly" | "absoluteMonthly" | "relativeMonthly"
    interval: int
    duration: timedelta
    start_time: time
    utc_offset: timedelta
    start_date: date | None = None
    day_of_week: int | None = None  # 0 = Monday
    day_of_month: int | None = None
    week_index: int | None = None  # 1-4, 5 = last

    @property
    def tz(self) -> timezone:
        return timezone(self.utc_offset)

    def occurs_on(self, day: date) -> bool:
        if self.start_date is not None and day < self.start_date:
            return False
        anchor = self.start_date or date(2000, 1, 3)  # a Monday
        if self.kind == "daily":
            return (day - anchor).days % self.interval == 0
        if self.kind == "weekly":
            monday = anchor - timedelta(days=anchor.weekday())
            return day.weekday() == self.day_of_week and ((day - monday).days // 7) % self.interval == 0
        months = (day.year - anchor.year) * 12 + day.month - anchor.month
        if months % self.interval:
            return False
        if self.kind == "absoluteMonthly":
            return day.day == self.day_of_month
        if self.kind == "relativeMonthly":
            if day.weekday() != self.day_of_week:
                return False
            if self.week_index == 5:
                return day.day + 7 > calendar.monthrange(day.year, day.month)[1]
            return (day.day - 1) // 7 + 1 == self.week_index
        return False

    def start_on(self, day: date) -> datetime:
        return datetime.combine(day, self.start_time, self.tz).astimezone(UTC)


@dataclass(frozen=True)
class MaintenanceWindow:
    """A parsed maintenance configuration. Times are UTC.

    `hour_slots`: allowed (weekday 0=Monday, hour) pairs from `timeInWeek`; `schedule`: the `maintenanceWindow`
    recurrence; `not_allowed`: blackout intervals (`notAllowedTime`, `notAllowedDates`), half-open.
    """

    name: str
    hour_slots: frozenset[tuple[int, int]] = frozenset()
    schedule: Schedule | None = None
    not_allowed: tuple[tuple[datetime, datetime], ...] = ()

    @classmethod
    def from_arm(cls, name: str, properties: Mapping[str, Any]) -> MaintenanceWindow:
        slots = frozenset(
            (_DAYS[str(item["day"]).lower()], int(hour))
            for item in properties.get("timeInWeek") or []
            if str(item.get("day", "")).lower() in _DAYS
            for hour in item.get("hourSlots") or []
        )
        blackout = [
            (_utc(span["start"]), _utc(span["end"]))
            for span in properties.get("notAllowedTime") or []
            if span.get("start") and span.get("end")
        ]
        schedule = None
        window = properties.get("maintenanceWindow")
        if window:
            schedule = _schedule(window)
            for span in window.get("notAllowedDates") or []:
                first = datetime.combine(date.fromisoformat(str(span["start"])), time(), schedule.tz)
                last = datetime.combine(date.fromisoformat(str(span["end"])), time(), schedule.tz)
                blackout.append((first.astimezone(UTC), (last + timedelta(days=1)).astimezone(UTC)))
        return cls(name=name, hour_slots=slots, schedule=schedule, not_allowed=tuple(blackout))

    def _blocked(self, moment: datetime) -> bool:
        return any(start <= moment < end for start, end in self.not_allowed)

    def allows(self, moment: datetime) -> bool:
        """True if maintenance may run at `moment` (aware datetime) under this configuration."""
        moment = moment.astimezone(UTC)
        if self._blocked(moment):
            return False
        if self.schedule is not None:
            return any(start <= moment < start + self.schedule.duration for start in self._starts_around(moment))
        return (moment.weekday(), moment.hour) in self.hour_slots

    def _starts_around(self, moment: datetime) -> Iterator[datetime]:
        assert self.schedule is not None
        local = moment.astimezone(self.schedule.tz).date()
        span = self.schedule.duration.days + 2
        for offset in range(-span, 1):
            day = local + timedelta(days=offset)
            if self.schedule.occurs_on(day):
                yield self.schedule.start_on(day)

    def next_start(self, after: datetime, horizon: timedelta = timedelta(days=800)) -> datetime:
        """The earliest moment >= `after` at which `allows()` is true; ValueError if none within `horizon`."""
        after = after.astimezone(UTC)
        candidates: list[datetime] = [after]
        candidates += [end for _, end in self.not_allowed if end > after]
        if self.schedule is not None:
            first = after.astimezone(self.schedule.tz).date() - timedelta(days=1)
            for offset in range(horizon.days + 1):
                day = first + timedelta(days=offset)
                if self.schedule.occurs_on(day):
                    candidates.append(self.schedule.start_on(day))
        elif self.hour_slots:
            hour = after.replace(minute=0, second=0, microsecond=0)
            for step in range(1, 24 * 7 * 8 + 1):
                candidates.append(hour + timedelta(hours=step))
        for candidate in sorted(c for c in candidates if after <= c <= after + horizon):
            if self.allows(candidate):
                return candidate
        raise ValueError(f"maintenance configuration {self.name!r} opens no window within {horizon.days} days")


def _utc(value: Any) -> datetime:
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _offset(text: str | None) -> timedelta:
    if not text:
        return timedelta()
    match = re.fullmatch(r"([+-])(\d{1,2}):(\d{2})", text.strip())
    if match is None:
        raise ValueError(f"invalid utcOffset {text!r}")
    delta = timedelta(hours=int(match[2]), minutes=int(match[3]))
    return -delta if match[1] == "-" else delta


def _schedule(window: Mapping[str, Any]) -> Schedule:
    raw = window.get("schedule") or {}
    hours, minutes = (int(part) for part in str(window.get("startTime", "00:00")).split(":")[:2])
    common: dict[str, Any] = {
        "duration": timedelta(hours=int(window.get("durationHours") or 4)),
        "start_time": time(hours, minutes),
        "utc_offset": _offset(window.get("utcOffset")),
        "start_date": date.fromisoformat(str(window["startDate"])) if window.get("startDate") else None,
    }
    if raw.get("daily"):
        return Schedule("daily", int(raw["daily"].get("intervalDays") or 1), **common)
    if raw.get("weekly"):
        weekly = raw["weekly"]
        day = _DAYS[str(weekly["dayOfWeek"]).lower()]
        return Schedule("weekly", int(weekly.get("intervalWeeks") or 1), day_of_week=day, **common)
    if raw.get("absoluteMonthly"):
        monthly = raw["absoluteMonthly"]
        interval = int(monthly.get("intervalMonths") or 1)
        return Schedule("absoluteMonthly", interval, day_of_month=int(monthly["dayOfMonth"]), **common)
    if raw.get("relativeMonthly"):
        monthly = raw["relativeMonthly"]
        return Schedule(
            "relativeMonthly",
            int(monthly.get("intervalMonths") or 1),
            day_of_week=_DAYS[str(monthly["dayOfWeek"]).lower()],
            week_index=_WEEK_INDEX[str(monthly["weekIndex"]).lower()],
            **common,
        )
    raise ValueError("maintenanceWindow has no recognised schedule")


# -- the client ------------------------------------------------------------------------------------------------
class _CaptureInitial(AsyncNoPolling[None]):
    """A polling method that only records the initial 202's operation URL and never polls."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.operation_url: str | None = None

    def initialize(self, client: Any, initial_response: Any, deserialization_callback: Any) -> None:
        super().initialize(client, initial_response, deserialization_callback)
        self.operation_url = initial_response.http_response.headers.get("Azure-AsyncOperation")


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
    if status == 400 and "ServicePrincipalProfile were invalid" in message:
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
        self._clients: dict[str, ContainerServiceClient] = {}
        arm = urlparse(settings.arm_endpoint)
        self._arm_origin = (arm.scheme.lower(), arm.netloc.lower())

    async def __aenter__(self) -> AksClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    def _client(self, subscription_id: str) -> ContainerServiceClient:
        key = subscription_id.lower()
        client = self._clients.get(key)
        if client is None:
            client = container_service(self._settings, self._credential, key, **self._kwargs)
            self._clients[key] = client
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
        url = f"{self._settings.arm_endpoint}/subscriptions?api-version={SUBSCRIPTIONS_API_VERSION}"
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
            f"?api-version={PERMISSIONS_API_VERSION}"
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

    async def begin_reset_service_principal(self, cluster_id: str, client_id: str, secret: str) -> str:
        """Start resetServicePrincipalProfile; returns the Azure-AsyncOperation URL (the secret is not in it)."""
        sub, rg, name = parse_cluster_id(cluster_id)
        capture = _CaptureInitial()
        await _guarded(
            self._client(sub).managed_clusters.begin_reset_service_principal_profile(
                rg, name, ManagedClusterServicePrincipalProfile(client_id=client_id, secret=secret), polling=capture
            ),
            f"resetServicePrincipalProfile on {cluster_id}",
        )
        return self._operation_url(capture, cluster_id)

    async def begin_rotate_certificates(self, cluster_id: str) -> str:
        sub, rg, name = parse_cluster_id(cluster_id)
        capture = _CaptureInitial()
        await _guarded(
            self._client(sub).managed_clusters.begin_rotate_cluster_certificates(rg, name, polling=capture),
            f"rotateClusterCertificates on {cluster_id}",
        )
        return self._operation_url(capture, cluster_id)

    def _operation_url(self, capture: _CaptureInitial, cluster_id: str) -> str:
        if not capture.operation_url:
            raise AksError(f"AKS accepted the operation on {cluster_id} without an Azure-AsyncOperation URL")
        return self._on_arm(capture.operation_url)

    def _on_arm(self, url: str) -> str:
        """Refuse any URL that is not on the configured ARM endpoint (our bearer token must not go elsewhere)."""
        parsed = urlparse(url)
        if (parsed.scheme.lower(), parsed.netloc.lower()) != self._arm_origin:
            raise AksError(f"refusing a URL outside the configured ARM endpoint: {parsed.scheme}://{parsed.netloc}")
        return url

    async def operation_status(self, operation_url: str) -> OperationStatus:
        url = self._on_arm(operation_url)
        if not _OPERATION_PATH.match(urlparse(url).path.rstrip("/")):
            raise AksError("not an AKS operation status URL")
        _, body = await self._get_json(url, "operation status")
        status = str(body.get("status") or "InProgress")
        error = body.get("error") or None
        message = f"{error.get('code')}: {error.get('message')}" if isinstance(error, dict) else None
        return OperationStatus(status=status, error=message if status in ("Failed", "Canceled") else None)

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


def windows_allow(windows: Iterable[MaintenanceWindow], moment: datetime, name: str = "default") -> bool | None:
    """Whether the configuration called `name` allows `moment`; None when no such configuration exists."""
    for window in windows:
        if window.name.lower() == name.lower():
            return window.allows(moment)
    return None
