"""Waits only a person (or time) ends: a stopped cluster, someone else's operation, an operation of ours that
lasts. Each is looked at again later and alerts (`rotation.blocked`) once it lasts, and on every check once the
credential is urgent, so no wait is silent when it starts to matter."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from shared.aks import ClusterInfo
from shared.logs import EVENT_ROTATION_BLOCKED, alert
from shared.record import RotationState
from shared.rotation.delivery import Delivery
from shared.rotation.plan import is_urgent
from shared.rotation.results import Wait

log = logging.getLogger("shared.rotation")

STOPPED_RECHECK = timedelta(hours=6)  # a stopped cluster is looked at again (and alerted once urgent) this often
WAIT_ALERT_AFTER = timedelta(hours=3)  # a busy cluster or a running operation alerts once it lasts this long


async def blocked(run: Delivery, reason: str, delay: int) -> Wait:
    """Wait on something only a person (or time) can change; alert when it starts to matter: once the wait is
    long (`alert_now`), and on every check once the credential is urgent."""
    now = run.now()
    since = run.row.waiting_since or now
    urgent = is_urgent(run.row, now, run.settings.urgent_days)
    expiry = run.row.observed_expiry
    if urgent or not run.row.wait_alerted:
        when = f"; the credential expires {expiry:%Y-%m-%d %H:%M} UTC" if expiry else ""
        alert(
            log,
            EVENT_ROTATION_BLOCKED,
            f"{reason}{when}",
            rotation_id=run.rid,
            cluster_id=run.row.cluster_id,
            expires=expiry,
            since=since,
        )
    await run.save(waiting_since=since, wait_alerted=True)
    await run.requeue(delay, state=RotationState.WAITING, detail=reason)
    return Wait(delay, reason, RotationState.WAITING)


async def waited_long(run: Delivery, reason: str, delay: int, *, ours: bool = False) -> Wait:
    """A wait that normally ends by itself: alert once it lasts, and — for someone else's operation, which may
    hold the cluster past the expiry — on every check once the credential is urgent. Our own operation alerts only
    when it lasts (it is the rotation itself)."""
    now = run.now()
    since = run.row.waiting_since or now
    urgent = not ours and is_urgent(run.row, now, run.settings.urgent_days)
    if now - since >= WAIT_ALERT_AFTER or urgent:
        return await blocked(run, f"{reason} for {(now - since).total_seconds() / 3600:.1f} h", delay)
    if run.row.waiting_since is None:
        await run.save(waiting_since=since)
    await run.requeue(delay, state=RotationState.RUNNING, detail=reason)
    return Wait(delay, reason)


def stopped_reason(cluster: ClusterInfo, expiry: datetime | None) -> str:
    when = f"{expiry:%Y-%m-%d %H:%M} UTC" if expiry else "its secret expires"
    return f"cluster {cluster.name} is stopped: start it before {when}, or the rotation cannot apply the new secret"
