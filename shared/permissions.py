"""Least privilege, checked and granted: `preflight` (what the product's identity can do) and `adopt` (ownership).

`preflight` runs as the product's own identity and checks every permission the product needs, per check, with
the exact command that grants what is missing (docs/permissions.md lists the same permissions):

* tokens: the credential obtains ARM, Microsoft Graph and Key Vault access tokens;
* Graph: the Graph token's `roles` claim holds `Application.ReadWrite.OwnedBy` (or `.All`);
* ARM, per cluster: `Microsoft.Authorization/permissions` on the cluster covers every action of the custom role
  (`infra/app/rotator-role-actions.json`; wildcards match like ARM's, `notActions` subtract);
* Graph, per service-principal cluster: the product's service principal (the Graph token's `oid`) owns the
  cluster's application, and also its service principal when the secret is held there;
* Key Vault: listing secret properties works (readMetadata), and setting then updating the probe secret
  `aks-rotator-preflight` works. **This is the one thing preflight writes**: one version of that secret on the
  first run (value random, tag `purpose=aks-rotator-preflight`, no `managed-by` tag so nothing else acts on it);
  later runs only update that version's tags.

`adopt` is run once by an administrator (Azure CLI login, or `AKS_ROTATOR_ADMIN_CLIENT_ID` /
`AKS_ROTATOR_ADMIN_CLIENT_SECRET`): it adds the product's service principal as an owner of each cluster's
application (and service principal where the secret lives), idempotently; `dry_run` only reads.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, HttpResponseError
from azure.identity.aio import AzureCliCredential
from kiota_abstractions.api_error import APIError

from shared import clock
from shared.aks import (
    AksClient,
    AksError,
    AuthorizationFailed,
    ClusterInfo,
    ClusterNotFound,
    effective_actions,
    parse_cluster_id,
)
from shared.azure import (
    product_credential,
    secret_client,
    secret_credential,
    vault_audience,
)
from shared.cluster_tags import certificates_opted_in
from shared.graph import AppCredentials, GraphAuthorizationError, GraphError, GraphOps, Holder
from shared.inventory import inventory
from shared.logs import register_secret
from shared.resource_graph import ResourceGraphError
from shared.settings import Settings
from shared.vault import vault_name

__all__ = [
    "CERT_ARM_ACTIONS",
    "MIGRATION_ARM_ACTIONS",
    "PROBE_SECRET",
    "REQUIRED_ARM_ACTIONS",
    "AdoptAction",
    "AdoptError",
    "AdoptReport",
    "Check",
    "PreflightReport",
    "admin_credential",
    "adopt",
    "preflight",
    "required_actions",
    "token_claims",
]

T = TypeVar("T")
Progress = Callable[[str, int, int], None]

PROBE_SECRET = "aks-rotator-preflight"  # noqa: S105 - the probe secret's name
PROBE_TAG = ("purpose", "aks-rotator-preflight")
OWNED_BY = "Application.ReadWrite.OwnedBy"
READ_WRITE_ALL = "Application.ReadWrite.All"
GRAPH_WRITE_ROLES = frozenset({OWNED_BY, READ_WRITE_ALL, "Directory.ReadWrite.All"})
OWNED_BY_ROLE_ID = "18a4783c-866b-4cc7-a460-3d5e5662c884"  # Application.ReadWrite.OwnedBy (application)
MS_GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
VAULT_ROLE = "Key Vault Secrets Officer"
KV_READ_METADATA = "Microsoft.KeyVault/vaults/secrets/readMetadata/action"
KV_SET = "Microsoft.KeyVault/vaults/secrets/setSecret/action"
KV_UPDATE = "Microsoft.KeyVault/vaults/secrets/update/action"
ADMIN_CLIENT_ID_ENV = "AKS_ROTATOR_ADMIN_CLIENT_ID"
ADMIN_CLIENT_SECRET_ENV = "AKS_ROTATOR_ADMIN_CLIENT_SECRET"  # noqa: S105 - the variable's name, not a secret
ROLE_NAME_ENV = "AKS_ROTATOR_ROLE_NAME"

# The custom role's actions; `infra/app/rotator-role-actions.json` is canonical (tests check these are equal).
# The file is read when present (a repo checkout); the Function App package excludes infra/, so this is the copy.
REQUIRED_ARM_ACTIONS: tuple[str, ...] = (
    "Microsoft.ContainerService/managedClusters/read",
    "Microsoft.ContainerService/managedClusters/maintenanceConfigurations/read",
    "Microsoft.ContainerService/managedClusters/resetServicePrincipalProfile/action",
    "Microsoft.ContainerService/locations/operations/read",
    "Microsoft.ContainerService/locations/operationresults/read",
    "Microsoft.Resources/subscriptions/read",
)
# The opt-in certificate role (`infra/app/rotator-cert-role-actions.json`), needed only on clusters whose
# certificates the product handles (infra parameter certificateRotationEnabled).
CERT_ARM_ACTIONS: tuple[str, ...] = (
    "Microsoft.ContainerService/managedClusters/listClusterUserCredential/action",
    "Microsoft.ContainerService/managedClusters/rotateClusterCertificates/action",
)
# What `aks-rotator migrate --execute` needs, held by an administrator, never by the product's rotation identity
# (docs/permissions.md, "Migration"): `roleAssignments/write` also at every scope the plan grants on.
MIGRATION_ARM_ACTIONS: tuple[str, ...] = (
    "Microsoft.ContainerService/managedClusters/read",
    "Microsoft.ContainerService/managedClusters/write",
    "Microsoft.ContainerService/managedClusters/agentPools/upgradeNodeImageVersion/action",
    "Microsoft.ContainerService/managedClusters/maintenanceConfigurations/read",
    "Microsoft.ContainerService/locations/operations/read",
    "Microsoft.ManagedIdentity/userAssignedIdentities/read",
    "Microsoft.ManagedIdentity/userAssignedIdentities/write",
    "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action",
    "Microsoft.Authorization/roleAssignments/read",
    "Microsoft.Authorization/roleAssignments/write",
)
ROLE_ACTIONS_FILE = Path(__file__).resolve().parent.parent / "infra" / "app" / "rotator-role-actions.json"

# Check names (the `check` column).
CHECK_ARM_TOKEN = "arm-token"  # noqa: S105
CHECK_GRAPH_TOKEN = "graph-token"  # noqa: S105
CHECK_VAULT_TOKEN = "keyvault-token"  # noqa: S105
CHECK_GRAPH_ROLE = "graph-app-role"
CHECK_CLUSTERS = "cluster-list"
CHECK_CLUSTER_READ = "cluster-read"
CHECK_ARM_ACTIONS = "arm-actions"
CHECK_APP = "application"
CHECK_APP_OWNER = "app-owner"
CHECK_SP_OWNER = "sp-owner"
CHECK_VAULT_LIST = "keyvault-list"
CHECK_VAULT_WRITE = "keyvault-write"


# -- report types -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One check at one scope. A failing check names what is `missing` and the command (`fix`) that grants it."""

    scope: str
    check: str
    ok: bool
    missing: str = ""
    fix: str = ""
    note: str = ""


