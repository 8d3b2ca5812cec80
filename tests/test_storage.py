"""Queues, locks and the rotation store against a real Azurite (no mocks)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from azure.storage.blob.aio import BlobLeaseClient, BlobServiceClient
from azure.storage.queue.aio import QueueClient

from emulator.azurite import Azurite
from shared.locks import ClusterLocks, LockBusy, LockLost, lock_blob_name
from shared.queues import RotationQueues
from shared.record import Phase
from shared.settings import Settings
from shared.store import AlreadyExists, RotationRecord, RotationStore, StaleRecord

CLUSTER = (
    "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/rg"
    "/providers/Microsoft.ContainerService/managedClusters/aks-1"
)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.05) -> float:
    """Poll `check` until it is true (bounded); return the seconds it took."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
    return time.monotonic() - start


def record(rotation_id: str, cluster_id: str = CLUSTER, **fields: object) -> RotationRecord:
    return RotationRecord.model_validate(
        {
            "rotation_id": rotation_id,
            "cluster_id": cluster_id,
            "kind": "sp_secret",
            "reason": "expires in 10 days",
            "correlation_id": "corr-1",
            **fields,
        }
    )


# -- Azurite ------------------------------------------------------------------------------------------------------
def test_azurite_is_reachable_on_loopback(azurite: Azurite) -> None:
    assert azurite.running
    cs = azurite.connection_string
    for port in (azurite.blob_port, azurite.queue_port, azurite.table_port):
        assert f"http://127.0.0.1:{port}/devstoreaccount1" in cs
    assert len({azurite.blob_port, azurite.queue_port, azurite.table_port}) == 3


def test_azurite_stop_ends_the_process() -> None:
    with Azurite() as own:
        assert own.running
    assert not own.running
    own.stop()  # idempotent


# -- queues -------------------------------------------------------------------------------------------------------
def test_queue_round_trip_is_base64_on_the_wire(storage_settings: Settings, azurite: Azurite) -> None:
    body = json.dumps({"version": 1, "cluster_id": CLUSTER, "note": "ünïcode"})

    async def scenario() -> None:
        async with RotationQueues(storage_settings) as queues:
            await queues.ensure()
            await queues.ensure()  # idempotent
            await queues.send(body)

            async with QueueClient.from_connection_string(
                azurite.connection_string, storage_settings.rotation_queue
            ) as raw:
                [wire] = await raw.peek_messages(max_messages=1)
            assert wire.content == base64.b64encode(body.encode()).decode()

            [got] = await queues.receive(max_messages=5, visibility_timeout=30)
            assert got.body == body and got.valid_encoding
            assert got.dequeue_count == 1
            assert got.inserted_on is not None and got.inserted_on.tzinfo is not None
            assert await queues.receive() == []  # invisible while we hold it
            await queues.delete(got)
            assert await queues.approximate_counts() == {"rotation": 0, "poison": 0}

    asyncio.run(scenario())


def test_delayed_send_is_invisible_until_the_delay_elapses(storage_settings: Settings) -> None:
    async def scenario() -> None:
        async with RotationQueues(storage_settings) as queues:
            await queues.ensure()
            sent_at = time.monotonic()
            await queues.send('{"later": true}', delay_seconds=1)
            assert await queues.receive() == []
            assert (await queues.approximate_counts())["rotation"] == 1  # there, but invisible

            seen: list[str] = []

            async def visible() -> bool:
                seen.extend(m.body for m in await queues.receive())
                return bool(seen)

            await eventually(visible, timeout=5.0, interval=0.1)
            assert time.monotonic() - sent_at >= 0.5
            assert seen == ['{"later": true}']

            with pytest.raises(ValueError):
                await queues.send("{}", delay_seconds=-1)

    asyncio.run(scenario())


def test_poison_queue_and_foreign_messages(storage_settings: Settings, azurite: Azurite) -> None:
    async def scenario() -> None:
        async with RotationQueues(storage_settings) as queues:
            await queues.ensure()
            await queues.poison('{"bad": 1}')
            [peeked] = await queues.peek_poison(5)
            assert peeked.body == '{"bad": 1}' and peeked.valid_encoding
            assert await queues.approximate_counts() == {"rotation": 0, "poison": 1}

            async with QueueClient.from_connection_string(
                azurite.connection_string, storage_settings.poison_queue
            ) as raw:
                [wire] = await raw.peek_messages()
                assert wire.content == base64.b64encode(b'{"bad": 1}').decode()
            async with QueueClient.from_connection_string(
                azurite.connection_string, storage_settings.rotation_queue
            ) as raw:
                await raw.send_message("plain {not base64}")  # someone bypassing the encoding
            [foreign] = await queues.receive()
            assert not foreign.valid_encoding and foreign.body == "plain {not base64}"

    asyncio.run(scenario())


