"""The rotation state machine (queue trigger): small idempotent steps threaded by one rotation id.

    submit ─► [start/create ─► store] ─► prove ─► apply ─► verify ─► finish ─► retire ─► succeeded
                         └──────────── any definitive failure before the cluster uses the secret ─► cleanup ─► failed

Every step is idempotent and its outcome is saved (ETag-guarded row in Table storage) before the next one
starts; the queue message carries only ids, the step and an attempt number, never a secret. When a step has to
wait (replication, the maintenance window, the AKS long-running operation, the retire grace period) the worker
re-queues its own message with a visibility delay instead of holding the invocation open.

Exactly-one-live-message protocol: `row.attempts` is the attempt number of the message the row expects next.
A delivery whose attempt is lower is stale (a duplicate or a late redelivery) and is acknowledged without doing
anything; a higher one means the previous holder crashed between sending the next message and saving the row,
and is adopted. The next message is always sent *before* the row is saved, so a crash can duplicate a message
(the duplicate is then stale) but never lose the rotation.

See docs/design.md for the diagram, the "which secret does the cluster use" rule and the failure semantics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time as _time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, ClientAuthenticationError
from pydantic import SecretStr

from shared import edge, telemetry
from shared import windows as win
from shared.aks import (
    AksClient,
    AksError,
    AuthorizationFailed,
    ClusterBusy,
    ClusterInfo,
    ClusterNotFound,
    CredentialsRejected,
)
from shared.azure import ARM_AUDIENCE, product_credential, secret_credential
from shared.graph import (
    AppCredentials,
    GraphAuthorizationError,
    GraphError,
    GraphOps,
    Holder,
    NewPassword,
    PasswordInfo,
    PasswordPolicyError,
)
from shared.locks import ClusterLease, ClusterLocks, LockBusy
from shared.logs import alert, log_event, redact
from shared.messages import (
    CredentialKind,
    InvalidInput,
    RotationMessage,
    Step,
    check_allowed,
    new_rotation_message,
    parse_cluster_id,
    parse_message,
    rotation_id_for,
)
from shared.permissions import effective_actions
from shared.queues import MAX_DELAY_SECONDS, Received, RotationQueues
from shared.settings import Settings
from shared.store import AlreadyExists, AuditRow, RotationRecord, RotationStore, StaleRecord
from shared.vault import (
    MANAGED_BY,
    MANAGED_BY_TAG,
    StoredVersion,
    VaultError,
    VaultForbidden,
    VaultStore,
    secret_name_for,
)

log = logging.getLogger(__name__)

__all__ = [
    "DISPLAY_NAME_PREFIX",
    "Deps",
    "DrainReport",
    "RotationView",
    "StepOutcome",
    "SubmitResult",
    "drain",
    "handle_message",
    "handle_poison",
    "password_display_name",
    "rotate_now",
    "status",
    "submit",
]

DISPLAY_NAME_PREFIX = "aks-rotator"
MAX_DEQUEUE_COUNT = 5  # host.json extensions.queues.maxDequeueCount
MAX_UNCERTAIN_APPLIES = 12  # resets without an answer before the rotation fails (without clean-up)
INLINE_PROOF_SECONDS = 30.0  # prove within one invocation only if the whole spaced series fits in this
BUSY_DELAY_CAP_SECONDS = 15
_ROTATION_ID = re.compile(r"\b([0-9a-f]{32})\b")
_BUSY_STATES = frozenset(
    {"updating", "upgrading", "scaling", "creating", "deleting", "starting", "stopping", "canceling"}
)
_MESSAGE_STEP: dict[str, Step] = {
    "start": "create",
    "create": "create",
    "store": "store",
    "prove": "prove",
    "apply": "apply",
    "applying": "apply",
    "verify": "verify",
    "finish": "finish",
    "retire": "retire",
    "cleanup": "retire",
}
CERT_DOWNTIME_WARNING = (
    "rotateClusterCertificates restarts the control plane and nodes: expect up to 30 minutes of API downtime; "
    "kubeconfigs must be fetched again afterwards"
)


def password_display_name(rotation_id: str) -> str:
    """The displayName of a password this product creates: a retry finds it by the rotation id."""
    return f"{DISPLAY_NAME_PREFIX} {rotation_id}"


def product_created(password: PasswordInfo) -> str | None:
    """The rotation id in a password's displayName if this product created it, else None."""
    name = password.display_name or ""
    if not name.startswith(DISPLAY_NAME_PREFIX):
        return None
    match = _ROTATION_ID.search(name)
    return match.group(1) if match else None


# -- results ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SubmitResult:
    rotation_id: str
    cluster_id: str
    kind: str
    status: Literal["queued", "duplicate", "already_active", "dry_run"]
    detail: str
    message_id: str | None = None


Action = Literal["advanced", "waiting", "succeeded", "failed", "duplicate", "stale", "busy", "rejected"]


@dataclass(frozen=True)
class StepOutcome:
    action: Action
    rotation_id: str | None = None
    state: str | None = None
    step: str | None = None
    delay_seconds: int | None = None
    detail: str = ""


@dataclass
class DrainReport:
    received: int = 0
    handled: int = 0
    errors: int = 0
    poisoned: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    invocation_seconds: float = 0.0  # sum of handle_message durations (function execution time)
    wall_seconds: float = 0.0


@dataclass(frozen=True)
class AuditView:
    at: datetime
    step: str
    outcome: str
    detail: str


@dataclass(frozen=True)
class RotationView:
    rotation_id: str
    cluster_id: str
    kind: str
    app_id: str | None
    state: str
    step: str
    reason: str
    failure_reason: str | None
    not_before: datetime | None
    new_key_id: str | None
    created_at: datetime
    updated_at: datetime
    audit: tuple[AuditView, ...] = ()


# -- dependencies ----------------------------------------------------------------------------------------------
def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Deps:
    """Clients opened once per invocation (or once per drain, so a drain reuses connections)."""

    settings: Settings
    credential: AsyncTokenCredential
    graph: GraphOps
    aks: AksClient
    vault: VaultStore
    store: RotationStore
    queues: RotationQueues
    locks: ClusterLocks
    clock: Callable[[], datetime] = _utcnow
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
        clock: Callable[[], datetime] | None = None,
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
            queues = await stack.enter_async_context(RotationQueues(settings, credential))
            locks = await stack.enter_async_context(ClusterLocks(settings, credential))
            deps = cls(settings, credential, graph, aks, vault, store, queues, locks, clock=clock or _utcnow)
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
        """Every cluster the product can see (cached for a minute): used to find clusters sharing an app."""
        if self._inventory is None or _time.monotonic() - self._inventory_at > 60:
            clusters: list[ClusterInfo] = []
            for subscription in await self.aks.list_subscriptions():
                clusters += await self.aks.list_clusters(subscription)
            self._inventory, self._inventory_at = clusters, _time.monotonic()
        return self._inventory


_ENSURED: set[tuple[str, ...]] = set()


