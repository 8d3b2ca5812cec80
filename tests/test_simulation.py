"""Simulated weeks of real estates: the real handlers against the emulator + Azurite with simulated time
(tests/support/sim.py), the whole promise asserted over the whole estate (tests/support/invariants.py).

Each test is one class of situation real estates produce (issue 10's world events and field modes). A class the
product does not handle yet is `xfail(strict=True)` with the reason; the fix removes the mark.
`SIM_SEED` replays the randomized suite (tests/test_simulation_random.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from emulator.sandbox import EmulatorControl
from shared import rotation
from shared.messages import CredentialKind, new_rotation_message
from shared.vault import secret_name_for, vault_name
from tests.support.sim import Simulation


# -- the baseline: nothing unusual happens --------------------------------------------------------------------
def test_quiet_weeks_rotate_everything_due_inside_the_window(make_world: Any) -> None:
    world = make_world(
        [{"name": "aks-a", "days": 10}, {"name": "aks-b", "days": 25, "on_sp": True}, {"name": "aks-c", "days": 200}],
        MAINTENANCE_WINDOW="Sat,Sun 01:00-05:00",
    )
    world.run(21)
    world.check()
    records = world.records()
    assert sorted(r.state for r in records.values()) == ["succeeded", "succeeded"]


# -- AKS: a reset is a node image upgrade ---------------------------------------------------------------------
def test_half_failed_reset_never_loses_the_new_secret(make_world: Any, emulator: EmulatorControl) -> None:
    world = make_world([{"name": "aks-a", "days": 10}], modes={"node_image_upgrade": True})
    emulator.add_faults({"kind": "lro_fail", "surface": "arm", "operation": "resetServicePrincipalProfile", "times": 1})
    world.run(3)
    world.check()
    assert {r.state for r in world.records().values()} == {"succeeded"}  # the reset was sent again and held
    assert any(a.event == "rotation.blocked" for a in world.sim.alerts.alerts)


# -- ARM: long-running operations as ARM sends them -----------------------------------------------------------
@pytest.mark.parametrize(
    "mode",
    [
        {"lro_location_only": True},
        {"reset_sync_200": True},
        {"operation_url_form": "resourcegroup"},
        {"operation_url_form": "legacy_api_version"},
        {"operation_url_form": "lowercase"},
        {"invalid_secret_async": True},
    ],
    ids=lambda m: next(iter(m)) + ("=" + str(m[next(iter(m))]) if not isinstance(m[next(iter(m))], bool) else ""),
)
def test_operations_in_every_form_arm_uses(make_world: Any, mode: dict[str, Any]) -> None:
    world = make_world([{"name": "aks-a", "days": 10}], modes=mode)
    world.run(3)
    world.check()
    assert world.cluster("aks-a")["heldKeyId"] != world.sim.initial["clusters"][0]["heldKeyId"]  # type: ignore[index]
    assert {r.state for r in world.records().values()} == {"succeeded"}


# -- cluster states -------------------------------------------------------------------------------------------
def test_stopped_cluster_is_alerted_before_anything_is_created(make_world: Any) -> None:
    world = make_world([{"name": "aks-a", "days": 6}])
    world.sim.at(world.sim.now(), world.sim.world("stop", cluster="aks-a"), "stop aks-a")
    # The operator acts on the alert two days later; the rotation then completes before the secret expires.
    world.sim.after(timedelta(days=2, hours=12), world.sim.world("start", cluster="aks-a"), "start aks-a")
    world.run(2)
    cluster = world.cluster("aks-a")
    alerts = world.sim.alerts.about(cluster["id"])
    assert any("start it before" in a.message for a in alerts), [a.message for a in alerts]
    ours = [p for a in world.emulator.state()["applications"] for p in a["passwordCredentials"] if p.get("createdBy")]
    assert all(p["createdBy"] != world.settings.client_id for p in ours)  # nothing created while it is stopped
    world.run(3)
    world.check()
    assert {r.state for r in world.records().values()} == {"succeeded"}


def test_cluster_deleted_mid_rotation_removes_the_new_password(make_world: Any) -> None:
    world = make_world([{"name": "aks-a", "days": 10}, {"name": "aks-b", "days": 200}])
    world.sim.after(timedelta(hours=6, minutes=1), world.sim.world("delete", cluster="aks-a"), "delete aks-a")
    world.run(3)
    world.check()


def test_cluster_busy_with_someone_elses_upgrade_is_waited_for(make_world: Any) -> None:
    world = make_world([{"name": "aks-a", "days": 10}])
    world.sim.at(world.sim.now(), world.sim.world("busy", cluster="aks-a", state="Upgrading", seconds=86400), "busy")
    world.run(4)
    world.check()


# -- waiting never outlives the secret ------------------------------------------------------------------------
def test_window_wait_ends_before_the_urgent_point(make_world: Any, emulator: EmulatorControl) -> None:
    # Due at the first scan (under 5 days left, URGENT_DAYS=3); the only window opens in 6 days: after expiry.
    now = datetime.fromisoformat(emulator.state()["now"].replace("Z", "+00:00"))
    day = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[(now + timedelta(days=6)).weekday()]
    world = make_world([{"name": "aks-a", "days": 5}], MAINTENANCE_WINDOW=f"{day} 23:00-23:59")
    world.run(8)
    world.check()


# -- which password a cluster uses ----------------------------------------------------------------------------
def test_hand_rotation_outside_the_product_is_noticed(make_world: Any, emulator: EmulatorControl) -> None:
    world = make_world([{"name": "aks-a", "days": 10}])
    world.run(2)  # the product rotates aks-a: Key Vault knows its key
    cluster = world.cluster("aks-a")
    added = emulator.world("credential_add", app_id=cluster["clientId"], days=20, display_name="by hand")
    emulator.world("move", cluster="aks-a", app_id=cluster["clientId"], key_id=added["keyId"])
    world.run(25)
    world.check()


# -- one rotation per cluster and credential ------------------------------------------------------------------
def test_skipped_rotation_does_not_block_the_next(make_world: Any) -> None:
    world = make_world([{"name": "aks-a", "days": 10}], THRESHOLD_DAYS="7", URGENT_DAYS="2")
    world.run(2)  # rotated once: the new version expires in 180 days; Key Vault raises NearExpiry at 150
    world.run(185)
    world.check()


# -- shared applications --------------------------------------------------------------------------------------
def test_clusters_sharing_an_application_all_move_and_the_old_key_goes_last(make_world: Any) -> None:
    world = make_world(
        [
            {"name": "aks-a", "days": 9, "app": "shared"},
            {"name": "aks-b", "days": 9, "app": "shared", "subscription": 1},
        ],
        subscriptions=2,
    )
    world.run(4)
    world.check()


# -- transient trouble after the reset ------------------------------------------------------------------------
def test_throttled_finish_is_waited_out(make_world: Any, emulator: EmulatorControl) -> None:
    world = make_world([{"name": "aks-a", "days": 10}])
    emulator.add_faults(
        {"kind": "status", "surface": "keyvault", "operation": "updateSecret", "status": 429, "times": 12}
    )
    world.run(3)
    world.check()
    assert {r.state for r in world.records().values()} == {"succeeded"}


# -- smaller edges --------------------------------------------------------------------------------------------
def test_a_soft_deleted_secret_name_fails_loudly_with_what_to_do(make_world: Any, emulator: EmulatorControl) -> None:
    world = make_world([{"name": "aks-a", "days": 10}])
    world.run(2)  # rotated: the cluster's Key Vault secret exists
    cluster_id = world.cluster("aks-a")["id"]
    emulator.world("vault_delete", vault=vault_name(world.settings.key_vault_url), name=secret_name_for(cluster_id))

    async def on_demand(_sim: Simulation) -> None:
        await rotation.rotate_now(world.settings, cluster_id, dry_run=False)

    world.sim.after(timedelta(minutes=5), on_demand, "aks-rotator rotate aks-a")
    world.run(1)
    failed = [r for r in world.records().values() if r.state == "failed"]
    assert len(failed) == 1 and "recover it" in (failed[0].failure_reason or ""), failed
    world.check()


def test_resource_ids_longer_than_a_key_vault_tag(make_world: Any) -> None:
    world = make_world([{"name": "c" * 63, "days": 10, "resource_group": "rg-" + "x" * 86}], SECRET_LIFETIME_DAYS="35")
    assert len(world.cluster("c" * 63)["id"]) > 256
    world.run(8)  # rotated at once, then again on Key Vault's SecretNearExpiry (30 days before the new exp)
    world.check()
    assert [r.state for r in world.records().values()].count("succeeded") >= 2


# -- a tenant policy shorter than the threshold -----------------------------------------------------------------
def test_a_policy_shorter_than_the_threshold_does_not_rotate_every_day(
    make_world: Any, emulator: EmulatorControl
) -> None:
    world = make_world([{"name": "aks-a", "days": 10}])
    app_id = world.cluster("aks-a")["clientId"]
    emulator.world("app_policy", app_id=app_id, max_password_lifetime_days=20)
    world.run(30)
    world.check()
    succeeded = [r for r in world.records().values() if r.state == "succeeded" and r.phase == "done"]
    assert 2 <= len(succeeded) <= 4, len(succeeded)  # every ~10 days (half the lifetime), not daily
    assert any("THRESHOLD_DAYS" in a.message for a in world.sim.alerts.alerts)


def test_the_blast_radius_cap_never_outlives_a_secret(make_world: Any) -> None:
    # Three secrets expire within a day and a half; MAX_ROTATIONS_PER_RUN=1 would defer two of them past expiry.
    world = make_world(
        [{"name": "aks-a", "days": 1.3}, {"name": "aks-b", "days": 1.3}, {"name": "aks-c", "days": 1.3}],
        MAX_ROTATIONS_PER_RUN="1",
    )
    world.run(2)
    world.check()
    assert sorted(r.state for r in world.records().values()) == ["succeeded"] * 3


# -- the queue is not a command channel -------------------------------------------------------------------------
def test_a_forged_urgent_message_cannot_force_an_upgrade_outside_the_window(
    make_world: Any, emulator: EmulatorControl
) -> None:
    now = datetime.fromisoformat(emulator.state()["now"].replace("Z", "+00:00"))
    day = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[(now + timedelta(days=4)).weekday()]
    world = make_world([{"name": "aks-a", "days": 200}], MAINTENANCE_WINDOW=f"{day} 23:00-23:59")
    cluster = world.cluster("aks-a")
    forged = new_rotation_message(
        cluster_id=cluster["id"],
        kind=CredentialKind.SP_SECRET,
        reason="expired",
        app_id=cluster["clientId"],
        observed_expiry=now,
    )

    async def hand_written(sim: Simulation) -> None:
        await sim.queues.send(forged.model_copy(update={"attempt": 7}).to_json())

    world.sim.after(timedelta(minutes=1), hand_written, "a hand-written message claiming 'expired'")
    world.run(2)
    assert not [op for op in emulator.state()["operations"] if op["clusterId"].lower() == cluster["id"].lower()]
    world.check()


def test_the_opt_out_tag_stops_every_entry_point(make_world: Any, emulator: EmulatorControl) -> None:
    world = make_world([{"name": "aks-a", "days": 10, "tags": {"aks-rotator-opt-out": "true"}}])
    cluster = world.cluster("aks-a")

    async def on_demand(_sim: Simulation) -> None:
        await rotation.rotate_now(world.settings, cluster["id"], dry_run=False)  # `aks-rotator rotate`
        hand = new_rotation_message(
            cluster_id=cluster["id"], kind=CredentialKind.SP_SECRET, reason="due", app_id=cluster["clientId"]
        )
        await _sim.queues.send(hand.to_json())  # a hand-written queue message

    world.sim.after(timedelta(minutes=1), on_demand, "rotate and a queue message for an opted-out cluster")
    world.run(2)
    assert not [op for op in emulator.state()["operations"] if op["clusterId"].lower() == cluster["id"].lower()]
    records = world.records()
    assert records and all(r.phase == "skipped" for r in records.values()), records
    world.check()
