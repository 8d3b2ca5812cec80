"""Discovery (timer trigger, `aks-rotator scan`): inventory every AKS cluster, decide which credentials are due,
queue one rotation per due credential.

Order of work, so that a missing right never leaves a half-queued run: everything is *collected* first
(clusters, application passwords, Key Vault records, CA expiries), every finding is *decided*, and only then is
anything *queued* (through `shared.rotation.submit`, the one dedup + enqueue + record path). An authorization
failure while collecting raises `DiscoveryError` naming the missing right; nothing is queued.

Cost at scale (see docs/discovery.md and `bench/scan.py`): one paged Resource Graph query (1,000 clusters per
request); every distinct application looked up once through `GraphOps.lookup_apps` (15 appIds per `$filter`,
20 filters per `$batch`); one paged Key Vault listing of secret names, plus one version listing only for
clusters whose latest version is not the current one; CA expiry only for clusters where it can matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

from shared import clock, telemetry
from shared.aks import AksClient, AksError, AuthorizationFailed, ClusterInfo, ClusterNotFound
from shared.azure import GRAPH_AUDIENCE, product_credential, secret_client
from shared.cluster_tags import certificates_opted_in, opted_out
from shared.credentials import credential_in_use, due_within_days
from shared.graph import AppCredentials, GraphAuthorizationError, GraphError, GraphOps, Holder
from shared.inventory import arm_listing, unique
from shared.logs import EVENT_CREDENTIAL_OVERDUE, alert, log_event
from shared.messages import (
    URGENT_REASONS,
    CredentialKind,
    InvalidInput,
    Reason,
    new_correlation_id,
    new_rotation_message,
)
from shared.migration.opt_in import opted_in, submit_tagged
from shared.migration.plan import count_stages
from shared.power import stopped_advice, stopped_clusters
from shared.resource_graph import (
    PAGE_SIZE,
    ResourceGraphError,
    ResourceGraphRefused,
    SubscriptionLimitHit,
    cluster_pages,
)
from shared.settings import Settings
from shared.vault import SECRET_PREFIX, VaultError, VaultForbidden, VaultStore, VersionTags, secret_name_for

log = logging.getLogger(__name__)

__all__ = [
    "ADVICE_CERT_OPT_IN",
    "ADVICE_KUBELET",
    "ADVICE_LEGACY_AAD",
    "ADVICE_MIGRATE",
    "Action",
    "DiscoveryError",
    "Finding",
    "Kind",
    "ScanReport",
    "run_scheduled",
    "scan",
]

Kind = Literal["sp_secret", "cluster_certificate", "aad_server_secret", "managed_identity"]
Action = Literal["queued", "already_queued", "deferred", "would_queue", "ok", "report_only", "opted_out", "none"]
Progress = Callable[[str, int, int], None]
T = TypeVar("T")

ADVICE_MIGRATE = "migrate to managed identity"
ADVICE_KUBELET = "kubelet still uses the SP: keep it valid until node pools are upgraded"
ADVICE_LEGACY_AAD = "legacy AAD: migrate to AKS-managed Entra integration"
ADVICE_CERT_OPT_IN = (
    "rotate-certs recreates every node (up to 30 minutes of downtime): set the cluster tag {tag}=true "
    "(or ROTATE_CERTIFICATES) to let the rotator do it"
)
ADVICE_NOT_VISIBLE = "application not found in Microsoft Graph (deleted, or in another tenant): cannot check it"
ADVICE_NO_PASSWORD = "the application has no password: the cluster cannot authenticate with it"  # noqa: S105 (advice text, not a secret)

_QUEUE_ACTIONS = frozenset({"queued", "already_queued", "deferred", "would_queue"})
RESOURCE_GRAPH_SHARDS = 4  # concurrent Resource Graph queries (the user quota is 15 per 5 seconds)


class DiscoveryError(Exception):
    """Discovery could not build a trustworthy inventory (e.g. the identity lacks a right); nothing was queued."""


# -- results ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    """One credential of one cluster (or, for `managed_identity`, the fact that there is none) and what was done."""

    cluster_id: str
    cluster_name: str
    subscription_id: str
    kind: Kind
    app_id: str | None
    holder: Holder | None
    key_id: str | None
    expires_on: datetime | None
    days_left: float | None
    action: Action
    advice: str | None = None
    due: bool = False  # within its window (THRESHOLD_DAYS for secrets, CERT_WINDOW_DAYS for certificates)
    reason: Reason | None = None  # due | urgent | expired, when due
    basis: str | None = None  # how the credential in use was decided: "keyvault" | "earliest" | "ca"
    rotation_id: str | None = None  # set when queued, already queued, deferred or would queue
    detail: str | None = None
    stopped: bool = False  # properties.powerState.code is Stopped: a reset fails until it is started (shared.power)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["stopped_advice"] = stopped_advice(self)
        data["expires_on"] = self.expires_on.isoformat() if self.expires_on else None
        data["days_left"] = round(self.days_left, 3) if self.days_left is not None else None
        return data


@dataclass
class ScanReport:
    findings: list[Finding]
    clusters: int
    subscriptions: int
    used_fallback: bool
    errors: list[str] = field(default_factory=list)
    dry_run: bool = False
    correlation_id: str = ""
    started_at: datetime | None = None
    seconds: float = 0.0
    # Logical calls the scan made, per kind (HTTP requests are fewer: lookups are batched).
    requests: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # Findings per action, counted as they were decided (a streaming scan keeps only some of the findings).
    actions: dict[str, int] = field(default_factory=dict)
    migration: dict[str, int] = field(default_factory=dict)  # clusters per migration stage (shared.migration.plan)

    def due(self) -> list[Finding]:
        """Credentials within their window, whatever the action (queued, deferred, opted out, report only)."""
        return [f for f in self.findings if f.due]

    def by_action(self) -> dict[str, int]:
        return dict(self.actions)

    def to_json(self) -> dict[str, Any]:
        return {
            "clusters": self.clusters,
            "subscriptions": self.subscriptions,
            "used_fallback": self.used_fallback,
            "dry_run": self.dry_run,
            "correlation_id": self.correlation_id,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "seconds": round(self.seconds, 3),
            "due": len(self.due()),
            "stopped": stopped_clusters(self.findings),
            "actions": self.by_action(),
            "migration": dict(self.migration),
            "requests": dict(self.requests),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "errors": list(self.errors),
            "findings": [f.to_json() for f in self.findings],
        }


# -- helpers ---------------------------------------------------------------------------------------------------
def _days(end: datetime | None, now: datetime) -> float | None:
    return None if end is None else (end - now).total_seconds() / 86400


def _reason(days_left: float, settings: Settings) -> Reason:
    if days_left <= 0:
        return "expired"
    if days_left <= settings.urgent_days:
        return "urgent"
    return "due"


async def _bounded(limit: int, items: Sequence[T], call: Callable[[T], Awaitable[Any]]) -> list[Any]:
    """Run `call` on every item with at most `limit` in flight; results (or exceptions) in item order."""
    semaphore = asyncio.Semaphore(max(1, limit))

    async def one(item: T) -> Any:
        async with semaphore:
            return await call(item)

    if not items:
        return []
    # The first call alone: it fetches the access token every later call reuses (concurrent first calls on
    # fresh SDK clients would each fetch one).
    first = await asyncio.gather(one(items[0]), return_exceptions=True)
    rest = await asyncio.gather(*(one(i) for i in items[1:]), return_exceptions=True)
    return [*first, *rest]


class _Scan:
    """Per-scan context: settings, clock, counters, progress."""

    def __init__(self, settings: Settings, now: datetime, progress: Progress | None) -> None:
        self.settings = settings
        self.now = now
        self.progress = progress
        self.errors: list[str] = []
        self.requests: Counter[str] = Counter()
        self.stages: dict[str, float] = {}

    def tick(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            with contextlib.suppress(Exception):  # a broken progress bar must not break the scan
                self.progress(stage, done, total)

    @contextlib.contextmanager
    def stage(self, name: str) -> Any:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - started


# -- collect: clusters -----------------------------------------------------------------------------------------
async def _arm_inventory(run: _Scan, aks: AksClient, allow: list[str] | None) -> tuple[list[ClusterInfo], int]:
    """The ARM fallback of the inventory (shared.inventory); discovery stops on a subscription it may not list."""
    if allow is None:
        run.requests["arm.listSubscriptions"] += 1
    try:
        listing = await arm_listing(
            aks,
            allow,
            concurrency=run.settings.discovery_concurrency,
            done=lambda done, total: run.tick("clusters", done, total),
        )
    except AuthorizationFailed as exc:
        raise DiscoveryError(f"the identity may not list subscriptions: it lacks '{exc.action}'") from None
    except AksError as exc:
        raise DiscoveryError(f"listing subscriptions failed: {exc}") from None
    run.requests["arm.listClusters"] += len(listing.subscriptions)
    for subscription, failure in listing.failures.items():
        if isinstance(failure, AuthorizationFailed):
            raise DiscoveryError(
                f"the identity may not list clusters in subscription {subscription}: it lacks '{failure.action}' "
                f"on '{failure.scope}' (grant the rotator's custom role there, or remove the subscription from "
                "SUBSCRIPTION_ALLOWLIST)"
            )
        if not isinstance(failure, AksError | AzureError):
            raise failure
        run.errors.append(f"listing clusters in subscription {subscription} failed: {failure}")
    return listing.clusters, len(listing.subscriptions)


# -- collect: applications -------------------------------------------------------------------------------------
async def _warm_graph_token(credential: AsyncTokenCredential) -> None:
    """Fetch the Graph token once before the concurrent `$batch` requests: each of them would otherwise miss the
    empty token cache and fetch its own. (The arguments are the ones kiota's provider passes.)"""
    with contextlib.suppress(Exception):  # the lookup itself reports any authentication problem
        await credential.get_token(GRAPH_AUDIENCE + "/.default", enable_cae=True)


async def _applications(
    run: _Scan, graph: GraphOps, credential: AsyncTokenCredential, app_ids: list[str]
) -> dict[str, AppCredentials]:
    if not app_ids:
        return {}
    run.tick("applications", 0, len(app_ids))
    run.requests["graph.lookup_ids"] += len(app_ids)
    await _warm_graph_token(credential)
    try:
        found = await graph.lookup_apps(app_ids)
    except GraphAuthorizationError as exc:
        raise DiscoveryError(
            f"Microsoft Graph refused reading applications ({exc}): the identity needs the application permission "
            "Application.ReadWrite.OwnedBy (or Application.Read.All)"
        ) from None
    except GraphError as exc:
        raise DiscoveryError(f"Microsoft Graph lookup of {len(app_ids)} applications failed: {exc}") from None
    run.tick("applications", len(app_ids), len(app_ids))
    return found


class _AppLookups:
    """Application look-ups shared by the pages of one scan: an appId is looked up once however many pages (or
    pages in flight together) name it, while it stays among the `capacity` most recently used; beyond that the
    memory is let go and a later page looks it up again."""

    def __init__(self, run: _Scan, graph: GraphOps, credential: AsyncTokenCredential, capacity: int = 20_000) -> None:
        self.run = run
        self.graph = graph
        self.credential = credential
        self.capacity = capacity
        self._known: OrderedDict[str, AppCredentials | None] = OrderedDict()
        self._pending: dict[str, asyncio.Future[None]] = {}

    async def get(self, app_ids: list[str]) -> dict[str, AppCredentials]:
        mine = [a for a in app_ids if a not in self._known and a not in self._pending]
        others = {self._pending[a] for a in app_ids if a in self._pending}
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for app_id in mine:
            self._pending[app_id] = done
        try:
            found = await _applications(self.run, self.graph, self.credential, mine)
            for app_id in mine:
                self._known[app_id] = found.get(app_id)
            done.set_result(None)
        except BaseException as exc:
            done.set_exception(exc if isinstance(exc, Exception) else DiscoveryError("cancelled"))
            done.exception()  # retrieved: waiting pages see it through their own await
            raise
        finally:
            for app_id in mine:
                self._pending.pop(app_id, None)
        for other in others:
            await other
        out: dict[str, AppCredentials] = {}
        for app_id in app_ids:
            creds = self._known.get(app_id)
            if app_id in self._known:
                self._known.move_to_end(app_id)
            if creds is not None:
                out[app_id] = creds
        while len(self._known) > self.capacity:
            self._known.popitem(last=False)
        return out


# -- collect: Key Vault ----------------------------------------------------------------------------------------
_KV_FORBIDDEN = (
    "Key Vault refused reading secret metadata ({detail}): the identity needs the role AKS credential rotator "
    "secrets (granted by infra/) on the rotator's vault"
)


async def _vault_names(
    run: _Scan, credential: AsyncTokenCredential, sdk_kwargs: dict[str, Any]
) -> dict[str, dict[str, str]]:
    """Every product secret in the vault with the tags of its latest version (one paged listing)."""
    names: dict[str, dict[str, str]] = {}
    async with secret_client(run.settings, credential, **sdk_kwargs) as client:
        try:
            run.requests["keyvault.listSecrets"] += 1
            async for props in client.list_properties_of_secrets():
                if props.name and props.name.startswith(SECRET_PREFIX):
                    names[props.name] = dict(props.tags or {})
        except HttpResponseError as exc:
            if exc.status_code == 403:
                raise DiscoveryError(_KV_FORBIDDEN.format(detail=f"HTTP 403 {_code(exc)}")) from None
            raise
    return names


def _code(exc: HttpResponseError) -> str:
    return (exc.error.code if exc.error is not None else None) or ""


async def _vault_listing(
    run: _Scan, credential: AsyncTokenCredential, sdk_kwargs: dict[str, Any]
) -> dict[str, dict[str, str]]:
    """The product's secrets (name -> tags of the latest version), read once per scan; empty (and an error noted)
    when the listing fails for another reason than a missing right. As large as the rotated clusters, not the
    estate."""
    try:
        return await _vault_names(run, credential, sdk_kwargs)
    except DiscoveryError:
        raise
    except AzureError as exc:
        run.errors.append(f"Key Vault listing failed ({type(exc).__name__}); using the earliest-expiry rule")
        return {}


async def _vault_keys(
    run: _Scan,
    credential: AsyncTokenCredential,
    clusters: list[ClusterInfo],
    listed: dict[str, dict[str, str]],
    sdk_kwargs: dict[str, Any],
) -> dict[str, str]:
    """cluster id (lower) -> keyId of the version tagged state=current, for the clusters of `clusters` this
    product rotated (`listed`: `_vault_listing`)."""
    keys: dict[str, str] = {}
    look: list[tuple[str, ClusterInfo]] = []
    for cluster in clusters:
        name = secret_name_for(cluster.id) if cluster.sp_client_id else None
        tags = listed.get(name) if name else None
        if name is None or tags is None or cluster.sp_client_id is None:
            continue
        labels = VersionTags.parse(tags)
        if labels.current_for(cluster.sp_client_id):
            keys[cluster.id.lower()] = labels.key_id
        else:
            look.append((name, cluster))  # the latest version is pending/previous/abandoned: find the current one
    if not look:
        return keys
    done = 0
    async with VaultStore(run.settings, credential, **sdk_kwargs) as vault:

        async def one(item: tuple[str, ClusterInfo]) -> tuple[str, str] | None:
            nonlocal done
            name, cluster = item
            run.requests["keyvault.listVersions"] += 1
            try:
                versions = await vault.versions(name)
            finally:
                done += 1
                run.tick("key vault", done, len(look))
            current = next((v for v in versions if v.labels.current_for(cluster.sp_client_id)), None)
            if current is None:
                return None
            return cluster.id.lower(), current.labels.key_id

        results = await _bounded(run.settings.discovery_concurrency, look, one)
    for (name, _), result in zip(look, results, strict=True):
        if isinstance(result, VaultForbidden):
            raise DiscoveryError(_KV_FORBIDDEN.format(detail=str(result)))
        if isinstance(result, BaseException):
            if not isinstance(result, VaultError | AzureError):
                raise result
            run.errors.append(f"Key Vault versions of {name} unreadable ({result}); using the earliest-expiry rule")
        elif result is not None:
            keys[result[0]] = result[1]
    return keys


# -- collect: certificates -------------------------------------------------------------------------------------
def reads_certificate(settings: Settings, cluster: ClusterInfo) -> bool:
    """Whose CA expiry is read. listClusterUserCredential is one POST per cluster (ARM write quota), and clusters
    created after May 2019 have a 30-year CA, so only where it can matter: clusters opted in to certificate
    rotation, and clusters still on legacy AAD integration (a sure sign of an old cluster)."""
    return certificates_opted_in(settings, cluster) or cluster.legacy_aad_server_app_id is not None


async def _certificates(run: _Scan, aks: AksClient, clusters: list[ClusterInfo]) -> dict[str, datetime]:
    targets = [c for c in clusters if reads_certificate(run.settings, c)]
    if not targets:
        return {}
    done = 0

    async def one(cluster: ClusterInfo) -> datetime:
        nonlocal done
        run.requests["arm.listClusterUserCredential"] += 1
        try:
            return await aks.ca_expiry(cluster.id)
        finally:
            done += 1
            run.tick("certificates", done, len(targets))

    results = await _bounded(run.settings.discovery_concurrency, targets, one)
    expiries: dict[str, datetime] = {}
    for cluster, result in zip(targets, results, strict=True):
        if isinstance(result, datetime):
            expiries[cluster.id.lower()] = result
            continue
        if not isinstance(result, AksError | AzureError | ValueError):
            raise result
        if isinstance(result, AuthorizationFailed) and certificates_opted_in(run.settings, cluster):
            raise DiscoveryError(
                f"the identity may not read the kubeconfig of {cluster.id}: it lacks '{result.action}' "
                "(needed to learn the CA expiry of clusters opted in to certificate rotation)"
            )
        if isinstance(result, ClusterNotFound):
            continue  # deleted since the inventory
        run.errors.append(f"CA expiry of {cluster.name} unreadable: {result}")
    return expiries


# -- decide ----------------------------------------------------------------------------------------------------
def _base(cluster: ClusterInfo) -> dict[str, Any]:
    base = {"cluster_id": cluster.id, "cluster_name": cluster.name, "subscription_id": cluster.subscription_id}
    return {**base, "stopped": cluster.stopped}


def _sp_advice(cluster: ClusterInfo) -> str:
    return ADVICE_KUBELET if cluster.identity_type is not None and cluster.kubelet_on_sp else ADVICE_MIGRATE


def _secret_finding(
    run: _Scan,
    cluster: ClusterInfo,
    kind: Kind,
    app_id: str,
    creds: AppCredentials | None,
    vault_key: str | None,
    advice: str,
    rotatable: bool,
) -> Finding:
    settings = run.settings
    common = {**_base(cluster), "kind": kind, "app_id": app_id}
    if creds is None:
        run.errors.append(f"{cluster.name}: application {app_id} not found in Microsoft Graph")
        return Finding(
            **common,
            holder=None,
            key_id=None,
            expires_on=None,
            days_left=None,
            action="report_only",
            advice=ADVICE_NOT_VISIBLE,
        )
    chosen = credential_in_use(creds, vault_key, run.now)
    if chosen is None:
        return Finding(
            **common,
            holder=None,
            key_id=None,
            expires_on=None,
            days_left=None,
            action="report_only",
            advice=ADVICE_NO_PASSWORD,
        )
    holder, password, basis = chosen
    days_left = _days(password.end, run.now)
    due = days_left is not None and days_left <= due_within_days(password, settings.threshold_days)
    action: Action
    if not rotatable:
        action = "report_only"
    elif opted_out(settings, cluster):
        action = "opted_out"
    elif due:
        action = "deferred"  # a queue candidate: settled in _queue
    else:
        action = "ok"
    return Finding(
        **common,
        holder=holder,
        key_id=password.key_id,
        expires_on=password.end,
        days_left=days_left,
        action=action,
        advice=advice,
        due=due,
        reason=_reason(days_left, settings) if due and days_left is not None else None,
        basis=basis,
    )


def _certificate_finding(run: _Scan, cluster: ClusterInfo, expiry: datetime) -> Finding:
    settings = run.settings
    days_left = _days(expiry, run.now)
    assert days_left is not None
    due = days_left <= settings.cert_window_days
    opted_in = certificates_opted_in(settings, cluster)
    action: Action
    if opted_out(settings, cluster):
        action = "opted_out"
    elif not due:
        action = "ok"
    elif opted_in:
        action = "deferred"  # a queue candidate
    else:
        action = "report_only"
    return Finding(
        **_base(cluster),
        kind="cluster_certificate",
        app_id=None,
        holder=None,
        key_id=None,
        expires_on=expiry,
        days_left=days_left,
        action=action,
        advice=None if opted_in else ADVICE_CERT_OPT_IN.format(tag=settings.cert_opt_in_tag),
        due=due,
        reason=_reason(days_left, settings) if due else None,
        basis="ca",
    )


def decide(
    run: _Scan,
    clusters: list[ClusterInfo],
    apps: dict[str, AppCredentials],
    vault_keys: dict[str, str],
    certificates: dict[str, datetime],
) -> list[Finding]:
    findings: list[Finding] = []
    for cluster in clusters:
        key = cluster.id.lower()
        if cluster.sp_client_id is None:
            findings.append(
                Finding(
                    **_base(cluster),
                    kind="managed_identity",
                    app_id=None,
                    holder=None,
                    key_id=None,
                    expires_on=None,
                    days_left=None,
                    action="none",
                )
            )
        else:
            app_id = cluster.sp_client_id.lower()
            findings.append(
                _secret_finding(
                    run, cluster, "sp_secret", app_id, apps.get(app_id), vault_keys.get(key), _sp_advice(cluster), True
                )
            )
        if cluster.legacy_aad_server_app_id:
            server = cluster.legacy_aad_server_app_id.lower()
            findings.append(
                _secret_finding(
                    run, cluster, "aad_server_secret", server, apps.get(server), None, ADVICE_LEGACY_AAD, False
                )
            )
        if key in certificates:
            findings.append(_certificate_finding(run, cluster, certificates[key]))
    return findings


# -- queue -----------------------------------------------------------------------------------------------------
def _urgency(finding: Finding) -> tuple[float, str, str]:
    return (
        finding.days_left if finding.days_left is not None else float("inf"),
        finding.cluster_id.lower(),
        finding.kind,
    )


def _display_order(finding: Finding) -> tuple[bool, float, str, str]:
    """Due credentials first, most urgent first; then the rest by cluster name."""
    days = finding.days_left if finding.due and finding.days_left is not None else float("inf")
    return (not finding.due, days, finding.cluster_name.lower(), finding.kind)


def _message(finding: Finding, correlation_id: str) -> Any:
    assert finding.expires_on is not None and finding.reason is not None
    return new_rotation_message(
        cluster_id=finding.cluster_id,
        kind=CredentialKind(finding.kind),
        reason=finding.reason,
        app_id=finding.app_id if finding.kind == "sp_secret" else None,
        observed_expiry=finding.expires_on,
        correlation_id=correlation_id,
    )


async def _existing_rows(store: Any) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """(rotation id -> state, (cluster key, kind) -> id of the rotation still running), from one paged query."""
    try:
        rows = await store.list()
    except ResourceNotFoundError:  # the table does not exist yet (dry run before the first real run)
        return {}, {}
    states = {row.rotation_id: "resubmittable" if row.resubmittable else row.state for row in rows}
    active = {(row.cluster_id.lower(), row.kind): row.rotation_id for row in rows if not row.terminal}
    return states, active


async def _queue(
    run: _Scan, findings: list[Finding], credential: AsyncTokenCredential, dry_run: bool, correlation_id: str
) -> list[Finding]:
    candidates = sorted(
        (i for i, f in enumerate(findings) if f.action == "deferred"), key=lambda i: _urgency(findings[i])
    )
    if not candidates:
        return findings
    from shared import rotation  # late import: rotation imports a lot and is not needed for reporting
    from shared.queues import open_queues
    from shared.store import RotationStore

    out = list(findings)
    cap = run.settings.max_rotations_per_run
    queued = 0
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(RotationStore(run.settings, credential))
        queues = None
        if not dry_run:
            queues = await stack.enter_async_context(open_queues(run.settings, credential))
            await store.ensure()
            await queues.ensure()
        states, active = await _existing_rows(store)
        for position, index in enumerate(candidates, start=1):
            finding = out[index]
            try:
                message = _message(finding, correlation_id)
            except InvalidInput as exc:
                run.errors.append(f"{finding.cluster_name}: cannot build a rotation message ({exc})")
                out[index] = replace(finding, action="report_only", detail=str(exc))
                continue
            rid = message.rotation_id
            running = active.get((finding.cluster_id.lower(), finding.kind))
            retry = states.get(rid) == "resubmittable" and running is None  # submit retries it once a day
            if (rid in states and not retry) or running is not None:
                rid = running or rid
                state = states.get(rid)
                if state == "pending" and queues is not None:  # its first message may be lost: send it again
                    await rotation.resend_pending(store, queues, rid)
                detail = (
                    f"rotation {rid} failed: see `aks-rotator status --rotation {rid}`"
                    if state == "failed"
                    else f"rotation {rid} is {state}"
                    if state
                    else "another rotation of this credential kind is in progress on the cluster"
                )
                out[index] = replace(finding, action="already_queued", rotation_id=rid, detail=detail)
            elif queued >= cap and finding.reason not in URGENT_REASONS:
                # The blast radius never outlives a secret: urgent and expired credentials are queued past the cap.
                out[index] = replace(
                    finding,
                    action="deferred",
                    rotation_id=rid,
                    detail=f"blast radius: at most {cap} rotations are queued per run",
                )
            elif dry_run:
                queued += 1
                out[index] = replace(finding, action="would_queue", rotation_id=rid)
            else:
                try:
                    run.requests["rotation.submit"] += 1
                    result = await rotation.submit(run.settings, message, store=store, queues=queues)
                except (AzureError, OSError) as exc:
                    run.errors.append(f"queueing {finding.cluster_name} failed: {type(exc).__name__}")
                    out[index] = replace(finding, action="deferred", rotation_id=rid, detail="queueing failed")
                    continue
                if result.status == "queued":
                    queued += 1
                    detail = f"retry of failed rotation {rid}: {result.detail}" if retry else result.detail
                    out[index] = replace(finding, action="queued", rotation_id=result.rotation_id, detail=detail)
                else:
                    out[index] = replace(
                        finding, action="already_queued", rotation_id=result.rotation_id, detail=result.detail
                    )
            run.tick("queue", position, len(candidates))
    return out


# -- entry points ----------------------------------------------------------------------------------------------
GC_THRESHOLD = 20_000  # allocations between young-generation collections while a scan runs (default 700)


class _Collections:
    """A page is tens of thousands of parsed JSON containers and findings, nearly all freed by reference counting;
    at the default threshold the cyclic collector ran every few hundred allocations, re-walking everything the
    scan holds: a quarter of its CPU. Raised while any scan runs, restored when the last running one ends."""

    running = 0
    before: tuple[int, int, int] = gc.get_threshold()

    @classmethod
    @contextlib.contextmanager
    def fewer(cls) -> Iterator[None]:
        if cls.running == 0:
            cls.before = gc.get_threshold()
            gc.set_threshold(max(cls.before[0], GC_THRESHOLD), cls.before[1], cls.before[2])
        cls.running += 1
        try:
            yield
        finally:
            cls.running -= 1
            if cls.running == 0:
                gc.set_threshold(*cls.before)


Keep = Literal["all", "due"]
PAGES_IN_FLIGHT = 4  # cluster pages decided concurrently; bounds the memory a scan holds


async def scan(
    settings: Settings,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    now: datetime | None = None,
    credential: AsyncTokenCredential | None = None,
    sdk_kwargs: dict[str, Any] | None = None,
    graph_attempts: int = 6,
    keep: Keep = "all",
    subscriptions: Sequence[str] | None = None,
    queue: bool = True,
    log_completed: bool = True,
) -> ScanReport:
    """Inventory, decide, queue (unless `dry_run`). Raises DiscoveryError (nothing queued) when the inventory
    cannot be trusted, e.g. the identity lacks a right; other problems are listed in `ScanReport.errors`.

    Streaming: Resource Graph pages are looked up (Graph, Key Vault, CA expiry) and decided as they arrive, and a
    page's findings are reported (telemetry) and let go unless `keep` says to keep them ("due": only those within
    their window, for the timer; "all": every one, for the CLI). Only queue candidates wait for the queue step,
    which needs all of them (the most urgent go first, up to MAX_ROTATIONS_PER_RUN). `subscriptions` limits the
    scan (a shard); `queue=False` stops before queueing and returns the candidates as `action="deferred"`
    (`shared.shards` queues every shard's candidates in one step: `queue_candidates`).
    `sdk_kwargs` go to the ARM, Resource Graph and Key Vault SDK clients (tests pass `retry_backoff_factor`)."""
    started = time.perf_counter()
    run = _Scan(settings, (now or clock.now()).astimezone(UTC), progress)
    correlation_id = new_correlation_id()
    kwargs = dict(sdk_kwargs or {})
    sink = _Sink(run, keep, correlation_id)
    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(_Collections.fewer())
        if credential is None:
            credential = product_credential(settings)
            stack.push_async_callback(credential.close)
        aks = await stack.enter_async_context(AksClient(settings, credential, **kwargs))
        graph = await stack.enter_async_context(GraphOps(settings, credential, max_attempts=graph_attempts))
        with run.stage("key vault"):
            listed = await _vault_listing(run, credential, kwargs)
        source = _ClusterSource(run, credential, aks, kwargs, subscriptions)
        apps = _AppLookups(run, graph, credential)
        await _warm_graph_token(credential)  # once, before pages look up applications concurrently
        await _decide_pages(
            run, source, lambda page: _decide_page(run, apps, aks, credential, listed, page, kwargs), sink
        )
        candidates = sink.candidates
        if queue:
            with run.stage("queue"):
                candidates = await _queue(run, candidates, credential, dry_run, correlation_id)
        if not dry_run:  # clusters opted into migration by tag (shared.migration.opt_in); a shard submits its own
            await submit_tagged(settings, source.migrate, credential, correlation_id)
        sink.settle(candidates)
    report = ScanReport(
        findings=display_sorted(sink.kept),
        clusters=source.clusters,
        subscriptions=source.subscriptions_seen(),
        used_fallback=source.used_fallback,
        errors=run.errors,
        dry_run=dry_run,
        correlation_id=correlation_id,
        started_at=run.now,
        seconds=time.perf_counter() - started,
        requests=dict(run.requests),
        stage_seconds=run.stages,
        actions=dict(sink.actions),
        migration=source.migration,
    )
    if log_completed:
        log_report(report)
    return report


class _ClusterSource:
    """Cluster pages as they arrive: Resource Graph, the subscriptions split into up to `RESOURCE_GRAPH_SHARDS`
    concurrent paged queries (that needs the subscription list first: one ARM call unless given); when Resource
    Graph refuses, ARM lists per subscription (`_arm_inventory`), skipping clusters already seen."""

    def __init__(
        self,
        run: _Scan,
        credential: AsyncTokenCredential,
        aks: AksClient,
        sdk_kwargs: dict[str, Any],
        subscriptions: Sequence[str] | None,
    ) -> None:
        self.run = run
        self.credential = credential
        self.aks = aks
        self.sdk_kwargs = sdk_kwargs
        self.subscriptions = list(subscriptions) if subscriptions is not None else None
        self.clusters = 0
        self.used_fallback = False
        self.migration = count_stages({}, [])
        self.migrate: list[ClusterInfo] = []  # opted into migration by tag (shared.migration.opt_in)
        self._seen: set[str] = set()  # cluster keys yielded: ids only, the clusters themselves are let go
        self._seen_subscriptions: set[str] = set()
        self._listed_subscriptions: int | None = None

    def subscriptions_seen(self) -> int:
        if self._listed_subscriptions is not None:
            return self._listed_subscriptions
        if self.subscriptions is not None:
            return len(self.subscriptions)
        return len(self._seen_subscriptions)

    def _fresh(self, page: list[ClusterInfo]) -> list[ClusterInfo]:
        out = []
        for cluster in page:
            key = cluster.id.lower()
            if key not in self._seen:
                self._seen.add(key)
                self._seen_subscriptions.add(cluster.subscription_id.lower())
                out.append(cluster)
        self.clusters += len(out)
        count_stages(self.migration, out)
        self.migrate += [c for c in out if opted_in(c)]
        return out

    async def pages(self) -> AsyncIterator[list[ClusterInfo]]:
        run = self.run
        subscriptions = self.subscriptions or list(run.settings.subscription_allowlist) or None
        run.tick("clusters", 0, 1)
        if subscriptions is None:
            try:
                run.requests["arm.listSubscriptions"] += 1
                subscriptions = await self.aks.list_subscriptions()
            except (AksError, AzureError):
                subscriptions = None  # one unscoped query: every subscription Resource Graph lets us see
        self.subscriptions = subscriptions
        try:
            try:
                async for page in self._resource_graph(subscriptions):
                    yield self._fresh(page)
            except SubscriptionLimitHit as hit:
                self.subscriptions = subscriptions = await self._named_subscriptions(hit)
                async for page in self._resource_graph(subscriptions):
                    yield self._fresh(page)
            run.tick("clusters", 1, 1)
            return
        except (ResourceGraphRefused, ResourceGraphError) as failed:
            log_event(
                log,
                logging.WARNING,
                "discovery.fallback",
                "Resource Graph is not usable; listing clusters per subscription through ARM",
                reason=str(failed),
            )
            run.errors.append(f"Resource Graph not used ({failed}); clusters were listed per subscription through ARM")
        self.used_fallback = True
        listed, self._listed_subscriptions = await _arm_inventory(run, self.aks, subscriptions)
        fresh = self._fresh(unique(listed))
        for i in range(0, len(fresh), PAGE_SIZE):
            yield fresh[i : i + PAGE_SIZE]

    async def _named_subscriptions(self, hit: SubscriptionLimitHit) -> list[str]:
        """The unscoped query covered only part of the tenant: reported, then asked again per subscription batch
        (the subscriptions from ARM; if ARM cannot list them either, Resource Graph is given up for this scan)."""
        log_event(log, logging.WARNING, "discovery.subscription_limit", str(hit))
        self.run.errors.append(f"{hit}: queried again per subscription batch")
        try:
            self.run.requests["arm.listSubscriptions"] += 1
            return await self.aks.list_subscriptions()
        except (AksError, AzureError) as exc:
            raise ResourceGraphError(f"{hit}, and listing subscriptions failed: {exc}") from None

    async def _resource_graph(self, subscriptions: list[str] | None) -> AsyncIterator[list[ClusterInfo]]:
        shards: list[list[str] | None] = [None]
        if subscriptions is not None:
            count = max(1, min(RESOURCE_GRAPH_SHARDS, len(subscriptions)))
            shards = [subscriptions[i::count] for i in range(count)]
        self.run.requests["resourcegraph.query"] += len(shards)
        merged: asyncio.Queue[list[ClusterInfo] | BaseException | None] = asyncio.Queue(maxsize=len(shards))

        async def one(shard: list[str] | None) -> None:
            try:
                async for page in cluster_pages(self.run.settings, self.credential, shard, **self.sdk_kwargs):
                    await merged.put(page)
                await merged.put(None)
            except Exception as exc:  # handed to the consumer, which decides (fallback or failure)
                await merged.put(exc)

        tasks = [asyncio.create_task(one(shard)) for shard in shards]
        try:
            finished = 0
            while finished < len(tasks):
                item = await merged.get()
                if item is None:
                    finished += 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


class _Sink:
    """Where decided findings go: telemetry at once; kept per `keep`; queue candidates held for the queue step."""

    def __init__(self, run: _Scan, keep: Keep, correlation_id: str) -> None:
        self.run = run
        self.keep = keep
        self.correlation_id = correlation_id
        self.kept: list[Finding] = []
        self.candidates: list[Finding] = []
        self.actions: Counter[str] = Counter()

    def add(self, findings: Iterable[Finding]) -> None:
        for finding in findings:
            if finding.action == "deferred":
                self.candidates.append(finding)
            else:
                self._release(finding)

    def settle(self, candidates: list[Finding]) -> None:
        for finding in candidates:
            self._release(finding)
        self.candidates = []

    def _release(self, finding: Finding) -> None:
        self.actions[finding.action] += 1
        _report_finding(finding, self.correlation_id)
        if self.keep == "all" or finding.due:
            self.kept.append(finding)


async def _decide_page(
    run: _Scan,
    lookups: _AppLookups,
    aks: AksClient,
    credential: AsyncTokenCredential,
    listed: dict[str, dict[str, str]],
    page: list[ClusterInfo],
    sdk_kwargs: dict[str, Any],
) -> list[Finding]:
    """One page of clusters: its applications, Key Vault records and CA expiries, concurrently; then decided."""
    app_ids = sorted(
        {c.sp_client_id.lower() for c in page if c.sp_client_id}
        | {c.legacy_aad_server_app_id.lower() for c in page if c.legacy_aad_server_app_id}
    )
    try:
        async with asyncio.TaskGroup() as group:
            apps = group.create_task(_timed(run, "applications", lookups.get(app_ids)))
            keys = group.create_task(_timed(run, "key vault", _vault_keys(run, credential, page, listed, sdk_kwargs)))
            certs = group.create_task(_timed(run, "certificates", _certificates(run, aks, page)))
    except BaseExceptionGroup as failed:
        raise _first(failed) from None
    return decide(run, page, apps.result(), keys.result(), certs.result())


async def _timed(run: _Scan, name: str, work: Awaitable[T]) -> T:
    with run.stage(name):
        return await work


async def _decide_pages(
    run: _Scan,
    source: _ClusterSource,
    decide_page: Callable[[list[ClusterInfo]], Awaitable[list[Finding]]],
    sink: _Sink,
) -> None:
    """Pages from `source` decided by up to PAGES_IN_FLIGHT workers; any failure cancels the rest."""
    pages: asyncio.Queue[list[ClusterInfo] | None] = asyncio.Queue(maxsize=PAGES_IN_FLIGHT)

    async def produce() -> None:
        with run.stage("clusters"):
            async for page in source.pages():
                await pages.put(page)
        for _ in range(PAGES_IN_FLIGHT):
            await pages.put(None)

    async def work() -> None:
        while (page := await pages.get()) is not None:
            sink.add(await decide_page(page))

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(produce())
            for _ in range(PAGES_IN_FLIGHT):
                group.create_task(work())
    except BaseExceptionGroup as failed:
        raise _first(failed) from None


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception to surface from a failed TaskGroup: a DiscoveryError if there is one, else the first."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return next((e for e in leaves if isinstance(e, DiscoveryError)), leaves[0])


def _report_finding(finding: Finding, correlation_id: str) -> None:
    """Telemetry of one finding, once its action is final (days to expiry; an alert when it has expired)."""
    if finding.days_left is not None:
        telemetry.days_to_expiry(finding.days_left, kind=finding.kind, cluster=finding.cluster_id)
    if finding.due and finding.reason == "expired":
        alert(
            log,
            EVENT_CREDENTIAL_OVERDUE,
            f"{finding.kind} of {finding.cluster_name} has expired",
            cluster_id=finding.cluster_id,
            kind=finding.kind,
            app_id=finding.app_id,
            expires=finding.expires_on.isoformat() if finding.expires_on else None,
            action=finding.action,
            correlation_id=correlation_id,
        )


def display_sorted(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=_display_order)


async def queue_candidates(
    settings: Settings,
    candidates: list[Finding],
    *,
    dry_run: bool,
    correlation_id: str,
    credential: AsyncTokenCredential | None = None,
) -> tuple[list[Finding], list[str], dict[str, int]]:
    """The queue step over candidates collected elsewhere (the shards of one run): (settled findings, errors,
    requests), exactly as `scan` settles its own."""
    run = _Scan(settings, clock.now(), None)
    async with contextlib.AsyncExitStack() as stack:
        if credential is None:
            credential = product_credential(settings)
            stack.push_async_callback(credential.close)
        settled = await _queue(run, candidates, credential, dry_run, correlation_id)
    return settled, run.errors, dict(run.requests)


def log_report(report: ScanReport) -> None:
    log_event(
        log,
        logging.INFO,
        "discovery.completed",
        f"scanned {report.clusters} clusters in {report.subscriptions} subscriptions: {len(report.due())} due",
        clusters=report.clusters,
        subscriptions=report.subscriptions,
        due=len(report.due()),
        actions=report.by_action(),
        used_fallback=report.used_fallback,
        errors=len(report.errors),
        dry_run=report.dry_run,
        seconds=round(report.seconds, 3),
        correlation_id=report.correlation_id,
    )


async def run_scheduled(
    settings: Settings, *, past_due: bool = False, subscriptions: Sequence[str] | None = None
) -> ScanReport:
    """The timer's scan in one invocation (`shared.shards.run_scheduled` decides; `subscriptions` when it already
    listed them): a past-due run logs and proceeds; a failed scan is logged and re-raised (the host records the
    failed invocation and the next schedule tries again)."""
    if past_due:
        log_event(log, logging.WARNING, "discovery.past_due", "the discovery timer is past due; scanning now")
    try:
        report = await scan(settings, keep="due", subscriptions=subscriptions)
    except DiscoveryError as exc:
        log_event(log, logging.ERROR, "discovery.failed", f"discovery failed, nothing queued: {exc}", alert=True)
        raise
    failed = [e for e in report.errors if e.startswith("queueing ")]
    if failed:
        raise DiscoveryError(f"{len(failed)} rotations could not be queued: {failed[0]}")
    return report
