"""Sharded discovery: an estate larger than one invocation should carry, scanned as subscription groups in parallel.

The timer (`run_scheduled`) lists the subscriptions; up to `SCAN_SHARD_SUBSCRIPTIONS` of them are scanned in the
timer's own invocation as before. Beyond that it puts one shard message per group of that many subscriptions on
the shard queue (`<ROTATION_QUEUE>-scan`), and a queue-triggered `handle_shard` per message scans its group on the
Functions scale-out: collect and decide, but queue nothing (`discovery.scan(queue=False)`). Each shard writes its
due findings (the queue candidates among them) to a blob; the shard that completes the set claims the run (a blob
created only if absent, so exactly one does) and runs the one queue step over every shard's candidates: the most
urgent first, deduplicated against the state table, at most MAX_ROTATIONS_PER_RUN across all shards — the same
step, on the same candidates, as an unsharded scan. Then it logs the merged report and stores it beside the shards.

Quotas are shared by construction: every shard calls as the same identity, and Resource Graph's per-identity quota
headers and Graph's per-app resource units are honoured by each client (`shared.resource_graph`, `shared.graph`).
A run whose claimer dies before queueing is not retried; the next timer run finds the same credentials due.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.blob.aio import ContainerClient
from azure.storage.queue import TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient
from pydantic import BaseModel, ConfigDict

from shared import clock, discovery
from shared.aks import AksClient, AksError
from shared.azure import blob_service, product_credential, queue_service
from shared.discovery import DiscoveryError, Finding, Progress, ScanReport
from shared.logs import log_event
from shared.messages import new_correlation_id
from shared.queues import decode
from shared.settings import Settings

log = logging.getLogger(__name__)

CLAIM = "claim"
REPORT = "report.json"
LOCAL_PARALLEL = 2  # shard scans the local runner runs at once (the Functions scale-out runs more)


def queue_name(settings: Settings) -> str:
    """The shard queue: function_app.py binds `%ROTATION_QUEUE%-scan`."""
    return f"{settings.rotation_queue}-scan"


def container_name(settings: Settings) -> str:
    """Shard results and run reports (`<run id>/<shard>.json`, `<run id>/report.json`)."""
    return f"{settings.lock_container}-scans"


class ShardMessage(BaseModel):
    """One subscription group of one sharded run (no secrets: ids and flags only)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    shard: int
    shards: int
    subscriptions: list[str]
    started_at: datetime
    dry_run: bool = False
    keep: discovery.Keep = "due"


def groups(subscriptions: Sequence[str], size: int) -> list[list[str]]:
    """Sorted subscriptions in groups of `size`; one group when they fit in one invocation."""
    ordered = sorted({s.lower() for s in subscriptions})
    return [ordered[i : i + size] for i in range(0, len(ordered), size)] or [[]]


# -- storage ---------------------------------------------------------------------------------------------------
class _Storage:
    """The shard queue and the results container, created on first use."""

    def __init__(self, settings: Settings, credential: AsyncTokenCredential) -> None:
        self.queue: QueueClient = queue_service(settings, credential).get_queue_client(
            queue_name(settings), message_encode_policy=TextBase64EncodePolicy()
        )
        self.blobs: ContainerClient = blob_service(settings, credential).get_container_client(container_name(settings))

    async def ensure(self) -> None:
        with contextlib.suppress(ResourceExistsError):
            await self.queue.create_queue()
        with contextlib.suppress(ResourceExistsError):
            await self.blobs.create_container()

    async def close(self) -> None:
        await self.queue.close()
        await self.blobs.close()

    async def write(self, name: str, data: Any) -> None:
        await self.blobs.upload_blob(name, json.dumps(data), overwrite=True)

    async def read(self, name: str) -> Any:
        stream = await self.blobs.download_blob(name)
        return json.loads(await stream.readall())

    async def claim(self, run_id: str) -> bool:
        """True for exactly one caller per run (create-if-absent)."""
        try:
            await self.blobs.upload_blob(f"{run_id}/{CLAIM}", b"", overwrite=False)
        except ResourceExistsError:
            return False
        return True

    async def finished(self, run_id: str) -> list[str]:
        return [
            b.name async for b in self.blobs.list_blobs(name_starts_with=f"{run_id}/shard-") if b.name.endswith(".json")
        ]


@contextlib.asynccontextmanager
async def _storage(settings: Settings, credential: AsyncTokenCredential | None) -> Any:
    owned = credential is None
    cred = credential or product_credential(settings)
    store = _Storage(settings, cred)
    try:
        await store.ensure()
        yield store
    finally:
        await store.close()
        if owned:
            await cred.close()


