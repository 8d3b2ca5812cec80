"""`aks-rotator migrate`: the migration plan of SP clusters (`--plan`), or its execution for one cluster by an
administrator (`--execute`), step by step until it is done, waits longer than `--wait`, or stops (docs/migration.md).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console

from shared import clock
from shared.inventory import inventory
from shared.migration.collect import Collected, Sources, collect, open_sources
from shared.migration.execute import Executor, Step, migration_id
from shared.migration.opt_in import MIGRATE_TAG, opted_in
from shared.migration.plan import ClusterPlan, Stage
from shared.migration.rights import check_rights
from shared.settings import Settings
from shared.store import RotationStore

out = Console(highlight=False, soft_wrap=True)
EXIT_OK, EXIT_FAILURE, EXIT_INPUT = 0, 1, 2


async def _with_sources(settings: Settings, work: Any) -> Any:
    async with open_sources(settings) as src:
        return await work(src)


def progress_line(counts: dict[str, int]) -> str:
    """The scan's migration progress: clusters per stage."""
    sp, half, done = (counts.get(s.value, 0) for s in Stage)
    return f"migration: {sp:,} on a service principal · {half:,} control plane moved, kubelet not · {done:,} moved"


def render(plan: ClusterPlan, now: datetime) -> list[str]:
    """One cluster's plan as text lines."""
    lines = [f"== {plan.name}  ({plan.stage.value})", f"   {plan.cluster_id}", f"   application: {plan.app_id}"]
    lines.append("   service principal's role assignments:")
    lines += [f"     - {h.role} on {h.scope}" for h in plan.held] or ["     (none visible)"]
    lines.append(f"   control-plane identity: {plan.control_plane_identity}")
    lines.append(f"   kubelet identity:       {plan.kubelet_identity}")
    lines.append("   grants before the switch:")
    lines += [f"     - [{g.component.value}] {g.role} on {g.scope}" for g in plan.grants]
    lines.append("   node pools to upgrade (node image):")
    for pool in plan.pools:
        when = "no window will open" if pool.window_opens is None else pool.window_opens.strftime("%Y-%m-%d %H:%M UTC")
        when = "now" if pool.window_opens is not None and pool.window_opens <= now else when
        lines.append(f"     - {pool.name}: window {pool.windows}, opens {when}")
    if plan.blockers:
        lines.append("   blockers:")
        lines += [f"     - {'STOPS ' if b.stops_execution else ''}{b.text}" for b in plan.blockers]
    lines.append("   commands:")
    lines += [f"     {c}" for c in plan.commands]
    lines.append(f"   NOTE: {plan.irreversible}")
    return lines


def _json(collected: Collected) -> dict[str, Any]:
    from shared.cli import JSON_SCHEMA_VERSION, _jsonable

    plans = []
    for plan in collected.plans:
        doc = _jsonable(plan)
        doc["executable"] = plan.executable
        plans.append(doc)
    return {"schema_version": JSON_SCHEMA_VERSION, "plans": plans, "used_arm_fallback": collected.used_arm_fallback}


async def execute(src: Sources, cluster_id: str, wait_seconds: float, identity: str | None = None) -> list[Step]:
    """Advance the migration until it is done, stopped, or the next wait is longer than `wait_seconds`."""
    steps: list[Step] = []
    async with RotationStore(src.settings) as store:
        await store.ensure()
        executor = Executor(
            src,
            store,
            poll_seconds=src.settings.lro_poll_seconds,
            requeue_seconds=src.settings.requeue_delay_seconds,
            identity=identity,
        )
        while True:
            step = await executor.advance(cluster_id, clock.now())
            steps.append(step)
            if step.retry_after is None or step.retry_after > wait_seconds:
                return steps
            await asyncio.sleep(step.retry_after)


async def tagged(src: Sources) -> list[str]:
    """SP clusters opted in to migration by the `aks-rotator-migrate` tag."""
    listing = await inventory(src.settings, src.credential, src.aks)
    return [c.id for c in listing.clusters if opted_in(c)]


async def execute_all(
    src: Sources, cluster_ids: list[str] | None, wait_seconds: float, identity: str | None
) -> list[Step]:
    steps: list[Step] = []
    for cluster_id in cluster_ids if cluster_ids is not None else await tagged(src):
        steps += await execute(src, cluster_id, wait_seconds, identity)
    return steps


