"""The scan (timer trigger, `aks-rotator scan`): cluster pages streamed from Resource Graph (ARM when it refuses),
each page collected and decided as it arrives, and only then anything queued.

Order of work, so that a missing right never leaves a half-queued run: everything is *collected* (clusters,
application passwords, Key Vault records, CA expiries: `collect`), every finding is *decided* (`findings`), and only
then is anything *queued* (`queueing`). An authorization failure while collecting raises `DiscoveryError` naming the
missing right; nothing is queued. Cost at scale: one paged Resource Graph query (1,000 clusters per request), in up
to `RESOURCE_GRAPH_SHARDS` concurrent shards; the rest is in `collect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError

from shared import clock, telemetry
from shared.aks import AksClient, AksError, ClusterInfo
from shared.azure import product_credential
from shared.discovery.collect import (
    AppLookups,
    arm_inventory,
    certificates,
    vault_keys,
    vault_listing,
    warm_graph_token,
)
from shared.discovery.context import DiscoveryError, Progress, Scan
from shared.discovery.findings import Finding, ScanReport, decide, display_sorted
from shared.discovery.queueing import queue_findings
from shared.graph import GraphOps
from shared.inventory import unique
from shared.logs import EVENT_CREDENTIAL_OVERDUE, alert, log_event
from shared.messages import new_correlation_id
from shared.migration.opt_in import opted_in, submit_tagged
from shared.migration.plan import count_stages
from shared.resource_graph import (
    PAGE_SIZE,
    ResourceGraphError,
    ResourceGraphRefused,
    SubscriptionLimitHit,
    cluster_pages,
)
from shared.settings import Settings

log = logging.getLogger("shared.discovery")  # the logger name the events have always had

T = TypeVar("T")

RESOURCE_GRAPH_SHARDS = 4  # concurrent Resource Graph queries (the user quota is 15 per 5 seconds)

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
    run = Scan(settings, (now or clock.now()).astimezone(UTC), progress)
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
            listed = await vault_listing(run, credential, kwargs)
        source = _ClusterSource(run, credential, aks, kwargs, subscriptions)
        apps = AppLookups(run, graph, credential)
        await warm_graph_token(credential, settings)  # once, before pages look up applications concurrently
        await _decide_pages(
            run, source, lambda page: _decide_page(run, apps, aks, credential, listed, page, kwargs), sink
        )
        candidates = sink.candidates
        if queue:
            with run.stage("queue"):
                candidates = await queue_findings(run, candidates, credential, dry_run, correlation_id)
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
    Graph refuses, ARM lists per subscription (`arm_inventory`), skipping clusters already seen."""

    def __init__(
        self,
        run: Scan,
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
        listed, self._listed_subscriptions = await arm_inventory(run, self.aks, subscriptions)
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

    def __init__(self, run: Scan, keep: Keep, correlation_id: str) -> None:
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
    run: Scan,
    lookups: AppLookups,
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
            keys = group.create_task(_timed(run, "key vault", vault_keys(run, credential, page, listed, sdk_kwargs)))
            certs = group.create_task(_timed(run, "certificates", certificates(run, aks, page)))
    except BaseExceptionGroup as failed:
        raise _first(failed) from None
    return decide(run, page, apps.result(), keys.result(), certs.result())


async def _timed(run: Scan, name: str, work: Awaitable[T]) -> T:
    with run.stage(name):
        return await work


async def _decide_pages(
    run: Scan,
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
