"""`aks-rotator report --html FILE`: the estate's expiry picture as one self-contained HTML page.

Inline CSS and SVG only (no script, font, image or stylesheet from anywhere), so it opens offline and can be
mailed or attached to a ticket. Numbers come from `shared/report.py`; every text is escaped and redacted. Chart
bars carry `data-series` / `data-count` so a browser test can check what is drawn against the scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape
from typing import Final

from shared import report as estate
from shared.discovery import Finding, ScanReport
from shared.logs import redact
from shared.power import stopped_advice

MAX_LISTED: Final = 500  # migration candidates listed in the page; the count is always complete
_COLORS: Final = {
    "will_rotate": "#2e7d32",
    "needs_human": "#c62828",
    "opted_out": "#9e9e9e",
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "in_progress": "#f9a825",
}
_LABELS: Final[dict[str, str]] = {
    **{str(fate): label for fate, label in estate.FATE_LABELS.items()},
    "succeeded": "succeeded",
    "failed": "failed",
    "in_progress": "in progress",
}
_CSS: Final = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",sans-serif;margin:24px auto;
max-width:1100px;color:#1f2328;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.sub{color:#59636e;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #d0d7de;border-radius:8px;padding:8px 12px;min-width:96px}
.card b{display:block;font-size:22px}.card span{color:#59636e;font-size:12px}
.card.bad b{color:#c62828}
.legend{display:flex;gap:16px;margin:4px 0 8px}.legend i{display:inline-block;width:12px;height:12px;margin-right:5px;
vertical-align:-1px;border-radius:2px}
svg text{font:11px system-ui,sans-serif;fill:#1f2328}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:left;padding:4px 8px;
border-bottom:1px solid #eaeef2;vertical-align:top}th{background:#f6f8fa}
td.num,th.num{text-align:right}.muted{color:#59636e}.err{color:#c62828}
"""


def _e(text: object) -> str:
    return escape(redact(str(text)))


def _card(metric: str, label: str, value: int | str, bad: bool = False) -> str:
    shown = f"{value:,}" if isinstance(value, int) else value
    cls = "card bad" if bad else "card"
    return f'<div class="{cls}" data-metric="{metric}"><b>{_e(shown)}</b><span>{_e(label)}</span></div>'


def _cards(summary: estate.Summary) -> str:
    nearest = summary.nearest
    near = "-" if nearest is None or nearest.days_left is None else f"{nearest.days_left:.1f} d"
    cards = [
        _card("clusters", "clusters", summary.clusters),
        _card("subscriptions", "subscriptions", summary.subscriptions),
        _card("credentials", "credentials", summary.credentials),
        _card("due", "due", summary.due),
        _card("overdue", "overdue", summary.overdue, bad=summary.overdue > 0),
        _card("stopped", "stopped clusters", summary.stopped, bad=summary.stopped > 0),
        _card("would_queue", "would queue", summary.count("would_queue")),
        _card("already_queued", "already queued", summary.count("already_queued")),
        _card("deferred", "deferred", summary.count("deferred")),
        _card("failed", "failed rotations", summary.failed, bad=summary.failed > 0),
        _card("report_only", "report-only", summary.count("report_only")),
        _card("opted_out", "opted out", summary.count("opted_out")),
        _card("nearest", f"nearest expiry{' (' + nearest.cluster_name + ')' if nearest else ''}", near),
        _card("fallback", "inventory", "ARM fallback" if summary.used_fallback else "Resource Graph"),
        _card("errors", "errors", len(summary.errors), bad=bool(summary.errors)),
    ]
    return f'<div class="cards">{"".join(cards)}</div>'


def _legend(series: Sequence[str]) -> str:
    items = "".join(f'<span><i style="background:{_COLORS[s]}"></i>{_e(_LABELS[s])}</span>' for s in series)
    return f'<div class="legend">{items}</div>'


