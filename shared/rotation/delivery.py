"""One delivery of one rotation: the row as last saved, the message, the held lease, and the re-queue rule.

Exactly-one-live-message protocol: `row.attempts` is the attempt number of the message the row expects next.
The next message is always sent *before* the row is saved, so a crash can duplicate a message (the duplicate is
then stale) but never lose the rotation.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from shared import clock
from shared.locks import ClusterLease
from shared.logs import log_event, redact
from shared.messages import RotationMessage
from shared.queues import MAX_DELAY_SECONDS
from shared.record import RotationRecord, RotationState
from shared.rotation.deps import Deps
from shared.rotation.phases import PHASES
from shared.vault import secret_name_for

log = logging.getLogger("shared.rotation")


class Delivery:
    def __init__(self, deps: Deps, message: RotationMessage, row: RotationRecord, lease: ClusterLease) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.message = message
        self.row = row
        self.lease = lease
        self.secret_name = secret_name_for(message.cluster_id)

    @property
    def rid(self) -> str:
        return self.row.rotation_id

    def now(self) -> datetime:
        return clock.now()

    async def save(self, **updates: Any) -> RotationRecord:
        self.row = await self.deps.store.save(self.row.model_copy(update=updates))
        return self.row

    async def audit(self, step: str, outcome: str, detail: str, **fields: Any) -> None:
        await self.deps.store.audit(self.rid, step, outcome, redact(detail), **fields)
        log_event(
            log,
            logging.INFO,
            "rotation.step",
            f"{step}: {outcome}: {detail}",
            rotation_id=self.rid,
            cluster_id=self.row.cluster_id,
            step=step,
            outcome=outcome,
        )

    async def requeue(self, delay: int, *, state: RotationState, detail: str) -> int:
        """Send the next message (before saving the row: see the module docstring); returns the delay used."""
        delay = max(0, min(int(delay), MAX_DELAY_SECONDS))
        attempt = self.row.attempts + 1
        not_before = self.now() + timedelta(seconds=delay)
        step = PHASES[self.row.phase].message_step
        message = self.message.requeue(step, not_before=not_before if delay else None, attempt=attempt)
        await self.deps.queues.send(message.to_json(), delay_seconds=delay)
        await self.save(attempts=attempt, state=state, not_before=not_before if delay else None)
        if state is RotationState.WAITING:
            await self.audit(str(self.row.phase), "waiting", detail, not_before=not_before)
        return delay
