"""Simulated weeks of migrating SP clusters to managed identity (issue 13), with the rotation engine running beside
it (tests/support/sim.py): the whole rotation promise plus "no cluster ever loses a permission it had" and "no
migration step runs outside the cluster's maintenance window unless urgent" (tests/support/invariants.py).

The executor (`shared.migration.execute.Executor`) runs for opted-in clusters at the instants its last step asked
for, as the administrator's `migrate --execute` would; it opens fresh clients each time (tokens last an hour).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from emulator.sandbox import EmulatorControl
from shared import api, clock, shards
from shared.migration.collect import open_sources
from shared.migration.execute import Executor, Phase, Step
from shared.migration.retire import application_id
from shared.store import RotationStore
from shared.windows import SettingWindow
from tests.support import migration
from tests.support.engine import World
from tests.support.invariants import check_migration
from tests.support.sim import Simulation
from tests.support.world import app_of

WINDOW = "Sat,Sun 01:00-05:00"
UNLIMITED = {"resourcegraph_queries": 1_000_000, "arm_read_capacity": 1_000_000, "arm_write_capacity": 1_000_000}


class Driver:
    """Runs `Executor.advance` for each opted-in cluster when its previous step said to come back."""

    def __init__(self, sim: Simulation, cluster_ids: list[str]) -> None:
        self.sim = sim
        self.due: dict[str, datetime] = {c: sim.now() for c in cluster_ids}
        self.steps: list[Step] = []

    def start(self) -> None:
        self.sim.at(self.sim.now(), self.tick, "migration")

    async def tick(self, sim: Simulation) -> None:
        settings = sim.settings
        async with open_sources(settings) as src, RotationStore(settings) as store:
            await store.ensure()
            executor = Executor(
                src,
                store,
                poll_seconds=settings.lro_poll_seconds,
                requeue_seconds=300,
            )
            for cluster_id, due in sorted(self.due.items()):
                if due > sim.now():
                    continue
                moment = sim.now()
                step = await executor.advance(cluster_id, moment)
                self.steps.append(step)
                sim.log.append(f"{moment:%Y-%m-%d %H:%M} migration {cluster_id.rsplit('/', 1)[-1]}: {step}")
                if step.retry_after is None:
                    del self.due[cluster_id]
                else:  # from the instant the step looked (a window wait ends exactly when the window opens)
                    self.due[cluster_id] = moment + timedelta(seconds=max(60.0, step.retry_after))
        if self.due:
            sim.at(min(self.due.values()), self.tick, "migration")


def _world(emulator: EmulatorControl, azurite: Any, clusters: list[dict[str, Any]], **env: str) -> World:
    doc = migration.estate(clusters)
    doc["limits"] = UNLIMITED
    for spec, cluster in zip(clusters, doc["clusters"], strict=True):
        if spec.get("half"):  # the control plane already moved (a system-assigned identity); kubelet on the SP
            cluster["identity_type"], cluster["kubelet_identity"] = "SystemAssigned", False
    return World(emulator, azurite, doc, MAINTENANCE_WINDOW=WINDOW, **env)


def _monday_world(emulator: EmulatorControl, azurite: Any, clusters: list[dict[str, Any]]) -> World:
    """`_world` started on the next Monday at noon UTC whatever the wall clock (expiries shifted with it), so the
    order of events around the weekend windows is the same on every run."""
    now = datetime.now(UTC)  # the emulator's clock after a reset
    monday_noon = (now + timedelta(days=7 - now.weekday())).replace(hour=12, minute=0, second=0, microsecond=0)
    ahead = (monday_noon - now).total_seconds()
    shifted = [{**c, "days": c.get("days", 200) + ahead / 86400} for c in clusters]
    world = _world(emulator, azurite, shifted)
    emulator.advance(ahead)
    world.sim = Simulation(emulator, world.settings)
    return world


def _progress(world: World) -> tuple[dict[str, int], dict[str, int]]:
    """(what a dry-run scan counts per stage, what `GET /api/status` counts of the product's migrations)."""

    async def read() -> tuple[dict[str, int], dict[str, int]]:
        with clock.use(world.sim.now):
            report = await shards.scan(world.settings, dry_run=True)
            status = await api.status_summary(world.settings)
        return report.migration, status.body["migrations"]

    return asyncio.run(read())


def _audit(world: World, partition: str) -> list[Any]:
    async def read() -> list[Any]:
        async with RotationStore(world.settings) as store:
            return await store.audit_log(partition)

    return asyncio.run(read())


def test_an_estate_migrates_with_no_outage_and_no_lost_permission(emulator: EmulatorControl, azurite: Any) -> None:
    world = _monday_world(
        emulator,
        azurite,
        [
            {"name": "aks-vnet", "vnet": True},
            {"name": "aks-acr", "acr": True, "pools": ["system", "gpu", "batch"]},
            {"name": "aks-shared-a", "app": "shared-sp", "vnet": True, "acr": True},
            {"name": "aks-shared-b", "app": "shared-sp", "acr": True},
            {"name": "aks-born-msi", "msi": True},
        ],
    )
    before = _progress(world)
    assert before[0] == {"service_principal": 4, "control_plane_on_identity": 0, "managed_identity": 1}
    initial = emulator.state()
    ids = [c["id"] for c in initial["clusters"] if c["clientId"] != "msi"]
    driver = Driver(world.sim, ids)
    driver.start()
    world.run(16)
    state = emulator.state()
    world.check()  # zero outage (every node pool, while any uses the secret), Key Vault, leaks, removals
    check_migration(state, lambda _: [SettingWindow.parse(WINDOW)]).check()
    assert {c["clientId"] for c in state["clusters"]} == {"msi"}, world.sim.explain(["not migrated"])
    assert state["clusters"][-1]["identityType"] == "SystemAssigned"  # the cluster born on managed identity
    assert all(p["kubeletIdentity"] for c in state["clusters"] for p in c["nodePools"])
    assert [s.phase for s in driver.steps if s.retry_after is None] == [Phase.DONE] * 4
    kinds = sorted(op["kind"] for op in state["operations"])
    assert kinds.count("updateIdentity") == 4 and kinds.count("upgradeNodeImageVersion") == 9  # nothing twice
    apps = {c["clientId"] for c in initial["clusters"]} - {"msi"}
    reports = [r for app in apps for r in _audit(world, application_id(app)) if r.step == Phase.RETIRE.value]
    assert [r.outcome for r in reports].count("ready") == 3  # one per application, once its last cluster moved
    # No rotation ran (200 days): every password is the seed's, not the product's: kept and reported, none removed.
    assert state["removedPasswords"] == [] and {r.outcome for r in reports} == {"ready", "kept"}
    assert apps <= {app["appId"] for app in state["applications"]}  # reported ready to delete, never deleted
    progress = _progress(world)
    assert progress[0]["managed_identity"] == 5 and progress[0]["service_principal"] == 0  # the MSI cluster too
    assert progress[1] == {
        "service_principal": 0,
        "control_plane_on_identity": 0,
        "managed_identity": 4,
        "failed": 0,
    }


def test_switching_before_grants_propagate_is_what_the_invariant_catches(
    emulator: EmulatorControl, azurite: Any
) -> None:
    """The invariant can fail: the same switch made at once (as `az aks update` right after granting would)."""
    _world(emulator, azurite, [{"name": "aks-vnet", "vnet": True, "acr": True}])
    cluster = emulator.state()["clusters"][0]
    emulator.world("migrate_identity", cluster=cluster["id"], identity_type="SystemAssigned")
    emulator.world("upgrade_node_image", cluster=cluster["id"])
    found = check_migration(emulator.state(), lambda _: [SettingWindow.parse(WINDOW)])
    lost = sorted(p.split(" of ")[0] for p in found.problems)
    assert lost == ["lost permission: controlPlane", "lost permission: system", "lost permission: user"], lost


def test_a_half_migrated_cluster_keeps_its_sp_secret_valid(emulator: EmulatorControl, azurite: Any) -> None:
    """Issue 11 item 3: the control plane moved, kubelet on two pools still uses the SP secret, which expires in
    ten days; the rotation engine rotates it with zero outage on those pools, before anyone upgrades them."""
    doc = migration.estate([{"name": "aks-half", "days": 10, "pools": ["system", "user"]}])
    doc["limits"] = UNLIMITED
    doc["clusters"][0]["identity_type"] = "SystemAssigned"
    doc["clusters"][0]["kubelet_identity"] = False
    world = World(emulator, azurite, doc, MAINTENANCE_WINDOW=WINDOW)
    before = world.cluster("aks-half")
    assert before["controlPlane"]["usesSecret"] is False
    assert [p["usesSecret"] for p in before["nodePools"]] == [True, True]
    world.run(14)
    world.check()
    after = world.cluster("aks-half")
    assert after["heldKeyId"] != before["heldKeyId"]  # rotated
    assert _progress(world)[0]["control_plane_on_identity"] == 1
    assert all(p["outage_seconds"] == 0 and p["heldValid"] for p in after["nodePools"])
    assert {r.state for r in world.records().values()} == {"succeeded"}
    assert app_of(doc, "aks-half")  # the application is still there, with the new secret
    # Then the pools move: the application is retired by the rotation's rules once no cluster uses it.
    driver = Driver(world.sim, [after["id"]])
    driver.start()
    world.run(16)
    world.check()  # nothing removed that something may still use (zero outage; removals judged by the invariants)
    state = emulator.state()
    check_migration(state, lambda _: [SettingWindow.parse(WINDOW)]).check()
    assert world.cluster("aks-half")["clientId"] == "msi" and driver.steps[-1].phase is Phase.DONE
    (app,) = [a for a in state["applications"] if a["appId"] == doc["clusters"][0]["client_id"]]
    left = app["passwordCredentials"] + app["servicePrincipal"]["passwordCredentials"]
    assert not [p for p in left if (p["displayName"] or "").startswith("aks-rotator")]  # none of ours left behind
    ours = [r for r in state["removedPasswords"] if r["appId"] == app["appId"] and r["createdBy"] != "seed"]
    assert ours and all(r["displayName"].startswith("aks-rotator") for r in ours)
    reports = _audit(world, application_id(app["appId"]))
    assert [r.outcome for r in reports if r.step == "retire"].count("removed") == len(ours)  # one rotation's
    assert [r.outcome for r in reports if r.step == "retire"][-1] == "ready"
    keys = {p["keyId"].lower() for p in left}
    versions = [v for vault in state["vaults"] for vs in vault["secrets"].values() for v in vs]
    assert versions and all(not v["enabled"] for v in versions if v["tags"].get("key-id", "").lower() not in keys)


def test_the_window_invariant_fails_for_a_step_outside_the_window() -> None:
    state = {
        "brokenOperations": [],
        "operations": [
            {"kind": "upgradeNodeImageVersion", "clusterId": "/c/a", "started": "2026-11-30T12:00:00Z"},  # a Monday
            {"kind": "upgradeNodeImageVersion", "clusterId": "/c/b", "started": "2026-11-29T02:00:00Z"},  # Sunday 02:00
            {"kind": "resetServicePrincipalProfile", "clusterId": "/c/a", "started": "2026-11-30T12:00:00Z"},
        ],
    }
    found = check_migration(state, lambda _: [SettingWindow.parse(WINDOW)])
    assert [p.split(" started")[0] for p in found.problems] == ["window: upgradeNodeImageVersion of /c/a"]
    assert not check_migration(state, lambda _: [SettingWindow.parse(WINDOW)], urgent=["/c/a"]).problems


def test_an_urgent_credential_migrates_outside_the_window(emulator: EmulatorControl, azurite: Any) -> None:
    """The SP secret ends in two days (< URGENT_DAYS) and the window opens later: the identity update does not
    wait for it; the invariant holds only because the cluster was urgent."""
    world = _monday_world(emulator, azurite, [{"name": "aks-late", "days": 2, "vnet": True, "acr": True}])
    cluster_id = emulator.state()["clusters"][0]["id"]
    window = [SettingWindow.parse(WINDOW)]
    assert not window[0].allows(world.sim.now() + timedelta(hours=1))  # the run starts outside the window
    driver = Driver(world.sim, [cluster_id])
    driver.start()
    world.run(0.25)
    state = emulator.state()
    started = [op for op in state["operations"] if op["kind"] == "updateIdentity"]
    assert started, world.sim.explain(["no identity update"])
    assert check_migration(state, lambda _: window).problems  # outside the window...
    check_migration(state, lambda _: window, urgent=[cluster_id]).check()  # ...because it was urgent
    assert state["brokenOperations"] == []


def test_a_failed_node_image_upgrade_alerts_and_a_rerun_finishes(emulator: EmulatorControl, azurite: Any) -> None:
    world = _monday_world(emulator, azurite, [{"name": "aks-flaky", "acr": True}])
    emulator.add_faults({"kind": "lro_fail", "surface": "arm", "operation": "upgradeNodeImageVersion", "times": 1})
    cluster_id = emulator.state()["clusters"][0]["id"]
    driver = Driver(world.sim, [cluster_id])
    driver.start()
    world.run(8)
    assert driver.steps[-1].phase is Phase.FAILED and not driver.due  # stopped: a person acts
    alerts = world.sim.alerts.about(cluster_id)
    assert [a.event for a in alerts] == ["migration.failed"] and "ended Failed" in alerts[0].message
    assert [p["usesSecret"] for p in world.cluster("aks-flaky")["nodePools"]] == [True, True]  # still on the SP
    driver.due[cluster_id] = world.sim.now()  # the administrator runs `migrate --execute` again
    driver.start()
    world.run(8)
    world.check()
    state = emulator.state()
    check_migration(state, lambda _: [SettingWindow.parse(WINDOW)]).check()
    assert world.cluster("aks-flaky")["clientId"] == "msi" and driver.steps[-1].phase is Phase.DONE


def test_a_rotation_overtaken_by_the_migration_ends_quietly(emulator: EmulatorControl, azurite: Any) -> None:
    """The control plane already moved; kubelet on the one node pool still uses the SP secret, which is due (20
    days). The rotation (submitted by Monday's scan) and the migration both wait for the weekend window. The
    migration's step is due at the instant the window opens, the rotation's message a second later, and the
    simulation runs world events first: the node image upgrade moves the last pool, the rotation finds the cluster
    busy, then on managed identity. It ends skipped, its reason in the audit, its unused new password removed, no
    alert; every invariant of the estate holds."""
    world = _monday_world(emulator, azurite, [{"name": "aks-both", "days": 20, "half": True, "pools": ["system"]}])
    cluster_id = emulator.state()["clusters"][0]["id"]
    driver = Driver(world.sim, [cluster_id])
    driver.start()
    world.run(16)
    world.check()
    state = emulator.state()
    check_migration(state, lambda _: [SettingWindow.parse(WINDOW)]).check()
    assert world.cluster("aks-both")["clientId"] == "msi" and driver.steps[-1].phase is Phase.DONE
    (record,) = world.records().values()
    assert (record.state, record.phase) == ("succeeded", "skipped"), world.sim.explain([record.failure_reason or ""])
    trail = _audit(world, record.rotation_id)
    assert [r.outcome for r in trail if r.step == "apply"][-1] == "obsolete"
    # The rotation removed its unused new password and abandoned its Key Vault version, also when the migration's
    # retire of the application looked first (it leaves a password of a rotation in progress to that rotation).
    assert [r.outcome for r in trail if r.step == "cleanup"] == ["removed", "abandoned"]
    gone = [p for p in state["removedPasswords"] if record.rotation_id in (p["displayName"] or "")]
    assert len(gone) == 1 and gone[0]["createdBy"] != "seed"
    assert world.sim.alerts.about(cluster_id) == []
    assert [op["kind"] for op in state["operations"]] == ["upgradeNodeImageVersion"]  # no reset: nothing to rotate


def test_a_tagged_cluster_migrates_unattended(emulator: EmulatorControl, azurite: Any) -> None:
    """Nobody runs the CLI: the cluster carries `aks-rotator-migrate=true`; the timer's scan submits its migration
    (through `submit`, like a rotation), the worker advances it step by step and re-queues itself while it waits
    for grants and the window. It migrates in its window with zero outage and no lost permission; the untagged
    cluster is left alone, and each daily scan after the first finds the migration already recorded."""
    world = _monday_world(
        emulator,
        azurite,
        [
            {"name": "aks-tagged", "vnet": True, "acr": True, "tags": {"aks-rotator-migrate": "true"}},
            {"name": "aks-left", "acr": True},
        ],
    )
    world.run(9)
    world.check()
    state = emulator.state()
    check_migration(state, lambda _: [SettingWindow.parse(WINDOW)]).check()
    assert world.cluster("aks-tagged")["clientId"] == "msi"
    assert world.cluster("aks-left")["clientId"] != "msi"
    (record,) = [r for r in world.records().values() if r.kind == "migration"]
    assert (record.state, record.phase) == ("succeeded", "done"), world.sim.explain([record.failure_reason or ""])
    assert record.attempts > 3  # it waited (grants, the window, the operations) by re-queueing, not by sleeping
    trail = _audit(world, record.rotation_id)
    assert [r.outcome for r in trail if r.step == "submit"] == ["queued"]  # once, whatever the later scans did
    assert any(r.step == "start" and r.outcome == "waiting" for r in trail)
    kinds = sorted(op["kind"] for op in state["operations"])
    assert kinds == ["updateIdentity", "upgradeNodeImageVersion", "upgradeNodeImageVersion"]
    assert world.sim.alerts.about(record.cluster_id) == []
