"""create → store → prove: a new password (Graph), kept in Key Vault at once, proven with Entra.

Nothing here touches the cluster, so any failure may clean up (remove the new password, abandon its version).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from azure.core.exceptions import AzureError, ClientAuthenticationError
from pydantic import SecretStr

from shared.aks import AksError, AuthorizationFailed, ClusterInfo, ClusterNotFound, effective_actions
from shared.azure import arm_scope, secret_credential
from shared.cluster_tags import opted_out
from shared.credentials import password_display_name, passwords, product_created
from shared.graph import AppCredentials, GraphAuthorizationError, GraphError, NewPassword, PasswordPolicyError
from shared.logs import EVENT_ROTATION_BLOCKED, alert, log_event
from shared.record import Phase, RotationState
from shared.rotation.delivery import Delivery
from shared.rotation.deps import Deps
from shared.rotation.plan import Plan, is_due, plan
from shared.rotation.results import Done, Failure, Next, Result, Wait
from shared.rotation.sharing import LIMIT_CODE, share_or_fail
from shared.rotation.waits import STOPPED_RECHECK, blocked, stopped_reason
from shared.settings import Settings
from shared.vault import StoredVersion, VaultError, VaultForbidden, VaultSecretDeleted, VersionState, VersionTags

log = logging.getLogger("shared.rotation")

INLINE_PROOF_SECONDS = 30.0  # prove within one invocation only if the whole spaced series fits in this
LIFETIME_LADDER_DAYS = (365, 180, 90, 60, 30, 14, 7, 1)
APPLY_ACTIONS = (
    "Microsoft.ContainerService/managedClusters/resetServicePrincipalProfile/action",
    "Microsoft.ContainerService/locations/operations/read",
    "Microsoft.ContainerService/locations/operationresults/read",
)


async def lookup(run: Delivery) -> AppCredentials:
    app_id = run.row.app_id or ""
    try:
        found = await run.deps.graph.lookup_apps([app_id])
    except GraphAuthorizationError as exc:
        raise Failure(
            f"Microsoft Graph refused reading application {app_id} ({exc}): the product needs "
            "Application.ReadWrite.OwnedBy",
            cleanup=False,
        ) from None
    creds = found.get(app_id.lower())
    if creds is None:
        raise Failure(f"application {app_id} was not found in Microsoft Graph", cleanup=False)
    return creds


async def check_rights(run: Delivery, creds: AppCredentials) -> tuple[ClusterInfo, list[StoredVersion]]:
    """Cheap checks that every right the rotation needs is there, before anything is created; returns the
    cluster and its Key Vault versions (read as part of the checks)."""
    deps, cluster_id = run.deps, run.row.cluster_id
    try:
        cluster = await deps.aks.get_cluster(cluster_id)
        await deps.aks.maintenance_windows(cluster_id)
    except AuthorizationFailed as exc:
        raise Failure(f"missing ARM permission '{exc.action}' ({exc})", cleanup=False) from None
    except ClusterNotFound:
        raise Failure(f"cluster {cluster_id} no longer exists", cluster_gone=True) from None
    if (cluster.sp_client_id or "").lower() != (run.row.app_id or "").lower():
        raise Failure(
            f"the cluster no longer uses application {run.row.app_id} (it uses {cluster.sp_client_id or 'msi'})",
            cleanup=False,
        )
    await require_actions(deps, cluster.id, APPLY_ACTIONS)
    try:
        versions = await deps.vault.versions(run.secret_name)
    except VaultForbidden as exc:
        raise Failure(
            f"missing Key Vault permission (role AKS credential rotator secrets): {exc}", cleanup=False
        ) from None
    me = await deps.product_sp_object_id()
    if creds.application_object_id and me:
        try:
            owners = await deps.graph.owners("application", creds.application_object_id)
        except GraphAuthorizationError as exc:
            raise Failure(
                f"Microsoft Graph refused listing owners ({exc}): the product needs Application.ReadWrite.OwnedBy",
                cleanup=False,
            ) from None
        if me.lower() not in {o.lower() for o in owners}:
            raise Failure(
                f"the product is not an owner of application {creds.app_id} (Application.ReadWrite.OwnedBy "
                "requires ownership; run `aks-rotator adopt`)",
                cleanup=False,
            )
    return cluster, versions


async def require_actions(deps: Deps, cluster_id: str, actions: Sequence[str]) -> None:
    """ARM has no dry run for an action: read our own permissions so a missing one fails before create."""
    try:
        blocks = await deps.aks.permissions(cluster_id)
    except AksError as exc:
        log_event(log, logging.WARNING, "rotation.permissions_unreadable", f"cannot read ARM permissions: {exc}")
        return  # the apply step still fails cleanly (the unused new password is removed)
    allowed = effective_actions(blocks, actions)
    missing = [action for action in actions if action not in allowed]
    if missing:
        raise Failure(f"missing ARM permission '{missing[0]}' on {cluster_id}", cleanup=False)


async def abandon_version(deps: Deps, name: str, version: str) -> None:
    await deps.vault.set_state(name, version, VersionState.ABANDONED)
    try:
        await deps.vault.disable(name, version)
    except VaultError as exc:
        log_event(log, logging.WARNING, "vault.disable_failed", f"could not disable {name}/{version}: {exc}")


def _pending_of(versions: Sequence[StoredVersion], rotation_id: str) -> list[StoredVersion]:
    return [v for v in versions if v.labels.rotation_id == rotation_id and v.labels.state is VersionState.PENDING]


async def step_create(run: Delivery) -> Result:
    deps, rid, now = run.deps, run.rid, run.now()
    creds = await lookup(run)
    cluster, versions = await check_rights(run, creds)
    if run.row.phase is Phase.START and opted_out(run.settings, cluster):
        # Whatever started it (timer, event, HTTP, CLI, a queue message): the opt-out tag wins. Nothing changes.
        await run.save(state=RotationState.SUCCEEDED, phase=Phase.SKIPPED)
        await run.audit("create", "skipped", f"the cluster is opted out ({run.settings.opt_out_tag}); nothing changed")
        return Done("opted out")
    chosen = plan(rid, creds, versions, now)
    if chosen.observed_expiry is not None and chosen.observed_expiry != run.row.observed_expiry:
        await run.save(observed_expiry=chosen.observed_expiry)  # the truth, not what the message claimed
    if run.row.phase is Phase.START and not is_due(run.row, chosen, now, run.settings.threshold_days):
        await run.save(state=RotationState.SUCCEEDED, phase=Phase.SKIPPED, observed_expiry=chosen.observed_expiry)
        await run.audit("create", "skipped", "the credential is no longer due; nothing changed")
        return Done("not due")
    if cluster.stopped and run.row.phase is Phase.START:
        # Nothing is created for a cluster that cannot take it: say so now, look again later.
        expiry = run.row.observed_expiry
        return await blocked(run, stopped_reason(cluster, expiry), int(STOPPED_RECHECK.total_seconds()))
    await run.save(
        phase=Phase.CREATE,
        state=RotationState.RUNNING,
        holder=chosen.holder,
        old_key_ids=chosen.old_key_ids,
    )
    mine = [h for h in passwords(creds) if product_created(h.password) == rid]
    stored = next(iter(_pending_of(versions, rid)), None)
    if stored is not None and any(h.password.key_id == stored.labels.key_id for h in passwords(creds)):
        # A crash after store, before the row was saved: adopt what is there (a password of this rotation, or the
        # one it moved onto from a sharing cluster: shared.rotation.sharing).
        await run.save(
            phase=Phase.PROVE,
            proof_count=0,
            proof_started=now,
            new_key_id=stored.labels.key_id,
            vault_version=stored.version,
        )
        await run.audit("store", "adopted", "found the stored secret of an earlier attempt")
        return Next()
    if (waiting := await await_graph(run, "create")) is not None:
        return waiting
    for held in mine:
        # Created by an earlier attempt whose secret never reached Key Vault: Graph never shows it again.
        await run.lease.ensure_held()
        await deps.graph.remove_password(held.holder, held.object_id, held.password.key_id)
        await run.audit("create", "removed_lost", f"removed password {held.password.key_id}: its secret was lost")
    for version in _pending_of(versions, rid):
        await abandon_version(deps, run.secret_name, version.version)
    await run.audit(
        "create",
        "planned",
        f"holder {chosen.holder}; {chosen.note}",
        holder=chosen.holder,
        old_key_ids=",".join(chosen.old_key_ids),
    )
    lifetime = timedelta(days=run.settings.secret_lifetime_days)
    if creds.application_object_id:
        try:
            policy_max = await deps.graph.max_password_lifetime(creds.application_object_id)
        except GraphError:
            policy_max = None
        if policy_max is not None and policy_max < lifetime:
            lifetime = policy_max - timedelta(minutes=5)
    await run.lease.ensure_held()
    await run.save(added_at=run.now())
    try:
        new = await _add_password(run, chosen, lifetime)
    except PasswordPolicyError as exc:
        if exc.code == LIMIT_CODE:
            return await share_or_fail(run, creds, str(exc))
        raise Failure(f"addPassword refused by policy: {exc}", cleanup=False) from None
    except GraphAuthorizationError as exc:
        raise Failure(
            f"addPassword refused ({exc}): the product needs Application.ReadWrite.OwnedBy and "
            "ownership of the application",
            cleanup=False,
        ) from None
    if new.end - run.now() <= timedelta(days=run.settings.threshold_days):
        _policy_too_short(run, new.end - run.now())
    await run.audit(
        "create",
        "ok",
        f"added password {new.key_id} to the {chosen.holder}, ends {new.end:%Y-%m-%d}",
        key_id=new.key_id,
    )
    return await _store(run, chosen, new)


async def await_graph(run: Delivery, step: str) -> Wait | None:
    """An attempt of this rotation sent addPassword moments ago. Microsoft Graph is eventually consistent: its reads
    may not list that password yet, nor removePassword find it, so what looks like "nothing left over" (create) or
    "nothing to remove" (cleanup) may be a password that would be left behind. Look again once Graph has caught up
    (GRAPH_SETTLE_SECONDS; docs/emulator.md, mode `graph_remove_lag`). None: Graph has settled."""
    added = run.row.added_at
    left = added + timedelta(seconds=run.settings.graph_settle_seconds) - run.now() if added else None
    if left is None or left <= timedelta(0):
        return None
    delay = int(left.total_seconds()) + 1
    detail = f"{step}: this rotation added a password moments ago; waiting {delay} s for Microsoft Graph to list it"
    await run.requeue(delay, state=RotationState.RUNNING, detail=detail)
    await run.audit(step, "waiting", detail)
    return Wait(delay, detail)


def _policy_too_short(run: Delivery, lifetime: timedelta) -> None:
    """The tenant's policy caps passwords at or below THRESHOLD_DAYS: every new secret would be due at once. The
    due rule rotates at half the lifetime instead of daily (shared.credentials.due_within_days); say so once per
    rotation, with what to change."""
    alert(
        log,
        EVENT_ROTATION_BLOCKED,
        f"the app management policy caps passwords of application {run.row.app_id} at {lifetime.days} days, not more "
        f"than THRESHOLD_DAYS ({run.settings.threshold_days}): the secret is rotated every {lifetime.days / 2:.0f} "
        "days (a node image upgrade each time). Set THRESHOLD_DAYS (and SECRET_LIFETIME_DAYS) below the policy's "
        "maximum, or allow a longer lifetime in the policy",
        rotation_id=run.rid,
        cluster_id=run.row.cluster_id,
    )


async def _add_password(run: Delivery, chosen: Plan, lifetime: timedelta) -> NewPassword:
    """addPassword with the configured lifetime; when the app management policy refuses that lifetime (the
    product may not be allowed to read the policy), step down a ladder of shorter ones. A refused addPassword
    creates nothing."""
    tries = [lifetime] + [timedelta(days=d) for d in LIFETIME_LADDER_DAYS if timedelta(days=d) < lifetime]
    for index, candidate in enumerate(tries):
        end = run.now() + candidate
        try:
            return await run.deps.graph.add_password(
                chosen.holder, chosen.object_id, password_display_name(run.rid), end
            )
        except PasswordPolicyError as exc:
            if exc.code != "CredentialInvalidLifetimeAsPerAppPolicy" or index == len(tries) - 1:
                raise
            await run.audit("create", "lifetime_refused", f"the policy refused {candidate.days} days; trying shorter")
    raise AssertionError("unreachable")


async def _store(run: Delivery, chosen: Plan, new: NewPassword) -> Result:
    labels = VersionTags(
        cluster_id=run.row.cluster_id.lower(),
        app_id=(run.row.app_id or "").lower(),
        key_id=new.key_id,
        rotation_id=run.rid,
        state=VersionState.PENDING,
    )
    secret: SecretStr = new.secret
    try:
        stored = await run.deps.vault.store(run.secret_name, secret.get_secret_value(), new.end, labels.to_tags())
    except (VaultError, AzureError) as exc:
        # The secret exists only in this process: remove it at once (no leak), then let the redelivery recreate.
        with contextlib.suppress(Exception):
            await run.deps.graph.remove_password(chosen.holder, chosen.object_id, new.key_id)
        if isinstance(exc, VaultSecretDeleted):
            raise Failure(
                f"Key Vault secret '{run.secret_name}' is deleted but recoverable: recover it "
                f"(az keyvault secret recover) or purge it (az keyvault secret purge), then rotate again",
                cleanup=True,
            ) from None
        raise
    await run.save(
        phase=Phase.PROVE, proof_count=0, proof_started=run.now(), new_key_id=new.key_id, vault_version=stored.version
    )
    await run.audit(
        "store", "ok", f"stored as Key Vault version {stored.version} (state=pending)", version=stored.version
    )
    return Next()


async def _token_ok(settings: Settings, app_id: str, secret: str, kwargs: dict[str, Any]) -> tuple[bool, str]:
    credential = secret_credential(settings, app_id, secret, **kwargs)
    try:
        async with credential:
            await credential.get_token(arm_scope(settings))
    except ClientAuthenticationError as exc:
        code = re.search(r"AADSTS\d+", str(exc))
        return False, code.group(0) if code else "refused"
    except AzureError as exc:
        return False, type(exc).__name__
    return True, "ok"


async def step_prove(run: Delivery) -> Result:
    settings, row = run.settings, run.row
    count = row.proof_count
    started = row.proof_started or run.now()
    if row.vault_version is None or row.new_key_id is None:
        raise Failure("prove: the row has no stored secret", cleanup=True)
    secret = await run.deps.vault.value(run.secret_name, row.vault_version)
    needed = settings.proof_successes
    spacing = settings.proof_spacing_seconds
    inline = spacing * (needed - 1) <= INLINE_PROOF_SECONDS
    last = "ok"
    while count < needed:
        ok, last = await _token_ok(settings, row.app_id or "", secret, run.deps.proof_kwargs)
        count = count + 1 if ok else 0
        if count >= needed:
            break
        if (run.now() - started).total_seconds() > settings.proof_timeout_seconds:
            raise Failure(
                f"prove: Entra did not accept the new secret {needed} times in a row within "
                f"{settings.proof_timeout_seconds} s (last: {last})"
            )
        if ok and inline:
            await run.deps.sleep(spacing)
            continue
        await run.save(proof_count=count, proof_started=started)
        delay = int(spacing) if ok else settings.requeue_delay_seconds
        await run.requeue(delay, state=RotationState.RUNNING, detail=f"prove {count}/{needed} ({last})")
        return Wait(delay, f"prove {count}/{needed} ({last})")
    await run.save(phase=Phase.APPLY, state=RotationState.RUNNING, proof_started=started, proof_count=count)
    await run.audit("prove", "ok", f"Entra accepted the new secret {needed} times in a row")
    return Next()
