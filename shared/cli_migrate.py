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
from shared.aks import AksClient
from shared.azure import product_credential
from shared.graph import GraphOps
from shared.migration.arm import MigrationArm
from shared.migration.collect import Collected, Sources, collect
from shared.migration.execute import Executor, Step
from shared.migration.plan import ClusterPlan, Stage
from shared.settings import Settings
from shared.store import RotationStore

out = Console(highlight=False, soft_wrap=True)
EXIT_OK, EXIT_FAILURE, EXIT_INPUT = 0, 1, 2


async def _with_sources(settings: Settings, work: Any) -> Any:
    credential = product_credential(settings)
    try:
        async with (
            AksClient(settings, credential) as aks,
            MigrationArm(settings, credential) as arm,
            GraphOps(settings, credential) as graph,
        ):
            return await work(Sources(settings, credential, aks, arm, graph))
    finally:
        await credential.close()


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


async def execute(src: Sources, cluster_id: str, wait_seconds: float) -> list[Step]:
    """Advance the migration until it is done, stopped, or the next wait is longer than `wait_seconds`."""
    steps: list[Step] = []
    async with RotationStore(src.settings) as store:
        await store.ensure()
        executor = Executor(
            src, store, poll_seconds=src.settings.lro_poll_seconds, requeue_seconds=src.settings.requeue_delay_seconds
        )
        while True:
            step = await executor.advance(cluster_id, clock.now())
            steps.append(step)
            if step.retry_after is None or step.retry_after > wait_seconds:
                return steps
            await asyncio.sleep(step.retry_after)


def register(app: typer.Typer) -> None:
    """Add `migrate` to the `aks-rotator` app."""

    @app.command()
    def migrate(
        plan: Annotated[bool, typer.Option("--plan", help="Print the migration plan; change nothing.")] = False,
        execute_: Annotated[bool, typer.Option("--execute", help="Run the migration of --cluster (admin).")] = False,
        cluster: Annotated[str | None, typer.Option("--cluster", help="ARM id of one cluster.")] = None,
        all_clusters: Annotated[bool, typer.Option("--all", help="Every SP cluster.")] = False,
        identity: Annotated[str | None, typer.Option("--identity", help="Existing control-plane identity id.")] = None,
        wait: Annotated[float, typer.Option("--wait", help="With --execute: wait at most S seconds a step.")] = 0.0,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    ) -> None:
        """Plan (or, by an administrator, execute) the move of SP clusters to managed identity."""
        from shared.cli import _run, _settings, emit_json

        if plan == execute_ or (execute_ and not cluster) or (plan and not (cluster or all_clusters)):
            typer.echo("use --plan with --cluster ID or --all, or --execute with --cluster ID", err=True)
            raise typer.Exit(EXIT_INPUT)
        settings = _settings()
        if execute_:
            assert cluster is not None
            steps: list[Step] = _run(_with_sources(settings, lambda src: execute(src, cluster, wait)))
            if as_json:
                emit_json({"steps": steps})
            else:
                for step in steps:
                    out.print(f"{step.phase.value:12} {step.detail}")
            raise typer.Exit(EXIT_FAILURE if steps[-1].phase.value == "failed" else EXIT_OK)
        now = clock.now()
        collected: Collected = _run(
            _with_sources(settings, lambda src: collect(src, now=now, cluster_id=cluster, identity=identity))
        )
        if as_json:
            emit_json(_json(collected))
        else:
            if not collected.plans:
                out.print("No service-principal cluster to migrate.")
            for item in collected.plans:
                out.print("\n".join(render(item, now)))
        raise typer.Exit(EXIT_OK)