@dataclass(frozen=True)
class PreflightReport:
    client_id: str
    object_id: str | None  # the product's service principal (Graph token `oid`), None without a Graph token
    clusters: int
    findings: tuple[Check, ...]

    headers: ClassVar[tuple[str, ...]] = ("scope", "check", "status", "missing", "fix")

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    @property
    def failures(self) -> list[Check]:
        return [f for f in self.findings if not f.ok]

    def rows(self) -> list[tuple[str, ...]]:
        """Failures first, then passed checks; `status` is `ok` or `MISSING`."""
        ordered = sorted(self.findings, key=lambda f: f.ok)
        return [(f.scope, f.check, "ok" if f.ok else "MISSING", f.missing or f.note, f.fix) for f in ordered]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "clientId": self.client_id,
            "objectId": self.object_id,
            "clusters": self.clusters,
            "findings": [asdict(f) for f in self.findings],
        }


@dataclass(frozen=True)
class AdoptAction:
    """Ownership of one application or service principal. status: ok | added | would_add | failed | not_found."""

    app_id: str
    holder: Holder
    object_id: str | None
    clusters: tuple[str, ...]
    status: str
    detail: str = ""


@dataclass(frozen=True)
class AdoptReport:
    product_object_id: str
    dry_run: bool
    actions: tuple[AdoptAction, ...]
    problems: tuple[Check, ...] = field(default=())  # clusters that could not be read

    headers: ClassVar[tuple[str, ...]] = ("application", "holder", "object id", "clusters", "status", "detail")

    @property
    def ok(self) -> bool:
        return not self.problems and all(a.status in ("ok", "added", "would_add") for a in self.actions)

    @property
    def changed(self) -> int:
        return sum(1 for a in self.actions if a.status == "added")

    def rows(self) -> list[tuple[str, ...]]:
        rows: list[tuple[str, ...]] = [
            (a.app_id, a.holder, a.object_id or "-", ", ".join(_short(c) for c in a.clusters), a.status, a.detail)
            for a in self.actions
        ]
        rows += [("-", "-", "-", p.scope, "failed", f"{p.missing}; {p.fix}".strip("; ")) for p in self.problems]
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dryRun": self.dry_run,
            "productObjectId": self.product_object_id,
            "actions": [{**asdict(a), "clusters": list(a.clusters)} for a in self.actions],
            "problems": [asdict(p) for p in self.problems],
        }


