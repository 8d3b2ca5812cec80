"""Applications shared by several clusters (issue 11, item 6): simulated estates, the whole promise asserted.

No cluster starves when the application's password limit refuses one more password (the sharing clusters move onto
one new password, or the starved one fails loudly); a password the product did not create is removed only with
evidence that nothing uses it — including clusters the product cannot see.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest
from rich.console import Console

from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from shared import cli_views, rotation
from shared.vault import secret_name_for
from tests.support.engine import World
from tests.support.world import estate, hide_subscription, without_signin_report


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _app(world: World, name: str) -> dict[str, Any]:
    app_id = world.cluster(name)["clientId"]
    return next(a for a in world.emulator.state()["applications"] if a["appId"] == app_id)


def _held_expiry(world: World, name: str) -> datetime:
    held = world.cluster(name)["heldKeyId"]
    return next(_when(p["end"]) for p in _app(world, name)["passwordCredentials"] if p["keyId"] == held)


def _current_key(world: World, name: str) -> str | None:
    secret = secret_name_for(world.cluster(name)["id"])
    versions = [v for vault in world.emulator.state()["vaults"] for v in vault["secrets"].get(secret, [])]
    current = [v for v in versions if v["tags"].get("state") == "current"]
    return current[0]["tags"]["key-id"] if len(current) == 1 else None


def _audit(world: World) -> list[tuple[str, str, str]]:
    views = [asyncio.run(rotation.status(world.settings, rid))[0] for rid in world.records()]
    return [(a.step, a.outcome, a.detail) for view in views for a in view.audit]


# -- the password limit ------------------------------------------------------------------------------------------
def test_password_limit_moves_the_sharing_clusters_onto_one_new_password(
    make_world: Any, emulator: EmulatorControl
) -> None:
    world = make_world([{"name": "aks-a", "days": 9, "app": "shared"}, {"name": "aks-b", "days": 9, "app": "shared"}])
    app_id = world.cluster("aks-a")["clientId"]
    old = world.cluster("aks-a")["heldKeyId"]
    emulator.world("app_policy", app_id=app_id, password_limit=2)  # the old password + one new one
    world.run(4)
    world.check()
    records = world.records()
    assert {r.state for r in records.values()} == {"succeeded"}, [r.failure_reason for r in records.values()]
    shared = world.cluster("aks-a")["heldKeyId"]
    assert shared != old and world.cluster("aks-b")["heldKeyId"] == shared  # one new password for both
    assert _current_key(world, "aks-a") == _current_key(world, "aks-b") == shared  # Key Vault: the key each holds
    assert {p["keyId"] for p in _app(world, "aks-a")["passwordCredentials"]} == {shared}  # the old key retired last
    moved = [detail for step, outcome, detail in _audit(world) if outcome == "shared"]
    assert len(moved) == 1 and shared in moved[0]
    assert not [a for a in world.sim.alerts.alerts if a.event == "rotation.failed"]


def test_password_limit_without_a_password_to_share_fails_loudly_with_the_expiry(
    make_world: Any, emulator: EmulatorControl
) -> None:
    world = make_world([{"name": "aks-a", "days": 9, "app": "shared"}, {"name": "aks-b", "days": 9, "app": "shared"}])
    app_id = world.cluster("aks-a")["clientId"]
    emulator.world("app_policy", app_id=app_id, password_limit=1)  # not even one new password fits
    expiry = _held_expiry(world, "aks-b")
    world.run(3)
    world.check()
    failed = [r for r in world.records().values() if r.state == "failed"]
    assert {r.cluster_id for r in failed} == {world.cluster("aks-a")["id"], world.cluster("aks-b")["id"]}
    assert all("TooManyAppPasswords" in (r.failure_reason or "") for r in failed)
    loud = [a for a in world.sim.alerts.about(world.cluster("aks-b")["id"]) if a.event == "rotation.failed"]
    assert loud and f"expires {expiry:%Y-%m-%d}" in loud[0].message, [a.message for a in loud]
    assert "no cluster sharing application" in loud[0].message


# -- passwords the product did not create ------------------------------------------------------------------------
def test_a_foreign_password_nobody_signs_in_with_is_removed_after_the_quiet_days(make_world: Any) -> None:
    world = make_world([{"name": "aks-a", "days": 9}], RETIRE_GRACE_SECONDS="172800", FOREIGN_SIGNIN_QUIET_DAYS="1")
    old = world.cluster("aks-a")["heldKeyId"]
    world.run(5)
    world.check()
    assert {r.state for r in world.records().values()} == {"succeeded"}
    assert old not in {p["keyId"] for p in _app(world, "aks-a")["passwordCredentials"]}
    removed = [d for _, outcome, d in _audit(world) if outcome == "removed" and old in d]
    assert len(removed) == 1 and "no sign-in since the last visible cluster left it" in removed[0], removed


def test_a_foreign_password_is_left_to_expire_when_the_quiet_days_have_not_passed(make_world: Any) -> None:
    world = make_world([{"name": "aks-a", "days": 9}], FOREIGN_SIGNIN_QUIET_DAYS="3")  # retire after one day
    old = world.cluster("aks-a")["heldKeyId"]
    world.run(3)
    world.check()
    assert {r.state for r in world.records().values()} == {"succeeded"}
    assert old in {p["keyId"] for p in _app(world, "aks-a")["passwordCredentials"]}
    kept = [d for _, outcome, d in _audit(world) if outcome == "kept_foreign"]
    assert len(kept) == 1 and old in kept[0] and "FOREIGN_SIGNIN_QUIET_DAYS=3" in kept[0]


@pytest.mark.parametrize("report", [True, False], ids=["with-sign-in-report", "without-AuditLog.Read.All"])
def test_a_cluster_the_product_cannot_see_keeps_the_foreign_password_it_holds(
    emulator: EmulatorControl, azurite: Azurite, report: bool
) -> None:
    doc = estate(
        [
            {"name": "aks-a", "days": 9, "app": "shared"},
            {"name": "aks-x", "days": 9, "app": "shared", "subscription": 1},  # another team's subscription
        ],
        subscriptions=2,
    )
    hide_subscription(doc, 1)
    if not report:
        without_signin_report(doc)
    world = World(emulator, azurite, doc, FOREIGN_SIGNIN_QUIET_DAYS="1")
    old = world.cluster("aks-x")["heldKeyId"]
    world.run(4)
    world.check()
    records = world.records()
    assert {r.cluster_id for r in records.values()} == {world.cluster("aks-a")["id"]}  # aks-x is invisible
    assert {r.state for r in records.values()} == {"succeeded"}
    invisible = world.cluster("aks-x")
    assert invisible["heldKeyId"] == old and invisible["heldValid"] and invisible["outage_seconds"] == 0
    assert old in {p["keyId"] for p in _app(world, "aks-a")["passwordCredentials"]}
    visible = world.cluster("aks-a")
    assert visible["heldKeyId"] != old and _current_key(world, "aks-a") == visible["heldKeyId"]  # rotated normally
    kept = [d for _, outcome, d in _audit(world) if outcome == "kept_foreign"]
    assert len(kept) == 1 and old in kept[0]
    assert ("after every visible cluster left it" if report else "AuditLog.Read.All") in kept[0], kept
    left = asyncio.run(rotation.foreign_left(world.settings, world.sim.now()))  # what `aks-rotator status` lists
    assert [(f.key_id, f.cluster_id) for f in left] == [(old, visible["id"])]
    console = Console(record=True, width=300)
    console.print(cli_views.foreign_table(left))
    text = console.export_text()
    assert old in text and "aks-a" in text
