"""`aks-rotator`: the local runner and operator CLI.

It calls the same functions the Functions triggers call (see function_app.py). Output is a rich table, or JSON
with `--json`. Exit codes: 0 ok / nothing due, 1 failure, 2 bad settings or input, 3 credentials are due
(`scan`), 4 a rotation failed (`run`, `worker`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared import discovery, events, permissions, rotation
from shared.logs import redact
from shared.runtime import settings as load_settings
from shared.settings import Settings, SettingsError

EXIT_OK, EXIT_FAILURE, EXIT_INPUT, EXIT_DUE, EXIT_ROTATION_FAILED = 0, 1, 2, 3, 4

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Change nothing; show what would happen.")]


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump"):
        return _jsonable(value.model_dump())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value


def emit_json(value: Any) -> None:
    """JSON on stdout, passed through the secret redactor like every other output."""
    text = json.dumps(_jsonable(value), indent=2, sort_keys=True, default=str)
    sys.stdout.write(redact(text) + "\n")


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(EXIT_INPUT) from None


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(130) from None


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A progress bar on stderr, fed by `progress(stage, done, total)` callbacks."""
    if not enabled or not err.is_terminal:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def _days(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d")


def _scan_table(report: discovery.ScanReport) -> Table:
    table = Table(title=f"{report.clusters} clusters in {report.subscriptions} subscriptions")
    for column in ("cluster", "credential", "app", "expires", "days left", "action", "advice"):
        table.add_column(column, overflow="fold")
    styles = {"queued": "bold yellow", "would_queue": "yellow", "deferred": "magenta", "already_queued": "cyan"}
    for f in report.findings:
        style = styles.get(f.action, "red" if f.days_left is not None and f.days_left <= 0 else "")
        table.add_row(
            f.cluster_name,
            f.kind,
            f.app_id or "-",
            _when(f.expires_on),
            _days(f.days_left),
            f.action,
            f.advice or "",
            style=style,
        )
    return table


def _scan(settings: Settings, as_json: bool, dry_run: bool) -> discovery.ScanReport:
    """The scan with a progress bar; a DiscoveryError (e.g. missing rights) ends the command with exit 1."""
    with _progress(not as_json) as progress:
        try:
            return _run(discovery.scan(settings, dry_run=dry_run, progress=progress))
        except discovery.DiscoveryError as exc:
            err.print(f"[red]scan failed:[/red] {redact(str(exc))}")
            raise typer.Exit(EXIT_FAILURE) from None


@app.command()
def scan(as_json: JsonOpt = False, dry_run: DryRunOpt = False) -> None:
    """Find credentials nearing expiry in every visible subscription and queue their rotation."""
    report = _scan(_settings(), as_json, dry_run)
    if as_json:
        emit_json(report.to_json())
    else:
        out.print(_scan_table(report))
        if report.used_fallback:
            out.print("[yellow]Resource Graph was refused; clusters were listed per subscription.[/yellow]")
        for problem in report.errors:
            out.print(f"[red]{redact(problem)}[/red]")
    raise typer.Exit(EXIT_DUE if report.due() else EXIT_OK)


async def _drain(settings: Settings, wait_seconds: float, progress: Callable[[str, int, int], None] | None) -> Any:
    """Drain until idle; with `wait_seconds`, keep draining delayed messages until every rotation settles."""
    deadline = time.monotonic() + wait_seconds
    reports = [await rotation.drain(settings, progress=progress)]
    while time.monotonic() < deadline:
        views = await rotation.status(settings)
        if all(v.state in ("succeeded", "failed") for v in views):
            break
        await asyncio.sleep(0.5)  # a re-queued step becomes visible after its delay
        reports.append(await rotation.drain(settings, progress=progress))
    return reports


def _drain_and_report(
    settings: Settings, as_json: bool, wait_seconds: float = 0.0, extra: dict[str, Any] | None = None
) -> None:
    with _progress(not as_json) as progress:
        reports = _run(_drain(settings, wait_seconds, progress))
    views = _run(rotation.status(settings))
    if as_json:
        emit_json({**(extra or {}), "drain": reports, "rotations": views})
    else:
        out.print(_status_table(views))
    raise typer.Exit(EXIT_ROTATION_FAILED if any(v.state == "failed" for v in views) else EXIT_OK)


WaitOpt = Annotated[
    float,
    typer.Option("--wait", help="Keep draining delayed steps for up to this many seconds until rotations settle."),
]


@app.command()
def worker(as_json: JsonOpt = False, wait: WaitOpt = 0.0) -> None:
    """Process the rotation queue until it is idle (what the queue trigger does, locally)."""
    _drain_and_report(_settings(), as_json, wait)


@app.command()
def run(
    once: Annotated[bool, typer.Option("--once", help="One scan, then drain the queue until idle.")] = False,
    as_json: JsonOpt = False,
    dry_run: DryRunOpt = False,
    wait: WaitOpt = 0.0,
) -> None:
    """Scan and rotate: the whole pipeline once (what `make demo` runs)."""
    if not once:
        err.print("only `run --once` is supported locally; in Azure the timer and queue triggers run it")
        raise typer.Exit(EXIT_INPUT)
    settings = _settings()
    report = _scan(settings, as_json, dry_run)
    if not as_json:
        out.print(_scan_table(report))
    if dry_run:
        if as_json:
            emit_json({"scan": report.to_json()})
        raise typer.Exit(EXIT_DUE if report.due() else EXIT_OK)
    _drain_and_report(settings, as_json, wait, {"scan": report.to_json()})


@app.command()
def rotate(
    cluster: Annotated[str, typer.Option("--cluster", help="ARM resource id of the managed cluster.")],
    as_json: JsonOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Request rotation of one cluster's service-principal secret now (on demand)."""
    settings = _settings()
    try:
        result = _run(rotation.rotate_now(settings, cluster, dry_run=dry_run))
    except ValueError as exc:  # InvalidInput is a ValueError
        err.print(f"[red]rejected:[/red] {redact(str(exc))}")
        raise typer.Exit(EXIT_INPUT) from None
    if as_json:
        emit_json(result)
    else:
        out.print(redact(str(_jsonable(result))))


def _status_table(views: Sequence[Any]) -> Table:
    table = Table(title="Rotations")
    for column in ("rotation", "cluster", "kind", "state", "step", "updated", "detail"):
        table.add_column(column, overflow="fold")
    styles = {"failed": "bold red", "succeeded": "green", "waiting": "yellow"}
    for v in views:
        table.add_row(
            v.rotation_id[:12],
            v.cluster_id.rsplit("/", 1)[-1],
            v.kind,
            v.state,
            v.step,
            _when(v.updated_at) if isinstance(v.updated_at, datetime) else str(v.updated_at),
            redact(v.failure_reason or ""),
            style=styles.get(v.state, ""),
        )
    return table


def _audit_table(view: Any) -> Table:
    table = Table(title=f"Audit of {view.rotation_id[:12]} ({view.cluster_id.rsplit('/', 1)[-1]})")
    for column in ("at", "step", "outcome", "detail"):
        table.add_column(column, overflow="fold")
    for entry in view.audit:
        table.add_row(entry.at.strftime("%H:%M:%S"), entry.step, entry.outcome, redact(entry.detail))
    return table


@app.command()
def status(
    rotation_id: Annotated[str | None, typer.Option("--rotation", help="Show one rotation with its audit.")] = None,
    audit: Annotated[bool, typer.Option("--audit", help="Show every rotation's audit trail.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Rotations and their steps, from the state and audit tables."""
    settings = _settings()
    views = _run(rotation.status(settings, rotation_id))
    if audit and rotation_id is None:
        views = [detail for v in views for detail in _run(rotation.status(settings, v.rotation_id))]
    if as_json:
        emit_json(views)
        return
    out.print(_status_table(views))
    for view in views if (audit or rotation_id) else []:
        out.print(_audit_table(view))


@app.command()
def event(
    file: Annotated[
        typer.FileBinaryRead, typer.Argument(help="Event Grid or CloudEvents JSON, as the host delivers it.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Deliver one Key Vault event locally (what the Event Grid trigger does)."""
    outcome = _run(events.handle_event(_settings(), file.read()))
    if as_json:
        emit_json(outcome)
    else:
        out.print(f"{outcome.action}: {redact(outcome.reason)}")
    raise typer.Exit(EXIT_INPUT if outcome.action == "rejected" else EXIT_OK)


def _report_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(title=title)
    for column in headers:
        table.add_column(column, overflow="fold")
    for row in rows:
        style = "red" if any(cell in ("MISSING", "failed") for cell in row) else ""
        table.add_row(*(redact(cell) for cell in row), style=style)
    return table


ClusterOpt = Annotated[list[str] | None, typer.Option("--cluster", help="ARM id of a cluster (repeatable).")]


@app.command()
def preflight(cluster: ClusterOpt = None, as_json: JsonOpt = False) -> None:
    """Check every permission the product needs, per cluster; print what is missing and how to grant it."""
    settings = _settings()
    with _progress(not as_json) as progress:
        report = _run(permissions.preflight(settings, cluster_ids=cluster or None, progress=progress))
    if as_json:
        emit_json(report.to_json())
    else:
        out.print(_report_table("Preflight", report.headers, report.rows()))
    raise typer.Exit(EXIT_OK if report.ok else EXIT_FAILURE)


@app.command()
def adopt(
    cluster: ClusterOpt = None,
    all_clusters: Annotated[bool, typer.Option("--all", help="Every SP cluster the administrator can read.")] = False,
    as_json: JsonOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Run once by an administrator: make the product an owner of each cluster's SP application."""
    if not cluster and not all_clusters:
        err.print("name clusters with --cluster ID, or pass --all")
        raise typer.Exit(EXIT_INPUT)
    settings = _settings()
    try:
        report = _run(
            permissions.adopt(
                settings, cluster_ids=cluster or None, all_clusters=all_clusters, dry_run=dry_run, admin_credential=None
            )
        )
    except permissions.AdoptError as exc:
        err.print(f"[red]adopt refused:[/red] {redact(str(exc))}")
        raise typer.Exit(EXIT_INPUT) from None
    if as_json:
        emit_json(report.to_json())
    else:
        out.print(_report_table("Adopt" + (" (dry run)" if dry_run else ""), report.headers, report.rows()))
    raise typer.Exit(EXIT_OK if report.ok else EXIT_FAILURE)


def main() -> None:
    app()