class AdoptError(Exception):
    """adopt cannot start (no cluster selection, or the product's service principal is not found)."""


def _short(cluster_id: str) -> str:
    return cluster_id.rstrip("/").rsplit("/", 1)[-1]


# -- pure helpers -------------------------------------------------------------------------------------------------
def required_actions(path: Path | None = None) -> tuple[str, ...]:
    """The custom role's actions: the repo's JSON file when present, else the packaged copy."""
    source = path or ROLE_ACTIONS_FILE
    if source.is_file():
        loaded = json.loads(source.read_text())
        if isinstance(loaded, list) and all(isinstance(a, str) for a in loaded):
            return tuple(loaded)
        raise ValueError(f"{source} is not a JSON list of action strings")
    return REQUIRED_ARM_ACTIONS


def token_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified (our own token, read for `roles` / `oid`); {} when not a JWT."""
    parts = token.split(".")
    if len(parts) < 2:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        decoded = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, TypeError):
        return {}
    return decoded if isinstance(decoded, dict) else {}


def role_name(role: str | None = None) -> str:
    """The custom role's name as infra/ defines it: `AKS credential rotator (<azd environment>)`."""
    if role:
        return role
    if os.environ.get(ROLE_NAME_ENV):
        return os.environ[ROLE_NAME_ENV]
    env = os.environ.get("AZURE_ENV_NAME") or "<azd environment name>"
    return f"AKS credential rotator ({env})"


def _subscription_scope(cluster_id: str) -> str:
    try:
        sub, _, _ = parse_cluster_id(cluster_id)
    except ValueError:
        return cluster_id
    return f"/subscriptions/{sub}"


def _canonical(cluster_id: str) -> str:
    sub, rg, name = parse_cluster_id(cluster_id)
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{name}"


# -- fix commands (wording as in docs/permissions.md) -------------------------------------------------------------
def fix_arm_role(client_id: str, scope: str, role: str) -> str:
    return f'az role assignment create --assignee {client_id} --role "{role}" --scope {scope}'


def fix_app_owner(app_id: str, owner_object_id: str) -> str:
    return f"az ad app owner add --id {app_id} --owner-object-id {owner_object_id}"


def fix_sp_owner(graph_endpoint: str, sp_object_id: str, owner_object_id: str) -> str:
    uri = f"{graph_endpoint}/v1.0/servicePrincipals/{sp_object_id}/owners/$ref"
    body = json.dumps({"@odata.id": f"{graph_endpoint}/v1.0/directoryObjects/{owner_object_id}"})
    return f"az rest --method POST --uri '{uri}' --body '{body}'"