@contextlib.asynccontextmanager
async def _deps_for(settings: Settings, deps: Deps | None) -> AsyncIterator[Deps]:
    if deps is not None:
        yield deps
        return
    async with Deps.open(settings) as opened:
        yield opened


# -- step plumbing ---------------------------------------------------------------------------------------------
class _Failure(Exception):
    """A definitive failure: the rotation ends failed (with cleanup when `cleanup`)."""

    def __init__(self, reason: str, *, cleanup: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cleanup = cleanup


@dataclass(frozen=True)
class _Wait:
    delay: int
    detail: str
    state: Literal["waiting", "running"] = "running"


@dataclass(frozen=True)
class _Next:
    pass


@dataclass(frozen=True)
class _Done:
    detail: str


_Result = _Wait | _Next | _Done


def _phase(step: str) -> str:
    return step.split(":", 1)[0]


def _prove_progress(step: str) -> tuple[int, float | None]:
    """(consecutive successes, proof start as a timestamp) from "prove:<count>:<start>" or "apply:<start>"."""
    parts = step.split(":")
    try:
        if parts[0] in ("apply", "applying"):
            return 0, float(parts[1]) if len(parts) > 1 else None
        count = int(parts[1]) if len(parts) > 1 else 0
        started = float(parts[2]) if len(parts) > 2 else None
    except ValueError:
        return 0, None
    return count, started


class _Run:
    """One delivery of one rotation: the row as last saved, the message, the held lease."""

    def __init__(self, deps: Deps, message: RotationMessage, row: RotationRecord, lease: ClusterLease) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.message = message
        self.row = row
        self.lease = lease
        self.secret_name = secret_name_for(message.cluster_id)

    @property
    def rid(self) -> str:
        return self.row.rotation_id

    def now(self) -> datetime:
        return self.deps.clock()

    async def save(self, **updates: Any) -> RotationRecord:
        self.row = await self.deps.store.save(self.row.model_copy(update=updates))
        return self.row

    async def audit(self, step: str, outcome: str, detail: str, **fields: Any) -> None:
        await self.deps.store.audit(self.rid, step, outcome, redact(detail), **fields)
        log_event(
            log,
            logging.INFO,
            "rotation.step",
            f"{step}: {outcome}: {detail}",
            rotation_id=self.rid,
            cluster_id=self.row.cluster_id,
            step=step,
            outcome=outcome,
        )

    async def requeue(self, delay: int, *, state: Literal["waiting", "running"], detail: str) -> int:
        """Send the next message (before saving the row: see the module docstring); returns the delay used."""
        delay = max(0, min(int(delay), MAX_DELAY_SECONDS))
        attempt = self.row.attempts + 1
        not_before = self.now() + timedelta(seconds=delay)
        step = _MESSAGE_STEP.get(_phase(self.row.step), "create")
        message = self.message.requeue(step, not_before=not_before if delay else None, attempt=attempt)
        await self.deps.queues.send(message.to_json(), delay_seconds=delay)
        await self.save(attempts=attempt, state=state, not_before=not_before if delay else None)
        if state == "waiting":
            await self.audit(_phase(self.row.step), "waiting", detail, not_before=not_before)
        return delay


# -- planning: which object holds the cluster's secret, which keys the cluster used ----------------------------
@dataclass(frozen=True)
class _Plan:
    holder: Holder
    object_id: str
    old_key_ids: list[str]
    observed_expiry: datetime | None
    note: str


def _passwords(creds: AppCredentials) -> list[tuple[Holder, str, PasswordInfo]]:
    out: list[tuple[Holder, str, PasswordInfo]] = []
    if creds.application_object_id:
        out += [("application", creds.application_object_id, p) for p in creds.application_passwords]
    if creds.service_principal_object_id:
        out += [("servicePrincipal", creds.service_principal_object_id, p) for p in creds.service_principal_passwords]
    return out


def _passwords_on(everything: list[tuple[Holder, str, PasswordInfo]], object_id: str, password: PasswordInfo) -> bool:
    return any(o == object_id and p.key_id == password.key_id for _, o, p in everything)


def _plan(rid: str, creds: AppCredentials, versions: Sequence[StoredVersion], now: datetime) -> _Plan:
    """The holder and the keys to retire later. See docs/design.md, "Which secret does the cluster use"."""
    everything = _passwords(creds)
    by_key = {p.key_id.lower(): (h, o, p) for h, o, p in everything}
    ours = [v for v in versions if v.tags.get(MANAGED_BY_TAG) == MANAGED_BY and v.tags.get("app-id") == creds.app_id]
    current = next((v for v in ours if v.tags.get("state") == "current"), None)
    if current is not None and current.tags.get("key-id", "").lower() in by_key:
        holder, object_id, used = by_key[current.tags["key-id"].lower()]
        old = [used.key_id]
        # Keys of this cluster's earlier rotations that are still there (e.g. kept while another cluster used them).
        for version in ours:
            key = version.tags.get("key-id", "").lower()
            if version.tags.get("state") == "previous" and key in by_key and key not in old:
                old.append(key)
        return _Plan(holder, object_id, old, used.end, "the cluster's key is known from Key Vault")
    active = [(h, o, p) for h, o, p in everything if (p.end is None or p.end > now) and product_created(p) != rid]
    if not active:
        active = [(h, o, p) for h, o, p in everything if product_created(p) != rid]
    if not active:
        # No password at all: add to the application (or the service principal if no application is visible).
        if creds.application_object_id:
            return _Plan("application", creds.application_object_id, [], None, "the application has no password")
        if creds.service_principal_object_id:
            return _Plan("servicePrincipal", creds.service_principal_object_id, [], None, "no password")
        raise _Failure(f"application {creds.app_id} is not visible to the product", cleanup=False)
    far = datetime.max.replace(tzinfo=UTC)
    holder, object_id, earliest = min(active, key=lambda item: item[2].end or far)
    # Passwords created by this product for other clusters' rotations are not candidates: Key Vault knows them.
    foreign = [p for h, o, p in everything if product_created(p) is None]
    if len(foreign) == 1 and _passwords_on(everything, object_id, foreign[0]):
        return _Plan(holder, object_id, [foreign[0].key_id], foreign[0].end, "the holder has a single password")
    untouched = len([p for h, o, p in everything if product_created(p) != rid])
    note = f"first rotation with {untouched} passwords on the app: left {untouched} pre-existing credentials untouched"
    return _Plan(holder, object_id, [], earliest.end, note)


# -- the steps -------------------------------------------------------------------------------------------------
async def _lookup(run: _Run) -> AppCredentials:
    app_id = run.row.app_id or ""
    try:
        found = await run.deps.graph.lookup_apps([app_id])
    except GraphAuthorizationError as exc:
        raise _Failure(
            f"Microsoft Graph refused reading application {app_id} ({exc}): the product needs "
            "Application.ReadWrite.OwnedBy",
            cleanup=False,
        ) from None
    creds = found.get(app_id.lower())
    if creds is None:
        raise _Failure(f"application {app_id} was not found in Microsoft Graph", cleanup=False)
    return creds


async def _preflight(run: _Run, creds: AppCredentials) -> list[StoredVersion]:
    """Cheap checks that every right the rotation needs is there, before anything is created."""
    deps, cluster_id = run.deps, run.row.cluster_id
    try:
        cluster = await deps.aks.get_cluster(cluster_id)
        await deps.aks.maintenance_windows(cluster_id)
    except AuthorizationFailed as exc:
        raise _Failure(f"missing ARM permission '{exc.action}' ({exc})", cleanup=False) from None
    except ClusterNotFound:
        raise _Failure(f"cluster {cluster_id} no longer exists", cleanup=False) from None
    if (cluster.sp_client_id or "").lower() != (run.row.app_id or "").lower():
        raise _Failure(
            f"the cluster no longer uses application {run.row.app_id} (it uses {cluster.sp_client_id or 'msi'})",
            cleanup=False,
        )
    await _require_actions(deps, cluster.id, APPLY_ACTIONS)
    try:
        versions = await deps.vault.versions(run.secret_name)
    except VaultForbidden as exc:
        raise _Failure(f"missing Key Vault permission (role Key Vault Secrets Officer): {exc}", cleanup=False) from None
    me = await deps.product_sp_object_id()
    if creds.application_object_id and me:
        try:
            owners = await deps.graph.owners("application", creds.application_object_id)
        except GraphAuthorizationError as exc:
            raise _Failure(
                f"Microsoft Graph refused listing owners ({exc}): the product needs Application.ReadWrite.OwnedBy",
                cleanup=False,
            ) from None
        if me.lower() not in {o.lower() for o in owners}:
            raise _Failure(
                f"the product is not an owner of application {creds.app_id} (Application.ReadWrite.OwnedBy "
                "requires ownership; run `aks-rotator adopt`)",
                cleanup=False,
            )
    return versions


APPLY_ACTIONS = (
    "Microsoft.ContainerService/managedClusters/resetServicePrincipalProfile/action",
    "Microsoft.ContainerService/locations/operations/read",
)


async def _require_actions(deps: Deps, cluster_id: str, actions: Sequence[str]) -> None:
    """ARM has no dry run for an action: read our own permissions so a missing one fails before create."""
    try:
        blocks = await deps.aks.permissions(cluster_id)
    except AksError as exc:
        log_event(log, logging.WARNING, "rotation.permissions_unreadable", f"cannot read ARM permissions: {exc}")
        return  # the apply step still fails cleanly (the unused new password is removed)
    allowed = effective_actions(blocks, actions)
    missing = [action for action in actions if action not in allowed]
    if missing:
        raise _Failure(f"missing ARM permission '{missing[0]}' on {cluster_id}", cleanup=False)


def _is_due(run: _Run, plan: _Plan, now: datetime) -> bool:
    if run.row.reason not in ("due", "keyvault_event"):
        return True  # urgent, expired, on demand: always
    if plan.observed_expiry is None:
        return True
    return plan.observed_expiry - now <= timedelta(days=run.settings.threshold_days)


async def _step_create(run: _Run) -> _Result:
    deps, rid, now = run.deps, run.rid, run.now()
    creds = await _lookup(run)
    versions = await _preflight(run, creds)
    plan = _plan(rid, creds, versions, now)
    if _phase(run.row.step) == "start" and not _is_due(run, plan, now):
        await run.save(state="succeeded", step="skipped", observed_expiry=plan.observed_expiry)
        await run.audit("create", "skipped", "the credential is no longer due; nothing changed")
        return _Done("not due")
    await run.save(
        step="create",
        state="running",
        holder=plan.holder,
        old_key_ids=plan.old_key_ids,
        observed_expiry=run.row.observed_expiry or plan.observed_expiry,
    )
    mine = [(h, o, p) for h, o, p in _passwords(creds) if product_created(p) == rid]
    stored = next((v for v in versions if v.tags.get("rotation-id") == rid and v.tags.get("state") == "pending"), None)
    if stored is not None and any(p.key_id == stored.tags.get("key-id", "").lower() for _, _, p in mine):
        # A crash after store, before the row was saved: adopt what is there.
        await run.save(
            step=f"prove:0:{now.timestamp():.0f}",
            new_key_id=stored.tags["key-id"].lower(),
            vault_version=stored.version,
        )
        await run.audit("store", "adopted", "found the stored secret of an earlier attempt")
        return _Next()
    for holder, object_id, password in mine:
        # Created by an earlier attempt whose secret never reached Key Vault: Graph never shows it again.
        await run.lease.ensure_held()
        await deps.graph.remove_password(holder, object_id, password.key_id)
        await run.audit("create", "removed_lost", f"removed password {password.key_id}: its secret was lost")
    for version in versions:
        if version.tags.get("rotation-id") == rid and version.tags.get("state") == "pending":
            await _abandon_version(deps, run.secret_name, version.version)
    await run.audit(
        "create",
        "planned",
        f"holder {plan.holder}; {plan.note}",
        holder=plan.holder,
        old_key_ids=",".join(plan.old_key_ids),
    )
    lifetime = timedelta(days=run.settings.secret_lifetime_days)
    if creds.application_object_id:
        try:
            policy_max = await deps.graph.max_password_lifetime(creds.application_object_id)
        except GraphError:
            policy_max = None
        if policy_max is not None and policy_max < lifetime:
            lifetime = policy_max - timedelta(minutes=5)
    await run.lease.ensure_held()
    try:
        new = await _add_password(run, plan, lifetime)
    except PasswordPolicyError as exc:
        raise _Failure(f"addPassword refused by policy: {exc}", cleanup=False) from None
    except GraphAuthorizationError as exc:
        raise _Failure(
            f"addPassword refused ({exc}): the product needs Application.ReadWrite.OwnedBy and "
            "ownership of the application",
            cleanup=False,
        ) from None
    await run.audit(
        "create", "ok", f"added password {new.key_id} to the {plan.holder}, ends {new.end:%Y-%m-%d}", key_id=new.key_id
    )
    return await _store(run, plan, new.key_id, new.end, new.secret)


_LIFETIME_LADDER_DAYS = (365, 180, 90, 60, 30, 14, 7, 1)


async def _add_password(run: _Run, plan: _Plan, lifetime: timedelta) -> NewPassword:
    """addPassword with the configured lifetime; when the app management policy refuses that lifetime (the
    product may not be allowed to read the policy), step down a ladder of shorter ones. A refused addPassword
    creates nothing."""
    tries = [lifetime] + [timedelta(days=d) for d in _LIFETIME_LADDER_DAYS if timedelta(days=d) < lifetime]
    for index, candidate in enumerate(tries):
        end = run.now() + candidate
        try:
            return await run.deps.graph.add_password(plan.holder, plan.object_id, password_display_name(run.rid), end)
        except PasswordPolicyError as exc:
            if exc.code != "CredentialInvalidLifetimeAsPerAppPolicy" or index == len(tries) - 1:
                raise
            await run.audit("create", "lifetime_refused", f"the policy refused {candidate.days} days; trying shorter")
    raise AssertionError("unreachable")


async def _store(run: _Run, plan: _Plan, key_id: str, end: datetime, secret: SecretStr) -> _Result:
    tags = {
        "cluster-id": run.row.cluster_id.lower(),
        "app-id": (run.row.app_id or "").lower(),
        "key-id": key_id,
        "rotation-id": run.rid,
        "state": "pending",
    }
    try:
        stored = await run.deps.vault.store(run.secret_name, secret.get_secret_value(), end, tags)
    except (VaultError, AzureError):
        # The secret exists only in this process: remove it at once (no leak), then let the redelivery recreate.
        with contextlib.suppress(Exception):
            await run.deps.graph.remove_password(plan.holder, plan.object_id, key_id)
        raise
    started = run.now().timestamp()
    await run.save(step=f"prove:0:{started:.0f}", new_key_id=key_id, vault_version=stored.version)
    await run.audit(
        "store", "ok", f"stored as Key Vault version {stored.version} (state=pending)", version=stored.version
    )
    return _Next()


async def _token_ok(settings: Settings, app_id: str, secret: str, kwargs: dict[str, Any]) -> tuple[bool, str]:
    credential = secret_credential(settings, app_id, secret, **kwargs)
    try:
        async with credential:
            await credential.get_token(ARM_AUDIENCE + "/.default")
    except ClientAuthenticationError as exc:
        text = str(exc)
        code = re.search(r"AADSTS\d+", text)
        return False, code.group(0) if code else "refused"
    except AzureError as exc:
        return False, type(exc).__name__
    return True, "ok"


async def _step_prove(run: _Run) -> _Result:
    settings, row = run.settings, run.row
    count, started = _prove_progress(row.step)
    now = run.now()
    started = started if started is not None else now.timestamp()
    if row.vault_version is None or row.new_key_id is None:
        raise _Failure("prove: the row has no stored secret", cleanup=True)
    secret = await run.deps.vault.value(run.secret_name, row.vault_version)
    needed = settings.proof_successes
    spacing = settings.proof_spacing_seconds
    inline = spacing * (needed - 1) <= INLINE_PROOF_SECONDS
    last = "ok"
    while count < needed:
        ok, last = await _token_ok(settings, row.app_id or "", secret, run.deps.proof_kwargs)
        count = count + 1 if ok else 0
        if count >= needed:
            break
        if run.now().timestamp() - started > settings.proof_timeout_seconds:
            raise _Failure(
                f"prove: Entra did not accept the new secret {needed} times in a row within "
                f"{settings.proof_timeout_seconds} s (last: {last})"
            )
        if ok and inline:
            await run.deps.sleep(spacing)
            continue
        await run.save(step=f"prove:{count}:{started:.0f}")
        delay = int(spacing) if ok else settings.requeue_delay_seconds
        await run.requeue(delay, state="running", detail=f"prove {count}/{needed} ({last})")
        return _Wait(delay, f"prove {count}/{needed} ({last})")
    await run.save(step=f"apply:{started:.0f}", state="running")
    await run.audit("prove", "ok", f"Entra accepted the new secret {needed} times in a row")
    return _Next()


def _urgent(run: _Run, now: datetime) -> bool:
    expiry = run.row.observed_expiry
    if run.row.reason in ("urgent", "expired"):
        return True
    return expiry is not None and expiry - now <= timedelta(days=run.settings.urgent_days)


async def _window_gate(run: _Run, cluster: ClusterInfo) -> _Result | None:
    """None when the apply may run now; else a wait for the window (or a failure when none will open)."""
    now = run.now()
    configured = await run.deps.aks.maintenance_windows(cluster.id)
    governing = win.effective_windows(configured, run.settings.maintenance_window)
    if win.is_open(governing, now):
        return None
    if _urgent(run, now):
        log_event(
            log,
            logging.ERROR,
            "rotation.urgent",
            "applying outside the maintenance window: the credential expires soon",
            alert=True,
            rotation_id=run.rid,
            cluster_id=run.row.cluster_id,
            expires=run.row.observed_expiry,
        )
        await run.audit("apply", "urgent", f"outside the window ({win.describe(governing)}): applying now")
        return None
    opens = win.next_open(governing, now)
    if opens is None:
        raise _Failure(f"apply: the maintenance window ({win.describe(governing)}) never opens")
    delay = max(1, int((opens - now).total_seconds()) + 1)
    detail = f"outside the maintenance window ({win.describe(governing)}); opens {opens:%Y-%m-%d %H:%M} UTC"
    used = await run.requeue(delay, state="waiting", detail=detail)
    return _Wait(used, detail, "waiting")


def _certificates_opted_in(settings: Settings, cluster: ClusterInfo) -> bool:
    if settings.rotate_certificates:
        return True
    value = {k.lower(): v for k, v in cluster.tags.items()}.get(settings.cert_opt_in_tag.lower())
    return value is not None and value.strip().lower() not in ("false", "no", "0", "off")


async def _step_apply(run: _Run) -> _Result:
    # A row already "applying" means an earlier reset of this rotation may have reached AKS (its outcome was never
    # known): the cluster may hold the new secret, so no failure from here on may remove it (design: "never clean up").
    uncertain = _phase(run.row.step) == "applying"
    try:
        return await _apply(run, uncertain)
    except _Failure as failure:
        if uncertain:
            failure.cleanup = False
        raise


async def _apply(run: _Run, uncertain: bool) -> _Result:
    deps, row = run.deps, run.row
    certificates = row.kind == CredentialKind.CLUSTER_CERTIFICATE.value
    try:
        cluster = await deps.aks.get_cluster(row.cluster_id)
    except AuthorizationFailed as exc:
        raise _Failure(f"missing ARM permission '{exc.action}'", cleanup=not certificates) from None
    except ClusterNotFound:
        raise _Failure(f"cluster {row.cluster_id} no longer exists", cleanup=not certificates) from None
    if certificates:
        if not _certificates_opted_in(run.settings, cluster):
            raise _Failure("certificate rotation: the cluster is not opted in", cleanup=False)
    elif (cluster.sp_client_id or "").lower() != (row.app_id or "").lower():
        raise _Failure(f"apply: the cluster no longer uses application {row.app_id}")
    if cluster.provisioning_state.lower() in _BUSY_STATES:
        delay = run.settings.lro_poll_seconds
        await run.requeue(delay, state="running", detail=f"cluster is {cluster.provisioning_state}")
        return _Wait(delay, f"cluster is {cluster.provisioning_state}")
    gate = await _window_gate(run, cluster)
    if gate is not None:
        return gate
    secret = ""
    if not certificates:
        assert row.vault_version is not None
        secret = await deps.vault.value(run.secret_name, row.vault_version)
    _, started = _prove_progress(row.step)
    started = started if started is not None else run.now().timestamp()
    tries = int(row.step.split(":")[2]) + 1 if _phase(row.step) == "applying" and row.step.count(":") >= 2 else 1
    if tries > MAX_UNCERTAIN_APPLIES:
        if row.vault_version is not None:
            await deps.vault.set_tags(run.secret_name, row.vault_version, state="uncertain")
        raise _Failure(
            f"apply: AKS did not answer {MAX_UNCERTAIN_APPLIES} resets; the cluster may hold the new secret: check "
            "it (nothing was removed)",
            cleanup=False,
        )
    # From here on the cluster may receive the new secret: "applying" tells the poison handler not to clean up.
    await run.save(step=f"applying:{started:.0f}:{tries}")
    # The step to go back to when this request was certainly not executed: keep the mark of an earlier unanswered one.
    not_sent = f"applying:{started:.0f}:{tries - 1}" if uncertain else f"apply:{started:.0f}"
    await run.lease.ensure_held()
    try:
        if certificates:
            await run.audit("apply", "warning", CERT_DOWNTIME_WARNING)
            url = await deps.aks.begin_rotate_certificates(row.cluster_id)
        else:
            url = await deps.aks.begin_reset_service_principal(row.cluster_id, row.app_id or "", secret)
    except AuthorizationFailed as exc:
        raise _Failure(f"missing ARM permission '{exc.action}'", cleanup=not certificates) from None
    except CredentialsRejected:
        if uncertain:
            # An earlier reset may have been applied: stay "applying" (this try counts towards the limit).
            delay = run.settings.requeue_delay_seconds
            await run.requeue(delay, state="running", detail="AKS refused the new secret after an unanswered reset")
            return _Wait(delay, "AKS refused the new secret")
        # AKS could not sign in with the new secret yet: the cluster kept the old one. Prove again.
        await run.save(step=f"prove:0:{started:.0f}")
        await run.audit("apply", "rejected", "AKS refused the new secret (not yet replicated); proving again")
        delay = run.settings.requeue_delay_seconds
        await run.requeue(delay, state="running", detail="AKS refused the new secret")
        return _Wait(delay, "AKS refused the new secret")
    except ClusterBusy:
        # Not executed (409). A reset of ours may be the one running: the next look sees the cluster busy.
        delay = run.settings.lro_poll_seconds
        await run.save(step=not_sent)
        await run.requeue(delay, state="running", detail="another operation is in progress on the cluster")
        return _Wait(delay, "cluster busy")
    except AksError as exc:
        if exc.status == 429:  # throttled: certainly not executed
            delay = run.settings.requeue_delay_seconds
            await run.save(step=not_sent)
            await run.requeue(delay, state="running", detail="ARM throttled the reset")
            return _Wait(delay, "throttled")
        if exc.status is not None and 400 <= exc.status < 500 and exc.status != 408:
            raise _Failure(f"apply refused: {exc}", cleanup=not certificates) from None
        return await _apply_uncertain(run, f"{type(exc).__name__} {exc.status}")
    except AzureError as exc:
        return await _apply_uncertain(run, type(exc).__name__)
    # "verify:uncertain": an earlier reset of this rotation was never answered, so even if this operation fails the
    # cluster may hold the new secret (from the earlier one) and it must not be removed.
    await run.save(step="verify:uncertain" if uncertain else "verify", operation_url=url)
    what = "rotateClusterCertificates" if certificates else "resetServicePrincipalProfile"
    await run.audit("apply", "started", f"{what} accepted; polling its operation")
    delay = run.settings.lro_poll_seconds
    await run.requeue(delay, state="running", detail="waiting for the AKS operation")
    return _Wait(delay, "waiting for the AKS operation")


async def _apply_uncertain(run: _Run, what: str) -> _Result:
    """The reset may or may not have reached AKS (5xx, connection lost). Never clean up; look again later: a
    running reset shows as a busy cluster, a lost one is sent again (the same secret: idempotent)."""
    await run.audit("apply", "uncertain", f"no answer from AKS ({what}); will look again")
    delay = run.settings.lro_poll_seconds
    await run.requeue(delay, state="running", detail="reset outcome unknown")
    return _Wait(delay, "reset outcome unknown")


async def _step_verify(run: _Run) -> _Result:
    deps, row = run.deps, run.row
    certificates = row.kind == CredentialKind.CLUSTER_CERTIFICATE.value
    if not row.operation_url:
        await run.save(step="apply")
        return _Next()
    result = await deps.aks.operation_status(row.operation_url)
    if result.status in ("Failed", "Canceled"):
        detail = f"verify: the AKS operation ended {result.status}: {result.error or 'no detail'}"
        if row.step == "verify:uncertain" and not certificates:
            assert row.vault_version is not None
            await deps.vault.set_tags(run.secret_name, row.vault_version, state="uncertain")
            raise _Failure(
                f"{detail}; an earlier reset went unanswered, so the cluster may hold the new secret: check it "
                "(nothing was removed; Key Vault version tagged state=uncertain)",
                cleanup=False,
            )
        # AKS semantics: a failed reset leaves the cluster on its old secret.
        raise _Failure(detail, cleanup=not certificates)
    if result.status != "Succeeded":
        delay = run.settings.lro_poll_seconds
        await run.requeue(delay, state="running", detail="AKS operation in progress")
        return _Wait(delay, "AKS operation in progress")
    cluster = await deps.aks.get_cluster(row.cluster_id)
    if cluster.provisioning_state != "Succeeded":
        delay = run.settings.lro_poll_seconds
        await run.requeue(delay, state="running", detail=f"cluster is {cluster.provisioning_state}")
        return _Wait(delay, f"cluster is {cluster.provisioning_state}")
    if not certificates and (cluster.sp_client_id or "").lower() != (row.app_id or "").lower():
        # The reset succeeded but the cluster reports another client: do not touch any credential.
        raise _Failure(
            f"verify: the cluster reports client {cluster.sp_client_id}, expected {row.app_id}", cleanup=False
        )
    await run.audit("verify", "ok", "operation Succeeded; cluster Succeeded with the same clientId")
    if certificates:
        await run.save(state="succeeded", step="done", not_before=None)
        await run.audit("done", "succeeded", "cluster certificates rotated")
        return _Done("certificates rotated")
    await run.save(step="finish")
    return _Next()


async def _step_finish(run: _Run) -> _Result:
    deps, row = run.deps, run.row
    assert row.vault_version is not None
    await deps.vault.set_tags(run.secret_name, row.vault_version, state="current")
    demoted = []
    for version in await deps.vault.versions(run.secret_name):
        if version.version != row.vault_version and version.tags.get("state") == "current":
            await deps.vault.set_tags(run.secret_name, version.version, state="previous")
            demoted.append(version.version)
    await run.audit(
        "finish",
        "ok",
        f"version {row.vault_version} is current" + (f"; {', '.join(demoted)} previous" if demoted else ""),
    )
    grace = run.settings.retire_grace_seconds
    not_before = run.now() + timedelta(seconds=grace)
    await run.save(step="retire", not_before=not_before)
    if grace > 0:
        await run.requeue(grace, state="waiting", detail=f"retire grace period ({grace} s)")
        return _Wait(grace, "retire grace period", "waiting")
    return _Next()


async def _key_in_use_elsewhere(run: _Run, key_id: str) -> str | None:
    """Why `key_id` may still be used by another cluster sharing the application (None if it is not)."""
    app_id = (run.row.app_id or "").lower()
    me = run.row.cluster_id.lower()
    for cluster in await run.deps.inventory():
        if cluster.id.lower() == me or (cluster.sp_client_id or "").lower() != app_id:
            continue
        active = await run.deps.store.active_for(cluster.id, CredentialKind.SP_SECRET.value)
        if active is not None:
            return f"cluster {cluster.name} shares the application and has a rotation in progress"
        current = await run.deps.vault.current(secret_name_for(cluster.id))
        if current is None:
            return f"cluster {cluster.name} shares the application and its key is unknown"
        if current.tags.get("key-id", "").lower() == key_id.lower():
            return f"cluster {cluster.name} uses it"
    return None


async def _step_retire(run: _Run) -> _Result:
    deps, row = run.deps, run.row
    now = run.now()
    if row.not_before is not None and row.not_before > now + timedelta(seconds=1):
        delay = int((row.not_before - now).total_seconds()) + 1
        await run.requeue(delay, state="waiting", detail="retire grace period")
        return _Wait(delay, "retire grace period", "waiting")
    creds = await _lookup(run)
    present = {p.key_id.lower(): (h, o) for h, o, p in _passwords(creds)}
    removed, kept = [], []
    for key in row.old_key_ids:
        key = key.lower()
        if key == (row.new_key_id or "").lower() or key not in present:
            continue
        try:
            why = await _key_in_use_elsewhere(run, key)
        except AuthorizationFailed as exc:
            raise _Failure(
                f"retire: cannot check which clusters share the application: missing ARM permission "
                f"'{exc.action}'; old password {key} kept",
                cleanup=False,
            ) from None
        if why is not None:
            kept.append(key)
            await run.audit("retire", "kept", f"kept {key}: {why}")
            continue
        holder, object_id = present[key]
        await run.lease.ensure_held()
        await deps.graph.remove_password(holder, object_id, key)
        removed.append(key)
        await run.audit("retire", "removed", f"removed the old password {key}")
    if not row.old_key_ids:
        others = len([k for k in present if k != (row.new_key_id or "").lower()])
        detail = f"left {others} pre-existing credentials untouched (the cluster's previous key is not known)"
    else:
        detail = f"removed {len(removed)} old password(s)" + (f", kept {len(kept)}" if kept else "")
    await run.save(state="succeeded", step="done", not_before=None)
    await run.audit("done", "succeeded", detail)
    log_event(log, logging.INFO, "rotation.succeeded", detail, rotation_id=run.rid, cluster_id=row.cluster_id)
    return _Done(detail)


async def _abandon_version(deps: Deps, name: str, version: str) -> None:
    await deps.vault.set_tags(name, version, state="abandoned")
    try:
        await deps.vault.disable(name, version)
    except VaultError as exc:
        log_event(log, logging.WARNING, "vault.disable_failed", f"could not disable {name}/{version}: {exc}")


async def _step_cleanup(run: _Run) -> _Result:
    """Remove every password this rotation created and abandon its Key Vault versions, then fail the row."""
    deps, row = run.deps, run.row
    failed_at = row.step.split(":", 1)[1] if ":" in row.step else "cleanup"
    if row.app_id:
        try:
            creds = await _lookup(run)
        except _Failure:
            creds = AppCredentials(row.app_id, None, None, (), ())  # the application is gone: nothing to remove
        for holder, object_id, password in _passwords(creds):
            if product_created(password) == run.rid:
                await run.lease.ensure_held()
                await deps.graph.remove_password(holder, object_id, password.key_id)
                await run.audit("cleanup", "removed", f"removed the unused new password {password.key_id}")
        for version in await deps.vault.versions(run.secret_name):
            if version.tags.get("rotation-id") == run.rid and version.tags.get("state") == "pending":
                await _abandon_version(deps, run.secret_name, version.version)
                await run.audit("cleanup", "abandoned", f"Key Vault version {version.version} abandoned and disabled")
    await run.save(state="failed", step=failed_at, not_before=None)
    await _alert_failed(run, row.failure_reason or "failed")
    return _Done("failed")


async def _alert_failed(run: _Run, reason: str) -> None:
    await run.audit("done", "failed", reason)
    alert(
        log,
        "rotation.failed",
        f"rotation failed: {reason}",
        rotation_id=run.rid,
        cluster_id=run.row.cluster_id,
        kind=run.row.kind,
    )


async def _fail(run: _Run, failure: _Failure) -> _Result:
    phase = _phase(run.row.step)
    reason = failure.reason if failure.reason.startswith(phase) else f"{phase}: {failure.reason}"
    # Never clean up once the cluster may hold the new secret (finish, retire): that would break it.
    if failure.cleanup and phase in _CLEANUP_SAFE and run.row.kind == CredentialKind.SP_SECRET.value:
        await run.save(step=f"cleanup:{phase}", failure_reason=redact(reason), state="running")
        return await _step_cleanup(run)
    await run.save(state="failed", failure_reason=redact(reason), not_before=None)
    await _alert_failed(run, reason)
    return _Done("failed")


_CLEANUP_SAFE = frozenset({"start", "create", "store", "prove", "apply", "applying", "verify", "cleanup"})

_STEPS: dict[str, Callable[[_Run], Awaitable[_Result]]] = {
    "start": _step_create,
    "create": _step_create,
    "store": _step_create,  # a row left at "store" has no secret recorded: create reconciles
    "prove": _step_prove,
    "apply": _step_apply,
    "applying": _step_apply,
    "verify": _step_verify,
    "finish": _step_finish,
    "retire": _step_retire,
    "cleanup": _step_cleanup,
}


async def _advance(run: _Run) -> StepOutcome:
    waited: _Wait | None = None
    while not run.row.terminal:
        phase = _phase(run.row.step)
        if run.row.kind == CredentialKind.CLUSTER_CERTIFICATE.value and phase in ("start", "create", "store", "prove"):
            await run.save(step="apply", state="running")
            continue
        handler = _STEPS.get(phase)
        if handler is None:
            raise RuntimeError(f"rotation {run.rid} is at an unknown step {run.row.step!r}")
        step = handler.__name__.removeprefix("_step_")
        started = _time.perf_counter()
        with telemetry.span(f"rotation.{step}", rotation_id=run.rid, cluster_id=run.row.cluster_id, kind=run.row.kind):
            try:
                result = await handler(run)
            except _Failure as failure:
                result = await _fail(run, failure)
        telemetry.step_duration(step, _time.perf_counter() - started)
        if isinstance(result, _Wait):
            waited = result
            break
        if isinstance(result, _Done):
            break
    row = run.row
    if waited is not None:
        action: Action = "waiting" if waited.state == "waiting" else "advanced"
        return StepOutcome(action, row.rotation_id, row.state, row.step, waited.delay, waited.detail)
    action = "succeeded" if row.state == "succeeded" else "failed" if row.state == "failed" else "advanced"
    if row.terminal:
        telemetry.rotation_outcome(row.state, kind=row.kind)
    return StepOutcome(action, row.rotation_id, row.state, row.step, None, row.failure_reason or "")


# -- the queue trigger -----------------------------------------------------------------------------------------
def _record_for(message: RotationMessage) -> RotationRecord:
    return RotationRecord(
        rotation_id=message.rotation_id,
        cluster_id=message.cluster_id,
        kind=message.kind.value,
        app_id=message.app_id,
        observed_expiry=message.observed_expiry,
        reason=message.reason,
        correlation_id=message.correlation_id,
        attempts=message.attempt,
    )


async def _reject(deps: Deps, body: str, exc: InvalidInput, source: str) -> StepOutcome:
    """Invalid queue input: parked on the poison queue as the host would, recorded, logged (shared.edge)."""
    await deps.queues.poison(body.encode("utf-8", errors="replace").decode("utf-8"))
    correlation_id = await edge.reject(deps.store, source, exc, body)
    return StepOutcome("rejected", detail=f"{redact(exc.reason)} (correlation id {correlation_id})")


async def handle_message(
    settings: Settings, body: str, *, dequeue_count: int = 1, deps: Deps | None = None
) -> StepOutcome:
    """The queue trigger: run the rotation's next step(s) under the cluster lock; re-queue itself to wait.

    Raises on transient trouble (the host redelivers the message; after 5 deliveries it goes to poison).
    """
    async with _deps_for(settings, deps) as d:
        try:
            message = parse_message(body)
            check_allowed(settings, message.cluster_id)
        except InvalidInput as exc:
            return await _reject(d, body, exc, "queue")
        try:
            async with d.locks.hold(message.cluster_id) as lease:
                return await _handle(d, message, lease, dequeue_count)
        except LockBusy:
            delay = min(settings.requeue_delay_seconds, BUSY_DELAY_CAP_SECONDS)
            await d.queues.send(message.to_json(), delay_seconds=delay)
            return StepOutcome("busy", message.rotation_id, delay_seconds=delay, detail="cluster locked by another run")


async def _handle(deps: Deps, message: RotationMessage, lease: ClusterLease, dequeue_count: int) -> StepOutcome:
    for _ in range(3):
        row = await deps.store.get(message.rotation_id)
        if row is None:
            try:
                row = await deps.store.create(_record_for(message))
            except AlreadyExists:
                continue
        if row.terminal:
            return StepOutcome("duplicate", row.rotation_id, row.state, row.step, detail="already finished")
        if message.attempt < row.attempts:
            return StepOutcome("stale", row.rotation_id, row.state, row.step, detail="a newer message is live")
        run = _Run(deps, message, row, lease)
        try:
            if message.attempt > row.attempts:
                await run.save(attempts=message.attempt)  # the sender crashed before saving: adopt this message
            now = deps.clock()
            if message.not_before is not None and message.not_before > now + timedelta(seconds=2):
                # Delivered early (a wait longer than the queue's 7-day visibility cap): wait the rest.
                delay = int((message.not_before - now).total_seconds()) + 1
                await run.requeue(
                    delay, state=run.row.state if run.row.state == "waiting" else "running", detail="not yet due"
                )
                return StepOutcome("waiting", row.rotation_id, run.row.state, run.row.step, delay, "not yet due")
            if run.row.state == "pending":
                await run.save(state="running")
            log_event(
                log,
                logging.INFO,
                "rotation.delivery",
                "delivery",
                rotation_id=row.rotation_id,
                step=run.row.step,
                attempt=message.attempt,
                dequeue_count=dequeue_count,
            )
            return await _advance(run)
        except StaleRecord:
            continue  # someone else wrote the row: re-read and decide again
    raise StaleRecord(message.rotation_id)


async def handle_poison(settings: Settings, body: str, *, deps: Deps | None = None) -> None:
    """Poison-queue trigger: record the message with the reason and alert. Cleans up only when provably safe
    (the cluster never received the new secret: the rotation had not reached apply)."""
    async with _deps_for(settings, deps) as d:
        try:
            message = parse_message(body)
        except InvalidInput as exc:
            correlation_id = await edge.reject(d.store, "poison", exc, body)
            alert(log, "rotation.poison", "an invalid message reached the poison queue", correlation_id=correlation_id)
            return
        row = await d.store.get(message.rotation_id)
        phase = _phase(row.step) if row is not None else "start"
        reason = f"{phase}: gave up after {MAX_DEQUEUE_COUNT} failed deliveries (poison queue)"
        alert(log, "rotation.poison", reason, rotation_id=message.rotation_id, cluster_id=message.cluster_id)
        if row is None:
            row = await d.store.create(_record_for(message))
        if row.terminal:
            await d.store.audit(message.rotation_id, "poison", "ignored", "a poisoned copy of a finished rotation")
            return
        await d.store.audit(message.rotation_id, "poison", "poisoned", reason)
        safe = phase in ("start", "create", "store", "prove", "apply", "cleanup")  # not "applying" and later
        try:
            async with d.locks.hold(message.cluster_id) as lease:
                run = _Run(d, message, row, lease)
                if safe:
                    await _fail(run, _Failure(reason, cleanup=True))
                else:
                    await _fail(
                        run,
                        _Failure(
                            reason + "; the cluster may hold the new secret: check it (nothing was removed)",
                            cleanup=False,
                        ),
                    )
        except (LockBusy, StaleRecord):
            pass  # another run is active on this rotation; the alert and audit row stand
        except Exception as exc:  # the poison handler must not itself fail into a loop
            log_event(
                log,
                logging.ERROR,
                "rotation.poison_cleanup_failed",
                f"cleanup failed: {type(exc).__name__}",
                rotation_id=message.rotation_id,
            )


# -- producers -------------------------------------------------------------------------------------------------
async def submit(
    settings: Settings,
    message: RotationMessage,
    *,
    store: RotationStore | None = None,
    queues: RotationQueues | None = None,
) -> SubmitResult:
    """The one way a rotation starts (discovery, on demand, Key Vault events): dedup, queue, record."""
    async with contextlib.AsyncExitStack() as stack:
        if store is None or queues is None:
            credential = product_credential(settings)
            stack.push_async_callback(credential.close)
            if store is None:
                store = await stack.enter_async_context(RotationStore(settings, credential))
                await store.ensure()
            if queues is None:
                queues = await stack.enter_async_context(RotationQueues(settings, credential))
                await queues.ensure()
        kind = message.kind.value
        existing = await store.get(message.rotation_id)
        if existing is not None and existing.state == "failed" and message.reason in RETRIED_REASONS:
            # A failed rotation alerted; the credential still expires. Try again, at most once per UTC day.
            message = message.model_copy(update={"rotation_id": _retry_id(message, _utcnow())})
            existing = await store.get(message.rotation_id)
        if existing is not None:
            return SubmitResult(
                message.rotation_id,
                message.cluster_id,
                kind,
                "duplicate",
                f"rotation already {existing.state} at {existing.step}",
            )
        active = await store.active_for(message.cluster_id, kind)
        if active is not None:
            return SubmitResult(
                message.rotation_id,
                message.cluster_id,
                kind,
                "already_active",
                f"rotation {active.rotation_id} of this cluster is {active.state}",
            )
        # Queue first, then record: a crash in between leaves a message whose worker creates the row.
        message_id = await queues.send(message.to_json())
        try:
            await store.create(_record_for(message))
        except AlreadyExists:
            return SubmitResult(message.rotation_id, message.cluster_id, kind, "duplicate", "raced another submit")
        await store.audit(
            message.rotation_id, "submit", "queued", f"reason {message.reason}", correlation_id=message.correlation_id
        )
        return SubmitResult(
            message.rotation_id, message.cluster_id, kind, "queued", f"reason {message.reason}", message_id
        )


RETRIED_REASONS = frozenset({"due", "urgent", "expired", "keyvault_event"})


def _retry_id(message: RotationMessage, now: datetime) -> str:
    """The id of the day's retry of a failed rotation: deterministic, so scans and events dedup on it too."""
    generation = f"retry-{now.date().isoformat()}-of-{message.rotation_id}"
    return rotation_id_for(message.cluster_id, message.kind, message.app_id, generation)


async def rotate_now(settings: Settings, cluster_id: str, *, dry_run: bool) -> SubmitResult:
    """On demand (`aks-rotator rotate`): rotate the cluster's service-principal secret now (one per day)."""
    parse_cluster_id(cluster_id)  # InvalidInput (a ValueError) for anything else
    credential = product_credential(settings)
    try:
        async with AksClient(settings, credential) as aks, GraphOps(settings, credential) as graph:
            cluster = await aks.get_cluster(cluster_id)
            if cluster.sp_client_id is None:
                raise ValueError("the cluster uses a managed identity: there is no secret to rotate")
            found = await graph.lookup_apps([cluster.sp_client_id])
        creds = found.get(cluster.sp_client_id.lower())
        ends = [p.end for _, _, p in _passwords(creds)] if creds else []
        expiry = min((e for e in ends if e is not None), default=None)
        message = new_rotation_message(
            cluster_id=cluster.id, kind=CredentialKind.SP_SECRET, reason="on_demand", app_id=cluster.sp_client_id
        )
        message = message.model_copy(update={"observed_expiry": expiry})
        if dry_run:
            when = f"; earliest password expiry {expiry:%Y-%m-%d}" if expiry else ""
            return SubmitResult(
                message.rotation_id,
                cluster.id,
                message.kind.value,
                "dry_run",
                f"would rotate the secret of application {cluster.sp_client_id}{when}",
            )
        return await submit(settings, message)
    finally:
        await credential.close()


async def status(settings: Settings, rotation_id: str | None = None) -> list[RotationView]:
    """Rotation rows (newest first); with `rotation_id`, that rotation with its audit trail."""
    credential = product_credential(settings)
    try:
        async with RotationStore(settings, credential) as store:
            await store.ensure()
            if rotation_id is not None:
                row = await store.get(rotation_id)
                rows = [row] if row is not None else []
                trail = await store.audit_log(rotation_id) if row is not None else []
            else:
                rows = await store.list()
                trail = []
    finally:
        await credential.close()
    rows.sort(key=lambda r: r.created_at, reverse=True)
    return [_view(r, trail if rotation_id else []) for r in rows]


def _view(row: RotationRecord, trail: Sequence[AuditRow]) -> RotationView:
    return RotationView(
        rotation_id=row.rotation_id,
        cluster_id=row.cluster_id,
        kind=row.kind,
        app_id=row.app_id,
        state=row.state,
        step=_phase(row.step) if _phase(row.step) != "prove" else row.step.rsplit(":", 1)[0],
        reason=row.reason,
        failure_reason=row.failure_reason,
        not_before=row.not_before,
        new_key_id=row.new_key_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        audit=tuple(AuditView(a.at, a.step, a.outcome, a.detail) for a in trail),
    )


# -- the local worker ------------------------------------------------------------------------------------------
async def drain(
    settings: Settings,
    *,
    max_messages: int | None = None,
    idle_exit: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
    deps: Deps | None = None,
    batch_size: int = 8,
    visibility_timeout: int = 30,
    retry_delay_seconds: int = 30,
    idle_wait_seconds: float = 1.0,
) -> DrainReport:
    """Process the rotation queue like the Functions host would: receive, handle, delete on success; a message
    that raises reappears after `retry_delay_seconds` and after MAX_DEQUEUE_COUNT deliveries goes to poison
    (and the poison handler runs). With `idle_exit` it returns once no message is visible."""
    report = DrainReport()
    started = _time.monotonic()
    async with _deps_for(settings, deps) as d:
        while max_messages is None or report.received < max_messages:
            want = batch_size if max_messages is None else min(batch_size, max_messages - report.received)
            batch = await d.queues.receive(max_messages=max(1, min(32, want)), visibility_timeout=visibility_timeout)
            if not batch:
                if idle_exit:
                    break
                await asyncio.sleep(idle_wait_seconds)
                continue
            report.received += len(batch)
            await asyncio.gather(*(_one(d, item, report, retry_delay_seconds) for item in batch))
            if progress is not None:
                progress("rotations", report.handled, report.received)
    report.wall_seconds = _time.monotonic() - started
    return report


async def _one(deps: Deps, item: Received, report: DrainReport, retry_delay: int) -> None:
    settings = deps.settings
    if not item.valid_encoding:
        await deps.queues.poison(item.body)
        await deps.queues.delete(item)
        report.poisoned += 1
        await handle_poison(settings, item.body, deps=deps)
        return
    t0 = _time.perf_counter()
    try:
        outcome = await handle_message(settings, item.body, dequeue_count=item.dequeue_count, deps=deps)
    except Exception as exc:  # the host: log, redeliver, poison after the max count
        report.invocation_seconds += _time.perf_counter() - t0
        report.errors += 1
        log_event(
            log,
            logging.WARNING,
            "rotation.delivery_failed",
            f"delivery failed: {type(exc).__name__}: {redact(str(exc))[:300]}",
            dequeue_count=item.dequeue_count,
        )
        if item.dequeue_count >= MAX_DEQUEUE_COUNT:
            await deps.queues.poison(item.body)
            await deps.queues.delete(item)
            report.poisoned += 1
            await handle_poison(settings, item.body, deps=deps)
        else:
            await _release(deps.queues, item, retry_delay)
        return
    report.invocation_seconds += _time.perf_counter() - t0
    report.handled += 1
    report.actions[outcome.action] = report.actions.get(outcome.action, 0) + 1
    await deps.queues.delete(item)


async def _release(queues: RotationQueues, item: Received, delay: int) -> None:
    """Make a failed message visible again after `delay` seconds (the host's retry interval)."""
    with contextlib.suppress(AzureError):
        await queues.release(item, delay)
