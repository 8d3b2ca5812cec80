"""Per-cluster exclusive locks: one blob per cluster in the lock container, held with a blob lease.

    async with ClusterLocks(settings) as locks:
        await locks.ensure()
        async with locks.hold(cluster_id) as lease:   # LockBusy at once if someone else holds it
            ...
            await lease.ensure_held()                 # LockLost if the lease is gone; call before irreversible steps
            ...

While the body runs a background task renews the lease every `lease_seconds / 3`. If renewing fails the lease
is marked `lost` (it may already belong to someone else); the holder must check before acting. The lease is
released on exit, also when the body raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob.aio import BlobClient, BlobLeaseClient, BlobServiceClient, ContainerClient

from shared.azure import StorageResource, blob_service
from shared.settings import Settings

log = logging.getLogger(__name__)

# Stop trusting a lease this long before the service would expire it without a renewal.
_EXPIRY_MARGIN_SECONDS = 2.0


class LockBusy(Exception):
    """Another worker holds the lock for this cluster."""

    def __init__(self, cluster_id: str) -> None:
        super().__init__(f"cluster {cluster_id!r} is locked by another rotation")
        self.cluster_id = cluster_id


class LockLost(Exception):
    """The lease could not be renewed; another worker may now hold the lock."""

    def __init__(self, cluster_id: str, why: str = "") -> None:
        super().__init__(f"lock for cluster {cluster_id!r} was lost" + (f": {why}" if why else ""))
        self.cluster_id = cluster_id


def _error_code(exc: HttpResponseError) -> str:
    return str(getattr(exc, "error_code", None) or "")


def lock_blob_name(cluster_id: str) -> str:
    """The lock blob for a cluster: sha256 of the lower-cased id (any id becomes a valid blob name)."""
    return hashlib.sha256(cluster_id.lower().encode("utf-8")).hexdigest()


class ClusterLease:
    """A held lock. `lost` turns True when a renewal fails; `ensure_held()` raises `LockLost` then."""

    def __init__(self, cluster_id: str, lease: BlobLeaseClient, lease_seconds: int) -> None:
        self.cluster_id = cluster_id
        self.lease_seconds = lease_seconds
        self._lease = lease
        self._lock = asyncio.Lock()
        self._lost_reason: str | None = None
        self.renewals = 0
        self.last_renewed = time.monotonic()

    @property
    def lease_id(self) -> str:
        return str(self._lease.id)

    @property
    def lost(self) -> bool:
        if self._lost_reason is None and self._expired():
            self._lost_reason = "not renewed within the lease duration"
        return self._lost_reason is not None

    def _expired(self) -> bool:
        return time.monotonic() - self.last_renewed >= self.lease_seconds - _EXPIRY_MARGIN_SECONDS

    def _mark_lost(self, why: str) -> None:
        if self._lost_reason is None:
            self._lost_reason = why
            log.warning(
                "lock lease lost",
                extra={"event": "lock_lost", "cluster_id": self.cluster_id, "reason": why},
            )

    async def renew(self) -> bool:
        """Renew now; False (and `lost`) if the service refused or the lease had already expired."""
        async with self._lock:
            if self.lost:
                return False
            try:
                await self._lease.renew()
            except HttpResponseError as exc:
                # 409 LeaseIdMismatch / LeaseNotPresent / LeaseLost, 412, 404 blob gone: definitely not ours.
                self._mark_lost(f"renew refused ({exc.status_code} {_error_code(exc)})".strip())
                return False
            except Exception as exc:  # transport trouble: keep trying until the lease would have expired
                if self._expired():
                    self._mark_lost(f"renew failed ({type(exc).__name__})")
                return False
            self.renewals += 1
            self.last_renewed = time.monotonic()
            return True

    async def ensure_held(self) -> None:
        """Prove with the service that the lease is still ours (by renewing it now); raise `LockLost` otherwise.

        Call immediately before anything irreversible. A renewal that fails for a transient reason also raises:
        a holder that cannot prove it holds the lock must not act.
        """
        if not await self.renew():
            raise LockLost(self.cluster_id, self._lost_reason or "the service could not confirm the lease")

    async def _release(self) -> None:
        async with self._lock:
            if self._lost_reason is not None:
                return
            self._lost_reason = "released"
        try:
            await self._lease.release()
        except HttpResponseError as exc:
            # Expired or taken over meanwhile: nothing of ours to release.
            log.info("lock release refused", extra={"cluster_id": self.cluster_id, "status": exc.status_code})


class ClusterLocks(StorageResource):
    """Blob-lease locks in `settings.lock_container`. Use as an async context manager (closes the clients).

    `renew_every` overrides the renewal interval (default `lease_seconds / 3`); tests use a short one.
    """

    def __init__(
        self,
        settings: Settings,
        credential: AsyncTokenCredential | None = None,
        *,
        renew_every: float | None = None,
    ) -> None:
        if renew_every is not None and not 0 < renew_every < settings.lease_seconds:
            raise ValueError("renew_every must be between 0 and lease_seconds")
        super().__init__(settings, credential)
        self.lease_seconds = settings.lease_seconds
        self.renew_every = renew_every if renew_every is not None else settings.lease_seconds / 3
        self._service: BlobServiceClient = blob_service(settings, self._credential)
        self._container: ContainerClient = self._service.get_container_client(settings.lock_container)

    def _clients(self) -> tuple[Any, ...]:
        return (self._container, self._service)

    async def ensure(self) -> None:
        """Create the lock container if it does not exist."""
        with contextlib.suppress(ResourceExistsError):
            await self._container.create_container()

    async def _acquire(self, cluster_id: str) -> BlobLeaseClient:
        blob: BlobClient = self._container.get_blob_client(lock_blob_name(cluster_id))
        for _ in range(3):
            lease = BlobLeaseClient(blob)
            try:
                await lease.acquire(lease_duration=self.lease_seconds)
                return lease
            except ResourceNotFoundError as exc:
                if _error_code(exc) == "ContainerNotFound":
                    await self.ensure()
                await self._create_blob(blob, cluster_id)
            except HttpResponseError as exc:
                if exc.status_code == 409 and _error_code(exc) in ("", "LeaseAlreadyPresent"):
                    raise LockBusy(cluster_id) from None
                raise
        raise RuntimeError(f"could not create the lock blob for cluster {cluster_id!r}")

    @staticmethod
    async def _create_blob(blob: BlobClient, cluster_id: str) -> None:
        # The content names the cluster, for whoever looks at the container. Created meanwhile by another
        # holder (409) is fine.
        with contextlib.suppress(ResourceExistsError):
            await blob.upload_blob(cluster_id.encode("utf-8"), overwrite=False)

    async def _renew_loop(self, lease: ClusterLease) -> None:
        while True:
            await asyncio.sleep(self.renew_every)
            await lease.renew()
            if lease.lost:
                return

    @contextlib.asynccontextmanager
    async def hold(self, cluster_id: str) -> AsyncIterator[ClusterLease]:
        """Hold the cluster's lock for the body; `LockBusy` at once if another holder has it."""
        blob_lease = await self._acquire(cluster_id)
        lease = ClusterLease(cluster_id, blob_lease, self.lease_seconds)
        renewer = asyncio.create_task(self._renew_loop(lease), name=f"lock-renew-{lock_blob_name(cluster_id)[:12]}")
        try:
            yield lease
        finally:
            renewer.cancel()
            try:
                await asyncio.wait([renewer])
            finally:
                await lease._release()