def fix_graph_role(graph_endpoint: str, object_id: str) -> str:
    graph_sp = f"$(az ad sp show --id {MS_GRAPH_APP_ID} --query id -o tsv)"
    fields = {"principalId": object_id, "resourceId": graph_sp, "appRoleId": OWNED_BY_ROLE_ID}
    body = "{" + ",".join(f'\\"{k}\\":\\"{v}\\"' for k, v in fields.items()) + "}"
    return (
        f'az rest --method POST --uri "{graph_endpoint}/v1.0/servicePrincipals/{object_id}/appRoleAssignments" '
        f'--body "{body}"'
    )


def fix_vault_role(client_id: str, vault: str) -> str:
    return (
        f'az role assignment create --assignee {client_id} --role "{VAULT_ROLE}" '
        f'--scope "$(az keyvault show --name {vault} --query id -o tsv)"'
    )


# -- clients ------------------------------------------------------------------------------------------------------
async def _bounded(
    limit: int, items: Sequence[T], work: Callable[[T], Awaitable[None]], progress: Progress | None, stage: str
) -> None:
    semaphore = asyncio.Semaphore(max(1, limit))
    done = 0

    async def one(item: T) -> None:
        nonlocal done
        async with semaphore:
            await work(item)
        done += 1
        if progress is not None:
            progress(stage, done, len(items))

    if progress is not None:
        progress(stage, 0, len(items))
    await asyncio.gather(*(one(item) for item in items))


# -- cluster inventory --------------------------------------------------------------------------------------------
async def _clusters(
    settings: Settings,
    credential: AsyncTokenCredential,
    cluster_ids: Sequence[str] | None,
    role: str,
    client_kwargs: Mapping[str, Any],
) -> tuple[list[ClusterInfo], list[Check]]:
    """The clusters to check (the given ids, else everything visible) and findings for what could not be read."""
    found: list[ClusterInfo] = []
    problems: list[Check] = []
    read = "Microsoft.ContainerService/managedClusters/read"
    async with AksClient(settings, credential, **client_kwargs) as aks:
        if cluster_ids is not None:

            async def get(cluster_id: str) -> None:
                try:
                    found.append(await aks.get_cluster(cluster_id))
                except AuthorizationFailed as exc:
                    fix = fix_arm_role(settings.client_id, _subscription_scope(cluster_id), role)
                    problems.append(Check(cluster_id, CHECK_CLUSTER_READ, False, exc.action, fix))
                except ClusterNotFound:
                    problems.append(Check(cluster_id, CHECK_CLUSTER_READ, False, "the cluster does not exist", ""))
                except (AksError, ValueError) as exc:
                    problems.append(Check(cluster_id, CHECK_CLUSTER_READ, False, str(exc), ""))

            await _bounded(settings.discovery_concurrency, list(dict.fromkeys(cluster_ids)), get, None, "clusters")
            return sorted(found, key=lambda c: c.id.lower()), problems
        subscriptions = list(settings.subscription_allowlist) or None
        try:
            listing = await inventory(settings, credential, aks, subscriptions, **client_kwargs)
        except ResourceGraphError as exc:
            problems.append(Check("resource graph", CHECK_CLUSTERS, False, str(exc), ""))
        except AksError as exc:
            problems.append(Check("subscriptions", CHECK_CLUSTERS, False, f"list subscriptions: {exc}", ""))
        else:
            found = listing.clusters
            for sub, failure in listing.failures.items():
                if isinstance(failure, AuthorizationFailed):
                    fix = fix_arm_role(settings.client_id, f"/subscriptions/{sub}", role)
                    problems.append(Check(f"/subscriptions/{sub}", CHECK_CLUSTERS, False, failure.action, fix))
                else:
                    problems.append(Check(f"/subscriptions/{sub}", CHECK_CLUSTERS, False, str(failure), ""))
    if not found and not problems:
        scopes = [f"/subscriptions/{s}" for s in subscriptions or ["<subscriptionId>"]]
        fix = "; ".join(fix_arm_role(settings.client_id, s, role) for s in scopes)
        problems.append(Check("clusters", CHECK_CLUSTERS, False, f"{read} (no cluster is visible)", fix))
    return sorted(found, key=lambda c: c.id.lower()), problems