# -- shard results ---------------------------------------------------------------------------------------------
def _finding_json(finding: Finding) -> dict[str, Any]:
    """Full precision (unlike `Finding.to_json`): the queue step orders candidates by `days_left`."""
    return {**finding.__dict__, "expires_on": finding.expires_on.isoformat() if finding.expires_on else None}


def _finding(data: dict[str, Any]) -> Finding:
    expires = data.get("expires_on")
    return Finding(**{**data, "expires_on": datetime.fromisoformat(expires) if expires else None})


@dataclass
class _Merged:
    findings: list[Finding]
    clusters: int = 0
    subscriptions: int = 0
    used_fallback: bool = False

    @classmethod
    def of(cls, results: list[dict[str, Any]]) -> tuple[_Merged, list[str], Counter[str], Counter[str]]:
        merged = cls(findings=[])
        errors: list[str] = []
        requests: Counter[str] = Counter()
        actions: Counter[str] = Counter()
        for result in sorted(results, key=lambda r: int(r["shard"])):
            merged.findings += [_finding(f) for f in result["findings"]]
            merged.clusters += int(result["clusters"])
            merged.subscriptions += int(result["subscriptions"])
            merged.used_fallback |= bool(result["used_fallback"])
            errors += result["errors"]
            requests.update(result["requests"])
            actions.update(result["actions"])
        return merged, errors, requests, actions


# -- entry points ----------------------------------------------------------------------------------------------
async def subscriptions(settings: Settings, credential: AsyncTokenCredential) -> list[str] | None:
    """The allow-list, else every subscription the identity sees (one ARM call); None when that call fails (the
    unsharded scan then decides how to proceed)."""
    if settings.subscription_allowlist:
        return list(settings.subscription_allowlist)
    try:
        async with AksClient(settings, credential) as aks:
            return await aks.list_subscriptions()
    except (AksError, AzureError):
        return None


def plan(settings: Settings, listed: list[str] | None) -> list[list[str]] | None:
    """Subscription groups when the estate needs more than one invocation, else None."""
    if listed is None or len(listed) <= settings.scan_shard_subscriptions:
        return None
    return groups(listed, settings.scan_shard_subscriptions)


async def fan_out(
    settings: Settings,
    shard_groups: list[list[str]],
    *,
    dry_run: bool = False,
    keep: discovery.Keep = "due",
    credential: AsyncTokenCredential | None = None,
) -> str:
    """Put one message per group on the shard queue. Returns the run id (the report's correlation id)."""
    run_id = new_correlation_id()
    started = clock.now()
    async with _storage(settings, credential) as store:
        for index, subscriptions in enumerate(shard_groups):
            message = ShardMessage(
                run_id=run_id,
                shard=index,
                shards=len(shard_groups),
                subscriptions=subscriptions,
                started_at=started,
                dry_run=dry_run,
                keep=keep,
            )
            await store.queue.send_message(message.model_dump_json())
    log_event(
        log,
        logging.INFO,
        "discovery.sharded",
        f"estate split into {len(shard_groups)} shards of up to {settings.scan_shard_subscriptions} subscriptions",
        shards=len(shard_groups),
        correlation_id=run_id,
    )
    return run_id


async def handle_shard(
    settings: Settings,
    body: str,
    *,
    credential: AsyncTokenCredential | None = None,
    sdk_kwargs: dict[str, Any] | None = None,
) -> ScanReport | None:
    """The shard queue trigger: scan one group; the shard completing the run queues and reports it (returned)."""
    message = ShardMessage.model_validate_json(body)
    report = await discovery.scan(
        settings,
        dry_run=message.dry_run,
        now=message.started_at,
        credential=credential,
        sdk_kwargs=sdk_kwargs,
        keep=message.keep,
        subscriptions=message.subscriptions,
        queue=False,
        log_completed=False,
    )
    result = {
        "shard": message.shard,
        "clusters": report.clusters,
        "subscriptions": report.subscriptions,
        "used_fallback": report.used_fallback,
        "errors": report.errors,
        "requests": report.requests,
        "actions": report.actions,
        "findings": [_finding_json(f) for f in report.findings],
    }
    async with _storage(settings, credential) as store:
        await store.write(f"{message.run_id}/shard-{message.shard:05d}.json", result)
        done = await store.finished(message.run_id)
        if len(done) < message.shards or not await store.claim(message.run_id):
            return None
        results = [await store.read(name) for name in sorted(done)]
        final = await _finish(settings, message, results, credential)
        await store.write(f"{message.run_id}/{REPORT}", final.to_json())
    return final


