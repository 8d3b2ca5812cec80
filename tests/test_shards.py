"""The streaming scan and the sharded scan give the same findings and the same queued set as a batch reference
(every cluster collected, then decided, then queued: the scan before streaming), on one generated estate, with a
blast radius that bites and rotations already queued (dedup). Against the emulator and Azurite, real SDKs."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest

from emulator import seeds
from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from shared import clock, discovery, shards
from shared.aks import AksClient
from shared.azure import product_credential
from shared.discovery import Finding, ScanReport, collect, queueing
from shared.discovery.context import Scan
from shared.graph import GraphOps
from shared.resource_graph import query_clusters
from shared.settings import Settings
from shared.store import RotationStore
from tests.plugins.azurite import StorageNames
from tests.plugins.emulator import product_env

FAST = {"retry_backoff_factor": 0.05, "retry_backoff_max": 1}
CAP = 12


async def _reference(settings: Settings, dry_run: bool) -> list[Finding]:
    """The batch scan: all clusters in one list, every application, Key Vault record and CA expiry, then one
    decision over the list and one queue step, from discovery's own building blocks."""
    run = Scan(settings, clock.now(), None)
    credential = product_credential(settings)
    try:
        async with AksClient(settings, credential, **FAST) as aks, GraphOps(settings, credential) as graph:
            clusters = sorted(await query_clusters(settings, credential, None, **FAST), key=lambda c: c.id.lower())
            app_ids = sorted(
                {c.sp_client_id.lower() for c in clusters if c.sp_client_id}
                | {c.legacy_aad_server_app_id.lower() for c in clusters if c.legacy_aad_server_app_id}
            )
            apps = await collect.applications(run, graph, credential, app_ids)
            listed = await collect.vault_listing(run, credential, FAST)
            keys = await collect.vault_keys(run, credential, clusters, listed, FAST)
            certificates = await collect.certificates(run, aks, clusters)
            findings = discovery.decide(run, clusters, apps, keys, certificates)
            return await queueing.queue_findings(run, findings, credential, dry_run, "reference")
    finally:
        await credential.close()


def _view(findings: list[Finding]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """Everything a finding says, by (cluster, kind); rotation ids are deterministic per credential and expiry."""
    out = {}
    for f in findings:
        key = (f.cluster_id.lower(), f.kind)
        assert key not in out, key
        out[key] = (f.action, f.app_id, f.holder, f.key_id, f.expires_on, f.days_left, f.due, f.reason, f.basis)
        out[key] += (f.rotation_id, f.advice, f.detail)
    return out


def _ids(findings: list[Finding], action: str) -> set[str]:
    return {f.rotation_id for f in findings if f.action == action and f.rotation_id}


def _row_ids(settings: Settings) -> set[str]:
    async def main() -> set[str]:
        async with RotationStore(settings) as store:
            return {row.rotation_id for row in await store.list()}

    return asyncio.run(main())


@pytest.fixture
def estate(emulator: EmulatorControl) -> dict[str, Any]:
    doc = seeds.generate(clusters=2400, subscriptions=12, seed=11, shared_every=3)
    doc["product"]["secret"] = emulator.ready["client_secret"]
    emulator.reset(doc)
    return doc


def test_streaming_and_shards_match_the_batch_reference(
    estate: dict[str, Any], emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    env = product_env(emulator, azurite, storage_names, LOG_LEVEL="WARNING")
    env.update(MAX_ROTATIONS_PER_RUN=str(CAP), SCAN_SHARD_SUBSCRIPTIONS="5")
    settings = Settings.from_env(env)
    subscriptions = [s["id"] for s in estate["subscriptions"]]
    assert shards.plan(settings, subscriptions) == shards.groups(subscriptions, 5)  # 3 shards: 5, 5, 2
    fixed = clock.now()
    with clock.use(lambda: fixed):
        # Dedup: rotations already queued for the most urgent credentials of two subscriptions.
        seeded = asyncio.run(discovery.scan(settings, subscriptions=subscriptions[3:5], sdk_kwargs=FAST))
        already = _ids(seeded.findings, "queued")
        assert len(already) == CAP

        reference = asyncio.run(_reference(settings, dry_run=True))
        streamed = asyncio.run(discovery.scan(settings, dry_run=True, sdk_kwargs=FAST))
        sharded = asyncio.run(shards.scan(settings, dry_run=True, sdk_kwargs=FAST))

    expected = _view(reference)
    assert len(expected) > 2400  # MSI clusters, SP secrets, legacy AAD server secrets, certificates
    assert _ids(reference, "already_queued") == already
    would = _ids(reference, "would_queue")
    assert len(would) == CAP and not would & already  # the blast radius bites: more are due than CAP
    blast = [f for f in reference if f.action == "deferred" and "blast radius" in (f.detail or "")]
    assert len(blast) > CAP
    assert min(f.days_left or 0 for f in blast) >= max(f.days_left or 0 for f in reference if f.action == "would_queue")
    assert _view(streamed.findings) == expected
    assert _view(sharded.findings) == expected
    assert sharded.clusters == streamed.clusters == 2400 and sharded.subscriptions == 12
    assert sharded.by_action() == streamed.by_action()
    assert sharded.requests["resourcegraph.query"] == 3 * discovery.RESOURCE_GRAPH_SHARDS - 2  # 4 + 4 + 2

    # The real sharded run queues exactly the reference's set, and nothing is queued twice.
    with clock.use(lambda: fixed):
        queued = asyncio.run(shards.scan(settings, sdk_kwargs=FAST))
    assert _ids(queued.findings, "queued") == would
    assert _ids(queued.findings, "already_queued") == already
    assert _row_ids(settings) == already | would


def test_shard_groups_and_plan() -> None:
    subs = [f"{i:08d}-0000-4000-8000-00000000000{i % 10}" for i in range(7)]
    assert shards.groups(list(reversed(subs)), 3) == [subs[0:3], subs[3:6], subs[6:7]]
    settings = Settings.from_env(
        {
            "AZURE_TENANT_ID": "00000000-0000-4000-8000-000000000001",
            "AZURE_CLIENT_ID": "00000000-0000-4000-8000-000000000002",
            "KEY_VAULT_URL": "https://kv.example",
            "AzureWebJobsStorage__accountName": "store",
            "SCAN_SHARD_SUBSCRIPTIONS": "7",
        }
    )
    assert shards.plan(settings, subs) is None  # fits one invocation
    assert shards.plan(settings, None) is None  # unlisted: the unsharded scan decides
    assert shards.plan(settings, [*subs, "ffffffff-0000-4000-8000-000000000000"]) is not None


def test_report_of_a_sharded_run_has_the_run_id(
    estate: dict[str, Any], emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    env = product_env(emulator, azurite, storage_names, LOG_LEVEL="WARNING", SCAN_SHARD_SUBSCRIPTIONS="6")
    settings = Settings.from_env(env)
    report: ScanReport = asyncio.run(shards.scan(settings, dry_run=True, sdk_kwargs=FAST, keep="due"))
    assert report.correlation_id and report.started_at is not None
    assert report.started_at > clock.now() - timedelta(minutes=5) and isinstance(report.started_at, datetime)
    assert all(f.due for f in report.findings) and report.clusters == 2400