def _by_app(clusters: Iterable[ClusterInfo]) -> dict[str, list[str]]:
    apps: dict[str, list[str]] = {}
    for cluster in clusters:
        if cluster.sp_client_id:
            apps.setdefault(cluster.sp_client_id.lower(), []).append(cluster.id)
    return apps


# -- preflight ----------------------------------------------------------------------------------------------------
async def _token(credential: AsyncTokenCredential, audience: str) -> tuple[str | None, str]:
    try:
        token = await credential.get_token(audience + "/.default")
    except AzureError as exc:
        return None, type(exc).__name__
    return token.token, ""


async def preflight(
    settings: Settings,
    *,
    cluster_ids: Sequence[str] | None = None,
    credential: AsyncTokenCredential | None = None,
    progress: Progress | None = None,
    role: str | None = None,
    **client_kwargs: Any,
) -> PreflightReport:
    """Check every permission the product needs, as the product's identity (see the module docstring).

    `credential` defaults to the product credential (closed here when created here). `role` names the custom role
    in the fix commands (default: `AKS_ROTATOR_ROLE_NAME`, else `AKS credential rotator (<AZURE_ENV_NAME>)`).
    `client_kwargs` go to the ARM and Key Vault SDK clients (e.g. `retry_total=0`).
    """
    owned = credential is None
    cred = product_credential(settings) if credential is None else credential
    try:
        return await _preflight(settings, cred, cluster_ids, progress, role_name(role), client_kwargs)
    finally:
        if owned:
            await cred.close()


async def _preflight(
    settings: Settings,
    credential: AsyncTokenCredential,
    cluster_ids: Sequence[str] | None,
    progress: Progress | None,
    role: str,
    client_kwargs: Mapping[str, Any],
) -> PreflightReport:
    findings: list[Check] = []
    client_id = settings.client_id
    identity = f"identity {client_id}"
    advice = "check AZURE_CLIENT_ID (and AZURE_CLIENT_SECRET locally) names the product's identity"

    audiences = (settings.arm_audience, settings.graph_audience, vault_audience(settings))
    arm_token, arm_error = await _token(credential, audiences[0])
    graph_token, graph_error = await _token(credential, audiences[1])
    vault_token, vault_error = await _token(credential, audiences[2])
    for audience, check, token_, error in (
        (audiences[0], CHECK_ARM_TOKEN, arm_token, arm_error),
        (audiences[1], CHECK_GRAPH_TOKEN, graph_token, graph_error),
        (audiences[2], CHECK_VAULT_TOKEN, vault_token, vault_error),
    ):
        if token_ is None:
            findings.append(Check(identity, check, False, f"a token for {audience} ({error})", advice))
        else:
            findings.append(Check(identity, check, True))

    claims = token_claims(graph_token) if graph_token else {}
    object_id = str(claims["oid"]) if claims.get("oid") else None
    roles = {str(r) for r in claims.get("roles") or []}
    has_all = bool(roles & (GRAPH_WRITE_ROLES - {OWNED_BY}))
    if graph_token is not None:
        if OWNED_BY in roles or has_all:
            note = f"holds {', '.join(sorted(roles & GRAPH_WRITE_ROLES))}"
            if has_all:
                note += f" (broader than the documented {OWNED_BY})"
            findings.append(Check(identity, CHECK_GRAPH_ROLE, True, note=note))
        else:
            fix = fix_graph_role(settings.graph_endpoint, object_id or "<principalId>")
            findings.append(Check(identity, CHECK_GRAPH_ROLE, False, f"Microsoft Graph app role {OWNED_BY}", fix))

    clusters: list[ClusterInfo] = []
    if arm_token is not None:
        clusters, problems = await _clusters(settings, credential, cluster_ids, role, client_kwargs)
        findings += problems
        findings += await _check_arm(settings, credential, clusters, role, progress, client_kwargs)
    if graph_token is not None and object_id is not None and clusters:
        findings += await _check_owners(settings, credential, clusters, object_id, has_all, progress)
    if vault_token is not None:
        findings += await _check_vault(settings, credential, client_kwargs)
    return PreflightReport(client_id, object_id, len(clusters), tuple(findings))


