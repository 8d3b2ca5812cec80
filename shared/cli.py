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
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from azure.core.exceptions import AzureError, ResourceNotFoundError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared import cli_migrate, clock, console, discovery, events, permissions, report_html, rotation, shards
from shared import cli_views as views
from shared import report as estate
from shared.azure import product_credential
from shared.logs import redact
from shared.record import RotationRecord
from shared.runtime import settings as load_settings
from shared.settings import Settings, SettingsError
from shared.store import RotationStore

EXIT_OK, EXIT_FAILURE, EXIT_INPUT, EXIT_DUE, EXIT_ROTATION_FAILED = 0, 1, 2, 3, 4

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Change nothing; show what would happen.")]
AllOpt = Annotated[bool, typer.Option("--all", help="List every row, not only those that need attention.")]
JSON_SCHEMA_VERSION = 1  # of every --json document (docs/cli.md); additive changes keep it, others bump it


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
        settings = load_settings()
    except SettingsError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(EXIT_INPUT) from None
    console.configure(settings.log_level, sys.stderr)
    return settings


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(130) from None


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None] | None]:
    """A progress bar on stderr when a person watches it, fed by `progress(stage, done, total)` callbacks."""
    if not console.wants_console(sys.stderr):
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


def _rotation_rows(settings: Settings) -> list[RotationRecord] | None:
    """Every rotation row, read-only (a missing table is no rotation yet); None when storage cannot be read."""

    async def read() -> list[RotationRecord]:
        credential = product_credential(settings)
        try:
            async with RotationStore(settings, credential) as store:
                return await store.list()
        except ResourceNotFoundError:
            return []
        finally:
            await credential.close()

    try:
        return _run(read())
    except (AzureError, OSError) as exc:
        err.print(f"[yellow]rotation rows unreadable ({type(exc).__name__}): failed rotations are not counted[/yellow]")
        return None


def _scan(settings: Settings, dry_run: bool) -> discovery.ScanReport:
    """The scan with a progress bar; a DiscoveryError (e.g. missing rights) ends the command with exit 1."""
    with _progress() as progress:
        try:
            return _run(shards.scan(settings, dry_run=dry_run, progress=progress))
        except discovery.DiscoveryError as exc:
            err.print(f"[red]scan failed:[/red] {redact(str(exc))}")
            raise typer.Exit(EXIT_FAILURE) from None


def _print_scan(
    report: discovery.ScanReport, rows: Sequence[estate.RotationRow] | None, title: str, everything: bool
) -> None:
    """Summary panel, then the rows that need attention (or all), advice grouped once, then errors."""
    out.print(views.scan_panel(estate.summarize(report, rows or ()), rows, title))
    listed = report.findings if everything else estate.attention(report.findings)
    notes = estate.group_notes(report.findings)
    if listed:
        out.print(views.findings_table(listed, notes, len(report.findings), everything))
    out.print(views.notes_block(notes))
    out.print(cli_migrate.progress_line(report.migration))
    out.print(views.errors_block(report.errors, everything))


@app.command()
def scan(as_json: JsonOpt = False, dry_run: DryRunOpt = False, everything: AllOpt = False) -> None:
    """Find credentials nearing expiry in every visible subscription and queue their rotation."""
    settings = _settings()
    report = _scan(settings, dry_run)
    if as_json:
        emit_json({"schema_version": JSON_SCHEMA_VERSION, **report.to_json()})
    else:
        _print_scan(report, _rotation_rows(settings), "aks-rotator scan", everything)
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
    settings: Settings,
    as_json: bool,
    wait_seconds: float = 0.0,
    scanned: discovery.ScanReport | None = None,
    everything: bool = False,
) -> None:
    with _progress() as progress:
        reports = _run(_drain(settings, wait_seconds, progress))
    found = _run(rotation.status(settings))
    if as_json:
        extra = {"scan": scanned.to_json()} if scanned is not None else {}
        emit_json({"schema_version": JSON_SCHEMA_VERSION, **extra, "drain": reports, "rotations": found})
    else:
        shown = found if everything else views.status_attention(found)
        if scanned is not None:
            _print_scan(scanned, found, "aks-rotator run --once", everything)
        else:
            out.print(views.status_panel(found, len(shown), everything))
        if shown:
            out.print(views.status_table(shown, "Rotations" if everything else "Rotations failed or in flight"))
    raise typer.Exit(EXIT_ROTATION_FAILED if any(v.state == "failed" for v in found) else EXIT_OK)


