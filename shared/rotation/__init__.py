"""The rotation engine (queue trigger): small idempotent phases threaded by one rotation id.

Map (docs/architecture.md): `phases` (what each phase means) · `machine` (one delivery, `handle_message`,
`handle_poison`) · `plan` (pure rules) · `create` (create/store/prove) · `apply` (apply/verify, window gate) ·
`finish` (finish/retire/cleanup) · `submit` (how a rotation starts) · `worker` (`drain`) · `views` (`status`) ·
`deps` (clients) · `delivery` (one delivery's context) · `results` (what a phase returns).
"""

from shared.credentials import DISPLAY_NAME_PREFIX, password_display_name
from shared.rotation.deps import Deps
from shared.rotation.machine import MAX_DEQUEUE_COUNT, StepOutcome, handle_message, handle_poison
from shared.rotation.submit import RETRIED_REASONS, SubmitResult, resend_pending, rotate_now, submit
from shared.rotation.views import AuditView, ForeignKept, RotationView, foreign_left, status
from shared.rotation.worker import DrainReport, drain

__all__ = [
    "DISPLAY_NAME_PREFIX",
    "MAX_DEQUEUE_COUNT",
    "RETRIED_REASONS",
    "AuditView",
    "Deps",
    "DrainReport",
    "ForeignKept",
    "RotationView",
    "StepOutcome",
    "SubmitResult",
    "drain",
    "foreign_left",
    "handle_message",
    "handle_poison",
    "password_display_name",
    "resend_pending",
    "rotate_now",
    "status",
    "submit",
]
