"""The CLI's rich renderables: the summary panel every command opens with, then the rows that need attention.

What to show is decided in `shared/report.py`; this module only lays it out. Every free text cell is redacted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from shared import report as estate
from shared.discovery import ADVICE_MIGRATE, Finding
from shared.logs import redact

MAX_ERRORS = 20  # errors listed under the panel before "... and N more"
_ACTION_STYLES = {"queued": "bold yellow", "would_queue": "yellow", "deferred": "magenta", "already_queued": "cyan"}
_STATE_STYLES = {"failed": "bold red", "succeeded": "green", "waiting": "yellow"}


def _days(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d")


def _grid() -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    return grid


def _nearest(finding: Finding | None) -> str:
    if finding is None or finding.days_left is None:
        return "-"
    ago = finding.days_left <= 0
    span = f"{abs(finding.days_left):.1f} days {'ago' if ago else 'left'}"
    verb = "expired" if ago else "expires"
    return f"{finding.cluster_name} {finding.kind}: {verb} {when(finding.expires_on)} ({span})"


def _counts(pairs: Sequence[tuple[str, int]]) -> Text:
    text = Text()
    for i, (label, value) in enumerate(pairs):
        if i:
            text.append("  ·  ", style="dim")
        style = "bold red" if value and label in ("failed", "overdue") else "bold" if value else "dim"
        text.append(f"{value:,}", style=style)
        text.append(f" {label}")
    return text


def rotation_counts(rows: Sequence[estate.RotationRow]) -> Text:
    states = Counter(row.state for row in rows)
    pairs = [(state, states.get(state, 0)) for state in ("succeeded", "running", "waiting", "pending")]
    return _counts([*pairs, ("failed", len(estate.open_failures(rows)))])


def scan_panel(summary: estate.Summary, rows: Sequence[estate.RotationRow] | None, title: str) -> Panel:
    grid = _grid()
    source = "Resource Graph"
    if summary.used_fallback:
        source = "per-subscription ARM lists (Resource Graph was refused: fallback)"
    grid.add_row("clusters", f"{summary.clusters:,} in {summary.subscriptions:,} subscriptions, via {source}")
    if summary.stopped:
        advice = " (start them before their credentials expire, or rotation will fail)"
        grid.add_row("stopped", Text(f"{summary.stopped:,} clusters{advice}", style="bold red"))
    else:
        grid.add_row("stopped", Text("none", style="dim"))
    grid.add_row(
        "credentials",
        _counts([("checked", summary.credentials), ("due", summary.due), ("overdue", summary.overdue)]),
    )
    grid.add_row(
        "actions",
        _counts(
            [
                ("queued", summary.count("queued")),
                ("would queue", summary.count("would_queue")),
                ("already queued", summary.count("already_queued")),
                ("deferred", summary.count("deferred")),
                ("failed", summary.failed),
                ("report-only", summary.count("report_only")),
                ("opted out", summary.count("opted_out")),
            ]
        ),
    )
    if rows is not None:
        grid.add_row("rotations", rotation_counts(rows))
    grid.add_row("nearest expiry", Text(_nearest(summary.nearest)))
    errors = len(summary.errors)
    grid.add_row("errors", Text(f"{errors:,} (listed below)", style="red") if errors else Text("none", style="dim"))
    return Panel(grid, title=title + (" (dry run)" if summary.dry_run else ""), title_align="left", expand=False)


def findings_table(findings: Sequence[Finding], notes: Sequence[estate.Note], total: int, everything: bool) -> Table:
    title = (
        f"All {total:,} rows"
        if everything
        else f"Needs attention: {len(findings):,} of {total:,} rows (--all lists every row)"
    )
    table = Table(title=title, title_justify="left")
    for column in ("cluster", "credential", "app", "expires", "days left", "action", "advice / detail"):
        table.add_column(column, overflow="fold")
    for f in findings:
        style = _ACTION_STYLES.get(f.action, "red" if estate.overdue(f) else "")
        cells = (f.cluster_name, f.kind, f.app_id or "-", when(f.expires_on), _days(f.days_left), f.action)
        table.add_row(
            *(Text(cell) for cell in cells),
            Text(redact(estate.row_note(f, notes))),
            style=style,
        )
    return table


def _note_line(note: estate.Note) -> Text:
    text = Text(f"[{note.key}] ", style="bold")
    if note.text == ADVICE_MIGRATE:
        text.append(f"{note.clusters:,} clusters could move to managed identity ")
        text.append("(`aks-rotator report --html FILE` lists them)", style="dim")
    else:
        text.append(f"{note.rows:,} rows: {redact(note.text)}")
    return text


def notes_block(notes: Sequence[estate.Note]) -> RenderableType:
    if not notes:
        return Text("")
    return Group(Text("Advice for many rows, once:", style="bold"), *(_note_line(n) for n in notes))


def errors_block(errors: Sequence[str], everything: bool) -> RenderableType:
    shown = list(errors) if everything else list(errors[:MAX_ERRORS])
    lines = [Text(redact(problem), style="red") for problem in shown]
    if len(errors) > len(shown):
        lines.append(Text(f"... and {len(errors) - len(shown):,} more (--all or --json)", style="red"))
    return Group(*lines)


def status_panel(rows: Sequence[estate.RotationRow], listed: int, everything: bool = False) -> Panel:
    grid = _grid()
    clusters = len({row.cluster_id.lower() for row in rows})
    grid.add_row("rotations", f"{len(rows):,} on {clusters:,} clusters")
    grid.add_row("states", rotation_counts(rows))
    oldest = min((row for row in rows if row.state not in ("succeeded", "failed")), default=None, key=_created)
    grid.add_row("oldest in flight", f"{oldest.rotation_id[:12]} since {when(oldest.created_at)}" if oldest else "-")
    which = "every rotation" if everything else "failed and in flight; --all lists every rotation"
    grid.add_row("listed", f"{listed:,} ({which})")
    return Panel(grid, title="aks-rotator status", title_align="left", expand=False)


def _created(row: estate.RotationRow) -> datetime:
    return row.created_at


def status_attention(rows: Sequence[Any]) -> list[Any]:
    """Open failures and rotations still in flight; succeeded and superseded failures are history."""
    failed = {row.rotation_id for row in estate.open_failures(rows)}
    return [row for row in rows if row.rotation_id in failed or row.state not in ("succeeded", "failed")]


def foreign_table(left: Sequence[Any]) -> Table:
    """Passwords the product did not create, left to expire (docs/operations.md, "Shared application")."""
    table = Table(title="Foreign passwords left to expire", title_justify="left")
    for column in ("key", "application", "cluster", "ends", "why"):
        table.add_column(column, overflow="fold")
    for item in left:
        ends = f"{item.ends:%Y-%m-%d}" if item.ends else "-"
        table.add_row(item.key_id, item.app_id, item.cluster_id.rsplit("/", 1)[-1], ends, item.reason)
    return table


def status_table(views: Sequence[Any], title: str = "Rotations") -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("rotation", "cluster", "kind", "state", "step", "updated", "detail"):
        table.add_column(column, overflow="fold")
    for v in views:
        updated = when(v.updated_at) if isinstance(v.updated_at, datetime) else str(v.updated_at)
        cells = (v.rotation_id[:12], v.cluster_id.rsplit("/", 1)[-1], v.kind, v.state, v.progress, updated)
        table.add_row(
            *(Text(cell) for cell in cells),
            Text(redact(v.failure_reason or "")),
            style=_STATE_STYLES.get(v.state, ""),
        )
    return table


def audit_table(view: Any) -> Table:
    table = Table(title=f"Audit of {view.rotation_id[:12]} ({view.cluster_id.rsplit('/', 1)[-1]})")
    for column in ("at", "step", "outcome", "detail"):
        table.add_column(column, overflow="fold")
    for entry in view.audit:
        table.add_row(
            *(Text(c) for c in (entry.at.strftime("%H:%M:%S"), entry.step, entry.outcome, redact(entry.detail)))
        )
    return table
