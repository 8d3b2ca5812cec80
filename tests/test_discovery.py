"""Discovery against the emulator + Azurite, through the real SDKs: inventory, due decision, queueing, dedup."""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError

from emulator import seeds
from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl, settings_env
from shared import discovery
from shared.aks import CLIENTS_KEPT, AksClient
from shared.azure import product_credential
from shared.discovery import DiscoveryError, Finding, ScanReport, stream
from shared.messages import parse_message
from shared.queues import RotationQueues
from shared.record import RotationState
from shared.settings import Settings
from shared.store import RotationStore
from shared.vault import VaultStore, secret_name_for
from tests.plugins.azurite import StorageNames
from tests.plugins.emulator import product_env

NOW = datetime.now(UTC)
FAST = {"retry_backoff_factor": 0.05, "retry_backoff_max": 1}


# -- helpers ---------------------------------------------------------------------------------------------------
def _settings(emulator: EmulatorControl, azurite: Azurite, names: StorageNames, **overrides: str) -> Settings:
    env = product_env(
        emulator,
        azurite,
        names,
        LOG_LEVEL="WARNING",
    )
    env.update(overrides)
    return Settings.from_env(env)


@pytest.fixture
def settings(emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames) -> Settings:
    return _settings(emulator, azurite, storage_names)


def _reset(emulator: EmulatorControl, doc: dict[str, Any]) -> None:
    doc["product"]["secret"] = emulator.ready["client_secret"]
    emulator.reset(doc)


def _scan(settings: Settings, **kwargs: Any) -> ScanReport:
    kwargs.setdefault("sdk_kwargs", FAST)
    kwargs.setdefault("graph_attempts", 6)
    return asyncio.run(discovery.scan(settings, **kwargs))


def _queued(settings: Settings) -> list[Any]:
    async def main() -> list[Any]:
        async with RotationQueues(settings) as queues:
            try:
                return [parse_message(p.body) for p in await queues.peek()]
            except ResourceNotFoundError:
                return []

    return asyncio.run(main())


def _rows(settings: Settings) -> list[Any]:
    async def main() -> list[Any]:
        async with RotationStore(settings) as store:
            try:
                return await store.list()
            except ResourceNotFoundError:
                return []

    return asyncio.run(main())


def _by(report: ScanReport, name: str, kind: str) -> Finding:
    found = [f for f in report.findings if f.cluster_name == name and f.kind == kind]
    assert len(found) == 1, (name, kind, report.findings)
    return found[0]


def _http_requests(counts: dict[str, int], prefix: str) -> int:
    return sum(v for k, v in counts.items() if k.startswith(prefix) and k != "graph.batch_item") - (
        counts.get("graph.batch_item", 0) if prefix.startswith("graph") else 0
    )


# -- the demo estate -------------------------------------------------------------------------------------------
def test_demo_estate_queues_the_due_secrets(emulator: EmulatorControl, settings: Settings) -> None:
    report = _scan(settings)
    payments = _by(report, "aks-payments", "sp_secret")
    checkout = _by(report, "aks-checkout", "sp_secret")
    analytics = _by(report, "aks-analytics", "sp_secret")
    assert payments.action == "queued" and payments.reason == "urgent" and payments.due
    assert payments.days_left is not None and 2.9 < payments.days_left <= 3.0
    assert payments.holder == "application" and payments.basis == "earliest"
    assert checkout.action == "queued" and checkout.reason == "due"
    assert checkout.holder == "servicePrincipal"  # older tooling put the secret on the service principal
    assert analytics.action == "ok" and not analytics.due and analytics.reason is None
    assert {payments.advice, checkout.advice, analytics.advice} == {discovery.ADVICE_MIGRATE}
    ml = _by(report, "aks-ml", "managed_identity")
    assert ml.action == "none" and ml.app_id is None and ml.advice is None
    aad = _by(report, "aks-legacy", "aad_server_secret")
    assert aad.action == "report_only" and aad.advice == discovery.ADVICE_LEGACY_AAD and not aad.due
    assert aad.days_left is not None and 44 < aad.days_left <= 45
    cert = _by(report, "aks-legacy", "cluster_certificate")
    assert cert.action == "report_only" and cert.due and cert.app_id is None  # due, reported, not opted in
    assert _by(report, "aks-legacy", "sp_secret").action == "ok"
    # Due first, most urgent first.
    assert report.findings[0] is payments
    assert {f.cluster_name for f in report.due()} == {"aks-payments", "aks-checkout", "aks-legacy"}
    assert report.clusters == 5 and report.subscriptions == 3 and not report.used_fallback and not report.errors

    messages = _queued(settings)
    assert sorted((m.cluster_id, m.kind.value, m.reason) for m in messages) == sorted(
        [(payments.cluster_id, "sp_secret", "urgent"), (checkout.cluster_id, "sp_secret", "due")]
    )
    for message in messages:
        assert message.rotation_id in {payments.rotation_id, checkout.rotation_id}
        assert message.observed_expiry is not None and message.correlation_id == report.correlation_id
    assert {r.rotation_id for r in _rows(settings)} == {payments.rotation_id, checkout.rotation_id}
    # The report is JSON (the CLI's --json) and carries no secret value.
    text = json.dumps(report.to_json())
    assert all(secret not in text for secret in emulator.canaries())
    assert report.to_json()["actions"]["queued"] == 2


