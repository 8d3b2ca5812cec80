"""Simulated estates for the rotation engine's own rules (issue 11, items 6-9): each test is one class of situation,
run by the simulated host (tests/support/sim.py) with the whole promise asserted (`World.check`).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from emulator.sandbox import EmulatorControl
from shared import api, discovery, events, rotation
from shared.messages import CredentialKind, new_rotation_message
from shared.record import Phase
from shared.vault import secret_name_for
from tests.support.engine import World
from tests.support.sim import Simulation, keyvault_event


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _held_expiry(world: World, name: str) -> datetime:
    cluster = world.cluster(name)
    app = next(a for a in world.emulator.state()["applications"] if a["appId"] == cluster["clientId"])
    return next(_when(p["end"]) for p in app["passwordCredentials"] if p["keyId"] == cluster["heldKeyId"])


# -- item 8: a finished reset is never undone by a transient error ----------------------------------------------
def test_throttled_retire_is_waited_out_and_removes_the_old_password(
    make_world: Any, emulator: EmulatorControl
) -> None:
    world = make_world([{"name": "aks-a", "days": 10}])
    old = world.cluster("aks-a")["heldKeyId"]
    emulator.add_faults(
        {"kind": "status", "surface": "graph", "operation": "remove*Password", "status": 503, "times": 30}
    )
    world.run(4)
    world.check()
    records = world.records()
    assert {r.state for r in records.values()} == {"succeeded"}
    app = next(a for a in emulator.state()["applications"] if a["appId"] == world.cluster("aks-a")["clientId"])
    assert old not in {p["keyId"] for p in app["passwordCredentials"]}
    assert all(r.trouble_count == 0 or r.phase is Phase.DONE for r in records.values())


def test_poisoned_finish_is_resumed_not_failed(make_world: Any, emulator: EmulatorControl) -> None:
    # A refusal that is not transient (403) fails every delivery: the message is poisoned; the poison handler
    # resumes finish an hour later instead of failing a rotation whose cluster already holds the new secret.
    world = make_world([{"name": "aks-a", "days": 10}])
    emulator.add_faults(
        {"kind": "status", "surface": "keyvault", "operation": "updateSecret", "status": 403, "times": 7}
    )
    world.run(3)
    world.check()
    assert {r.state for r in world.records().values()} == {"succeeded"}
    assert any(a.event == "rotation.stalled" and "resuming" in a.message for a in world.sim.alerts.alerts)


# -- item 9: a skipped rotation must not block the next one ----------------------------------------------------
def test_event_before_the_threshold_is_skipped_and_the_scan_still_rotates(make_world: Any) -> None:
    world = make_world([{"name": "aks-a", "days": 20}], THRESHOLD_DAYS="7", URGENT_DAYS="2")
    cluster = world.cluster("aks-a")
    message = new_rotation_message(
        cluster_id=cluster["id"],
        kind=CredentialKind.SP_SECRET,
        reason="keyvault_event",
        app_id=cluster["clientId"],
        observed_expiry=_held_expiry(world, "aks-a"),
    )

    async def event(sim: Simulation) -> None:
        await rotation.submit(sim.settings, message)

    world.sim.at(world.sim.now(), event, "SecretNearExpiry before THRESHOLD_DAYS")
    world.run(16)
    world.check()
    records = world.records()
    assert records[message.rotation_id].phase is Phase.SKIPPED
    assert sorted(r.phase for r in records.values()) == [Phase.DONE, Phase.SKIPPED]


# -- item 7: one rotation per cluster and credential, atomically -------------------------------------------------
def test_timer_event_api_and_cli_racing_for_one_cluster_start_one_rotation(make_world: Any) -> None:
    world = make_world([{"name": "aks-a", "days": 10}])
    world.sim.keyvault_events = False  # the race below sends the event itself
    world.run(2)  # rotated once: Key Vault has a current version (which events are about)
    assert {r.state for r in world.records().values()} == {"succeeded"}
    world.sim.clock.advance_to(world.sim.now() + timedelta(days=155))  # 25 days left: due for every starter
    cluster = world.cluster("aks-a")
    outcomes: list[str] = []

    async def race(sim: Simulation) -> None:
        name = secret_name_for(cluster["id"])
        vault = next(v for v in sim.emulator.state()["vaults"] if name in v["secrets"])
        latest = max(vault["secrets"][name], key=lambda v: v.get("created") or 0)
        event = keyvault_event(events.NEAR_EXPIRY, vault["name"], name, latest["version"], int(latest["exp"]))
        body = json.dumps({"cluster_id": cluster["id"]}).encode()
        # What each starter submits, also sent bare: the starters' own reads (inventory, Graph, Key Vault) take
        # different times, and the bare submits make the last step race for certain.
        expiry = datetime.fromtimestamp(int(latest["exp"]), tz=UTC)
        bare = [
            new_rotation_message(
                cluster_id=cluster["id"], kind=CredentialKind.SP_SECRET, reason=reason, app_id=cluster["clientId"]
            ).model_copy(update={"observed_expiry": expiry})
            for reason in ("due", "keyvault_event", "on_demand")
        ] + [
            new_rotation_message(
                cluster_id=cluster["id"],
                kind=CredentialKind.SP_SECRET,
                reason="on_demand",
                app_id=cluster["clientId"],
                generation=f"operator-{n}",  # distinct ids: only the claim can keep them to one rotation
            )
            for n in range(4)
        ]
        results = await asyncio.gather(
            discovery.run_scheduled(sim.settings),
            events.handle_event(sim.settings, json.dumps(event).encode()),
            api.request_rotation(sim.settings, body),
            rotation.rotate_now(sim.settings, cluster["id"], dry_run=False),
            *(rotation.submit(sim.settings, message) for message in bare),
        )
        outcomes.extend(str(result) for result in results)

    world.sim.at(world.sim.now(), race, "timer, Key Vault event, POST /api/rotations and the CLI race")
    world.run(3)
    world.check()
    records = world.records()
    assert len(records) == 2, (outcomes, [(r.reason, r.state, r.phase) for r in records.values()])
    assert {r.state for r in records.values()} == {"succeeded"}, outcomes


# -- item 6: applications shared by several clusters -----------------------------------------------------------
def test_sharing_clusters_rotating_together_all_finish_their_retire(make_world: Any) -> None:
    # aks-b is busy with someone else's upgrade for a day: aks-a reaches retire while aks-b's rotation is under way.
    world = make_world(
        [{"name": "aks-a", "days": 9, "app": "shared"}, {"name": "aks-b", "days": 9, "app": "shared"}],
        RETIRE_GRACE_SECONDS="60",
    )
    world.sim.at(world.sim.now(), world.sim.world("busy", cluster="aks-b", state="Upgrading", seconds=86400), "busy")
    old = world.cluster("aks-a")["heldKeyId"]
    world.run(4)
    world.check()
    records = world.records()
    assert {r.state for r in records.values()} == {"succeeded"}, [(r.phase, r.failure_reason) for r in records.values()]
    app = next(a for a in world.emulator.state()["applications"] if a["appId"] == world.cluster("aks-a")["clientId"])
    keys = {p["keyId"] for p in app["passwordCredentials"]}
    assert old not in keys  # the last retire removed it once no cluster held it
    assert keys == {world.cluster("aks-a")["heldKeyId"], world.cluster("aks-b")["heldKeyId"]}
    trails = [asyncio.run(rotation.status(world.settings, rid))[0] for rid in records]
    assert not [a.detail for view in trails for a in view.audit if a.outcome == "kept"]  # waited, never gave up
