"""The clients a rotation uses, opened once per invocation (or once per drain, so a drain reuses connections)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential

from shared.aks import AksClient, ClusterInfo
from shared.azure import product_credential
from shared.graph import GraphOps
from shared.inventory import arm_listing
from shared.locks import ClusterLocks
from shared.queues import RotationQueues, open_queues
from shared.settings import Settings
from shared.store import RotationStore
from shared.vault import VaultStore

INVENTORY_TTL_SECONDS = 60


@dataclass
class Deps:
    settings: Settings
    credential: AsyncTokenCredential
    graph: GraphOps
    aks: AksClient
    vault: VaultStore
    store: RotationStore
    queues: RotationQueues
    locks: ClusterLocks
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    proof_kwargs: dict[str, Any] = field(default_factory=lambda: {"retry_total": 0})
    _product_sp: str | None = None
    _inventory: list[ClusterInfo] | None = None
    _inventory_at: float = 0.0

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        settings: Settings,
        *,
        sdk_kwargs: dict[str, Any] | None = None,
        graph_attempts: int = 4,
        ensure: bool = True,
    ) -> AsyncIterator[Deps]:
        """Open every client the engine uses; `sdk_kwargs` go to the ARM and Key Vault SDK clients (tests use
        `{"retry_total": 0}`), `graph_attempts` bounds GraphOps retries."""
        kwargs = dict(sdk_kwargs or {"retry_total": 3, "retry_backoff_factor": 0.5})
        async with contextlib.AsyncExitStack() as stack:
            credential = product_credential(settings)
            stack.push_async_callback(credential.close)
            graph = await stack.enter_async_context(GraphOps(settings, credential, max_attempts=graph_attempts))
            aks = await stack.enter_async_context(AksClient(settings, credential, **kwargs))
            vault = await stack.enter_async_context(VaultStore(settings, credential, **kwargs))
            store = await stack.enter_async_context(RotationStore(settings, credential))
            queues = await stack.enter_async_context(open_queues(settings, credential))
            locks = await stack.enter_async_context(ClusterLocks(settings, credential))
            deps = cls(settings, credential, graph, aks, vault, store, queues, locks)
            if ensure:
                await deps.ensure()
            yield deps

    async def ensure(self) -> None:
        key = (
            self.settings.storage_account_name or "conn",
            self.settings.state_table,
            self.settings.audit_table,
            self.settings.rotation_queue,
            self.settings.lock_container,
        )
        if key in _ENSURED:
            return
        await self.store.ensure()
        await self.queues.ensure()
        await self.locks.ensure()
        _ENSURED.add(key)

    async def product_sp_object_id(self) -> str | None:
        if self._product_sp is None:
            found = await self.graph.lookup_apps([self.settings.client_id])
            creds = found.get(self.settings.client_id.lower())
            self._product_sp = creds.service_principal_object_id if creds else None
        return self._product_sp

    async def inventory(self) -> list[ClusterInfo]:
        """Every cluster the product can see (cached for a minute): used to find clusters sharing an app before
        an old key is removed. ARM, not Resource Graph: Resource Graph lags ARM by minutes, and a cluster moved onto
        the application a moment ago must count. A subscription that cannot be listed raises (the key is kept)."""
        if self._inventory is None or time.monotonic() - self._inventory_at > INVENTORY_TTL_SECONDS:
            listing = await arm_listing(self.aks, None, concurrency=self.settings.discovery_concurrency)
            for failure in listing.failures.values():
                raise failure
            self._inventory, self._inventory_at = listing.clusters, time.monotonic()
        return self._inventory


_ENSURED: set[tuple[str, ...]] = set()


@contextlib.asynccontextmanager
async def deps_for(settings: Settings, deps: Deps | None) -> AsyncIterator[Deps]:
    """`deps` if the caller has them open, else clients opened for this call."""
    if deps is not None:
        yield deps
        return
    async with Deps.open(settings) as opened:
        yield opened