async def _check_arm(
    settings: Settings,
    credential: AsyncTokenCredential,
    clusters: Sequence[ClusterInfo],
    role: str,
    progress: Progress | None,
    client_kwargs: Mapping[str, Any],
) -> list[Check]:
    wanted = required_actions()
    results: dict[str, Check] = {}
    arm = AksClient(settings, credential, **client_kwargs)

    async def check(cluster: ClusterInfo) -> None:
        fix = fix_arm_role(settings.client_id, f"/subscriptions/{cluster.subscription_id}", role)
        try:
            blocks = await arm.permissions(_canonical(cluster.id))
        except (AksError, AzureError) as exc:
            results[cluster.id] = Check(cluster.id, CHECK_ARM_ACTIONS, False, f"cannot read permissions: {exc}", fix)
            return
        needed = (*wanted, *CERT_ARM_ACTIONS) if certificates_opted_in(settings, cluster) else wanted
        allowed = effective_actions(blocks, needed)
        missing = [a for a in needed if a not in allowed]
        results[cluster.id] = Check(
            cluster.id, CHECK_ARM_ACTIONS, not missing, ", ".join(missing), fix if missing else ""
        )

    try:
        await _bounded(settings.discovery_concurrency, list(clusters), check, progress, "ARM permissions")
    finally:
        await arm.close()
    return [results[c.id] for c in clusters if c.id in results]


async def _check_owners(
    settings: Settings,
    credential: AsyncTokenCredential,
    clusters: Sequence[ClusterInfo],
    object_id: str,
    has_all: bool,
    progress: Progress | None,
) -> list[Check]:
    apps = _by_app(clusters)
    if not apps:
        return []
    results: dict[str, list[Check]] = {}
    ops = GraphOps(settings, credential)
    async with ops:
        try:
            found = await ops.lookup_apps(apps)
        except GraphError as exc:
            fix = fix_graph_role(settings.graph_endpoint, object_id)
            return [Check("applications", CHECK_APP, False, f"cannot look up applications: {exc}", fix)]

        async def check(app_id: str) -> None:
            results[app_id] = await _owner_findings(
                settings, ops, app_id, apps[app_id], found.get(app_id), object_id, has_all
            )

        await _bounded(settings.discovery_concurrency, sorted(apps), check, progress, "ownership")
    return [f for app_id in sorted(apps) for f in results.get(app_id, [])]


async def _owner_findings(
    settings: Settings,
    ops: GraphOps,
    app_id: str,
    cluster_ids: Sequence[str],
    creds: AppCredentials | None,
    object_id: str,
    has_all: bool,
) -> list[Check]:
    scope = f"application {app_id} ({', '.join(_short(c) for c in cluster_ids)})"
    if creds is None or (creds.application_object_id is None and creds.service_principal_object_id is None):
        missing = "the cluster's application is not in this tenant (or not readable)"
        return [Check(scope, CHECK_APP, False, missing, "check the cluster's servicePrincipalProfile.clientId")]
    out: list[Check] = []
    targets: list[tuple[Holder, str | None]] = [("application", creds.application_object_id)]
    if creds.service_principal_passwords:
        targets.append(("servicePrincipal", creds.service_principal_object_id))
    for holder, target in targets:
        check = CHECK_APP_OWNER if holder == "application" else CHECK_SP_OWNER
        if target is None:
            missing = f"the {holder} object is not visible (another tenant?)"
            out.append(Check(scope, check, False, missing, ""))
            continue
        fix = (
            fix_app_owner(app_id, object_id)
            if holder == "application"
            else fix_sp_owner(settings.graph_endpoint, target, object_id)
        )
        try:
            owners = await ops.owners(holder, target)
        except GraphError as exc:
            out.append(Check(scope, check, False, f"cannot read the {holder}'s owners: {exc}", fix))
            continue
        if object_id.lower() in {o.lower() for o in owners}:
            out.append(Check(scope, check, True))
        elif has_all:
            out.append(Check(scope, check, True, note=f"not an owner; not needed with {READ_WRITE_ALL}"))
        else:
            out.append(Check(scope, check, False, f"owner of the {holder} {target}", fix))
    return out