# -- locks --------------------------------------------------------------------------------------------------------
def test_lock_is_exclusive_per_cluster(storage_settings: Settings) -> None:
    async def scenario() -> None:
        async with ClusterLocks(storage_settings) as locks, ClusterLocks(storage_settings) as other:
            await locks.ensure()
            async with locks.hold(CLUSTER) as lease:
                assert not lease.lost
                with pytest.raises(LockBusy) as busy:
                    async with other.hold(CLUSTER.upper()):  # ARM ids are case-insensitive: same lock
                        raise AssertionError("second holder got the lock")
                assert busy.value.cluster_id == CLUSTER.upper()
                async with other.hold(CLUSTER + "-2") as second:  # different cluster: no contention
                    await second.ensure_held()
                await lease.ensure_held()
            assert lease.lost  # released: no longer ours
            async with other.hold(CLUSTER) as again:
                await again.ensure_held()

    asyncio.run(scenario())


def test_lock_released_when_the_body_raises_and_blob_created_on_demand(storage_settings: Settings) -> None:
    async def scenario() -> None:
        async with ClusterLocks(storage_settings) as locks:
            # no ensure(): the container and the blob are created when first needed
            with pytest.raises(RuntimeError, match="boom"):
                async with locks.hold("any id / with # odd ? chars"):
                    raise RuntimeError("boom")
            async with locks.hold("any id / with # odd ? chars") as lease:
                assert len(lock_blob_name("any id / with # odd ? chars")) == 64
                await lease.ensure_held()

    asyncio.run(scenario())


def test_lock_is_renewed_while_held(storage_settings: Settings) -> None:
    async def scenario() -> None:
        settings = storage_settings.model_copy(update={"lease_seconds": 15})
        async with ClusterLocks(settings, renew_every=0.3) as locks, ClusterLocks(settings) as other:
            await locks.ensure()
            async with locks.hold(CLUSTER) as lease:
                renewed_before = lease.last_renewed

                async def renewed_twice() -> bool:
                    return lease.renewals >= 2

                await eventually(renewed_twice, timeout=4.0)
                assert lease.last_renewed > renewed_before and not lease.lost
                with pytest.raises(LockBusy):
                    async with other.hold(CLUSTER):
                        pass

    asyncio.run(scenario())


def test_lost_lease_is_surfaced(storage_settings: Settings, azurite: Azurite) -> None:
    async def scenario() -> None:
        async with ClusterLocks(storage_settings, renew_every=0.2) as locks:
            await locks.ensure()
            async with locks.hold(CLUSTER) as lease:
                async with BlobServiceClient.from_connection_string(azurite.connection_string) as svc:
                    blob = svc.get_blob_client(storage_settings.lock_container, lock_blob_name(CLUSTER))
                    await BlobLeaseClient(blob).break_lease(lease_break_period=0)

                async def lost() -> bool:
                    return lease.lost

                await eventually(lost, timeout=4.0)
                with pytest.raises(LockLost):
                    await lease.ensure_held()
            # exiting after a loss does not raise, and the lock is free again
            async with locks.hold(CLUSTER) as again:
                await again.ensure_held()

    asyncio.run(scenario())