WaitOpt = Annotated[
    float,
    typer.Option("--wait", help="Keep draining delayed steps for up to this many seconds until rotations settle."),
]


@app.command()
def worker(as_json: JsonOpt = False, wait: WaitOpt = 0.0, everything: AllOpt = False) -> None:
    """Process the rotation queue until it is idle (what the queue trigger does, locally)."""
    _drain_and_report(_settings(), as_json, wait, everything=everything)


@app.command()
def run(
    once: Annotated[bool, typer.Option("--once", help="One scan, then drain the queue until idle.")] = False,
    as_json: JsonOpt = False,
    dry_run: DryRunOpt = False,
    wait: WaitOpt = 0.0,
    everything: AllOpt = False,
) -> None:
    """Scan and rotate: the whole pipeline once (what `make demo` runs)."""
    if not once:
        err.print("only `run --once` is supported locally; in Azure the timer and queue triggers run it")
        raise typer.Exit(EXIT_INPUT)
    settings = _settings()
    report = _scan(settings, dry_run)
    if dry_run:
        if as_json:
            emit_json({"schema_version": JSON_SCHEMA_VERSION, "scan": report.to_json()})
        else:
            _print_scan(report, _rotation_rows(settings), "aks-rotator run --once", everything)
        raise typer.Exit(EXIT_DUE if report.due() else EXIT_OK)
    _drain_and_report(settings, as_json, wait, report, everything)


def _runbook() -> str:
    """The runbook the report links to: this checkout's docs/operations.md when there is one."""
    local = Path(__file__).resolve().parent.parent / estate.RUNBOOK
    return local.as_uri() if local.is_file() else estate.RUNBOOK


@app.command()
def report(
    html: Annotated[Path, typer.Option("--html", help="Write the expiry picture to this HTML file.", dir_okay=False)],
) -> None:
    """The estate's expiry picture as one self-contained HTML page (a dry-run scan: changes nothing)."""
    settings = _settings()
    scanned = _scan(settings, dry_run=True)
    rows = _rotation_rows(settings)
    page = report_html.render(scanned, rows or [], now=scanned.started_at or clock.now(), runbook=_runbook())
    try:
        html.write_text(page, encoding="utf-8")
    except OSError as exc:
        err.print(f"[red]cannot write {html}:[/red] {exc.strerror}")
        raise typer.Exit(EXIT_INPUT) from None
    out.print(views.scan_panel(estate.summarize(scanned, rows or ()), rows, "aks-rotator report"))
    out.print(f"report written to {html.resolve()}")


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


@app.command()
def status(
    rotation_id: Annotated[str | None, typer.Option("--rotation", help="Show one rotation with its audit.")] = None,
    audit: Annotated[bool, typer.Option("--audit", help="Show the audit trail of each listed rotation.")] = False,
    as_json: JsonOpt = False,
    everything: AllOpt = False,
) -> None:
    """Rotations and their steps, from the state and audit tables: failed and in-flight ones unless --all."""
    settings = _settings()
    found = _run(rotation.status(settings, rotation_id))
    if as_json:
        if audit and rotation_id is None:
            found = [detail for v in found for detail in _run(rotation.status(settings, v.rotation_id))]
        emit_json(found)
        return
    listed = found if (everything or rotation_id) else views.status_attention(found)
    out.print(views.status_panel(found, len(listed), everything or rotation_id is not None))
    if audit and rotation_id is None:
        listed = [detail for v in listed for detail in _run(rotation.status(settings, v.rotation_id))]
    if listed:
        out.print(views.status_table(listed))
    for view in listed if (audit or rotation_id) else []:
        out.print(views.audit_table(view))
    if rotation_id is None and (left := _run(rotation.foreign_left(settings, clock.now()))):
        out.print(views.foreign_table(left))


@app.command()
def event(
    file: Annotated[
        typer.FileBinaryRead, typer.Argument(help="Event Grid or CloudEvents JSON, as the host delivers it.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Deliver one Key Vault event locally (what the keyvault-events queue trigger does)."""
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
    with _progress() as progress:
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


cli_migrate.register(app)


def main() -> None:
    app()
