"""The delivery machine (queue trigger): one delivery runs the rotation's next phase(s) under the cluster lease.

    submit ─► start/create ─► store ─► prove ─► apply ─► verify ─► finish ─► retire ─► done
                         └──────── a definitive failure where the phase table allows it ─► cleanup ─► failed

Every phase is idempotent and its outcome is saved (ETag-guarded row) before the next one starts; the message
carries only ids, the step and an attempt number, never a secret. A phase that has to wait re-queues its own
message with a visibility delay instead of holding the invocation open. What each phase means: `phases.PHASES`;
which function handles it: `HANDLERS` below (a migration, kind `migration`: `shared.migration.queued`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from azure.core.exceptions import AzureError

from shared import clock, edge, telemetry
from shared.azure import ServiceError
from shared.locks import ClusterLease, LockBusy
from shared.logs import EVENT_ROTATION_STALLED, alert, log_event, redact
from shared.messages import CredentialKind, InvalidInput, RotationMessage, check_allowed, parse_message
from shared.record import Phase, RotationRecord, RotationState
from shared.rotation.apply import step_apply, step_verify
from shared.rotation.create import step_create, step_prove
from shared.rotation.delivery import Delivery
from shared.rotation.deps import Deps, deps_for
from shared.rotation.finish import fail, step_cleanup, step_finish, step_retire
from shared.rotation.phases import CERTIFICATE_SKIPS, poison_may_clean_up, waits_out_trouble
from shared.rotation.results import Done, Failure, Result, Wait
from shared.settings import Settings
from shared.store import StaleRecord

log = logging.getLogger("shared.rotation")

MAX_DEQUEUE_COUNT = 5  # host.json extensions.queues.maxDequeueCount
BUSY_DELAY_CAP_SECONDS = 15
TROUBLE_MAX_DELAY_SECONDS = 3600  # backoff cap while transient trouble is waited out (finish, retire)
TROUBLE_ALERT_EVERY = 6  # alert on every sixth try in a row: the rotation is alive but not moving
EARLY_TOLERANCE = timedelta(seconds=2)

Handler = Callable[[Delivery], Awaitable[Result]]
HANDLERS: dict[Phase, Handler] = {
    Phase.START: step_create,
    Phase.CREATE: step_create,
    Phase.STORE: step_create,  # a row left at "store" has no secret recorded: create reconciles
    Phase.PROVE: step_prove,
    Phase.APPLY: step_apply,
    Phase.VERIFY: step_verify,
    Phase.FINISH: step_finish,
    Phase.RETIRE: step_retire,
    Phase.CLEANUP: step_cleanup,
}

Action = Literal["advanced", "waiting", "succeeded", "failed", "duplicate", "stale", "busy", "rejected"]


@dataclass(frozen=True)
class StepOutcome:
    action: Action
    rotation_id: str | None = None
    state: str | None = None
    step: str | None = None
    delay_seconds: int | None = None
    detail: str = ""


def _outcome(action: Action, row: RotationRecord, delay: int | None = None, detail: str = "") -> StepOutcome:
    return StepOutcome(action, row.rotation_id, row.state, row.phase, delay, detail)


async def advance(run: Delivery) -> StepOutcome:
    """Run phases until one waits or the rotation ends."""
    waited: Wait | None = None
    while not run.row.terminal:
        phase = run.row.phase
        if run.row.kind is CredentialKind.CLUSTER_CERTIFICATE and phase in CERTIFICATE_SKIPS:
            await run.save(phase=Phase.APPLY, state=RotationState.RUNNING)
            continue
        handler = HANDLERS.get(phase)
        if run.row.kind is CredentialKind.MIGRATION:
            from shared.migration.queued import step_migrate  # late: migration imports the rotation's rules

            handler = step_migrate
        if handler is None:
            raise RuntimeError(f"rotation {run.rid} is at phase {phase!r}, which has no handler")
        step = handler.__name__.removeprefix("step_")
        started = time.perf_counter()
        with telemetry.span(f"rotation.{step}", rotation_id=run.rid, cluster_id=run.row.cluster_id, kind=run.row.kind):
            try:
                result = await handler(run)
            except Failure as failure:
                result = await fail(run, failure)
            except Exception as exc:
                if not (waits_out_trouble(run.row) and transient(exc)):
                    raise
                result = await wait_out(run, exc)
        telemetry.step_duration(step, time.perf_counter() - started)
        if isinstance(result, Wait):
            waited = result
            break
        if isinstance(result, Done):
            break
    row = run.row
    if waited is not None:
        action: Action = "waiting" if waited.state is RotationState.WAITING else "advanced"
        return _outcome(action, row, waited.delay, waited.detail)
    action = "succeeded" if row.state is RotationState.SUCCEEDED else "failed" if row.terminal else "advanced"
    if row.terminal:
        telemetry.rotation_outcome(row.state, kind=row.kind)
    return _outcome(action, row, None, row.failure_reason or "")


def transient(exc: Exception) -> bool:
    """Throttling, a server error, a timeout or a lost connection: the same call may well succeed later."""
    if isinstance(exc, ServiceError):
        return exc.status is None or exc.status in (408, 429) or exc.status >= 500
    return isinstance(exc, AzureError)  # the SDKs' transport errors


async def wait_out(run: Delivery, exc: Exception) -> Wait:
    """Transient trouble after the cluster took the new secret: try the phase again later (doubling delays), never
    fail it; alert now and then so a rotation that does not move is seen."""
    count = run.row.trouble_count + 1
    delay = min(run.settings.requeue_delay_seconds * 2 ** min(count - 1, 20), TROUBLE_MAX_DELAY_SECONDS)
    detail = f"{run.row.phase}: transient trouble ({redact(str(exc))[:200]}); try {count}, again in {delay} s"
    await run.save(trouble_count=count)
    await run.requeue(delay, state=RotationState.RUNNING, detail=detail)
    await run.audit(str(run.row.phase), "waiting", detail)
    if count % TROUBLE_ALERT_EVERY == 0:
        cluster_id = run.row.cluster_id
        alert(log, EVENT_ROTATION_STALLED, detail + " (nothing was undone)", rotation_id=run.rid, cluster_id=cluster_id)
    return Wait(delay, detail)


def _submitted(message: RotationMessage, row: RotationRecord | None) -> RotationRecord:
    """The row of a message `submit` could have sent; `InvalidInput` for any other message. Only `submit` writes a
    rotation's row, before its first message; the row, not the message, says what the rotation is."""
    if row is None:
        raise InvalidInput("rotation_id: no such rotation was submitted", "rotation_id")
    if (
        message.cluster_key != row.cluster_id.lower()
        or message.kind is not row.kind
        or (message.app_id or "") != (row.app_id or "").lower()
    ):
        raise InvalidInput("the message names another cluster, kind or application than its rotation")
    return row