def test_dry_run_writes_nothing(emulator: EmulatorControl, settings: Settings) -> None:
    emulator.clear_requests()
    report = _scan(settings, dry_run=True)
    assert {f.cluster_name for f in report.findings if f.action == "would_queue"} == {"aks-payments", "aks-checkout"}
    assert not any(f.action == "queued" for f in report.findings)
    assert emulator.requests().get("mutations", 0) == 0
    assert _queued(settings) == [] and _rows(settings) == []


def test_second_run_queues_nothing_new(emulator: EmulatorControl, settings: Settings) -> None:
    first = _scan(settings)
    second = _scan(settings)
    due = [f for f in second.findings if f.kind == "sp_secret" and f.due]
    assert len(due) == 2 and all(f.action == "already_queued" for f in due)
    assert {f.rotation_id for f in due} == {f.rotation_id for f in first.findings if f.action == "queued"}
    assert len(_queued(settings)) == 2 and len(_rows(settings)) == 2
    # A dry run sees the same.
    assert {f.action for f in _scan(settings, dry_run=True).findings if f.due and f.kind == "sp_secret"} == {
        "already_queued"
    }


def test_failed_rotation_is_retried_once_a_day(emulator: EmulatorControl, settings: Settings) -> None:
    first = _scan(settings)
    failed_id = _by(first, "aks-payments", "sp_secret").rotation_id
    assert failed_id is not None

    async def fail_it() -> None:
        async with RotationStore(settings) as store:
            row = await store.get(failed_id)
            assert row is not None
            failed = {"state": RotationState.FAILED, "failure_reason": "test: Entra refused"}
            await store.save(row.model_copy(update=failed))

    asyncio.run(fail_it())
    retry = _by(_scan(settings), "aks-payments", "sp_secret")
    assert retry.action == "queued" and retry.rotation_id not in (None, failed_id)
    assert failed_id in (retry.detail or "")
    again = _by(_scan(settings), "aks-payments", "sp_secret")  # the same day: the retry is in flight
    assert again.action == "already_queued" and again.rotation_id == retry.rotation_id
    assert len(_queued(settings)) == 3  # two first-run messages + one retry


