"""Helpers every rotation test and simulation shares: settings, the demo estate, reading the truth, driving
the engine, and `check_invariants` (the old per-test checks plus the one invariant check, tests.support.invariants)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from emulator import seeds
from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from shared import rotation
from shared.messages import CredentialKind, RotationMessage, new_rotation_message
from shared.queues import RotationQueues
from shared.rotation import Deps, DrainReport
from shared.settings import Settings
from shared.store import RotationRecord, RotationStore
from shared.vault import secret_name_for
from tests.plugins.azurite import StorageNames
from tests.plugins.emulator import product_env
from tests.support.invariants import all_passwords, check_state
from tests.support.sim import Simulation
from tests.support.world import estate

FAST = {
    "PROOF_SPACING_SECONDS": "0",
    "PROOF_SUCCESSES": "3",
    "RETIRE_GRACE_SECONDS": "0",
    "REQUEUE_DELAY_SECONDS": "0",
    "LRO_POLL_SECONDS": "0",
    "LEASE_SECONDS": "15",
    "GRAPH_SETTLE_SECONDS": "0",
    "FOREIGN_SIGNIN_QUIET_DAYS": "0",
}


# -- helpers (shared with the fault tests) ---------------------------------------------------------------------
def make_settings(emulator: EmulatorControl, azurite: Azurite, names: StorageNames, **overrides: str) -> Settings:
    env = product_env(
        emulator,
        azurite,
        names,
        **{**FAST, **overrides},
    )
    return Settings.from_env(env)


def demo_estate(**changes: Any) -> dict[str, Any]:
    """The demo estate with instant AKS operations (tests advance nothing unless they say so)."""
    doc = seeds.demo()
    doc["lro"] = {"base_seconds": 0, "per_node_seconds": 0}
    doc.update(changes)
    return doc


def cluster_by_name(state: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in state["clusters"] if c["id"].rsplit("/", 1)[-1] == name)


def app_of(state: dict[str, Any], app_id: str) -> dict[str, Any]:
    return next(a for a in state["applications"] if a["appId"] == app_id)


def due_message(state: dict[str, Any], name: str, reason: str = "due") -> RotationMessage:
    """The message discovery would queue for the cluster's held password."""
    cluster = cluster_by_name(state, name)
    app = app_of(state, cluster["clientId"])
    held = next(p for p in all_passwords(app) if p["keyId"] == cluster["heldKeyId"])
    expiry = datetime.fromisoformat(held["end"].replace("Z", "+00:00"))
    return new_rotation_message(
        cluster_id=cluster["id"],
        kind=CredentialKind.SP_SECRET,
        reason=reason,  # type: ignore[arg-type]
        app_id=cluster["clientId"],
        observed_expiry=expiry,
    )


def open_deps(settings: Settings) -> contextlib.AbstractAsyncContextManager[Deps]:
    """Clients that fail fast (no SDK retries): the queue redelivery is the retry under test."""
    return Deps.open(settings, sdk_kwargs={"retry_total": 0}, graph_attempts=2)


async def run_until_idle(settings: Settings, deps: Deps | None = None, rounds: int = 50) -> DrainReport:
    """Drain until no message is visible (failed deliveries reappear at once: retry_delay_seconds=0)."""
    total = DrainReport()

    async def go(d: Deps) -> None:
        for _ in range(rounds):
            report = await rotation.drain(settings, deps=d, retry_delay_seconds=0)
            total.received += report.received
            total.handled += report.handled
            total.errors += report.errors
            total.poisoned += report.poisoned
            total.invocation_seconds += report.invocation_seconds
            for key, value in report.actions.items():
                total.actions[key] = total.actions.get(key, 0) + value
            if report.received == 0:
                return

    if deps is not None:
        await go(deps)
    else:
        async with open_deps(settings) as d:
            await go(d)
    return total


async def submit_all(settings: Settings, messages: list[RotationMessage]) -> list[rotation.SubmitResult]:
    async with RotationStore(settings) as store, RotationQueues(settings) as queues:
        await store.ensure()
        await queues.ensure()
        return [await rotation.submit(settings, m, store=store, queues=queues) for m in messages]


async def rows(settings: Settings) -> dict[str, RotationRecord]:
    async with RotationStore(settings) as store:
        await store.ensure()
        return {r.rotation_id: r for r in await store.list()}


def rotation_ids_in(state: dict[str, Any]) -> set[str]:
    return {p["displayName"].split()[-1] for a in state["applications"] for p in all_passwords(a) if _ours(p)}


def _ours(password: dict[str, Any]) -> bool:
    return (password.get("displayName") or "").startswith(rotation.DISPLAY_NAME_PREFIX + " ")