def _print_plans(collected: Collected, now: datetime, as_json: bool) -> None:
    from shared.cli import emit_json

    if as_json:
        emit_json(_json(collected))
        return
    if not collected.plans:
        out.print("No service-principal cluster to migrate.")
    for item in collected.plans:
        out.print("\n".join(render(item, now)), markup=False)


def register(app: typer.Typer) -> None:
    """Add `migrate` to the `aks-rotator` app."""

    @app.command()
    def migrate(
        plan: Annotated[bool, typer.Option("--plan", help="Print the migration plan; change nothing.")] = False,
        execute_: Annotated[bool, typer.Option("--execute", help="Migrate --cluster or --tagged (admin).")] = False,
        preflight: Annotated[bool, typer.Option("--preflight", help="Check migration's rights.")] = False,
        audit: Annotated[bool, typer.Option("--audit", help="The audit trail of --cluster's migration.")] = False,
        cluster: Annotated[str | None, typer.Option("--cluster", help="ARM id of one cluster.")] = None,
        all_clusters: Annotated[bool, typer.Option("--all", help="Every SP cluster.")] = False,
        tagged_: Annotated[bool, typer.Option("--tagged", help=f"SP clusters tagged {MIGRATE_TAG}.")] = False,
        identity: Annotated[str | None, typer.Option("--identity", help="Existing control-plane identity id.")] = None,
        wait: Annotated[float, typer.Option("--wait", help="With --execute: wait at most S seconds a step.")] = 0.0,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    ) -> None:
        """Plan (or, by an administrator, execute) the move of SP clusters to managed identity."""
        from shared.cli import _run, _settings, emit_json

        selected = bool(cluster) + all_clusters + tagged_
        if audit and cluster and not (plan or execute_ or preflight or all_clusters or tagged_):
            rows = _run(trail(_settings(), cluster))
            if as_json:
                emit_json({"audit": rows})
            for row in [] if as_json else rows:
                out.print(f"{row.at:%Y-%m-%d %H:%M:%S} {row.step:12} {row.outcome:10} {row.detail}", markup=False)
            raise typer.Exit(EXIT_OK)
        if plan + execute_ + preflight != 1 or selected != 1 or (tagged_ and not execute_):
            typer.echo(
                "use one of --plan/--preflight (--cluster ID | --all) or --execute (--cluster ID | --tagged)", err=True
            )
            raise typer.Exit(EXIT_INPUT)
        if execute_ and all_clusters:
            typer.echo("--execute runs on one --cluster, or on the clusters opted in with --tagged", err=True)
            raise typer.Exit(EXIT_INPUT)
        settings = _settings()
        now = clock.now()
        if preflight:
            findings = _run(_with_sources(settings, lambda src: rights(src, cluster)))
            if as_json:
                emit_json({"findings": findings})
            for finding in [] if as_json else findings:
                line = f"{'ok' if finding.ok else 'MISSING':8} {finding.scope}  {finding.missing}  {finding.fix}"
                out.print(line, markup=False)
            raise typer.Exit(EXIT_OK if all(f.ok for f in findings) else EXIT_FAILURE)
        if execute_:
            ids = [cluster] if cluster else None
            steps: list[Step] = _run(_with_sources(settings, lambda src: execute_all(src, ids, wait, identity)))
            if as_json:
                emit_json({"steps": steps})
            for step in [] if as_json else steps:
                out.print(f"{step.cluster_id.rsplit('/', 1)[-1]:24} {step.phase.value:12} {step.detail}", markup=False)
            raise typer.Exit(EXIT_FAILURE if any(s.phase.value == "failed" for s in steps) else EXIT_OK)
        collected: Collected = _run(
            _with_sources(settings, lambda src: collect(src, now=now, cluster_id=cluster, identity=identity))
        )
        _print_plans(collected, now, as_json)
        raise typer.Exit(EXIT_OK)


async def trail(settings: Settings, cluster_id: str) -> list[Any]:
    async with RotationStore(settings) as store:
        await store.ensure()
        return await store.audit_log(migration_id(cluster_id))


async def rights(src: Sources, cluster: str | None) -> list[Any]:
    ids = [cluster] if cluster else [c.id for c in (await inventory(src.settings, src.credential, src.aks)).clusters]
    return await check_rights(src, ids)
