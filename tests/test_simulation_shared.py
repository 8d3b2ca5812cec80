"""Applications shared by several clusters (issue 11, item 6): simulated estates, the whole promise asserted.

No cluster starves when the application's password limit refuses one more password (the sharing clusters move onto
one new password, or the starved one fails loudly); a password the product did not create is removed only with
evidence that nothing uses it — including clusters the product cannot see.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from emulator.sandbox import EmulatorControl
from shared import rotation
from shared.vault import secret_name_for
from tests.support.engine import World


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
