"""Discovery's collect step: the ARM fallback of the cluster inventory, application passwords from Microsoft Graph,
the product's Key Vault records, CA expiries. An authorization failure raises `DiscoveryError` naming the missing
right; other failures are noted in the run's errors.

Cost at scale (see docs/discovery.md and `bench/scan.py`): every distinct application looked up once through
`GraphOps.lookup_apps` (15 appIds per `$filter`, 20 filters per `$batch`); one paged Key Vault listing of secret
names, plus one version listing only for clusters whose latest version is not the current one; CA expiry only for
clusters where it can matter.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, HttpResponseError

from shared.aks import AksClient, AksError, AuthorizationFailed, ClusterInfo, ClusterNotFound
from shared.azure import graph_scope, secret_client
from shared.cluster_tags import certificates_opted_in
from shared.discovery.context import DiscoveryError, Scan
from shared.graph import AppCredentials, GraphAuthorizationError, GraphError, GraphOps
from shared.inventory import arm_listing
from shared.settings import Settings
from shared.vault import SECRET_PREFIX, VaultError, VaultForbidden, VaultStore, VersionTags, secret_name_for

T = TypeVar("T")


async def _bounded(limit: int, items: Sequence[T], call: Callable[[T], Awaitable[Any]]) -> list[Any]:
    """Run `call` on every item with at most `limit` in flight; results (or exceptions) in item order."""
    semaphore = asyncio.Semaphore(max(1, limit))

    async def one(item: T) -> Any:
        async with semaphore:
            return await call(item)

    if not items:
        return []
    # The first call alone: it fetches the access token every later call reuses (concurrent first calls on
    # fresh SDK clients would each fetch one).
    first = await asyncio.gather(one(items[0]), return_exceptions=True)
    rest = await asyncio.gather(*(one(i) for i in items[1:]), return_exceptions=True)
    return [*first, *rest]


# -- clusters --------------------------------------------------------------------------------------------------
async def arm_inventory(run: Scan, aks: AksClient, allow: list[str] | None) -> tuple[list[ClusterInfo], int]:
    """The ARM fallback of the inventory (shared.inventory); discovery stops on a subscription it may not list."""
    if allow is None:
        run.requests["arm.listSubscriptions"] += 1
    try:
        listing = await arm_listing(
            aks,
            allow,
            concurrency=run.settings.discovery_concurrency,
            done=lambda done, total: run.tick("clusters", done, total),
        )
    except AuthorizationFailed as exc:
        raise DiscoveryError(f"the identity may not list subscriptions: it lacks '{exc.action}'") from None
    except AksError as exc:
        raise DiscoveryError(f"listing subscriptions failed: {exc}") from None
    run.requests["arm.listClusters"] += len(listing.subscriptions)
    for subscription, failure in listing.failures.items():
        if isinstance(failure, AuthorizationFailed):
            raise DiscoveryError(
                f"the identity may not list clusters in subscription {subscription}: it lacks '{failure.action}' "
                f"on '{failure.scope}' (grant the rotator's custom role there, or remove the subscription from "
                "SUBSCRIPTION_ALLOWLIST)"
            )
        if not isinstance(failure, AksError | AzureError):
            raise failure
        run.errors.append(f"listing clusters in subscription {subscription} failed: {failure}")
    return listing.clusters, len(listing.subscriptions)


# -- applications ----------------------------------------------------------------------------------------------
async def warm_graph_token(credential: AsyncTokenCredential, settings: Settings) -> None:
    """Fetch the Graph token once before the concurrent `$batch` requests: each of them would otherwise miss the
    empty token cache and fetch its own. (The arguments are the ones kiota's provider passes; the audience is the
    configured one, as for every Graph call.)"""
    with contextlib.suppress(Exception):  # the lookup itself reports any authentication problem
        await credential.get_token(graph_scope(settings), enable_cae=True)


async def applications(
    run: Scan, graph: GraphOps, credential: AsyncTokenCredential, app_ids: list[str]
) -> dict[str, AppCredentials]:
    if not app_ids:
        return {}
    run.tick("applications", 0, len(app_ids))
    run.requests["graph.lookup_ids"] += len(app_ids)
    await warm_graph_token(credential, run.settings)
    try:
        found = await graph.lookup_apps(app_ids)
    except GraphAuthorizationError as exc:
        raise DiscoveryError(
            f"Microsoft Graph refused reading applications ({exc}): the identity needs the application permission "
            "Application.ReadWrite.OwnedBy (or Application.Read.All)"
        ) from None
    except GraphError as exc:
        raise DiscoveryError(f"Microsoft Graph lookup of {len(app_ids)} applications failed: {exc}") from None
    run.tick("applications", len(app_ids), len(app_ids))
    return found


class AppLookups:
    """Application look-ups shared by the pages of one scan: an appId is looked up once however many pages (or
    pages in flight together) name it, while it stays among the `capacity` most recently used; beyond that the
    memory is let go and a later page looks it up again."""

    def __init__(self, run: Scan, graph: GraphOps, credential: AsyncTokenCredential, capacity: int = 20_000) -> None:
        self.run = run
        self.graph = graph
        self.credential = credential
        self.capacity = capacity
        self._known: OrderedDict[str, AppCredentials | None] = OrderedDict()
        self._pending: dict[str, asyncio.Future[None]] = {}

    async def get(self, app_ids: list[str]) -> dict[str, AppCredentials]:
        mine = [a for a in app_ids if a not in self._known and a not in self._pending]
        others = {self._pending[a] for a in app_ids if a in self._pending}
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for app_id in mine:
            self._pending[app_id] = done
        try:
            found = await applications(self.run, self.graph, self.credential, mine)
            for app_id in mine:
                self._known[app_id] = found.get(app_id)
            done.set_result(None)
        except BaseException as exc:
            done.set_exception(exc if isinstance(exc, Exception) else DiscoveryError("cancelled"))
            done.exception()  # retrieved: waiting pages see it through their own await
            raise
        finally:
            for app_id in mine:
                self._pending.pop(app_id, None)
        for other in others:
            await other
        out: dict[str, AppCredentials] = {}
        for app_id in app_ids:
            creds = self._known.get(app_id)
            if app_id in self._known:
                self._known.move_to_end(app_id)
            if creds is not None:
                out[app_id] = creds
        while len(self._known) > self.capacity:
            self._known.popitem(last=False)
        return out


# -- Key Vault -------------------------------------------------------------------------------------------------
_KV_FORBIDDEN = (
    "Key Vault refused reading secret metadata ({detail}): the identity needs the role AKS credential rotator "
    "secrets (granted by infra/) on the rotator's vault"
)


async def _vault_names(
    run: Scan, credential: AsyncTokenCredential, sdk_kwargs: dict[str, Any]
) -> dict[str, dict[str, str]]:
    """Every product secret in the vault with the tags of its latest version (one paged listing)."""
    names: dict[str, dict[str, str]] = {}
    async with secret_client(run.settings, credential, **sdk_kwargs) as client:
        try:
            run.requests["keyvault.listSecrets"] += 1
            async for props in client.list_properties_of_secrets():
                if props.name and props.name.startswith(SECRET_PREFIX):
                    names[props.name] = dict(props.tags or {})
        except HttpResponseError as exc:
            if exc.status_code == 403:
                raise DiscoveryError(_KV_FORBIDDEN.format(detail=f"HTTP 403 {_code(exc)}")) from None
            raise
    return names


def _code(exc: HttpResponseError) -> str:
    return (exc.error.code if exc.error is not None else None) or ""


async def vault_listing(
    run: Scan, credential: AsyncTokenCredential, sdk_kwargs: dict[str, Any]
) -> dict[str, dict[str, str]]:
    """The product's secrets (name -> tags of the latest version), read once per scan; empty (and an error noted)
    when the listing fails for another reason than a missing right. As large as the rotated clusters, not the
    estate."""
    try:
        return await _vault_names(run, credential, sdk_kwargs)
    except DiscoveryError:
        raise
    except AzureError as exc:
        run.errors.append(f"Key Vault listing failed ({type(exc).__name__}); using the earliest-expiry rule")
        return {}


async def vault_keys(
    run: Scan,
    credential: AsyncTokenCredential,
    clusters: list[ClusterInfo],
    listed: dict[str, dict[str, str]],
    sdk_kwargs: dict[str, Any],
) -> dict[str, str]:
    """cluster id (lower) -> keyId of the version tagged state=current, for the clusters of `clusters` this
    product rotated (`listed`: `vault_listing`)."""
    keys: dict[str, str] = {}
    look: list[tuple[str, ClusterInfo]] = []
    for cluster in clusters:
        name = secret_name_for(cluster.id) if cluster.sp_client_id else None
        tags = listed.get(name) if name else None
        if name is None or tags is None or cluster.sp_client_id is None:
            continue
        labels = VersionTags.parse(tags)
        if labels.current_for(cluster.sp_client_id):
            keys[cluster.id.lower()] = labels.key_id
        else:
            look.append((name, cluster))  # the latest version is pending/previous/abandoned: find the current one
    if not look:
        return keys
    done = 0
    async with VaultStore(run.settings, credential, **sdk_kwargs) as vault:

        async def one(item: tuple[str, ClusterInfo]) -> tuple[str, str] | None:
            nonlocal done
            name, cluster = item
            run.requests["keyvault.listVersions"] += 1
            try:
                versions = await vault.versions(name)
            finally:
                done += 1
                run.tick("key vault", done, len(look))
            current = next((v for v in versions if v.labels.current_for(cluster.sp_client_id)), None)
            if current is None:
                return None
            return cluster.id.lower(), current.labels.key_id

        results = await _bounded(run.settings.discovery_concurrency, look, one)
    for (name, _), result in zip(look, results, strict=True):
        if isinstance(result, VaultForbidden):
            raise DiscoveryError(_KV_FORBIDDEN.format(detail=str(result)))
        if isinstance(result, BaseException):
            if not isinstance(result, VaultError | AzureError):
                raise result
            run.errors.append(f"Key Vault versions of {name} unreadable ({result}); using the earliest-expiry rule")
        elif result is not None:
            keys[result[0]] = result[1]
    return keys


# -- certificates ----------------------------------------------------------------------------------------------
def reads_certificate(settings: Settings, cluster: ClusterInfo) -> bool:
    """Whose CA expiry is read. listClusterUserCredential is one POST per cluster (ARM write quota), and clusters
    created after May 2019 have a 30-year CA, so only where it can matter: clusters opted in to certificate
    rotation, and clusters still on legacy AAD integration (a sure sign of an old cluster)."""
    return certificates_opted_in(settings, cluster) or cluster.legacy_aad_server_app_id is not None


async def certificates(run: Scan, aks: AksClient, clusters: list[ClusterInfo]) -> dict[str, datetime]:
    targets = [c for c in clusters if reads_certificate(run.settings, c)]
    if not targets:
        return {}
    done = 0

    async def one(cluster: ClusterInfo) -> datetime:
        nonlocal done
        run.requests["arm.listClusterUserCredential"] += 1
        try:
            return await aks.ca_expiry(cluster.id)
        finally:
            done += 1
            run.tick("certificates", done, len(targets))

    results = await _bounded(run.settings.discovery_concurrency, targets, one)
    expiries: dict[str, datetime] = {}
    for cluster, result in zip(targets, results, strict=True):
        if isinstance(result, datetime):
            expiries[cluster.id.lower()] = result
            continue
        if not isinstance(result, AksError | AzureError | ValueError):
            raise result
        if isinstance(result, AuthorizationFailed) and certificates_opted_in(run.settings, cluster):
            raise DiscoveryError(
                f"the identity may not read the kubeconfig of {cluster.id}: it lacks '{result.action}' "
                "(needed to learn the CA expiry of clusters opted in to certificate rotation)"
            )
        if isinstance(result, ClusterNotFound):
            continue  # deleted since the inventory
        run.errors.append(f"CA expiry of {cluster.name} unreadable: {result}")
    return expiries
