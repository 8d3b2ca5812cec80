"""The rule for removing a password the product did not create (shared.rotation.foreign.decide), table-driven."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.rotation.foreign import Verdict, decide
from shared.signins import SignIns

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
KEY = "0f6a2b1c-0000-4000-8000-000000000001"
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("report", "switched", "quiet", "verdict", "says"),
    [
        (SignIns(False, {}, "HTTP 403 Authorization_RequestDenied"), NOW - 2 * DAY, 1, Verdict.KEEP, "AuditLog"),
        (SignIns(True, {}), None, 1, Verdict.KEEP, "unknown"),
        (SignIns(True, {KEY: NOW - HOUR}), NOW - DAY, 1, Verdict.KEEP, "after every visible cluster left it"),
        (SignIns(True, {KEY: NOW - 2 * DAY}), NOW - DAY - HOUR, 1, Verdict.REMOVE, "last sign-in"),
        (SignIns(True, {}), NOW - 2 * DAY, 1, Verdict.REMOVE, "never signed in"),
        (SignIns(True, {KEY: NOW - 2 * DAY}), NOW - 3 * HOUR, 1, Verdict.KEEP, "FOREIGN_SIGNIN_QUIET_DAYS=1"),
        (SignIns(True, {KEY: NOW - HOUR}), NOW - HOUR, 0, Verdict.REMOVE, "last sign-in"),  # at the switch: its own
    ],
    ids=[
        "no-permission",
        "switch-unknown",
        "used-after-the-switch",
        "quiet-long-enough",
        "never-used",
        "quiet-too-short",
        "own-sign-in-at-the-switch",
    ],
)
def test_decide(report: SignIns, switched: datetime | None, quiet: int, verdict: Verdict, says: str) -> None:
    decision = decide(KEY, report, switched, NOW, quiet)
    assert decision.verdict is verdict and says in decision.reason, decision