# -- store --------------------------------------------------------------------------------------------------------
def test_create_get_save_and_conflicts(storage_settings: Settings) -> None:
    async def scenario() -> None:
        async with RotationStore(storage_settings) as store:
            await store.ensure()
            await store.ensure()
            assert await store.get("r-1") is None
            expiry = datetime(2027, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
            created = await store.create(
                record("r-1", app_id="app", holder="application", old_key_ids=["k1", "k2"], observed_expiry=expiry)
            )
            assert created.etag
            with pytest.raises(AlreadyExists):
                await store.create(record("r-1"))

            read = await store.get("r-1")
            assert read is not None
            assert read.model_dump(exclude={"etag"}) == created.model_dump(exclude={"etag"})
            assert read.old_key_ids == ["k1", "k2"] and read.observed_expiry == expiry
            assert read.created_at.tzinfo is UTC and type(read.created_at) is datetime

            read.state, read.phase, read.attempts = "running", Phase.CREATE, 1
            saved = await store.save(read)
            assert saved.etag != read.etag and saved.updated_at >= read.updated_at

            read.phase = Phase.STORE
            with pytest.raises(StaleRecord):
                await store.save(read)  # read's etag is now stale
            current = await store.get("r-1")
            assert current is not None and current.phase == Phase.CREATE and current.attempts == 1

            current.holder = None  # REPLACE drops the property
            await store.save(current)
            again = await store.get("r-1")
            assert again is not None and again.holder is None

            with pytest.raises(ValueError):
                record("bad/id")
            with pytest.raises(ValueError):
                record("r-2", not_before=datetime(2027, 1, 1))  # naive datetimes are refused

    asyncio.run(scenario())


def test_list_pages_and_filters(storage_settings: Settings) -> None:
    async def scenario() -> None:
        async with RotationStore(storage_settings) as store:
            await store.ensure()
            async with store._service.get_table_client(storage_settings.state_table) as table:
                rows = [
                    record(f"r-{i:05d}", cluster_id=f"{CLUSTER}-{i % 3}", state="succeeded" if i % 2 else "pending")
                    for i in range(1001)
                ]
                for start in range(0, len(rows), 100):
                    await table.submit_transaction([("create", r.to_entity()) for r in rows[start : start + 100]])

            everything = await store.list()
            assert len(everything) == 1001
            assert {r.rotation_id for r in everything} == {r.rotation_id for r in rows}
            assert len(await store.list(state="pending")) == 501
            by_cluster = await store.list(cluster_id=f"{CLUSTER}-1".upper())
            assert len(by_cluster) == 334
            assert len(await store.list(state="succeeded", cluster_id=f"{CLUSTER}-1")) == 167
            assert await store.list(state="x' or PartitionKey ne 'y") == []  # parameters, not concatenation

    asyncio.run(scenario())


def test_active_for(storage_settings: Settings) -> None:
    async def scenario() -> None:
        async with RotationStore(storage_settings) as store:
            await store.ensure()
            assert await store.active_for(CLUSTER, "sp_secret") is None
            await store.create(record("done", state="succeeded"))
            await store.create(record("broken", state="failed"))
            await store.create(record("cert", kind="cluster_certificate", state="running"))
            await store.create(record("other", cluster_id=CLUSTER + "-other", state="waiting"))
            assert await store.active_for(CLUSTER, "sp_secret") is None
            await store.create(record("live", state="waiting"))
            active = await store.active_for(CLUSTER.upper(), "sp_secret")
            assert active is not None and active.rotation_id == "live"
            cert = await store.active_for(CLUSTER, "cluster_certificate")
            assert cert is not None and cert.rotation_id == "cert"

    asyncio.run(scenario())


def test_audit_trail_order_and_rejections(storage_settings: Settings) -> None:
    async def scenario() -> None:
        async with RotationStore(storage_settings) as store:
            await store.ensure()
            steps = [f"step-{i}" for i in range(25)]
            for step in steps:
                await store.audit("rot-a", step, "ok", f"did {step}", key_id="k1", attempt=2)
            await store.audit("rot-b", "start", "ok", "b")
            trail = await store.audit_log("rot-a")
            assert [row.step for row in trail] == steps
            assert trail[0].fields == {"key_id": "k1", "attempt": 2}
            assert all(row.at.tzinfo is UTC for row in trail)
            assert [a.at for a in trail] == sorted(a.at for a in trail)
            assert [row.rotation_id for row in await store.audit_log()] == ["rot-a"] * 25 + ["rot-b"]
            with pytest.raises(ValueError):
                await store.audit("rot-a", "s", "ok", "d", step="clash")

            rejection = await store.record_rejection("queue", "schema: version missing", "corr-9", "x" * 500)
            assert len(rejection.excerpt) == 200
            [stored] = await store.rejections()
            assert stored.source == "queue" and stored.correlation_id == "corr-9" and stored.excerpt == "x" * 200
            assert stored.at.tzinfo is UTC
            assert all(row.rotation_id != "rejected" for row in await store.audit_log())

    asyncio.run(scenario())


def test_future_dates_round_trip(storage_settings: Settings) -> None:
    async def scenario() -> None:
        async with RotationStore(storage_settings) as store:
            await store.ensure()
            when = datetime.now(UTC) + timedelta(days=3)
            created = await store.create(record("r-t", not_before=when, operation_url="https://127.0.0.1/op"))
            read = await store.get("r-t")
            assert read is not None and read.not_before == when == created.not_before

    asyncio.run(scenario())