async def _reject(deps: Deps, body: str, exc: InvalidInput, source: str, *, park: bool = True) -> StepOutcome:
    """Invalid queue input: recorded, logged (shared.edge) and parked on the poison queue as the host would, unless
    `park` is off (a well-formed message nobody submitted: the record is all there is to keep)."""
    if park:
        await deps.queues.poison(body.encode("utf-8", errors="replace").decode("utf-8"))
    correlation_id = await edge.reject(deps.store, source, exc, body)
    return StepOutcome("rejected", detail=f"{redact(exc.reason)} (correlation id {correlation_id})")


async def handle_message(
    settings: Settings, body: str, *, dequeue_count: int = 1, deps: Deps | None = None
) -> StepOutcome:
    """The queue trigger: run the rotation's next step(s) under the cluster lock; re-queue itself to wait.

    Raises on transient trouble (the host redelivers the message; after 5 deliveries it goes to poison).
    """
    async with deps_for(settings, deps) as d:
        try:
            message = parse_message(body)
            check_allowed(settings, message.cluster_id)
        except InvalidInput as exc:
            return await _reject(d, body, exc, "queue")
        try:  # before the lock: a message nobody submitted must not hold up the cluster's real rotations
            _submitted(message, await d.store.get(message.rotation_id))
        except InvalidInput as exc:
            return await _reject(d, body, exc, "queue", park=False)
        try:
            async with d.locks.hold(message.cluster_id) as lease:
                return await _deliver(d, message, lease, dequeue_count)
        except LockBusy:
            delay = min(settings.requeue_delay_seconds, BUSY_DELAY_CAP_SECONDS)
            await d.queues.send(message.to_json(), delay_seconds=delay)
            return StepOutcome("busy", message.rotation_id, delay_seconds=delay, detail="cluster locked by another run")


