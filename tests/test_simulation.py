"""Simulated months of a real estate: the real handlers against the emulator + Azurite, time simulated
(tests/support/sim.py), the whole promise asserted (tests/support/invariants.py)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from tests.plugins.azurite import StorageNames
from tests.support.engine import demo_estate, make_settings, rows
from tests.support.invariants import check_state, held_expiry
from tests.support.sim import Simulation

REALISTIC = {
    "PROOF_SPACING_SECONDS": "5",
    "PROOF_SUCCESSES": "5",
    "RETIRE_GRACE_SECONDS": "86400",
    "REQUEUE_DELAY_SECONDS": "60",
    "LRO_POLL_SECONDS": "120",
    "LEASE_SECONDS": "60",
    "MAINTENANCE_WINDOW": "Sat,Sun 01:00-05:00",
}


def test_a_year_of_the_demo_estate(emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames) -> None:
    doc = demo_estate()
    doc["lro"] = {"base_seconds": 600, "per_node_seconds": 120}
    emulator.reset(doc)
    settings = make_settings(emulator, azurite, storage_names, **REALISTIC)
    sim = Simulation(emulator, settings)
    start = emulator.state()
    expiries: dict[str, object] = {}
    rotated: dict[str, object] = {}
    for _ in range(2):
        before = emulator.state()
        for cluster_id, end in held_expiry(before).items():
            expiries.setdefault(cluster_id + end.isoformat(), end)
        asyncio.run(sim.run(timedelta(days=30)))
        after = emulator.state()
        records = asyncio.run(rows(settings))
        check_state(after, records, alerts=sim.alerts.alerts, before=before).check()
    _ = start, rotated
    print("\n".join(sim.log[-40:]))
    print(f"deliveries {sim.deliveries}, scans {len(sim.scans)}")
