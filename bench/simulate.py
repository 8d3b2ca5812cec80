"""Simulation benchmark: simulated days per wall-clock second for a generated estate (default 50 clusters over
60 simulated days), against a floor measured in the same run.

    python -m bench.simulate --json [--clusters 50 --subscriptions 5 --days 60 --seed 1]

Starts Azurite and the emulator, loads `emulator.seeds.generate(clusters, subscriptions)` (expiries across 1-400
days, ~10% managed identity, shared applications, legacy AAD) with AKS operations of 10 minutes + 1 minute per
node, the emulator's wall-clock rate limits lifted (see LIFTED), and the product's default settings. Then, in
this one process:

* **floor** — the cost of the daily scans alone: `discovery.scan(dry_run=True)` once per simulated day, nothing
  queued, nothing rotated (what a simulation cannot avoid doing);
* **simulation** — `tests.support.sim.Simulation` over the same days from the same estate: the timer on
  `ROTATION_SCHEDULE`, every delivery, Key Vault's events, the rotations with their waits in simulated time; the
  whole promise is asserted at the end (`promise_kept`).

Prints JSON: `{clusters, subscriptions, days, wall_clock_quotas, simulation{seconds, sim_days_per_second, requests,
scans, deliveries, rotations, promise_kept, problem}, floor{seconds, sim_days_per_second, requests}, overhead}`
(`overhead`: simulation seconds / floor seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from datetime import timedelta
from typing import Any

from bench.scan import http_requests
from emulator import seeds
from emulator.sandbox import EmulatorControl, LocalAzure
from shared import discovery
from shared.azure import product_credential
from shared.settings import Settings
from shared.store import RotationStore
from tests.support.sim import Simulation

# The emulator's rate limits and quotas refill on the wall clock; a simulated day passes in a fraction of a wall
# second, so with them on, scans days apart share one 5-second Resource Graph window and the run measures the
# quota's waits (`--wall-clock-quotas` keeps them).
LIFTED = {
    "arm_read_capacity": 100000,
    "arm_read_refill": 100000,
    "arm_write_capacity": 100000,
    "arm_write_refill": 100000,
    "graph_capacity": 100000,
    "graph_refill": 100000,
    "resourcegraph_queries": 100000,
    "resourcegraph_window": 1,
}


def estate(clusters: int, subscriptions: int, seed: int, quotas: bool = False) -> dict[str, Any]:
    doc = seeds.generate(clusters, subscriptions, seed=seed)
    doc["lro"] = {"base_seconds": 600, "per_node_seconds": 60}
    if not quotas:
        doc["limits"] = LIFTED
    return doc


def fresh_settings(azure: LocalAzure) -> Settings:
    suffix = uuid.uuid4().hex[:12]
    env = azure.settings_env(
        LOG_LEVEL="WARNING",
        ROTATION_QUEUE=f"rot-{suffix}",
        STATE_TABLE=f"state{suffix}",
        AUDIT_TABLE=f"audit{suffix}",
        LOCK_CONTAINER=f"locks-{suffix}",
    )
    return Settings.from_env(env)


async def daily_scans(settings: Settings, days: int) -> None:
    credential = product_credential(settings)
    try:
        for _ in range(days):
            await discovery.scan(settings, dry_run=True, credential=credential)
    finally:
        await credential.close()


async def simulate(sim: Simulation, days: int) -> dict[str, Any]:
    await sim.run(timedelta(days=days))
    async with RotationStore(sim.settings) as store:
        await store.ensure()
        records = {r.rotation_id: r for r in await store.list()}
    states: dict[str, int] = {}
    for record in records.values():
        states[record.state] = states.get(record.state, 0) + 1
    problem = None
    try:
        sim.check(records)
    except AssertionError as exc:
        problem = str(exc).splitlines()[1] if len(str(exc).splitlines()) > 1 else str(exc)
    return {"rotations": states, "promise_kept": problem is None, "problem": problem}


def timed(control: EmulatorControl, work: Any) -> tuple[float, int, Any]:
    control.clear_requests()
    started = time.perf_counter()
    result = asyncio.run(work)
    seconds = time.perf_counter() - started
    return seconds, http_requests(control.requests()), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simulate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--subscriptions", type=int, default=5)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--wall-clock-quotas", action="store_true", help="keep the emulator's rate limits on")
    parser.add_argument("--json", action="store_true", help="one line of JSON")
    args = parser.parse_args(argv)
    doc = estate(args.clusters, args.subscriptions, args.seed, quotas=args.wall_clock_quotas)
    with LocalAzure() as azure:
        control = azure.control
        control.reset(doc)
        floor_seconds, floor_requests, _ = timed(control, daily_scans(fresh_settings(azure), args.days))
        control.reset(doc)
        sim = Simulation(control, fresh_settings(azure))
        sim_seconds, sim_requests, outcome = timed(control, simulate(sim, args.days))
    result = {
        "clusters": args.clusters,
        "subscriptions": args.subscriptions,
        "days": args.days,
        "wall_clock_quotas": args.wall_clock_quotas,
        "simulation": {
            "seconds": round(sim_seconds, 2),
            "sim_days_per_second": round(args.days / sim_seconds, 2),
            "requests": sim_requests,
            "scans": len(sim.scans),
            "deliveries": sim.deliveries,
            **outcome,
        },
        "floor": {
            "what": "one dry-run scan per simulated day",
            "seconds": round(floor_seconds, 2),
            "sim_days_per_second": round(args.days / floor_seconds, 2),
            "requests": floor_requests,
        },
        "overhead": round(sim_seconds / floor_seconds, 2),
    }
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
