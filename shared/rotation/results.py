"""What a step handler returns (wait, go on, done) or raises (a definitive failure)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.record import RotationState


class Failure(Exception):
    """A definitive failure: the rotation ends failed, with clean-up when `cleanup` and the phase table allow it."""

    def __init__(self, reason: str, *, cleanup: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cleanup = cleanup


@dataclass(frozen=True)
class Wait:
    """The step re-queued its message with a delay; this delivery ends."""

    delay: int
    detail: str
    state: RotationState = RotationState.RUNNING


@dataclass(frozen=True)
class Next:
    """The step is done: run the next phase in this delivery."""


@dataclass(frozen=True)
class Done:
    """The rotation reached a terminal state."""

    detail: str


Result = Wait | Next | Done
