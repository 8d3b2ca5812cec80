"""Key Vault soft-delete (the vault's recovery level is `Recoverable+Purgeable`): delete a secret, read and list
deleted secrets, recover one, purge one. A soft-deleted name cannot be set again until it is recovered or purged
(409 `Conflict`, in `keyvault.set_secret`). Shapes: DeletedSecretBundle / DeletedSecretItem of the REST reference.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from emulator.core import Emulator
from emulator.keyvault import (
    ACTION_PREFIX,
    READ_METADATA,
    RECOVERABLE_DAYS,
    begin,
    bundle,
    item,
    kv_error,
    not_found,
    paged,
)
from emulator.records import DeletedSecret, Vault
from emulator.wire import Reply

DELETE = ACTION_PREFIX + "delete"
RECOVER = ACTION_PREFIX + "recover/action"
PURGE = ACTION_PREFIX + "purge/action"


def soft_delete(emu: Emulator, vault: Vault, name: str) -> DeletedSecret:
    now = int(emu.clock.timestamp())
    deleted = DeletedSecret(vault.secrets.pop(name), now, now + RECOVERABLE_DAYS * 86400)
    vault.deleted[name] = deleted
    return deleted


def _recovery_id(emu: Emulator, vault: Vault, name: str) -> str:
    default = next(iter(emu.estate.vaults), "")
    prefix = "" if vault.name == default else f"/kv/{vault.name}"
    return f"{emu.endpoint}{prefix}/deletedsecrets/{name}"


def _deleted_doc(emu: Emulator, vault: Vault, name: str, deleted: DeletedSecret, as_item: bool) -> dict[str, Any]:
    latest = deleted.versions[-1]
    doc = item(emu, name, latest, versioned=False) if as_item else bundle(emu, name, latest, with_value=False)
    return {
        **doc,
        "recoveryId": _recovery_id(emu, vault, name),
        "deletedDate": deleted.deleted,
        "scheduledPurgeDate": deleted.scheduled_purge,
    }


def _deleted(vault: Vault, name: str) -> DeletedSecret:
    found = vault.deleted.get(name)
    if found is None:
        raise Reply(kv_error(404, "SecretNotFound", f"Deleted Secret not found: {name}"))
    return found


async def delete_secret(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    call = begin(request, DELETE, name)
    if name not in call.vault.secrets:
        raise not_found(name)
    deleted = soft_delete(call.emu, call.vault, name)
    return web.json_response(_deleted_doc(call.emu, call.vault, name, deleted, as_item=False))


async def get_deleted_secret(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    call = begin(request, READ_METADATA, name)
    return web.json_response(_deleted_doc(call.emu, call.vault, name, _deleted(call.vault, name), as_item=False))


async def get_deleted_secrets(request: web.Request) -> web.Response:
    call = begin(request, READ_METADATA, None)
    keyed = sorted(
        (name, _deleted_doc(call.emu, call.vault, name, d, as_item=True)) for name, d in call.vault.deleted.items()
    )
    return paged(request, keyed, f"/kv/{call.vault.name}/deletedsecrets")


async def recover_deleted_secret(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    call = begin(request, RECOVER, name)
    deleted = _deleted(call.vault, name)
    del call.vault.deleted[name]
    call.vault.secrets[name] = deleted.versions
    return web.json_response(bundle(call.emu, name, deleted.versions[-1], with_value=False))


async def purge_deleted_secret(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    call = begin(request, PURGE, name)
    _deleted(call.vault, name)
    del call.vault.deleted[name]
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    r = app.router
    for prefix, suffix in (("/kv/{vault}", ""), ("", "AtRoot")):
        r.add_delete(prefix + "/secrets/{name}", delete_secret, name="keyvault.deleteSecret" + suffix)
        r.add_get(prefix + "/deletedsecrets{slash:/?}", get_deleted_secrets, name="keyvault.getDeletedSecrets" + suffix)
        r.add_get(prefix + "/deletedsecrets/{name}", get_deleted_secret, name="keyvault.getDeletedSecret" + suffix)
        r.add_post(
            prefix + "/deletedsecrets/{name}/recover",
            recover_deleted_secret,
            name="keyvault.recoverDeletedSecret" + suffix,
        )
        r.add_delete(
            prefix + "/deletedsecrets/{name}", purge_deleted_secret, name="keyvault.purgeDeletedSecret" + suffix
        )