def test_blast_radius_most_urgent_first(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    settings = _settings(emulator, azurite, storage_names, MAX_ROTATIONS_PER_RUN="1")
    report = _scan(settings)
    assert _by(report, "aks-payments", "sp_secret").action == "queued"  # 3 days beats 20 days
    deferred = _by(report, "aks-checkout", "sp_secret")
    assert deferred.action == "deferred" and "blast radius" in (deferred.detail or "")
    assert len(_queued(settings)) == 1
    # Next run: the queued one is not counted again, the deferred one goes.
    again = _scan(settings)
    assert _by(again, "aks-payments", "sp_secret").action == "already_queued"
    assert _by(again, "aks-checkout", "sp_secret").action == "queued"
    assert len(_queued(settings)) == 2


def test_opt_out_tag_and_allow_list(emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames) -> None:
    doc = seeds.demo()
    doc["clusters"][0]["tags"] = {"AKS-Rotator-Opt-Out": "true"}  # tag names are case-insensitive
    doc["clusters"][1]["tags"] = {"aks-rotator-opt-out": "false"}  # false-ish: not opted out
    _reset(emulator, doc)
    first_sub = doc["subscriptions"][0]["id"]
    settings = _settings(emulator, azurite, storage_names, SUBSCRIPTION_ALLOWLIST=first_sub)
    report = _scan(settings)
    assert {f.cluster_name for f in report.findings} == {"aks-payments", "aks-checkout"}
    assert report.subscriptions == 1
    payments = _by(report, "aks-payments", "sp_secret")
    assert payments.action == "opted_out" and payments.due  # still reported as due
    assert _by(report, "aks-checkout", "sp_secret").action == "queued"
    assert [m.cluster_id for m in _queued(settings)] == [_by(report, "aks-checkout", "sp_secret").cluster_id]


def test_expired_secret_reason(emulator: EmulatorControl, settings: Settings) -> None:
    report = _scan(settings, dry_run=True, now=datetime.now(UTC) + timedelta(days=4))
    payments = _by(report, "aks-payments", "sp_secret")
    assert payments.reason == "expired" and payments.days_left is not None and payments.days_left < 0


# -- which secret the cluster uses (the pure rule: tests/unit/test_credentials.py) ------------------------
def test_key_vault_decides_when_the_product_rotated(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    doc = seeds.demo()
    payments_app = doc["applications"][0]
    payments_app["password_credentials"].append(
        {"key_id": "11111111-2222-4333-8444-555555555555", "display_name": "aks-rotator x", "expires_in_days": 170}
    )
    _reset(emulator, doc)
    settings = _settings(emulator, azurite, storage_names)
    before = _scan(settings, dry_run=True)
    assert _by(before, "aks-payments", "sp_secret").action == "would_queue"  # earliest of the two: 3 days
    cluster_id = _by(before, "aks-payments", "sp_secret").cluster_id
    tags = {"cluster-id": cluster_id.lower(), "app-id": payments_app["app_id"], "rotation-id": "r" * 32}

    async def store() -> None:
        credential = product_credential(settings)
        try:
            async with VaultStore(settings, credential) as vault:
                name = secret_name_for(cluster_id)
                end = datetime.now(UTC) + timedelta(days=170)
                await vault.store(
                    name, "v" * 40, end, {**tags, "key-id": "11111111-2222-4333-8444-555555555555", "state": "current"}
                )
                # A newer pending version (a rotation in flight): the listing shows it, the current one is older.
                await vault.store(
                    name, "w" * 40, end, {**tags, "key-id": "99999999-2222-4333-8444-555555555555", "state": "pending"}
                )
        finally:
            await credential.close()

    asyncio.run(store())
    emulator.clear_requests()
    after = _scan(settings, dry_run=True)
    payments = _by(after, "aks-payments", "sp_secret")
    assert payments.basis == "keyvault" and payments.key_id == "11111111-2222-4333-8444-555555555555"
    assert payments.action == "ok" and not payments.due and payments.days_left is not None
    counts = emulator.requests()
    assert counts["keyvault.getSecretVersions"] >= 1  # only for the one cluster whose latest version is not current
    assert _by(after, "aks-checkout", "sp_secret").basis == "earliest"


# -- identities ------------------------------------------------------------------------------------------------
def test_kubelet_on_sp_and_certificate_opt_in(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    doc = seeds.demo()
    payments = doc["clusters"][0]
    payments["identity_type"] = "SystemAssigned"  # switched to managed identity; kubelet not upgraded yet
    payments["kubelet_identity"] = False
    doc["clusters"][3]["tags"] = {"aks-rotator-rotate-certs": "true"}  # aks-ml (MSI) opts in
    doc["clusters"][3]["cert_expires_in_days"] = 10
    doc["clusters"][4].setdefault("tags", {})["aks-rotator-rotate-certs"] = "yes"  # aks-legacy, CA due in 40 days
    _reset(emulator, doc)
    settings = _settings(emulator, azurite, storage_names)
    report = _scan(settings)
    kubelet = _by(report, "aks-payments", "sp_secret")
    assert kubelet.advice == discovery.ADVICE_KUBELET and kubelet.action == "queued"
    ml_cert = _by(report, "aks-ml", "cluster_certificate")
    assert ml_cert.action == "queued" and ml_cert.reason == "due" and ml_cert.advice is None
    assert _by(report, "aks-ml", "managed_identity").action == "none"
    assert _by(report, "aks-legacy", "cluster_certificate").action == "queued"
    assert not any(f.kind == "cluster_certificate" for f in report.findings if f.cluster_name == "aks-analytics")
    certs = [m for m in _queued(settings) if m.kind.value == "cluster_certificate"]
    assert len(certs) == 2 and all(m.app_id is None for m in certs)


# -- scale and paging ------------------------------------------------------------------------------------------
def test_paging_and_shared_apps_looked_up_once(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    doc = seeds.generate(clusters=2500, subscriptions=4, shared_every=3)
    _reset(emulator, doc)
    settings = _settings(emulator, azurite, storage_names)
    emulator.clear_requests()
    report = _scan(settings, dry_run=True)
    assert report.clusters == 2500 and len({f.cluster_id for f in report.findings}) == 2500
    counts = emulator.requests()
    assert counts["resourcegraph.resources"] >= 3  # 1,000 rows per page
    app_ids = {c["client_id"] for c in doc["clusters"] if c["client_id"] != "msi"}
    app_ids |= {c["aad_profile"]["serverAppID"] for c in doc["clusters"] if "aad_profile" in c}
    sharing = len([c for c in doc["clusters"] if c["client_id"] != "msi"]) - len(app_ids)
    assert sharing > 100  # many clusters share an application
    assert report.requests["graph.lookup_ids"] == len(app_ids)  # each application once, across pages
    # Pages are looked up as they arrive: at most one partly filled filter per Resource Graph page.
    filters = math.ceil(len(app_ids) / 15)
    pages = counts["resourcegraph.resources"]
    assert counts["graph.listApplications"] == counts["graph.listServicePrincipals"]
    assert filters <= counts["graph.listApplications"] <= filters + pages
    assert counts["graph.batch"] <= math.ceil(2 * filters / 20) + pages
    assert counts.get("graph.getApplicationByAppId", 0) == 0
    assert counts["entra.token"] <= 4
    # Every SP cluster got the password decision.
    sp = [f for f in report.findings if f.kind == "sp_secret"]
    assert all(f.expires_on is not None for f in sp)
    assert sum(1 for f in report.findings if f.action == "would_queue") == settings.max_rotations_per_run
    assert any(f.action == "deferred" for f in report.findings)


def test_resource_graph_refused_falls_back_to_arm(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    doc = seeds.generate(clusters=450, subscriptions=3)
    doc["resource_graph_enabled"] = False
    _reset(emulator, doc)
    settings = _settings(emulator, azurite, storage_names)
    emulator.clear_requests()
    report = _scan(settings, dry_run=True)
    assert report.used_fallback and report.clusters == 450 and report.subscriptions == 3
    assert any("Resource Graph" in e for e in report.errors)
    counts = emulator.requests()
    assert counts["arm.list"] == 3 * 2  # 150 clusters per subscription, 100 per ARM page
    assert json.loads(json.dumps(report.to_json()))["used_fallback"] is True


def test_tenant_subscription_limit_is_reported_and_queried_per_subscription_batch(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    """ARM cannot list subscriptions at first, so the scan asks Resource Graph unscoped; the tenant limit cuts that
    answer (x-ms-tenant-subscription-limit-hit), the scan says so and asks again naming every subscription."""
    doc = seeds.generate(clusters=60, subscriptions=4)
    doc["limits"] = {"resourcegraph_tenant_subscriptions": 2}
    _reset(emulator, doc)
    emulator.add_faults({"kind": "status", "surface": "arm", "operation": "listSubscriptions", "times": 1})
    settings = _settings(emulator, azurite, storage_names)
    emulator.clear_requests()
    report = _scan(settings, dry_run=True, sdk_kwargs={**FAST, "retry_total": 0})
    assert report.clusters == 60 and report.subscriptions == 4 and not report.used_fallback
    assert [e for e in report.errors if "x-ms-tenant-subscription-limit-hit" in e]
    counts = emulator.requests()
    assert counts["resourcegraph.resources"] == 1 + 4  # the cut answer, then one query per shard (4 subscriptions)
    assert counts["arm.listSubscriptions"] == 2


def test_resource_graph_fault_falls_back(emulator: EmulatorControl, settings: Settings) -> None:
    emulator.add_faults({"kind": "status", "surface": "resourcegraph", "status": 403})
    report = _scan(settings, dry_run=True)
    assert report.used_fallback and report.clusters == 5
    assert {f.cluster_name for f in report.findings if f.action == "would_queue"} == {"aks-payments", "aks-checkout"}


def test_throttling_and_server_errors_are_survived(emulator: EmulatorControl, settings: Settings) -> None:
    clean = _scan(settings, dry_run=True)
    emulator.add_faults(
        {"kind": "throttle", "surface": "resourcegraph", "retry_after": 1, "times": 1},
        {"kind": "throttle", "surface": "graph", "operation": "listApplications", "retry_after": 1, "times": 1},
        {"kind": "status", "surface": "graph", "operation": "listServicePrincipals", "status": 503, "times": 2},
        {"kind": "status", "surface": "graph", "operation": "batch", "status": 502, "times": 1},
        {"kind": "status", "surface": "keyvault", "operation": "getSecrets", "status": 503, "times": 1},
        {"kind": "throttle", "surface": "arm", "operation": "listClusterUserCredential", "retry_after": 1, "times": 1},
    )
    report = _scan(settings, dry_run=True)
    assert [(f.cluster_name, f.kind, f.action, f.key_id) for f in report.findings] == [
        (f.cluster_name, f.kind, f.action, f.key_id) for f in clean.findings
    ]
    assert not report.errors
    assert all(rule["fired"] >= 1 for rule in emulator.faults())


def test_zero_clusters(emulator: EmulatorControl, settings: Settings) -> None:
    doc = seeds.demo()
    doc["clusters"] = []
    _reset(emulator, doc)
    report = _scan(settings)
    assert report.clusters == 0 and report.findings == [] and report.due() == [] and not report.errors
    assert _queued(settings) == []


# -- missing rights: a clear error, nothing queued ------------------------------------------------------------
def test_missing_graph_permission(emulator: EmulatorControl, settings: Settings) -> None:
    doc = seeds.demo()
    doc["graph_app_roles"] = {}
    _reset(emulator, doc)
    with pytest.raises(DiscoveryError, match=r"Application\.ReadWrite\.OwnedBy"):
        _scan(settings)
    assert _queued(settings) == [] and _rows(settings) == []
    assert emulator.requests().get("mutations", 0) == 0


def test_missing_arm_permission(emulator: EmulatorControl, settings: Settings) -> None:
    doc = seeds.demo()
    doc["resource_graph_enabled"] = False
    for assignment in doc["role_assignments"]:
        assignment["actions"] = [a for a in assignment["actions"] if not a.endswith("managedClusters/read")]
    _reset(emulator, doc)
    with pytest.raises(DiscoveryError, match=r"Microsoft\.ContainerService/managedClusters/read"):
        _scan(settings)
    assert _queued(settings) == [] and _rows(settings) == []


def test_missing_key_vault_role(emulator: EmulatorControl, settings: Settings) -> None:
    doc = seeds.demo()
    doc["vault_roles"] = []
    _reset(emulator, doc)
    with pytest.raises(DiscoveryError, match="AKS credential rotator secrets"):
        _scan(settings)
    assert _queued(settings) == [] and _rows(settings) == []


def test_cli_exit_codes(emulator: EmulatorControl, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from shared import cli

    env = {k: v for k, v in settings_env(emulator.ready, "x").items()}
    env.update(
        AzureWebJobsStorage=settings.storage_connection_string.get_secret_value()
        if settings.storage_connection_string
        else "",
        ROTATION_QUEUE=settings.rotation_queue,
        STATE_TABLE=settings.state_table,
        AUDIT_TABLE=settings.audit_table,
        LOCK_CONTAINER=settings.lock_container,
    )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    due = runner.invoke(cli.app, ["scan", "--json", "--dry-run"])
    assert due.exit_code == cli.EXIT_DUE, due.output
    assert json.loads(due.stdout)["due"] == 3
    doc = seeds.demo()
    doc["graph_app_roles"] = {}
    _reset(emulator, doc)
    refused = runner.invoke(cli.app, ["scan", "--json"])
    assert refused.exit_code == cli.EXIT_FAILURE
    assert _queued(settings) == []


# -- 10,000 clusters -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ten_thousand_clusters(emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames) -> None:
    doc = seeds.generate(clusters=10_000, subscriptions=50)
    _reset(emulator, copy.deepcopy(doc))
    settings = _settings(emulator, azurite, storage_names)
    emulator.clear_requests()
    report = _scan(settings, dry_run=True)  # its speed is measured by bench/scan.py, not asserted here
    assert report.clusters == 10_000 and report.subscriptions == 50
    counts = emulator.requests()
    http = sum(v for k, v in counts.items() if not k.startswith("mutations") and k != "graph.batch_item")
    http -= counts.get("graph.batch_item", 0)
    assert http < 400, counts  # vs. ~9,000 for one Graph call per cluster


def test_key_vault_listing_pages(emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames) -> None:
    doc = seeds.generate(clusters=60, subscriptions=2)
    _reset(emulator, doc)
    settings = _settings(emulator, azurite, storage_names)
    apps = {a["app_id"]: a for a in doc["applications"]}
    rotated: dict[str, str] = {}
    for spec in doc["clusters"]:
        app = apps.get(spec["client_id"])
        if app is not None and "password_credentials" in app and len(rotated) < 30:
            cluster_id = (
                f"/subscriptions/{spec['subscription_id']}/resourceGroups/{spec['resource_group']}"
                f"/providers/Microsoft.ContainerService/managedClusters/{spec['name']}"
            )
            rotated[cluster_id.lower()] = app["password_credentials"][0]["key_id"]

    async def store() -> None:
        credential = product_credential(settings)
        try:
            async with VaultStore(settings, credential) as vault:
                for cluster_id, key_id in rotated.items():
                    app_id = next(s["client_id"] for s in doc["clusters"] if cluster_id.endswith(s["name"].lower()))
                    tags = {"cluster-id": cluster_id, "app-id": app_id, "key-id": key_id, "state": "current"}
                    await vault.store(secret_name_for(cluster_id), "s" * 40, datetime.now(UTC), tags)
        finally:
            await credential.close()

    asyncio.run(store())
    emulator.clear_requests()
    report = _scan(settings, dry_run=True)
    decided = {f.cluster_id.lower(): f for f in report.findings if f.kind == "sp_secret"}
    assert all(decided[c].basis == "keyvault" and decided[c].key_id == k for c, k in rotated.items())
    assert all(f.basis == "earliest" for c, f in decided.items() if c not in rotated)
    counts = emulator.requests()
    assert counts["keyvault.getSecrets"] >= 2  # 30 secrets at 25 per page (the challenge is already cached)
    assert counts.get("keyvault.getSecretVersions", 0) == 0  # every latest version is the current one


def test_collector_threshold_is_raised_while_scans_run_and_restored_after_the_last() -> None:
    before = gc.get_threshold()
    with stream._Collections.fewer():
        with stream._Collections.fewer():
            assert gc.get_threshold()[0] == max(before[0], discovery.GC_THRESHOLD)
        assert gc.get_threshold()[0] == max(before[0], discovery.GC_THRESHOLD)  # another scan still runs
    assert gc.get_threshold() == before


def test_arm_clients_per_subscription_are_bounded(settings: Settings) -> None:
    """A scan touching thousands of subscriptions (CA reads) keeps only the most recently used SDK clients."""

    async def main() -> None:
        credential = product_credential(settings)
        try:
            async with AksClient(settings, credential) as aks:
                kept = aks._client("sub-0")
                for i in range(1, CLIENTS_KEPT + 10):
                    aks._client(f"sub-{i}")
                    assert aks._client("sub-0") is kept  # used again: kept
                assert len(aks._clients) == CLIENTS_KEPT and "sub-1" not in aks._clients
        finally:
            await credential.close()

    asyncio.run(main())
