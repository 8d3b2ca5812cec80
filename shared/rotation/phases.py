"""What each phase of a rotation means: the one table the delivery machine, the poison handler and the views read.

Two clean-up columns, different on purpose:
* `failure_may_clean_up` — a step *observed* a definitive failure here: removing the new password is safe only
  while no part of the cluster can hold it. A reset is a node image upgrade: an operation that ended Failed or
  Canceled may already have given the new secret to some node pools, and AKS may retry it. So from the first
  accepted (or unanswered) reset on, nothing is removed, in any phase (`RotationRecord.cluster_may_hold_new`).
* `poison_may_clean_up` — the message failed five times and *nothing was observed*: clean up only where no reset
  was ever accepted (start to apply, and never after an unanswered reset), because a poisoned verify does not know
  whether the cluster switched.
A third column, `waits_out_trouble`: once the cluster holds the new secret (finish, retire) nothing may undo the
rotation, so transient trouble there (throttling, 5xx, a lost connection) is waited out with delayed messages and a
poisoned message resumes the phase instead of failing it.
The handler of each phase is in `shared.rotation.machine.HANDLERS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.messages import CredentialKind, Step
from shared.record import Phase, RotationRecord


@dataclass(frozen=True)
class PhaseSpec:
    message_step: Step  # the `step` a re-queued message carries (informational: the row decides)
    failure_may_clean_up: bool
    poison_may_clean_up: bool
    meaning: str
    waits_out_trouble: bool = False


PHASES: dict[Phase, PhaseSpec] = {
    Phase.START: PhaseSpec("create", True, True, "queued; nothing created yet (create checks it is still due)"),
    Phase.CREATE: PhaseSpec("create", True, True, "adding the new password; a password may exist only in Graph"),
    Phase.STORE: PhaseSpec("store", True, True, "no stored secret recorded: create reconciles what is there"),
    Phase.PROVE: PhaseSpec("prove", True, True, "stored in Key Vault; proving Entra accepts it; cluster unchanged"),
    Phase.APPLY: PhaseSpec("apply", True, True, "waiting for the window or sending the reset"),
    Phase.VERIFY: PhaseSpec("verify", False, False, "a reset was accepted; polling its operation"),
    Phase.FINISH: PhaseSpec("finish", False, False, "the cluster holds the new secret: promote it in Key Vault", True),
    Phase.RETIRE: PhaseSpec("retire", False, False, "grace period, then remove old passwords nobody uses", True),
    Phase.CLEANUP: PhaseSpec("retire", True, True, "removing what a failed rotation created (idempotent)"),
    Phase.DONE: PhaseSpec("retire", False, False, "succeeded"),
    Phase.SKIPPED: PhaseSpec("create", False, False, "succeeded without change: the credential was not due"),
}

# A certificate rotation has nothing to create, store or prove.
CERTIFICATE_SKIPS = frozenset({Phase.START, Phase.CREATE, Phase.STORE, Phase.PROVE})


def failure_may_clean_up(row: RotationRecord, *, cluster_gone: bool = False) -> bool:
    """A deleted cluster holds nothing: its rotation's new password may go whatever happened before finish."""
    if row.kind is not CredentialKind.SP_SECRET:
        return False
    if cluster_gone:
        return row.phase not in (Phase.FINISH, Phase.RETIRE)
    return PHASES[row.phase].failure_may_clean_up and not row.cluster_may_hold_new


def waits_out_trouble(row: RotationRecord) -> bool:
    return PHASES[row.phase].waits_out_trouble


def poison_may_clean_up(row: RotationRecord) -> bool:
    return PHASES[row.phase].poison_may_clean_up and not row.cluster_may_hold_new