async def _finish(
    settings: Settings, message: ShardMessage, results: list[dict[str, Any]], credential: AsyncTokenCredential | None
) -> ScanReport:
    merged, errors, requests, actions = _Merged.of(results)
    candidates = [f for f in merged.findings if f.action == "deferred"]
    others = [f for f in merged.findings if f.action != "deferred"]
    settled, queue_errors, queue_requests = await discovery.queue_candidates(
        settings, candidates, dry_run=message.dry_run, correlation_id=message.run_id, credential=credential
    )
    actions["deferred"] -= len(candidates)  # counted by the shards as candidates; their final actions follow
    actions.update(f.action for f in settled)
    requests.update(queue_requests)
    report = ScanReport(
        findings=discovery.display_sorted([*others, *settled]),
        clusters=merged.clusters,
        subscriptions=merged.subscriptions,
        used_fallback=merged.used_fallback,
        errors=[*errors, *queue_errors],
        dry_run=message.dry_run,
        correlation_id=message.run_id,
        started_at=message.started_at,
        seconds=(clock.now() - message.started_at.astimezone(UTC)).total_seconds(),
        requests=dict(requests),
        actions={k: v for k, v in actions.items() if v},
    )
    discovery.log_report(report)
    return report


async def run_scheduled(settings: Settings, *, past_due: bool = False) -> ScanReport | None:
    """The timer trigger: one scan when the estate fits one invocation (`discovery.run_scheduled`, which returns
    its report); else the shards go on the queue and the report comes from the shard that completes them."""
    async with contextlib.AsyncExitStack() as stack:
        credential = product_credential(settings)
        stack.push_async_callback(credential.close)
        listed = await subscriptions(settings, credential)
        shard_groups = plan(settings, listed)
        if shard_groups is not None:
            await fan_out(settings, shard_groups, credential=credential)
            return None
    return await discovery.run_scheduled(settings, past_due=past_due, subscriptions=listed)


async def scan(
    settings: Settings,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    credential: AsyncTokenCredential | None = None,
    sdk_kwargs: dict[str, Any] | None = None,
    keep: discovery.Keep = "all",
) -> ScanReport:
    """The local runner (`aks-rotator scan` / `run --once`): one scan, or the shards through the same queue, run
    here `LOCAL_PARALLEL` at a time, until the run's report is written."""
    owned = credential is None
    cred = credential or product_credential(settings)
    try:
        listed = await subscriptions(settings, cred)
        shard_groups = plan(settings, listed)
        if shard_groups is None:
            return await discovery.scan(
                settings,
                dry_run=dry_run,
                progress=progress,
                credential=cred,
                sdk_kwargs=sdk_kwargs,
                keep=keep,
                subscriptions=listed,
            )
        run_id = await fan_out(settings, shard_groups, dry_run=dry_run, keep=keep, credential=cred)
        return await drain(
            settings, run_id=run_id, total=len(shard_groups), credential=cred, sdk_kwargs=sdk_kwargs, progress=progress
        )
    finally:
        if owned:
            await cred.close()


async def drain(
    settings: Settings,
    *,
    run_id: str | None = None,
    total: int = 0,
    credential: AsyncTokenCredential | None = None,
    sdk_kwargs: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> ScanReport:
    """Take shard messages off the queue and handle them as the host's `scan_shard` trigger would,
    `LOCAL_PARALLEL` at a time, until the shard completing run `run_id` (any run when None) reports it."""
    handled = 0
    owned = credential is None
    cred = credential or product_credential(settings)
    try:
        async with _storage(settings, cred) as store:
            while batch := [m async for m in store.queue.receive_messages(max_messages=LOCAL_PARALLEL)]:
                bodies = [decode(str(m.content))[0] for m in batch]
                results = await asyncio.gather(
                    *(handle_shard(settings, b, credential=cred, sdk_kwargs=sdk_kwargs) for b in bodies)
                )
                for received in batch:
                    await store.queue.delete_message(received)
                handled += len(batch)
                if progress is not None:
                    progress("shards", handled, max(total, handled))
                final = next((r for r in results if r is not None and run_id in (None, r.correlation_id)), None)
                if final is not None:
                    return final
    finally:
        if owned:
            await cred.close()
    raise DiscoveryError(f"sharded run {run_id or ''}: the shard queue emptied before every shard reported")
