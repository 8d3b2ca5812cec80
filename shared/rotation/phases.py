"""What each phase of a rotation means: the one table the delivery machine, the poison handler and the views read.

Two clean-up columns, different on purpose:
* `failure_may_clean_up` — a step *observed* a definitive failure here: removing the new password is safe as long
  as the cluster cannot hold it. After AKS accepted a reset (verify) an operation that ended Failed leaves the
  cluster on its old secret, so a failure observed in verify may still clean up (unless an earlier reset went
  unanswered: the step itself then forbids it).
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
    Phase.VERIFY: PhaseSpec("verify", True, False, "a reset was accepted; polling its operation"),
    Phase.FINISH: PhaseSpec("finish", False, False, "the cluster holds the new secret: promote it in Key Vault", True),
    Phase.RETIRE: PhaseSpec("retire", False, False, "grace period, then remove old passwords nobody uses", True),
    Phase.CLEANUP: PhaseSpec("retire", True, True, "removing what a failed rotation created (idempotent)"),
    Phase.DONE: PhaseSpec("retire", False, False, "succeeded"),
    Phase.SKIPPED: PhaseSpec("create", False, False, "succeeded without change: the credential was not due"),
}

# A certificate rotation has nothing to create, store or prove.
CERTIFICATE_SKIPS = frozenset({Phase.START, Phase.CREATE, Phase.STORE, Phase.PROVE})


def failure_may_clean_up(row: RotationRecord) -> bool:
    return PHASES[row.phase].failure_may_clean_up and row.kind is CredentialKind.SP_SECRET


def waits_out_trouble(row: RotationRecord) -> bool:
    return PHASES[row.phase].waits_out_trouble


def poison_may_clean_up(row: RotationRecord) -> bool:
    return PHASES[row.phase].poison_may_clean_up and not row.reset_unanswered
