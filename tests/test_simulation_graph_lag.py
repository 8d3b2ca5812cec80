"""Microsoft Graph is eventually consistent (issue 11 item 11, "Graph read-after-write lag never leaks a password"):
for a while after addPassword, reads of the application do not list the new key, and removePassword of it is
refused as if it did not exist (emulator modes `graph_read_lag_seconds`, `graph_remove_lag`; sources in
docs/emulator.md). The engine must neither leave a password behind, nor remove the wrong one, nor keep two.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from emulator.sandbox import EmulatorControl
from shared import rotation
from shared.azure import graph_scope, product_credential
from shared.settings import Settings
from tests.support.engine import demo_estate
from tests.support.invariants import all_passwords

LAG = {"graph_read_lag_seconds": 300.0, "graph_remove_lag": True}


def _ours(state: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(live, removed) passwords the product created."""
    prefix = rotation.DISPLAY_NAME_PREFIX + " "

    def ours(p: dict[str, Any]) -> bool:
        return (p.get("displayName") or "").startswith(prefix)

    live = [p for a in state["applications"] for p in all_passwords(a) if ours(p)]
    return live, [r for r in state["removedPasswords"] if ours(r)]


def test_a_store_failure_while_graph_lags_leaves_no_password_behind(make_world: Any, emulator: EmulatorControl) -> None:
    # Key Vault refuses the first store: the engine removes the password it just added — which Graph does not know
    # yet — and the redelivery 30 s later reads an application that does not show it either.
    world = make_world([{"name": "aks-a", "days": 10}], modes=LAG)
    emulator.add_faults({"kind": "status", "surface": "keyvault", "operation": "setSecret", "status": 503, "times": 1})
    world.run(3)
    world.check()
    records = world.records()
    assert {r.state for r in records.values()} == {"succeeded"}
    live, removed = _ours(world.emulator.state())
    (record,) = records.values()
    assert [p["keyId"] for p in live] == [record.new_key_id] == [world.cluster("aks-a")["heldKeyId"]]
    # The password of the failed store was removed by the product once Graph showed it; nothing else was.
    assert [r["removedBy"] for r in removed] == [world.settings.client_id]
    assert any(a.step == "create" and a.outcome == "removed_lost" for a in _audit(world, record.rotation_id))


def _audit(world: Any, rotation_id: str) -> list[Any]:
    (view,) = asyncio.run(rotation.status(world.settings, rotation_id))
    return list(view.audit)


def test_retire_while_graph_lags_removes_only_the_old_password(make_world: Any, emulator: EmulatorControl) -> None:
    world = make_world([{"name": "aks-a", "days": 10}, {"name": "aks-b", "days": 12, "on_sp": True}], modes=LAG)
    before = {c["id"]: c["heldKeyId"] for c in emulator.state()["clusters"]}
    world.run(4)
    world.check()
    state = world.emulator.state()
    keys = {p["keyId"] for a in state["applications"] for p in all_passwords(a)}
    for cluster in state["clusters"]:
        assert cluster["heldKeyId"] in keys and cluster["heldKeyId"] != before[cluster["id"]]
        assert before[cluster["id"]] not in keys  # the old one retired, the new one kept
    assert {r.state for r in world.records().values()} == {"succeeded"}


def test_the_emulator_refuses_to_remove_a_password_graph_does_not_show_yet(
    emulator: EmulatorControl, emu_settings: Settings
) -> None:
    """The mode itself, on the wire: removePassword of a just-added key is 400 while reads lag, 204 after."""
    emulator.reset(demo_estate())
    app_id = emulator.state()["clusters"][0]["clientId"]
    emulator.set_modes(graph_read_lag_seconds=60, graph_remove_lag=True)
    added = emulator.world("credential_add", app_id=app_id)

    async def remove() -> httpx.Response:
        credential = product_credential(emu_settings)
        async with credential:
            token = (await credential.get_token(graph_scope(emu_settings))).token
        async with httpx.AsyncClient(verify=emulator.ssl_context()) as http:
            return await http.post(
                f"{emulator.endpoint}/v1.0/applications(appId='{app_id}')/removePassword",
                json={"keyId": added["keyId"]},
                headers={"Authorization": f"Bearer {token}"},
            )

    refused = asyncio.run(remove())
    assert refused.status_code == 400 and "No password credential found" in refused.json()["error"]["message"]
    assert any(p["keyId"] == added["keyId"] for a in emulator.state()["applications"] for p in all_passwords(a))
    emulator.advance(61)
    assert asyncio.run(remove()).status_code == 204


def test_a_cleanup_while_graph_lags_leaves_no_password_behind(make_world: Any, emulator: EmulatorControl) -> None:
    # AKS refuses the reset moments after the proof: the rotation fails and cleans up a password Graph neither lists
    # nor lets it remove yet. The clean-up must wait for Graph to catch up, not take "not found" for "removed".
    world = make_world([{"name": "aks-a", "days": 10}], modes=LAG)
    emulator.add_faults(
        {"kind": "status", "surface": "arm", "operation": "resetServicePrincipalProfile", "status": 400, "times": 1}
    )
    world.run(3)
    world.check()
    live, _ = _ours(world.emulator.state())
    records = world.records()
    failed = [r for r in records.values() if r.state == "failed"]
    assert failed and all(r.failure_reason for r in failed)
    assert all(
        any(a.step == "cleanup" and a.outcome == "removed" for a in _audit(world, r.rotation_id)) for r in failed
    )
    held = world.cluster("aks-a")["heldKeyId"]
    assert [p["keyId"] for p in live] in ([held], [])  # only the password the cluster holds, if a retry rotated
