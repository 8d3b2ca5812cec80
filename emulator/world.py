"""World events (`POST /_emulator/world/{event}`) and field modes (`/_emulator/modes`): what happens to a real
estate besides the product — people, other tools, AKS itself. Nothing here exists in Azure; each event changes
the estate the way the named real action does (sources in docs/emulator.md, "World events").
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from aiohttp import web

from emulator import identities, signins
from emulator.core import Emulator, emulator_of
from emulator.graph import add_years
from emulator.keyvault_deleted import soft_delete
from emulator.records import Application, Cluster, Operation, Password
from emulator.truth import cluster_truth

Event = Callable[[Emulator, dict[str, Any]], dict[str, Any]]
HUMAN = "human"
CANCELED = "The operation was canceled because the managed cluster was deleted."


class EventError(Exception):
    """A malformed or impossible event: answered 400 with the reason."""


def _cluster(emu: Emulator, body: dict[str, Any]) -> Cluster:
    ref = str(body.get("cluster", ""))
    found = emu.estate.clusters.get(ref.lower())
    if found is None:
        named = [c for c in emu.estate.clusters.values() if c.name == ref]
        if len(named) != 1:
            raise EventError(f"cluster {ref!r}: give its resource id or a unique name")
        found = named[0]
    emu.estate.account(found)
    return found


def _app(emu: Emulator, body: dict[str, Any]) -> Application:
    app = emu.estate.applications.get(str(body.get("app_id", "")).lower())
    if app is None:
        raise EventError(f"unknown application {body.get('app_id')!r}")
    return app


def _holder(app: Application, body: dict[str, Any]) -> str:
    holder = str(body.get("holder", "application"))
    if holder not in ("application", "servicePrincipal") or (holder == "servicePrincipal" and app.sp is None):
        raise EventError("holder must be 'application' or 'servicePrincipal'")
    return holder


def _passwords(app: Application, holder: str) -> list[Password]:
    return app.passwords if holder == "application" else (app.sp.passwords if app.sp else [])


def _background(emu: Emulator, cluster: Cluster, kind: str, state: str, seconds: float | None) -> Operation:
    """Someone else's operation on the cluster: it stays `state` until it ends (never, without `seconds`)."""
    now = emu.clock.timestamp()
    op = Operation(
        id=str(uuid.uuid4()),
        cluster_id=cluster.id,
        location=cluster.location,
        subscription_id=cluster.subscription_id,
        kind=kind,
        started=now,
        done_at=now + seconds if seconds is not None else math.inf,
        fail_message=None,
        apply=None,
        running_state=state,
    )
    emu.estate.operations[op.id] = op
    cluster.provisioning_state = state
    return op


