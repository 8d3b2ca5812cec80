"""Retiring an application once no visible cluster uses it: its passwords by the rotation's retire rule
(`plan.retirement`), the Key Vault versions that tracked them disabled (as rotation disables what it abandons), and
the application reported ready to delete after checking its sign-ins. Nothing is ever deleted.

Idempotent: a rerun removes what is still there (a removed key is success), disables every version of the
application whose password is gone, and reports once (the `ready` row is written last)."""

from __future__ import annotations

import logging

from shared.credentials import passwords, product_created
from shared.logs import log_event
from shared.migration.collect import Sources
from shared.migration.plan import retirement
from shared.store import RotationStore
from shared.vault import VaultStore, secret_name_for

log = logging.getLogger(__name__)
STEP = "retire"


def application_id(app_id: str) -> str:
    """The audit partition of an application's migration reports."""
    return "migration-app-" + app_id.lower()


async def note_moved(store: RotationStore, app_id: str, cluster_id: str) -> None:
    """Record (once) that `cluster_id` no longer uses `app_id`: retire disables the Key Vault versions of each."""
    partition = application_id(app_id)
    trail = await store.audit_log(partition)
    if not any(r.step == "moved" and r.fields.get("cluster_id") == cluster_id for r in trail):
        await store.audit(partition, "moved", "done", f"{cluster_id} on managed identity", cluster_id=cluster_id)


async def retire_application(src: Sources, store: RotationStore, app_id: str, cluster_id: str) -> bool:
    """Retire `app_id` (no visible cluster uses it); False when it was reported already."""
    partition = application_id(app_id)
    trail = await store.audit_log(partition)
    if any(r.step == STEP and r.outcome == "ready" for r in trail):
        return False
    creds = (await src.graph.lookup_apps([app_id])).get(app_id.lower())
    held = passwords(creds) if creds is not None else []
    remove, keep = retirement(held)
    for h in list(remove):
        # A rotation still in progress (overtaken by the migration) removes its own new password when it ends.
        rotation_id = product_created(h.password)
        row = await store.get(rotation_id) if rotation_id else None
        if row is not None and not row.terminal:
            remove.remove(h)
            keep.append(h)
            detail = f"left {h.password.key_id} to rotation {row.rotation_id}, still in progress: it removes it"
            await store.audit(partition, STEP, "left_to_rotation", detail)
    for h in remove:
        await src.graph.remove_password(h.holder, h.object_id, h.password.key_id)
        await store.audit(partition, STEP, "removed", f"removed the product's password {h.password.key_id}")
    for h in keep:
        if product_created(h.password) is not None:
            continue  # left to its rotation (above)
        ends = f"; it expires {h.password.end:%Y-%m-%d}" if h.password.end else ""
        detail = f"kept {h.password.key_id}: not created by the product, something else may use it{ends}"
        await store.audit(partition, STEP, "kept", detail)
    left = {h.password.key_id.lower() for h in keep}
    moved = {str(r.fields["cluster_id"]) for r in trail if r.step == "moved"} | {cluster_id}
    disabled = 0
    async with VaultStore(src.settings, src.credential) as vault:
        for moved_id in sorted(moved):
            name = secret_name_for(moved_id)
            for version in await vault.versions(name):
                if version.labels.of_app(app_id) and (version.labels.key_id or "").lower() not in left:
                    await vault.disable(name, version.version)
                    disabled += 1
    detail = (
        f"application {app_id}: no visible cluster uses it; removed {len(remove)} password(s) the product created, "
        f"kept {len(keep)} (not the product's, or a rotation's in progress), disabled {disabled} Key Vault "
        "version(s); ready to delete after checking its sign-ins"
    )
    await store.audit(partition, STEP, "ready", detail, cluster_id=cluster_id, app_id=app_id)
    log_event(log, logging.WARNING, "migration.app_ready", detail, cluster_id=cluster_id, app_id=app_id)
    return True
