"""What an operator needs to see first: the estate's counts, the rows that need attention, advice grouped once,
and the expiry picture (next 90 days, last 30 days of rotations, open failures, migration candidates).

Pure functions over a `discovery.ScanReport` and the store's rotation rows; `shared/cli.py` renders them as rich
panels and tables, `shared/report_html.py` as one HTML page. Nothing here does I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal, Protocol

from shared.discovery import ADVICE_MIGRATE, Finding, ScanReport
from shared.power import stopped_advice, stopped_clusters

Fate = Literal["will_rotate", "needs_human", "opted_out"]
FATES: Final[tuple[Fate, ...]] = ("will_rotate", "needs_human", "opted_out")
FATE_LABELS: Final[dict[Fate, str]] = {
    "will_rotate": "will rotate",
    "needs_human": "needs a human",
    "opted_out": "opted out",
}
Outcome = Literal["succeeded", "failed", "in_progress"]
OUTCOMES: Final[tuple[Outcome, ...]] = ("succeeded", "failed", "in_progress")

GROUP_MIN: Final = 3  # advice shared by at least this many rows is printed once, not per row
TIMELINE_DAYS: Final = 90
HISTORY_DAYS: Final = 30
RUNBOOK: Final = "docs/operations.md"
# docs/operations.md headings, as GitHub renders their anchors (tests/test_report.py checks they exist).
ANCHOR_FAILED: Final = "rotationfailed"
ANCHOR_POISON: Final = "rotationpoison"
ANCHOR_OVERDUE: Final = "credentialoverdue"
ANCHOR_STATUS: Final = "reading-aks-rotator-status"


class RotationRow(Protocol):
    """The fields of a rotation row (`store.RotationRecord`, `rotation.RotationView`) that reports read."""

    @property
    def rotation_id(self) -> str: ...
    @property
    def cluster_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def progress(self) -> str: ...
    @property
    def failure_reason(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...


# -- per finding -----------------------------------------------------------------------------------------------
def fate(finding: Finding) -> Fate | None:
    """What the product will do about this credential when it comes due (None: nothing expires)."""
    if finding.kind == "managed_identity":
        return None
    if finding.action == "opted_out":
        return "opted_out"
    if finding.action == "report_only" or finding.stopped:
        return "needs_human"  # a stopped cluster cannot take a new secret until someone starts it
    # Discovery gives a certificate advice exactly when the cluster is not opted in to certificate rotation.
    if finding.kind == "cluster_certificate" and finding.advice:
        return "needs_human"
    return "will_rotate"


def overdue(finding: Finding) -> bool:
    return finding.days_left is not None and finding.days_left <= 0


def needs_attention(finding: Finding) -> bool:
    """Due (queued, deferred, failed, opted out within its window), report-only, already expired, or on a stopped
    cluster (it must be started before the credential comes due)."""
    return finding.due or finding.action == "report_only" or overdue(finding) or stopped_advice(finding) is not None


def attention(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if needs_attention(f)]


def open_failures(rows: Iterable[RotationRow]) -> list[RotationRow]:
    """Failed rotations not followed by a newer rotation of the same credential (newest first)."""
    latest: dict[tuple[str, str], RotationRow] = {}
    for row in rows:
        key = (row.cluster_id.lower(), row.kind)
        if key not in latest or row.created_at > latest[key].created_at:
            latest[key] = row
    failed = [row for row in latest.values() if row.state == "failed"]
    return sorted(failed, key=lambda row: row.updated_at, reverse=True)


def runbook_anchor(row: RotationRow) -> str:
    return ANCHOR_POISON if "poison queue" in (row.failure_reason or "") else ANCHOR_FAILED


# -- summary ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    """The panel every command opens with."""

    clusters: int
    subscriptions: int
    credentials: int
    due: int
    actions: dict[str, int]
    overdue: int
    stopped: int  # stopped clusters with a credential: rotation fails until they are started
    failed: int  # open failed rotations (from the store), when rows were read
    attention: int
    nearest: Finding | None
    used_fallback: bool
    errors: tuple[str, ...]
    dry_run: bool

    def count(self, action: str) -> int:
        return self.actions.get(action, 0)


def summarize(report: ScanReport, rows: Sequence[RotationRow] = ()) -> Summary:
    expiring = [f for f in report.findings if f.days_left is not None]
    return Summary(
        clusters=report.clusters,
        subscriptions=report.subscriptions,
        credentials=sum(1 for f in report.findings if f.kind != "managed_identity"),
        due=len(report.due()),
        actions=report.by_action(),
        overdue=sum(1 for f in report.findings if overdue(f)),
        stopped=stopped_clusters(report.findings),
        failed=len(open_failures(rows)),
        attention=len(attention(report.findings)),
        nearest=min(expiring, key=lambda f: f.days_left or 0.0) if expiring else None,
        used_fallback=report.used_fallback,
        errors=tuple(report.errors),
        dry_run=report.dry_run,
    )


# -- advice, grouped -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Note:
    """One piece of advice or detail shared by many rows, printed once under the table."""

    key: str
    text: str
    rows: int
    clusters: int


def _note_text(finding: Finding) -> list[str]:
    return [text for text in (stopped_advice(finding), finding.advice, finding.detail) if text]


def group_notes(findings: Sequence[Finding], minimum: int = GROUP_MIN) -> list[Note]:
    """Advice/detail texts that at least `minimum` rows share, most common first, keyed n1, n2, ..."""
    rows: Counter[str] = Counter()
    clusters: dict[str, set[str]] = {}
    for finding in findings:
        for text in _note_text(finding):
            rows[text] += 1
            clusters.setdefault(text, set()).add(finding.cluster_id.lower())
    common = [(text, n) for text, n in rows.most_common() if n >= minimum]
    return [Note(f"n{i}", text, n, len(clusters[text])) for i, (text, n) in enumerate(common, start=1)]


def row_note(finding: Finding, notes: Sequence[Note]) -> str:
    """The advice/detail cell of a row: grouped texts by key, the rest in full."""
    keys = {note.text: note.key for note in notes}
    return "; ".join(f"[{keys[text]}]" if text in keys else text for text in _note_text(finding))


# -- the expiry picture ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bucket:
    """One bar of a chart: a label and a count per series."""

    label: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def timeline(findings: Iterable[Finding], now: datetime, days: int = TIMELINE_DAYS) -> list[Bucket]:
    """Credentials expiring in the next `days`, per week, split by fate; already expired ones in a first bar."""
    weeks = math.ceil(days / 7)
    labels = ["overdue"] + [(now + timedelta(days=7 * i)).strftime("%d %b") for i in range(weeks)]
    counts: list[Counter[str]] = [Counter() for _ in labels]
    for finding in findings:
        what = fate(finding)
        if what is None or finding.days_left is None or finding.days_left > days:
            continue
        index = 0 if finding.days_left <= 0 else 1 + min(int(finding.days_left // 7), weeks - 1)
        counts[index][what] += 1
    return [Bucket(label, {f: c[f] for f in FATES}) for label, c in zip(labels, counts, strict=True)]


def outcome(row: RotationRow) -> Outcome:
    return "succeeded" if row.state == "succeeded" else "failed" if row.state == "failed" else "in_progress"


def history(rows: Iterable[RotationRow], now: datetime, days: int = HISTORY_DAYS) -> list[Bucket]:
    """Rotations of the last `days` days by outcome, per day of their last change."""
    first = (now - timedelta(days=days - 1)).date()
    counts: list[Counter[str]] = [Counter() for _ in range(days)]
    for row in rows:
        index = (row.updated_at.date() - first).days
        if 0 <= index < days:
            counts[index][outcome(row)] += 1
    return [
        Bucket((first + timedelta(days=i)).strftime("%d %b"), {o: c[o] for o in OUTCOMES}) for i, c in enumerate(counts)
    ]


def migration_candidates(findings: Iterable[Finding]) -> list[Finding]:
    """Service-principal clusters with nothing holding them back from managed identity, soonest expiry first."""
    candidates = [f for f in findings if f.kind == "sp_secret" and f.advice == ADVICE_MIGRATE]
    return sorted(candidates, key=lambda f: (f.days_left if f.days_left is not None else math.inf, f.cluster_name))


def stopped(findings: Iterable[Finding]) -> list[Finding]:
    """Credentials of stopped clusters, soonest expiry first."""
    chosen = [f for f in findings if stopped_advice(f) is not None]
    return sorted(chosen, key=lambda f: (f.days_left if f.days_left is not None else math.inf, f.cluster_name))