def bar_chart(
    chart: str, buckets: Sequence[estate.Bucket], series: Sequence[str], title: str, label_every: int = 1
) -> str:
    """A stacked bar chart as inline SVG: one `<g class="bucket">` per bucket, one `<rect>` per non-zero series."""
    width, height, left, bottom, top = 1060, 240, 36, 34, 16
    plot_h = height - bottom - top
    step = (width - left) / max(1, len(buckets))
    bar_w = step * 0.7
    peak = max((b.total for b in buckets), default=0) or 1
    parts = [
        f'<svg id="{chart}" class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}"'
        f' xmlns="http://www.w3.org/2000/svg"><title>{_e(title)}</title>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width}" y2="{top + plot_h}" stroke="#8c959f"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{peak:,}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for i, bucket in enumerate(buckets):
        x = left + i * step + (step - bar_w) / 2
        y = float(top + plot_h)
        parts.append(f'<g class="bucket" data-label="{_e(bucket.label)}" data-total="{bucket.total}">')
        for name in series:
            count = bucket.counts.get(name, 0)
            if not count:
                continue
            h = max(1.0, count / peak * plot_h)
            y -= h
            parts.append(
                f'<rect class="bar" data-series="{name}" data-count="{count}" x="{x:.1f}" y="{y:.1f}"'
                f' width="{bar_w:.1f}" height="{h:.1f}" fill="{_COLORS[name]}">'
                f"<title>{_e(bucket.label)}: {count:,} {_e(_LABELS[name])}</title></rect>"
            )
        if bucket.total:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle">{bucket.total:,}</text>')
        if i % label_every == 0:
            label_x, label_y = x + bar_w / 2, top + plot_h + 14
            parts.append(f'<text x="{label_x:.1f}" y="{label_y}" text-anchor="middle">{_e(bucket.label)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _failures(rows: Sequence[estate.RotationRow], runbook: str) -> str:
    failed = estate.open_failures(rows)
    if not failed:
        return '<p class="muted" id="no-failures">No open failures.</p>'
    body = "".join(
        f'<tr class="failure"><td><code>{_e(r.rotation_id[:12])}</code></td><td>{_e(r.cluster_id.rsplit("/", 1)[-1])}'
        f"</td><td>{_e(r.kind)}</td><td>{_e(r.progress)}</td><td>{r.updated_at:%Y-%m-%d %H:%M}</td>"
        f'<td class="err">{_e(r.failure_reason or "")}</td>'
        f'<td><a href="{escape(runbook)}#{estate.runbook_anchor(r)}">runbook</a></td></tr>'
        for r in failed
    )
    columns = ("rotation", "cluster", "kind", "step", "updated (UTC)", "reason", "")
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"
    status_link = f'<a href="{escape(runbook)}#{estate.ANCHOR_STATUS}">reading status</a>'
    note = (
        '<p class="muted">Retry after fixing the cause: <code>aks-rotator rotate --cluster &lt;id&gt;</code>; '
        f"the audit trail: <code>aks-rotator status --rotation &lt;id&gt;</code> ({status_link}).</p>"
    )
    return f'<table id="failures">{head}{body}</table>{note}'


def _migration(findings: Sequence[Finding]) -> str:
    candidates = estate.migration_candidates(findings)
    if not candidates:
        return '<p class="muted" id="migration-count" data-count="0">No service-principal cluster left to migrate.</p>'
    rows = "".join(
        f"<tr><td>{_e(f.cluster_name)}</td><td><code>{_e(f.subscription_id)}</code></td>"
        f'<td class="num">{"-" if f.days_left is None else f"{f.days_left:.0f}"}</td><td>{_e(f.action)}</td></tr>'
        for f in candidates[:MAX_LISTED]
    )
    more = len(candidates) - MAX_LISTED
    tail = f'<p class="muted">... and {more:,} more: <code>aks-rotator scan --all --json</code></p>' if more > 0 else ""
    return (
        f'<p id="migration-count" data-count="{len(candidates)}"><b>{len(candidates):,}</b> service-principal clusters '
        "could move to managed identity (<code>az aks update --enable-managed-identity</code>), which ends secret "
        "rotation for them.</p>"
        f"<details><summary>List them (soonest expiry first)</summary><table><tr><th>cluster</th><th>subscription</th>"
        f'<th class="num">days left</th><th>action</th></tr>{rows}</table>{tail}</details>'
    )


def _stopped(findings: Sequence[Finding]) -> str:
    chosen = estate.stopped(findings)
    if not chosen:
        return '<p class="muted" id="stopped-count" data-count="0">No stopped cluster.</p>'
    rows = "".join(
        f"<tr><td>{_e(f.cluster_name)}</td><td>{_e(f.kind)}</td><td>{_e(f.action)}</td>"
        f"<td>{_e(stopped_advice(f) or '')}</td></tr>"
        for f in chosen[:MAX_LISTED]
    )
    more = len(chosen) - MAX_LISTED
    tail = f'<p class="muted">... and {more:,} more: <code>aks-rotator scan --all --json</code></p>' if more > 0 else ""
    return (
        f'<p id="stopped-count" data-count="{len(chosen)}"><b>{len(chosen):,}</b> credentials belong to stopped '
        "clusters: AKS refuses a reset while a cluster is stopped (<code>az aks start</code>).</p>"
        f'<table id="stopped"><tr><th>cluster</th><th>credential</th><th>action</th><th>what to do</th></tr>{rows}'
        f"</table>{tail}"
    )


def render(
    report: ScanReport, rows: Sequence[estate.RotationRow], *, now: datetime, runbook: str = estate.RUNBOOK
) -> str:
    summary = estate.summarize(report, rows)
    ahead = estate.timeline(report.findings, now)
    past = estate.history(rows, now)
    ahead_total = sum(b.total for b in ahead)
    past_total = sum(b.total for b in past)
    errors = "".join(f"<li>{_e(e)}</li>" for e in report.errors[:50])
    error_block = f'<h2>Errors</h2><ul class="err">{errors}</ul>' if errors else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>AKS credential expiry report</title><style>{_CSS}</style></head><body>
<h1>AKS credential expiry report</h1>
<p class="sub">Generated {now:%Y-%m-%d %H:%M} UTC by <code>aks-rotator report</code> from a dry-run scan
(nothing was queued or changed).</p>
{_cards(summary)}
<h2>Expiries in the next {estate.TIMELINE_DAYS} days, per week
<span class="muted" id="timeline-total" data-count="{ahead_total}">({ahead_total:,} credentials)</span></h2>
{_legend(estate.FATES)}
{bar_chart("timeline", ahead, estate.FATES, f"Credential expiries in the next {estate.TIMELINE_DAYS} days")}
<h2>Rotations in the last {estate.HISTORY_DAYS} days, by outcome
<span class="muted" id="history-total" data-count="{past_total}">({past_total:,} rotations)</span></h2>
{_legend(estate.OUTCOMES)}
{bar_chart("history", past, estate.OUTCOMES, f"Rotations of the last {estate.HISTORY_DAYS} days", label_every=3)}
<h2>Open failures</h2>
{_failures(rows, runbook)}
<h2>Stopped clusters</h2>
{_stopped(report.findings)}
<h2>Migration candidates</h2>
{_migration(report.findings)}
{error_block}
</body></html>
"""
