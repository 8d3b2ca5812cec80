"""A simulated estate scanned by the sharded timer: the simulation's timer runs what function_app.py's does
(`shards.run_scheduled`), and with SCAN_SHARD_SUBSCRIPTIONS below the estate's subscriptions its shard messages
are handled as the `scan_shard` trigger would; the whole promise is asserted (`World.check`)."""

from __future__ import annotations

import asyncio
from typing import Any

from shared import shards
from shared.azure import blob_service, product_credential
from shared.settings import Settings


def _reports(settings: Settings) -> list[str]:
    """The run reports the shard completing each sharded run stored (`<run id>/report.json`)."""

    async def main() -> list[str]:
        credential = product_credential(settings)
        try:
            async with blob_service(settings, credential) as service:
                blobs = service.get_container_client(shards.container_name(settings))
                return [b.name async for b in blobs.list_blobs() if b.name.endswith("/" + shards.REPORT)]
        finally:
            await credential.close()

    return asyncio.run(main())


def test_sharded_timer_rotates_every_due_cluster(make_world: Any) -> None:
    clusters = [{"name": f"aks-{i}", "days": 5 + i, "subscription": i % 3} for i in range(6)]
    world = make_world(clusters, subscriptions=3, SCAN_SHARD_SUBSCRIPTIONS="1")
    world.run(3)
    world.check()
    records = world.records()
    assert {r.cluster_id.rsplit("/", 1)[-1] for r in records.values()} == {c["name"] for c in clusters}
    assert {r.state for r in records.values()} == {"succeeded"}
    assert world.sim.scans and all(outcome.startswith("ok") for _, outcome in world.sim.scans)
    assert len(_reports(world.settings)) == len(world.sim.scans)  # every scan ran as shards
