"""finish → retire, and the failure path (cleanup, fail, alert).

finish promotes the new Key Vault version to `current`; retire waits out the grace period and removes old
passwords no other cluster may hold; cleanup removes what a failed rotation created (only where the phase table
says the cluster cannot hold it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.aks import AuthorizationFailed
from shared.credentials import passwords, product_created
from shared.graph import AppCredentials
from shared.logs import alert, log_event, redact
from shared.messages import CredentialKind
from shared.record import Phase, RotationRecord, RotationState
from shared.rotation.create import abandon_version, await_graph, lookup
from shared.rotation.delivery import Delivery
from shared.rotation.foreign import Verdict, decide, last_switch, too_soon
from shared.rotation.phases import failure_may_clean_up
from shared.rotation.plan import retire_candidates
from shared.rotation.results import Done, Failure, Next, Result, Wait
from shared.signins import SignIns, app_signins
from shared.vault import VersionState, secret_name_for

log = logging.getLogger("shared.rotation")


async def step_finish(run: Delivery) -> Result:
    deps, row = run.deps, run.row
    assert row.vault_version is not None
    await deps.vault.set_state(run.secret_name, row.vault_version, VersionState.CURRENT)
    demoted = []
    for version in await deps.vault.versions(run.secret_name):
        if version.version != row.vault_version and version.labels.state is VersionState.CURRENT:
            await deps.vault.set_state(run.secret_name, version.version, VersionState.PREVIOUS)
            demoted.append(version.version)
    await run.audit(
        "finish",
        "ok",
        f"version {row.vault_version} is current" + (f"; {', '.join(demoted)} previous" if demoted else ""),
    )
    grace = run.settings.retire_grace_seconds
    not_before = run.now() + timedelta(seconds=grace)
    switched = row.switched_at or run.now()  # a repeated finish keeps the first instant
    await run.save(phase=Phase.RETIRE, not_before=not_before, trouble_count=0, switched_at=switched)
    if grace > 0:
        await run.requeue(grace, state=RotationState.WAITING, detail=f"retire grace period ({grace} s)")
        return Wait(grace, "retire grace period", RotationState.WAITING)
    return Next()


@dataclass(frozen=True)
class Sharing:
    """Why an old key stays. `settles`: another cluster's rotation of the application has not promoted its key yet;
    retire looks again once it has (a rotation at retire already names its key in Key Vault)."""

    reason: str
    settles: bool = False


def retire_deadline(row: RotationRecord, urgent_days: int) -> datetime:
    """How long retire waits for sharing clusters' rotations: the rotation's own bound (tests/support/invariants)."""
    if row.observed_expiry is not None:
        return row.observed_expiry - timedelta(days=urgent_days)
    return row.created_at + timedelta(days=7)


async def key_in_use_elsewhere(run: Delivery, key_id: str) -> Sharing | None:
    """Why `key_id` may still be used by another cluster sharing the application (None if it is not)."""
    app_id = (run.row.app_id or "").lower()
    me = run.row.cluster_id.lower()
    for cluster in await run.deps.inventory():
        if cluster.id.lower() == me or (cluster.sp_client_id or "").lower() != app_id:
            continue
        active = await run.deps.store.active_for(cluster.id, CredentialKind.SP_SECRET)
        if active is not None and active.phase is not Phase.RETIRE:
            return Sharing(f"cluster {cluster.name} shares the application and has a rotation in progress", True)
        current = await run.deps.vault.current(secret_name_for(cluster.id))
        if current is None or not current.labels.current_for(app_id):
            # No version, or one written for another application (the cluster was moved): which key it holds is
            # unknown (the same rule as discovery's, shared.vault.VersionTags.current_for).
            return Sharing(f"cluster {cluster.name} shares the application and its key is unknown")
        if current.labels.key_id == key_id.lower():
            return Sharing(f"cluster {cluster.name} uses it")
    return None


async def step_retire(run: Delivery) -> Result:
    deps, row = run.deps, run.row
    now = run.now()
    if row.not_before is not None and row.not_before > now + timedelta(seconds=1):
        delay = int((row.not_before - now).total_seconds()) + 1
        await run.requeue(delay, state=RotationState.WAITING, detail="retire grace period")
        return Wait(delay, "retire grace period", RotationState.WAITING)
    creds = await lookup(run)
    present = {h.password.key_id.lower(): h for h in passwords(creds)}
    removed, kept, pending, foreign = [], [], [], []
    report: SignIns | None = None
    switched: datetime | None = None
    looked = False
    deadline = retire_deadline(row, run.settings.urgent_days)
    for key in retire_candidates(row.old_key_ids, row.new_key_id, present):
        try:
            why = await key_in_use_elsewhere(run, key)
        except AuthorizationFailed as exc:
            raise Failure(
                f"retire: cannot check which clusters share the application: missing ARM permission "
                f"'{exc.action}'; old password {key} kept",
                cleanup=False,
            ) from None
        if why is not None and why.settles and now < deadline:
            pending.append(key)
            continue
        if why is not None:
            kept.append(key)
            ends = present[key].password.end
            until = f"; left to expire {ends:%Y-%m-%d}" if ends else ""
            await run.audit("retire", "kept", f"kept {key}: {why.reason}{until}")
            log_event(
                log, logging.WARNING, "rotation.retire_kept", f"kept {key}: {why.reason}{until}", rotation_id=run.rid
            )
            continue
        held = present[key]
        evidence = ""
        if product_created(held.password) is None:
            if not looked:
                switched, looked = await last_switch(run), True
            quiet = run.settings.foreign_signin_quiet_days
            decision = too_soon(switched, now, quiet)  # the report is read only when it could allow removal
            if decision is None:
                report = report or await app_signins(run.settings, deps.credential, row.app_id or "")
                decision = decide(key, report, switched, now, quiet)
            if decision.verdict is Verdict.KEEP:
                foreign.append(key)
                await _report_foreign(run, key, held.password.end, decision.reason)
                continue
            evidence = f" (not created by the product: {decision.reason})"
        await run.lease.ensure_held()
        await deps.graph.remove_password(held.holder, held.object_id, key)
        removed.append(key)
        await run.audit("retire", "removed", f"removed the old password {key}{evidence}")
    if pending:
        # Never give up silently: look again when the sharing cluster's rotation has promoted its key.
        delay = min(run.settings.requeue_delay_seconds * 5, int((deadline - now).total_seconds()) + 1)
        detail = f"{len(pending)} old password(s) wait for a sharing cluster's rotation to finish"
        await run.requeue(delay, state=RotationState.WAITING, detail=detail)
        return Wait(delay, detail, RotationState.WAITING)
    if not row.old_key_ids:
        others = len([k for k in present if k != (row.new_key_id or "").lower()])
        detail = f"left {others} pre-existing credentials untouched (the cluster's previous key is not known)"
    else:
        detail = f"removed {len(removed)} old password(s)" + (f", kept {len(kept)}" if kept else "")
        detail += f", left {len(foreign)} not created by the product to expire" if foreign else ""
    await run.save(state=RotationState.SUCCEEDED, phase=Phase.DONE, not_before=None)
    await run.audit("done", "succeeded", detail)
    log_event(log, logging.INFO, "rotation.succeeded", detail, rotation_id=run.rid, cluster_id=row.cluster_id)
    return Done(detail)


async def _report_foreign(run: Delivery, key: str, ends: datetime | None, reason: str) -> None:
    """A password the product did not create stays: say so where operators look (audit, log, `aks-rotator status`)."""
    until = f"{ends:%Y-%m-%d}" if ends else "its end"
    detail = f"left {key} (not created by the product) to expire {until}: {reason}"
    fields = {"key_id": key, "app_id": run.row.app_id or "", **({"ends": ends} if ends else {})}
    await run.audit("retire", "kept_foreign", detail, **fields)
    log_event(
        log,
        logging.WARNING,
        "rotation.foreign_kept",
        detail,
        rotation_id=run.rid,
        cluster_id=run.row.cluster_id,
        app_id=run.row.app_id,
        key_id=key,
    )


async def step_cleanup(run: Delivery) -> Result:
    """Remove every password this rotation created and abandon its Key Vault versions, then fail the row."""
    row = run.row
    if (waiting := await remove_created(run)) is not None:
        return waiting
    await run.save(state=RotationState.FAILED, phase=row.failed_phase or Phase.CLEANUP, not_before=None)
    await alert_failed(run, row.failure_reason or "failed")
    return Done("failed")


async def remove_created(run: Delivery) -> Wait | None:
    """Remove every password this rotation created and abandon its pending Key Vault versions (only where the
    cluster cannot hold them: the callers decide). A Wait while Graph may not list a password added moments ago."""
    deps, row = run.deps, run.row
    if row.app_id and (waiting := await await_graph(run, "cleanup")) is not None:
        return waiting
    if row.app_id:
        try:
            creds = await lookup(run)
        except Failure:
            creds = AppCredentials(row.app_id, None, None, (), ())  # the application is gone: nothing to remove
        for held in passwords(creds):
            if product_created(held.password) == run.rid:
                await run.lease.ensure_held()
                await deps.graph.remove_password(held.holder, held.object_id, held.password.key_id)
                await run.audit("cleanup", "removed", f"removed the unused new password {held.password.key_id}")
        for version in await deps.vault.versions(run.secret_name):
            if version.labels.rotation_id == run.rid and version.labels.state is VersionState.PENDING:
                await abandon_version(deps, run.secret_name, version.version)
                await run.audit("cleanup", "abandoned", f"Key Vault version {version.version} abandoned and disabled")
    return None


async def alert_failed(run: Delivery, reason: str) -> None:
    """The failure alert names the expiry: what an operator has until the cluster runs on an invalid secret."""
    await run.audit("done", "failed", reason)
    expiry = run.row.observed_expiry
    until = f" (the cluster's secret expires {expiry:%Y-%m-%d %H:%M} UTC)" if expiry else ""
    alert(
        log,
        "rotation.failed",
        f"rotation failed: {reason}{until}",
        rotation_id=run.rid,
        cluster_id=run.row.cluster_id,
        kind=run.row.kind,
    )


async def fail(run: Delivery, failure: Failure) -> Result:
    phase = run.row.phase
    reason = failure.reason if failure.reason.startswith(phase) else f"{phase}: {failure.reason}"
    # Never clean up once the cluster may hold the new secret (finish, retire): that would break it.
    if failure.cleanup and failure_may_clean_up(run.row, cluster_gone=failure.cluster_gone):
        failed = phase if phase is not Phase.CLEANUP else run.row.failed_phase
        await run.save(
            phase=Phase.CLEANUP, failed_phase=failed, failure_reason=redact(reason), state=RotationState.RUNNING
        )
        return await step_cleanup(run)
    await run.save(state=RotationState.FAILED, failure_reason=redact(reason), not_before=None)
    await alert_failed(run, reason)
    return Done("failed")