def check_invariants(state: dict[str, Any], records: dict[str, RotationRecord], *, allow_poisoned: bool = True) -> None:
    """The promise, judged from the emulator's truth after a run."""
    check_state(state, records).check()
    for cluster in state["clusters"]:
        assert cluster["outage_seconds"] == 0, cluster["id"]
        if cluster["clientId"] != "msi":
            assert cluster["heldValid"], f"{cluster['id']} holds a secret Entra does not accept"
    vault = {s: versions for v in state["vaults"] for s, versions in v["secrets"].items()}
    held = {c["heldKeyId"] for c in state["clusters"]}
    referenced = set(held)
    for versions in vault.values():
        for version in versions:
            # "uncertain": kept on purpose (the cluster may hold it), tracked in Key Vault and alerted.
            if version["tags"].get("state") in ("current", "previous", "uncertain"):
                referenced.add(version["tags"].get("key-id"))
    in_flight = {rid for rid, r in records.items() if not r.terminal}
    for app in state["applications"]:
        for password in all_passwords(app):
            if not _ours(password):
                continue
            rid = password["displayName"].split()[-1]
            # A product-created password is in use, or belongs to a rotation still in progress.
            assert password["keyId"] in referenced or rid in in_flight, f"leaked password of rotation {rid}"
    newest: dict[str, RotationRecord] = {}
    for record in records.values():
        if record.state == "succeeded" and record.phase == "done" and record.kind == "sp_secret":
            key = record.cluster_id.lower()
            if key not in newest or record.created_at > newest[key].created_at:
                newest[key] = record
    for rid, record in records.items():
        if record.state == "failed":
            assert record.failure_reason, rid
            kept = record.new_key_id in referenced and "nothing was removed" in (record.failure_reason or "")
            assert rid not in rotation_ids_in(state) or _held_by_cluster(state, record) or kept, f"failed {rid} leaked"
        if newest.get(record.cluster_id.lower()) is record:
            cluster = next(c for c in state["clusters"] if c["id"].lower() == record.cluster_id.lower())
            current = [
                v for v in vault.get(secret_name_for(record.cluster_id), []) if v["tags"].get("state") == "current"
            ]
            assert len(current) == 1, rid
            assert current[0]["tags"]["key-id"] == cluster["heldKeyId"] == record.new_key_id, rid
        if not record.terminal:
            assert record.state in ("pending", "running", "waiting"), rid


def _held_by_cluster(state: dict[str, Any], record: RotationRecord) -> bool:
    cluster = next(c for c in state["clusters"] if c["id"].lower() == record.cluster_id.lower())
    return bool(cluster["heldKeyId"] == record.new_key_id)


def fresh_names() -> StorageNames:
    suffix = uuid.uuid4().hex[:12]
    return StorageNames(f"rot-{suffix}", f"state{suffix}", f"audit{suffix}", f"locks-{suffix}")


def product_passwords(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        p
        for a in state["applications"]
        for p in all_passwords(a)
        if (p.get("displayName") or "").startswith(rotation.DISPLAY_NAME_PREFIX + " ")
    ]


REALISTIC = {
    "PROOF_SPACING_SECONDS": "5",
    "PROOF_SUCCESSES": "5",
    "RETIRE_GRACE_SECONDS": "86400",
    "REQUEUE_DELAY_SECONDS": "60",
    "LRO_POLL_SECONDS": "120",
    "LEASE_SECONDS": "60",
    "GRAPH_SETTLE_SECONDS": "600",
}


class World:
    """One simulated estate: the emulator reset to `doc`, fresh storage, the simulation host."""

    def __init__(self, emulator: EmulatorControl, azurite: Azurite, doc: dict[str, Any], **env: str) -> None:
        emulator.reset(doc)
        self.emulator = emulator
        self.settings: Settings = make_settings(emulator, azurite, fresh_names(), **{**REALISTIC, **env})
        self.sim = Simulation(emulator, self.settings)

    def run(self, days: float) -> None:
        asyncio.run(self.sim.run(timedelta(days=days)))

    def records(self) -> dict[str, Any]:
        return asyncio.run(rows(self.settings))

    def check(self) -> None:
        self.sim.check(self.records())

    def cluster(self, name: str) -> dict[str, Any]:
        return next(c for c in self.emulator.state()["clusters"] if c["id"].endswith("/" + name))


@pytest.fixture
def make_world(emulator: EmulatorControl, azurite: Azurite) -> Iterator[Any]:
    def build(
        clusters: list[dict[str, Any]], *, modes: dict[str, Any] | None = None, subscriptions: int = 1, **env: str
    ) -> World:
        world = World(emulator, azurite, estate(clusters, subscriptions=subscriptions), **env)
        if modes:
            emulator.set_modes(**modes)
        return world

    yield build
    emulator.clear_faults()