async def _deliver(deps: Deps, message: RotationMessage, lease: ClusterLease, dequeue_count: int) -> StepOutcome:
    """Exactly one live message: a lower attempt than the row expects is stale; a higher one is adopted (the
    sender crashed between sending the next message and saving the row). A message `submit` did not send is
    rejected; one that arrives before the row's `not_before` waits for it (a copy can wake a rotation, never
    hurry it)."""
    for _ in range(3):
        try:
            row = _submitted(message, await deps.store.get(message.rotation_id))
        except InvalidInput as exc:
            return await _reject(deps, message.to_json(), exc, "queue", park=False)
        if row.terminal:
            return _outcome("duplicate", row, detail="already finished")
        if message.attempt < row.attempts:
            return _outcome("stale", row, detail="a newer message is live")
        run = Delivery(deps, message, row, lease)
        try:
            if message.attempt > row.attempts:
                await run.save(attempts=message.attempt)
            now = clock.now()
            due = max((t for t in (message.not_before, run.row.not_before) if t is not None), default=None)
            if due is not None and due > now + EARLY_TOLERANCE:
                # Delivered early (a wait longer than the queue's 7-day visibility cap, or a copy that does not
                # know the wait): wait the rest.
                delay = int((due - now).total_seconds()) + 1
                keep = RotationState.WAITING if run.row.state is RotationState.WAITING else RotationState.RUNNING
                await run.requeue(delay, state=keep, detail="not yet due")
                return _outcome("waiting", run.row, delay, "not yet due")
            if run.row.state is RotationState.PENDING:
                await run.save(state=RotationState.RUNNING)
            log_event(
                log,
                logging.INFO,
                "rotation.delivery",
                "delivery",
                rotation_id=row.rotation_id,
                step=run.row.phase,
                attempt=message.attempt,
                dequeue_count=dequeue_count,
            )
            return await advance(run)
        except StaleRecord:
            continue  # someone else wrote the row: re-read and decide again
    raise StaleRecord(message.rotation_id)


async def handle_poison(settings: Settings, body: str, *, deps: Deps | None = None) -> None:
    """Poison-queue trigger: record the message with the reason and alert. Cleans up only where the phase table
    says a poisoned message may (the cluster cannot hold the new secret); resumes finish and retire (never
    fails them: the cluster holds the new secret). A message nobody submitted is rejected; a stale copy (a newer
    message is live) is ignored."""
    async with deps_for(settings, deps) as d:
        try:
            message = parse_message(body)
        except InvalidInput as exc:
            correlation_id = await edge.reject(d.store, "poison", exc, body)
            alert(log, "rotation.poison", "an invalid message reached the poison queue", correlation_id=correlation_id)
            return
        try:
            row = _submitted(message, await d.store.get(message.rotation_id))
        except InvalidInput as exc:
            await edge.reject(d.store, "poison", exc, body)
            return
        if message.attempt < row.attempts and not row.terminal:
            await d.store.audit(row.rotation_id, "poison", "ignored", "a poisoned stale copy: a newer message is live")
            return
        phase = row.phase
        if not row.terminal and waits_out_trouble(row):
            await _resume(d, message, row)
            return
        reason = f"{phase}: gave up after {MAX_DEQUEUE_COUNT} failed deliveries (poison queue)"
        alert(log, "rotation.poison", reason, rotation_id=message.rotation_id, cluster_id=message.cluster_id)
        if row.terminal:
            await d.store.audit(message.rotation_id, "poison", "ignored", "a poisoned copy of a finished rotation")
            return
        await d.store.audit(message.rotation_id, "poison", "poisoned", reason)
        safe = poison_may_clean_up(row)
        try:
            async with d.locks.hold(message.cluster_id) as lease:
                run = Delivery(d, message, row, lease)
                if safe:
                    await fail(run, Failure(reason, cleanup=True))
                else:
                    detail = reason + "; the cluster may hold the new secret: check it (nothing was removed)"
                    await fail(run, Failure(detail, cleanup=False))
        except (LockBusy, StaleRecord):
            pass  # another run is active on this rotation; the alert and audit row stand
        except Exception as exc:  # the poison handler must not itself fail into a loop
            log_event(
                log,
                logging.ERROR,
                "rotation.poison_cleanup_failed",
                f"cleanup failed: {type(exc).__name__}",
                rotation_id=message.rotation_id,
            )


async def _resume(deps: Deps, message: RotationMessage, row: RotationRecord) -> None:
    """A poisoned finish/retire message: send it again after the longest backoff (a stale copy is dropped on
    delivery as usual), record and alert; nothing is undone."""
    delay = TROUBLE_MAX_DELAY_SECONDS
    detail = f"{row.phase}: {MAX_DEQUEUE_COUNT} deliveries failed; resuming in {delay} s (nothing was undone)"
    alert(log, EVENT_ROTATION_STALLED, detail, rotation_id=row.rotation_id, cluster_id=row.cluster_id)
    await deps.queues.send(message.to_json(), delay_seconds=delay)
    await deps.store.audit(row.rotation_id, "poison", "resumed", detail)