# -- clusters ---------------------------------------------------------------------------------------------------
def stop(emu: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    """`az aks stop`: powerState Stopped; no node runs, so nothing is accounted while stopped."""
    cluster = _cluster(emu, body)
    signins.record_cluster(emu.estate, cluster, emu.clock.timestamp())
    cluster.power_state = "Stopped"
    return {"powerState": cluster.power_state}


def start(emu: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    cluster = _cluster(emu, body)
    cluster.power_state = "Running"
    return {"powerState": cluster.power_state}


def delete(emu: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    """`az aks delete`: the cluster is gone; its running operations end `Canceled`."""
    cluster = _cluster(emu, body)
    now = emu.clock.timestamp()
    canceled = []
    for op in emu.estate.operations.values():
        if op.cluster_id.lower() == cluster.id.lower() and op.status == "InProgress":
            op.status, op.ended, op.apply = "Canceled", now, None
            op.fail_code, op.fail_message = "Canceled", CANCELED
            canceled.append(op.id)
    emu.estate.deleted_clusters.append({**cluster_truth(emu.estate, cluster), "deletedAt": emu.clock.now().isoformat()})
    del emu.estate.clusters[cluster.id.lower()]
    return {"deleted": cluster.id, "canceledOperations": canceled}


def move(emu: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    """`az aks update-credentials --reset-service-principal --service-principal <other appId>`: the cluster now
    runs on another application, holding `key_id` (default: its first password)."""
    cluster = _cluster(emu, body)
    app = _app(emu, body)
    passwords = emu.estate.all_passwords(app)
    key_id = body.get("key_id")
    password = next((p for p in passwords if key_id is None or p.key_id == key_id), None)
    if password is None:
        raise EventError(f"application {app.app_id} has no password {key_id!r}")
    cluster.client_id = app.app_id
    emu.estate.hold(cluster, (password.hash, password.key_id), emu.clock.timestamp())
    return {"clientId": app.app_id, "heldKeyId": password.key_id}


def busy(emu: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    """Someone else's upgrade: provisioningState `Upgrading` for `seconds` (or until further notice), or a
    cluster left `Failed` by someone else's failed operation (`state: "Failed"`)."""
    cluster = _cluster(emu, body)
    state = str(body.get("state", "Upgrading"))
    if state == "Failed":
        cluster.provisioning_state = "Failed"
        return {"provisioningState": state}
    if state not in ("Upgrading", "Updating", "Starting", "Stopping"):
        raise EventError("state must be Upgrading, Updating, Starting, Stopping or Failed")
    seconds = body.get("seconds")
    op = _background(emu, cluster, "upgrade.other", state, float(seconds) if seconds is not None else None)
    return {"provisioningState": state, "operation": op.id}


def migrate_identity(emu: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    """`az aks update --enable-managed-identity`: the control plane moves to a managed identity at once; kubelet
    keeps the service principal until the node pools are upgraded (`upgrade_node_image`)."""
    cluster = _cluster(emu, body)
    cluster.identity_type = str(body.get("identity_type", "SystemAssigned"))
    identities.check(emu.estate, cluster, emu.clock.timestamp())
    return {"identityType": cluster.identity_type, "kubeletIdentity": cluster.kubelet_identity}


def upgrade_node_image(emu: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    """`az aks nodepool upgrade --node-image-only` on every pool: completes a managed-identity migration."""
    cluster = _cluster(emu, body)
    if cluster.identity_type != "None":
        cluster.kubelet_identity = True
        identities.check(emu.estate, cluster, emu.clock.timestamp())
    return {"kubeletIdentity": cluster.kubelet_identity}


# -- applications ------------------------------------------------------------------------------------------------
def credential_add(emu: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    """`az ad app credential reset --append` (or the portal's "New client secret"): one more password."""
    app = _app(emu, body)
    holder = _holder(app, body)
    now = emu.clock.now()
    end = add_years(now, int(body.get("years", 1))) if "days" not in body else now + timedelta(days=body["days"])
    password, secret = emu.estate.add_password(app, holder, now, end, body.get("display_name"), HUMAN)
    return {"keyId": password.key_id, "secretText": secret, "endDateTime": password.truth()["end"]}


def credential_remove(emu: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    """`az ad app credential delete --key-id`."""
    app = _app(emu, body)
    holder = _holder(app, body)
    password = next((p for p in _passwords(app, holder) if p.key_id == body.get("key_id")), None)
    if password is None:
        raise EventError(f"no password {body.get('key_id')!r} on the {holder}")
    emu.estate.remove_password(app, holder, password, HUMAN)
    return {"removed": password.key_id}


def credential_reset(emu: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    """`az ad app|sp credential reset`: without `append`, every password of the holder is removed first
    (azure-cli removes each with removePassword), then one new password is added."""
    app = _app(emu, body)
    holder = _holder(app, body)
    removed = []
    if not body.get("append", False):
        for password in list(_passwords(app, holder)):
            emu.estate.remove_password(app, holder, password, HUMAN)
            removed.append(password.key_id)
    return {**credential_add(emu, body), "removed": removed}


def app_policy(emu: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    """An administrator changes the app's password limit or its app management policy."""
    app = _app(emu, body)
    if "password_limit" in body:
        app.password_limit = body["password_limit"]
    if "max_password_lifetime_days" in body:
        app.policy.max_lifetime_days = body["max_password_lifetime_days"]
    if "block_password_addition" in body:
        app.policy.block_addition = bool(body["block_password_addition"])
    return {
        "passwordLimit": app.password_limit,
        "maxPasswordLifetimeDays": app.policy.max_lifetime_days,
        "blockPasswordAddition": app.policy.block_addition,
    }


# -- Key Vault ---------------------------------------------------------------------------------------------------
def vault_delete(emu: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    """`az keyvault secret delete`: soft-delete (recoverable, its name blocked until recovered or purged)."""
    vault = emu.estate.vaults.get(str(body.get("vault", "")))
    if vault is None or str(body.get("name", "")) not in vault.secrets:
        raise EventError("give an existing vault and secret name")
    soft_delete(emu, vault, str(body["name"]))
    return {"deleted": body["name"]}


EVENTS: dict[str, Event] = {
    "stop": stop,
    "start": start,
    "delete": delete,
    "move": move,
    "busy": busy,
    "migrate_identity": migrate_identity,
    "upgrade_node_image": upgrade_node_image,
    "credential_add": credential_add,
    "credential_remove": credential_remove,
    "credential_reset": credential_reset,
    "app_policy": app_policy,
    "vault_delete": vault_delete,
}


async def world_event(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    event = EVENTS.get(request.match_info["event"])
    if event is None:
        return web.json_response({"error": f"unknown event; known: {sorted(EVENTS)}"}, status=404)
    body = await request.json() if request.can_read_body else {}
    if not isinstance(body, dict):
        return web.json_response({"error": "body must be an object"}, status=400)
    try:
        return web.json_response(event(emu, body))
    except (EventError, KeyError, TypeError, ValueError) as exc:
        return web.json_response({"error": str(exc)}, status=400)


async def modes_get(request: web.Request) -> web.Response:
    return web.json_response(emulator_of(request).estate.modes.public())


async def modes_set(request: web.Request) -> web.Response:
    modes = emulator_of(request).estate.modes
    body = await request.json()
    if not isinstance(body, dict):
        return web.json_response({"error": "body must be an object"}, status=400)
    try:
        modes.update(body)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(modes.public())


async def modes_clear(request: web.Request) -> web.Response:
    estate = emulator_of(request).estate
    estate.modes.update(type(estate.modes)().public())
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/_emulator/world/{event}", world_event, name="control.world")
    r.add_get("/_emulator/modes", modes_get, name="control.modes_get")
    r.add_post("/_emulator/modes", modes_set, name="control.modes_set")
    r.add_delete("/_emulator/modes", modes_clear, name="control.modes_clear")
