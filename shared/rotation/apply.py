"""apply → verify: `resetServicePrincipalProfile` (or `rotateClusterCertificates`) inside the maintenance window,
then poll its operation.

From the moment a reset may have reached AKS the cluster may hold the new secret: the row says so
(`reset_unanswered` before the request is sent, `reset_accepted` once AKS accepted one) and from then on nothing
removes the new password. A reset is a node image upgrade: one that ends Failed or Canceled may already have moved
some node pools, so both passwords stay valid, the Key Vault version is marked uncertain, an alert fires and the
same secret is sent again once the cluster settles (bounded). Every wait — the maintenance window, a stopped or
busy cluster, the operation — ends by `expiry - URGENT_DAYS` or alerts (`rotation.blocked`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from azure.core.exceptions import AzureError

from shared import windows as win
from shared.aks import AksError, AuthorizationFailed, ClusterBusy, ClusterInfo, ClusterNotFound, CredentialsRejected
from shared.cluster_tags import certificates_opted_in, opted_out
from shared.logs import EVENT_ROTATION_BLOCKED, alert, log_event
from shared.messages import CredentialKind
from shared.record import Phase, RotationState
from shared.rotation.delivery import Delivery
from shared.rotation.finish import remove_created
from shared.rotation.plan import is_urgent, urgent_point
from shared.rotation.results import Done, Failure, Next, Result, Wait
from shared.rotation.waits import STOPPED_RECHECK, blocked, stopped_reason, waited_long
from shared.vault import VersionState

log = logging.getLogger("shared.rotation")

MAX_UNCERTAIN_APPLIES = 12  # resets without an answer before the rotation fails (without clean-up)
MAX_RESENDS = 4  # resets sent again after an accepted one ended Failed/Canceled, before failing (without clean-up)
BUSY_STATES = frozenset(
    {"updating", "upgrading", "scaling", "creating", "deleting", "starting", "stopping", "canceling"}
)
CERT_DOWNTIME_WARNING = (
    "rotateClusterCertificates restarts the control plane and nodes: expect up to 30 minutes of API downtime; "
    "kubeconfigs must be fetched again afterwards"
)


class ResetAnswer(enum.Enum):
    """What an error from the reset request means for the rotation."""

    REFUSED = "refused"  # definitively not executed: fail (clean up unless an earlier reset went unanswered)
    REPROVE = "reprove"  # AKS could not sign in with the new secret (replication): prove again
    BUSY = "busy"  # 409 OperationNotAllowed: not executed; look again after the poll interval
    THROTTLED = "throttled"  # 429: not executed; try again after the re-queue delay
    UNANSWERED = "unanswered"  # 5xx, 408, connection lost: it may have been executed; never clean up


@dataclass(frozen=True)
class _Rule:
    error: type[Exception]
    applies: Callable[[Exception], bool]
    answer: ResetAnswer


def _status(exc: Exception) -> int | None:
    return exc.status if isinstance(exc, AksError) else None


# First match wins. Sources: docs/emulator.md (ARM error semantics of resetServicePrincipalProfile).
RESET_ERRORS: tuple[_Rule, ...] = (
    _Rule(AuthorizationFailed, lambda _: True, ResetAnswer.REFUSED),
    _Rule(CredentialsRejected, lambda _: True, ResetAnswer.REPROVE),
    _Rule(ClusterBusy, lambda _: True, ResetAnswer.BUSY),
    _Rule(AksError, lambda e: _status(e) == 429, ResetAnswer.THROTTLED),
    _Rule(AksError, lambda e: (s := _status(e)) is not None and 400 <= s < 500 and s != 408, ResetAnswer.REFUSED),
    _Rule(AksError, lambda _: True, ResetAnswer.UNANSWERED),  # 5xx, 408, or no HTTP status
    _Rule(AzureError, lambda _: True, ResetAnswer.UNANSWERED),  # the SDK's transport errors (connection lost)
)


def reset_answer(exc: Exception) -> ResetAnswer | None:
    """The meaning of an error from the reset request (None: not an Azure error, let it raise)."""
    return next((rule.answer for rule in RESET_ERRORS if isinstance(exc, rule.error) and rule.applies(exc)), None)


async def window_gate(run: Delivery, cluster: ClusterInfo) -> Result | None:
    """None when the apply may run now; else a wait for the window (or a failure when none will open)."""
    now = run.now()
    configured = await run.deps.aks.maintenance_windows(cluster.id)
    governing = win.effective_windows(configured, run.settings.maintenance_window)
    if win.is_open(governing, now):
        return None
    if is_urgent(run.row, now, run.settings.urgent_days):
        log_event(
            log,
            logging.ERROR,
            "rotation.urgent",
            "applying outside the maintenance window: the credential expires soon",
            alert=True,
            rotation_id=run.rid,
            cluster_id=run.row.cluster_id,
            expires=run.row.observed_expiry,
        )
        await run.audit("apply", "urgent", f"outside the window ({win.describe(governing)}): applying now")
        return None
    opens = win.next_open(governing, now)
    latest = urgent_point(run.row, run.settings.urgent_days)
    if opens is None and latest is None:
        raise Failure(f"apply: the maintenance window ({win.describe(governing)}) never opens")
    # The wait never outlives the secret: at expiry - URGENT_DAYS the rotation proceeds as urgent.
    wake = min(t for t in (opens, latest) if t is not None)
    delay = max(1, int((wake - now).total_seconds()) + 1)
    detail = f"outside the maintenance window ({win.describe(governing)}); "
    detail += f"opens {opens:%Y-%m-%d %H:%M} UTC" if opens is not None and opens <= wake else "never opens in time"
    if wake is latest and (opens is None or latest < opens):
        detail += f"; applying as urgent at {latest:%Y-%m-%d %H:%M} UTC (expiry - URGENT_DAYS)"
    used = await run.requeue(delay, state=RotationState.WAITING, detail=detail)
    return Wait(used, detail, RotationState.WAITING)


async def get_cluster(run: Delivery) -> ClusterInfo:
    """The cluster, or a failure that may clean up (a deleted cluster holds no secret)."""
    try:
        return await run.deps.aks.get_cluster(run.row.cluster_id)
    except AuthorizationFailed as exc:
        raise Failure(f"missing ARM permission '{exc.action}'") from None
    except ClusterNotFound:
        raise Failure(f"cluster {run.row.cluster_id} no longer exists", cluster_gone=True) from None


async def step_apply(run: Delivery) -> Result:
    deps, row = run.deps, run.row
    uncertain = row.reset_unanswered  # an earlier reset of this rotation may have reached AKS unseen
    certificates = row.kind is CredentialKind.CLUSTER_CERTIFICATE
    cluster = await get_cluster(run)
    if certificates:
        if not certificates_opted_in(run.settings, cluster):
            raise Failure("certificate rotation: the cluster is not opted in", cleanup=False)
    elif (cluster.sp_client_id or "").lower() != (row.app_id or "").lower():
        if cluster.sp_client_id is None and not cluster.kubelet_on_sp and not row.cluster_may_hold_new:
            return await _overtaken(run)
        raise Failure(f"apply: the cluster no longer uses application {row.app_id}")
    if opted_out(run.settings, cluster) and not row.cluster_may_hold_new:
        raise Failure(f"the cluster was opted out ({run.settings.opt_out_tag}) before the reset: nothing was applied")
    if cluster.stopped:
        return await blocked(run, stopped_reason(cluster, row.observed_expiry), int(STOPPED_RECHECK.total_seconds()))
    if cluster.provisioning_state.lower() in BUSY_STATES:
        return await waited_long(run, f"cluster is {cluster.provisioning_state}", run.settings.lro_poll_seconds)
    if row.waiting_since is not None:
        await run.save(waiting_since=None, wait_alerted=False)
    gate = await window_gate(run, cluster)
    if gate is not None:
        return gate
    secret = ""
    if not certificates:
        assert row.vault_version is not None
        secret = await deps.vault.value(run.secret_name, row.vault_version)
    tries = row.apply_tries + 1
    if tries > MAX_UNCERTAIN_APPLIES:
        if row.vault_version is not None:
            await deps.vault.set_state(run.secret_name, row.vault_version, VersionState.UNCERTAIN)
        raise Failure(
            f"apply: AKS did not answer {MAX_UNCERTAIN_APPLIES} resets; the cluster may hold the new secret: check "
            "it (nothing was removed)",
            cleanup=False,
        )
    # From here on the cluster may receive the new secret: the poison handler must not clean up.
    await run.save(reset_unanswered=True, apply_tries=tries)
    await run.lease.ensure_held()
    try:
        if certificates:
            await run.audit("apply", "warning", CERT_DOWNTIME_WARNING)
            accepted = await deps.aks.begin_rotate_certificates(row.cluster_id)
        else:
            accepted = await deps.aks.begin_reset_service_principal(row.cluster_id, row.app_id or "", secret)
    except Exception as exc:
        answer = reset_answer(exc)
        if answer is None:
            raise
        return await _answered(run, exc, answer, uncertain=uncertain, certificates=certificates)
    await run.save(
        phase=Phase.VERIFY,
        operation_url=accepted.operation_url,
        reset_accepted=True,
        reset_unanswered=False,
        apply_tries=0,
        waiting_since=run.now(),
        wait_alerted=False,
    )
    what = "rotateClusterCertificates" if certificates else "resetServicePrincipalProfile"
    if accepted.operation_url is None:
        await run.audit("apply", "done", f"{what} answered 200: complete at once")
        return Next()
    await run.audit("apply", "started", f"{what} accepted; polling its operation")
    delay = run.settings.lro_poll_seconds
    await run.requeue(delay, state=RotationState.RUNNING, detail="waiting for the AKS operation")
    return Wait(delay, "waiting for the AKS operation")


async def _overtaken(run: Delivery) -> Result:
    """The cluster moved to managed identity (a migration finished) before the reset: no part of it uses a secret
    any more, so the rotation has nothing to do. Its unused new password goes (nothing can hold it) and it ends
    quietly, skipped, with the reason in the audit: the credential problem ended, no one needs to act."""
    if (waiting := await remove_created(run)) is not None:
        return waiting
    await run.save(state=RotationState.SUCCEEDED, phase=Phase.SKIPPED, not_before=None)
    detail = f"the cluster moved to managed identity before the reset; application {run.row.app_id} not applied"
    await run.audit("apply", "obsolete", detail)
    log_event(log, logging.INFO, "rotation.obsolete", detail, rotation_id=run.rid, cluster_id=run.row.cluster_id)
    return Done("obsolete: the cluster is on managed identity")


async def _answered(
    run: Delivery, exc: Exception, answer: ResetAnswer, *, uncertain: bool, certificates: bool
) -> Result:
    """Act on a reset request that raised (see RESET_ERRORS)."""
    # Certainly not executed: go back to the mark of an earlier unanswered reset, if any (this try did not count).
    not_sent = {"reset_unanswered": uncertain, "apply_tries": run.row.apply_tries - 1 if uncertain else 0}
    if answer is ResetAnswer.REFUSED:
        await run.save(**not_sent)  # certainly not executed: this try leaves no trace on the cluster
        if isinstance(exc, AuthorizationFailed):
            raise Failure(f"missing ARM permission '{exc.action}'", cleanup=not certificates) from None
        raise Failure(f"apply refused: {exc}", cleanup=not certificates) from None
    if answer is ResetAnswer.REPROVE:
        if uncertain:
            # An earlier reset may have been applied: stay unanswered (this try counts towards the limit).
            delay = run.settings.requeue_delay_seconds
            detail = "AKS refused the new secret after an unanswered reset"
            await run.requeue(delay, state=RotationState.RUNNING, detail=detail)
            return Wait(delay, "AKS refused the new secret")
        # AKS could not sign in with the new secret yet: the cluster kept the old one. Prove again.
        await run.save(phase=Phase.PROVE, proof_count=0, reset_unanswered=False, apply_tries=0)
        await run.audit("apply", "rejected", "AKS refused the new secret (not yet replicated); proving again")
        delay = run.settings.requeue_delay_seconds
        await run.requeue(delay, state=RotationState.RUNNING, detail="AKS refused the new secret")
        return Wait(delay, "AKS refused the new secret")
    if answer is ResetAnswer.BUSY:
        # Not executed (409). A reset of ours may be the one running: the next look sees the cluster busy.
        await run.save(**not_sent)
        return await waited_long(run, "another operation is in progress on the cluster", run.settings.lro_poll_seconds)
    if answer is ResetAnswer.THROTTLED:
        delay = run.settings.requeue_delay_seconds
        await run.save(**not_sent)
        await run.requeue(delay, state=RotationState.RUNNING, detail="ARM throttled the reset")
        return Wait(delay, "throttled")
    # UNANSWERED: the reset may or may not have reached AKS. Never clean up; look again later: a running reset
    # shows as a busy cluster, a lost one is sent again (the same secret: idempotent).
    what = f"{type(exc).__name__} {exc.status}" if isinstance(exc, AksError) else type(exc).__name__
    await run.audit("apply", "uncertain", f"no answer from AKS ({what}); will look again")
    delay = run.settings.lro_poll_seconds
    await run.requeue(delay, state=RotationState.RUNNING, detail="reset outcome unknown")
    return Wait(delay, "reset outcome unknown")


async def step_verify(run: Delivery) -> Result:
    deps, row = run.deps, run.row
    certificates = row.kind is CredentialKind.CLUSTER_CERTIFICATE
    if row.operation_url:
        result = await deps.aks.operation_status(row.operation_url)
        if result.status in ("Failed", "Canceled"):
            return await _reset_failed(run, result.status, result.error or "no detail", result.credentials_rejected)
        if result.status != "Succeeded":
            return await waited_long(run, "the AKS operation is in progress", run.settings.lro_poll_seconds, ours=True)
    cluster = await get_cluster(run)
    if cluster.provisioning_state != "Succeeded":
        detail = f"cluster is {cluster.provisioning_state}"
        return await waited_long(run, detail, run.settings.lro_poll_seconds, ours=True)
    if not certificates and (cluster.sp_client_id or "").lower() != (row.app_id or "").lower():
        # The reset succeeded but the cluster reports another client: do not touch any credential.
        raise Failure(
            f"verify: the cluster reports client {cluster.sp_client_id}, expected {row.app_id}", cleanup=False
        )
    await run.audit("verify", "ok", "operation Succeeded; cluster Succeeded with the same clientId")
    await run.save(waiting_since=None, wait_alerted=False)
    if certificates:
        await run.save(state=RotationState.SUCCEEDED, phase=Phase.DONE, not_before=None)
        await run.audit("done", "succeeded", "cluster certificates rotated")
        return Done("certificates rotated")
    await run.save(phase=Phase.FINISH)
    return Next()


async def _reset_failed(run: Delivery, status: str, error: str, credentials_rejected: bool) -> Result:
    """An accepted reset ended Failed/Canceled. It may have moved some node pools to the new secret already, and
    AKS may retry it: keep both passwords, mark the Key Vault version uncertain, alert, send it again (bounded)."""
    deps, row = run.deps, run.row
    detail = f"verify: the AKS operation ended {status}: {error}"
    if row.kind is CredentialKind.CLUSTER_CERTIFICATE:
        raise Failure(detail, cleanup=False)
    await get_cluster(run)  # a deleted cluster ends the rotation (its new password is removed)
    if credentials_rejected:
        # AKS could not sign in with the new secret (not yet replicated): it changed nothing. Prove again.
        await run.save(phase=Phase.PROVE, proof_count=0, operation_url=None, waiting_since=None, wait_alerted=False)
        await run.audit("verify", "rejected", f"{detail}; proving the new secret again")
        delay = run.settings.requeue_delay_seconds
        await run.requeue(delay, state=RotationState.RUNNING, detail="AKS refused the new secret")
        return Wait(delay, "AKS refused the new secret")
    assert row.vault_version is not None
    await deps.vault.set_state(run.secret_name, row.vault_version, VersionState.UNCERTAIN)
    if row.resends >= MAX_RESENDS:
        raise Failure(
            f"{detail}; after {row.resends} more resets the cluster may hold either secret: check it (nothing was "
            "removed; Key Vault version tagged state=uncertain)",
            cleanup=False,
        )
    alert(
        log,
        EVENT_ROTATION_BLOCKED,
        f"the reset ended {status} ({error}); some node pools may already use the new secret: both secrets stay "
        f"valid, the Key Vault version is marked uncertain, and the reset is sent again ({row.resends + 1}/"
        f"{MAX_RESENDS}) once the cluster settles",
        rotation_id=run.rid,
        cluster_id=row.cluster_id,
        expires=row.observed_expiry,
    )
    await run.save(
        phase=Phase.APPLY,
        operation_url=None,
        resends=row.resends + 1,
        reset_unanswered=False,
        apply_tries=0,
        waiting_since=None,
        wait_alerted=False,
    )
    await run.audit("verify", "failed_kept", f"{detail}; both secrets kept, sending the reset again")
    delay = run.settings.lro_poll_seconds
    await run.requeue(delay, state=RotationState.RUNNING, detail="sending the reset again")
    return Wait(delay, "sending the reset again")