async def _check_vault(
    settings: Settings, credential: AsyncTokenCredential, client_kwargs: Mapping[str, Any]
) -> list[Check]:
    vault = vault_name(settings.key_vault_url)
    scope = f"key vault {vault}"
    fix = fix_vault_role(settings.client_id, vault)
    out: list[Check] = []

    def failed(check: str, action: str, exc: AzureError) -> Check:
        status = exc.status_code if isinstance(exc, HttpResponseError) else None
        if status == 403:
            return Check(scope, check, False, action, fix)
        return Check(scope, check, False, f"{action} (failed: HTTP {status or type(exc).__name__})", fix)

    async with secret_client(settings, credential, **client_kwargs) as client:
        error: Check | None = None
        try:
            async for _ in client.list_properties_of_secrets(max_page_size=1):
                break
        except AzureError as exc:
            error = failed(CHECK_VAULT_LIST, KV_READ_METADATA, exc)
        out.append(error or Check(scope, CHECK_VAULT_LIST, True))

        # Only the first run writes a version; later runs re-tag the newest one (no version pile-up, no events).
        tags = {PROBE_TAG[0]: PROBE_TAG[1]}
        error = None
        version: str | None = None
        note = f"re-tagged probe secret {PROBE_SECRET}; setSecret not re-checked (no new version written)"
        try:
            existing = [p async for p in client.list_properties_of_secret_versions(PROBE_SECRET)]
            newest = max(existing, key=lambda p: p.created_on or datetime.min.replace(tzinfo=UTC), default=None)
            version = newest.version if newest is not None else None
        except AzureError:
            version = None  # not there yet (or unreadable): set_secret below reports what is missing
        if version is None:
            value = "preflight-" + secrets.token_urlsafe(24)
            register_secret(value)
            note = f"wrote probe secret {PROBE_SECRET} (first run; later runs write no new version)"
            try:
                stored = await client.set_secret(
                    PROBE_SECRET, value, content_type="text/plain; aks-rotator-probe", tags=tags
                )
                version = stored.properties.version
            except AzureError as exc:
                error = failed(CHECK_VAULT_WRITE, KV_SET, exc)
            del value
        if error is None:
            try:
                checked = {**tags, "checked": clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")}
                await client.update_secret_properties(PROBE_SECRET, version, tags=checked)
            except AzureError as exc:
                error = failed(CHECK_VAULT_WRITE, KV_UPDATE, exc)
        out.append(error or Check(scope, CHECK_VAULT_WRITE, True, note=note))
    return out


# -- adopt --------------------------------------------------------------------------------------------------------
def admin_credential(settings: Settings) -> AsyncTokenCredential:
    """The administrator's credential: `AKS_ROTATOR_ADMIN_CLIENT_ID`/`_SECRET` when set, else the Azure CLI login."""
    admin_id = os.environ.get(ADMIN_CLIENT_ID_ENV)
    admin_secret = os.environ.get(ADMIN_CLIENT_SECRET_ENV)
    if admin_id and admin_secret:
        return secret_credential(settings, admin_id, admin_secret)
    return AzureCliCredential(tenant_id=settings.tenant_id)


_make_admin_credential = admin_credential


async def adopt(
    settings: Settings,
    *,
    cluster_ids: Sequence[str] | None,
    all_clusters: bool,
    dry_run: bool,
    admin_credential: AsyncTokenCredential | None,
    arm_credential: AsyncTokenCredential | None = None,
    progress: Progress | None = None,
    role: str | None = None,
    **client_kwargs: Any,
) -> AdoptReport:
    """Make the product's service principal an owner of each selected cluster's application (and service principal
    where the secret lives), with the administrator's credential. Idempotent; `dry_run` only reads.

    `admin_credential=None` builds one with `admin_credential(settings)` (closed here). Clusters are read with
    `arm_credential` (default: the administrator's credential).
    """
    if not all_clusters and not cluster_ids:
        raise AdoptError("choose clusters: give cluster ids or all clusters")
    owned = admin_credential is None
    admin = _make_admin_credential(settings) if admin_credential is None else admin_credential
    try:
        return await _adopt(
            settings,
            admin,
            arm_credential or admin,
            None if all_clusters else list(cluster_ids or []),
            dry_run,
            progress,
            role_name(role),
            client_kwargs,
        )
    finally:
        if owned:
            await admin.close()


async def _adopt(
    settings: Settings,
    admin: AsyncTokenCredential,
    arm_credential: AsyncTokenCredential,
    cluster_ids: Sequence[str] | None,
    dry_run: bool,
    progress: Progress | None,
    role: str,
    client_kwargs: Mapping[str, Any],
) -> AdoptReport:
    ops = GraphOps(settings, admin)
    async with ops:
        try:
            product = await ops.service_principal_id(settings.client_id)
        except GraphError as exc:
            raise AdoptError(f"cannot look up the product's service principal: {exc}") from None
        if product is None:
            raise AdoptError(f"the product's service principal (appId {settings.client_id}) was not found")
        clusters, problems = await _clusters(settings, arm_credential, cluster_ids, role, client_kwargs)
        apps = _by_app(clusters)
        try:
            found = await ops.lookup_apps(apps) if apps else {}
        except GraphError as exc:
            raise AdoptError(f"cannot look up the clusters' applications: {exc}") from None
        actions: dict[str, list[AdoptAction]] = {}

        async def one(app_id: str) -> None:
            actions[app_id] = await _adopt_app(ops, app_id, tuple(apps[app_id]), found.get(app_id), product, dry_run)

        await _bounded(settings.discovery_concurrency, sorted(apps), one, progress, "applications")
    ordered = tuple(a for app_id in sorted(apps) for a in actions.get(app_id, []))
    return AdoptReport(product, dry_run, ordered, tuple(problems))


async def _adopt_app(
    ops: GraphOps,
    app_id: str,
    clusters: tuple[str, ...],
    creds: AppCredentials | None,
    product: str,
    dry_run: bool,
) -> list[AdoptAction]:
    if creds is None or (creds.application_object_id is None and creds.service_principal_object_id is None):
        return [AdoptAction(app_id, "application", None, clusters, "not_found", "no such application in this tenant")]
    targets: list[tuple[Holder, str | None]] = [("application", creds.application_object_id)]
    if creds.service_principal_passwords:
        targets.append(("servicePrincipal", creds.service_principal_object_id))
    out: list[AdoptAction] = []
    for holder, target in targets:
        if target is None:
            out.append(AdoptAction(app_id, holder, None, clusters, "not_found", f"the {holder} is not visible"))
            continue
        try:
            owners = await ops.owners(holder, target)
            if product.lower() in {o.lower() for o in owners}:
                out.append(AdoptAction(app_id, holder, target, clusters, "ok", "already an owner"))
                continue
            if dry_run:
                out.append(AdoptAction(app_id, holder, target, clusters, "would_add", "would add the product as owner"))
                continue
            await ops.add_owner(holder, target, product)
        except GraphAuthorizationError as exc:
            detail = f"{exc} (needs {READ_WRITE_ALL}, Application Administrator, or an existing owner)"
            out.append(AdoptAction(app_id, holder, target, clusters, "failed", detail))
            continue
        except (GraphError, APIError) as exc:
            out.append(AdoptAction(app_id, holder, target, clusters, "failed", str(exc)))
            continue
        out.append(AdoptAction(app_id, holder, target, clusters, "added", "added the product as owner"))
    return out
