"""The one rule for removing a password the product did not create: only with evidence that nothing uses it.

A foreign password (someone's `az ad app credential reset`, a pipeline, the password a cluster was created with)
may be held by clusters the product cannot see (another subscription, outside SUBSCRIPTION_ALLOWLIST, another
team's scope). Visible clusters are checked first (`finish.key_in_use_elsewhere`); for the invisible ones, the
evidence is Entra's sign-in report per keyId (`shared.signins`): every sign-in before the last visible holder
switched to its new secret may be its own; any later sign-in means something else uses the password. The password is
removed only when the report is readable, shows no sign-in after that instant, and that instant is at least
FOREIGN_SIGNIN_QUIET_DAYS ago. Otherwise it is left to expire and reported (audit `kept_foreign`, log
`rotation.foreign_kept`, and `aks-rotator status`'s "Foreign passwords left to expire").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.messages import CredentialKind
from shared.rotation.delivery import Delivery
from shared.signins import SignIns


class Verdict(enum.StrEnum):
    REMOVE = "remove"
    KEEP = "keep"  # left to expire, reported


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str


def too_soon(last_switch: datetime | None, now: datetime, quiet_days: int) -> Decision | None:
    """Pure: a KEEP decision when no sign-in report could allow removal yet (then the report is not read)."""
    if last_switch is None:
        return Decision(Verdict.KEEP, "when the clusters switched away from it is unknown")
    if now - last_switch < timedelta(days=quiet_days):
        hours = (now - last_switch).total_seconds() / 3600
        reason = f"no sign-in evidence yet: the last visible cluster left it {hours:.0f} h ago"
        return Decision(Verdict.KEEP, f"{reason} (FOREIGN_SIGNIN_QUIET_DAYS={quiet_days})")
    return None


def decide(key_id: str, report: SignIns, last_switch: datetime | None, now: datetime, quiet_days: int) -> Decision:
    """Pure: may retire remove the foreign password `key_id`? (unit-tested in tests/unit/test_foreign.py)"""
    early = too_soon(last_switch, now, quiet_days)
    if early is not None or last_switch is None:
        return early or Decision(Verdict.KEEP, "unknown")
    if not report.readable:
        return Decision(Verdict.KEEP, f"no sign-in evidence ({report.refusal}: grant AuditLog.Read.All to allow it)")
    last = report.last_signin(key_id)
    if last is not None and last > last_switch:
        return Decision(Verdict.KEEP, f"used at {last:%Y-%m-%d %H:%M} UTC, after every visible cluster left it")
    seen = f"last sign-in {last:%Y-%m-%d %H:%M} UTC" if last is not None else "never signed in with"
    return Decision(Verdict.REMOVE, f"{seen}; no sign-in since the last visible cluster left it")


async def last_switch(run: Delivery) -> datetime | None:
    """The latest instant a visible cluster sharing the application (this one included) switched to a new secret:
    sign-ins up to then may be theirs."""
    app_id = (run.row.app_id or "").lower()
    times = [run.row.switched_at]
    for cluster in await run.deps.inventory():
        if cluster.id.lower() == run.row.cluster_id.lower() or (cluster.sp_client_id or "").lower() != app_id:
            continue
        for row in await run.deps.store.list(cluster_id=cluster.id):
            if row.kind is CredentialKind.SP_SECRET and (row.app_id or "").lower() == app_id:
                times.append(row.switched_at)
    known = [t for t in times if t is not None]
    return max(known) if known else None
