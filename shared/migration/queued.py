"""The worker's side of an unattended migration (`opt_in`): each delivery of a migration message runs one
`Executor.advance` under the cluster lease (so it never overlaps a delivery of the cluster's rotation) and re-queues
itself with the delay the step asked for (the window, grant propagation, an LRO): no invocation sleeps. The
executor audits every step under the migration's own id and alerts on failure; this row ends with it."""

from __future__ import annotations

import math

from shared.aks import ClusterNotFound
from shared.migration.arm import MigrationArm
from shared.migration.collect import Sources
from shared.migration.execute import Executor
from shared.migration.execute import Phase as Step
from shared.migration.opt_in import MIGRATE_TAG, opted_in
from shared.record import Phase, RotationState
from shared.rotation.delivery import Delivery
from shared.rotation.results import Done, Result, Wait

WAITS = frozenset({Step.WINDOW, Step.PROPAGATION})  # waiting on time, not on an operation


async def _end(run: Delivery, state: RotationState, phase: Phase, detail: str) -> Result:
    await run.save(
        state=state, phase=phase, not_before=None, failure_reason=detail if state is RotationState.FAILED else None
    )
    await run.audit("migrate", str(state), detail)
    return Done(detail)


async def step_migrate(run: Delivery) -> Result:
    deps, settings = run.deps, run.settings
    try:
        cluster = await deps.aks.get_cluster(run.row.cluster_id)
    except ClusterNotFound:
        return await _end(run, RotationState.SUCCEEDED, Phase.SKIPPED, "the cluster is gone")
    if cluster.sp_client_id and not opted_in(cluster):
        detail = f"the {MIGRATE_TAG} tag was removed: stopped (the rotation engine keeps rotating the SP secret)"
        return await _end(run, RotationState.SUCCEEDED, Phase.SKIPPED, detail)
    await run.lease.ensure_held()
    async with MigrationArm(settings, deps.credential) as arm:
        executor = Executor(
            Sources(settings, deps.credential, deps.aks, arm, deps.graph),
            deps.store,
            poll_seconds=settings.lro_poll_seconds,
            requeue_seconds=settings.requeue_delay_seconds,
        )
        step = await executor.advance(run.row.cluster_id, run.now())
    if step.retry_after is None:
        if step.phase is Step.FAILED:  # the executor alerted (once per reason); a person acts
            return await _end(run, RotationState.FAILED, run.row.phase, step.detail)
        return await _end(run, RotationState.SUCCEEDED, Phase.DONE, step.detail)
    state = RotationState.WAITING if step.phase in WAITS else RotationState.RUNNING
    delay = await run.requeue(max(1, math.ceil(step.retry_after)), state=state, detail=f"{step.phase}: {step.detail}")
    return Wait(delay, step.detail, state)
