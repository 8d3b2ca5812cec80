"""The cluster inventory: every cluster the product can see, and the one fallback rule discovery, preflight and the
retire step share — Resource Graph when it answers (paged, 1,000 clusters a request), ARM per subscription when it
refuses (`ResourceGraphRefused`). Each caller decides what a subscription it could not list means for it (discovery
stops, preflight reports, retire keeps the old key)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential

from shared.aks import AksClient, ClusterInfo
from shared.resource_graph import ResourceGraphRefused, query_clusters
from shared.settings import Settings


@dataclass
class Listing:
    clusters: list[ClusterInfo]
    subscriptions: list[str]
    failures: dict[str, Exception] = field(default_factory=dict)  # subscription -> why ARM could not list it
    used_fallback: bool = False


def unique(clusters: Iterable[ClusterInfo]) -> list[ClusterInfo]:
    """One entry per cluster id (case-insensitive), sorted by id."""
    seen: dict[str, ClusterInfo] = {}
    for cluster in clusters:
        seen.setdefault(cluster.id.lower(), cluster)
    return sorted(seen.values(), key=lambda c: c.id.lower())


async def arm_listing(
    aks: AksClient,
    subscriptions: Sequence[str] | None,
    *,
    concurrency: int,
    done: Callable[[int, int], None] | None = None,
) -> Listing:
    """ARM `managedClusters` per subscription (every subscription the identity sees when `subscriptions` is None).
    Listing the subscriptions raises; a subscription whose listing fails is reported in `failures`."""
    subs = list(subscriptions) if subscriptions is not None else await aks.list_subscriptions()
    semaphore = asyncio.Semaphore(max(1, concurrency))
    finished = 0

    async def one(subscription: str) -> list[ClusterInfo]:
        nonlocal finished
        async with semaphore:
            try:
                return await aks.list_clusters(subscription)
            finally:
                finished += 1
                if done is not None:
                    done(finished, len(subs))

    results = await asyncio.gather(*(one(s) for s in subs), return_exceptions=True)
    listing = Listing([], subs, used_fallback=True)
    for subscription, result in zip(subs, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            listing.failures[subscription] = result
        else:
            listing.clusters += result
    listing.clusters = unique(listing.clusters)
    return listing


async def inventory(
    settings: Settings,
    credential: AsyncTokenCredential,
    aks: AksClient,
    subscriptions: Sequence[str] | None = None,
    **sdk_kwargs: Any,
) -> Listing:
    """Resource Graph, or ARM per subscription when Resource Graph refuses (other Resource Graph errors raise)."""
    try:
        clusters = await query_clusters(
            settings, credential, list(subscriptions) if subscriptions else None, **sdk_kwargs
        )
    except ResourceGraphRefused:
        return await arm_listing(aks, subscriptions, concurrency=settings.discovery_concurrency)
    found = unique(clusters)
    subs = list(subscriptions) if subscriptions else sorted({c.subscription_id.lower() for c in found})
    return Listing(found, subs)
