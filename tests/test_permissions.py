"""shared.permissions (preflight / adopt) and the emulator's permission read-backs, through the real SDKs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from emulator import seeds
from emulator.sandbox import EmulatorControl
from emulator.seeds import ROTATOR_ARM_ACTIONS
from shared import permissions
from shared.azure import ARM_AUDIENCE, product_credential, secret_credential
from shared.permissions import (
    CHECK_APP_OWNER,
    CHECK_ARM_ACTIONS,
    CHECK_GRAPH_ROLE,
    CHECK_SP_OWNER,
    CHECK_VAULT_LIST,
    CHECK_VAULT_WRITE,
    PROBE_SECRET,
    AdoptReport,
    Check,
    PreflightReport,
)
from shared.settings import Settings

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
ADMIN_APP_ID = "0a0d0a1e-0000-4000-8000-00000000ad01"
ADMIN_SECRET = "emulator-admin-secret-0123456789abcdefghijkl"
RESET_ACTION = "Microsoft.ContainerService/managedClusters/resetServicePrincipalProfile/action"


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _doc() -> dict[str, Any]:
    """The demo estate plus an administrator app holding Application.ReadWrite.All and ARM read."""
    doc = seeds.demo()
    doc["applications"].append(
        {
            "app_id": ADMIN_APP_ID,
            "display_name": "tenant-admin",
            "owned_by_product": False,
            "password_credentials": [{"secret": ADMIN_SECRET, "expires_in_days": 365}],
        }
    )
    doc["graph_app_roles"][ADMIN_APP_ID] = ["Application.ReadWrite.All"]
    doc["role_assignments"] += [
        {"principal": ADMIN_APP_ID, "scope": f"/subscriptions/{s['id']}", "actions": ["*/read"]}
        for s in doc["subscriptions"]
    ]
    return doc


def _reset(emulator: EmulatorControl, doc: dict[str, Any]) -> None:
    doc["product"]["secret"] = emulator.ready["client_secret"]
    emulator.reset(doc)
    emulator.clear_requests()


def _cluster(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in doc["clusters"] if c["name"] == name)


def _cluster_id(spec: dict[str, Any]) -> str:
    return (
        f"/subscriptions/{spec['subscription_id']}/resourceGroups/{spec['resource_group']}"
        f"/providers/Microsoft.ContainerService/managedClusters/{spec['name']}"
    )


def _app(doc: dict[str, Any], cluster_name: str) -> dict[str, Any]:
    client_id = _cluster(doc, cluster_name)["client_id"]
    return next(a for a in doc["applications"] if a["app_id"] == client_id)


def _product_sp(emulator: EmulatorControl) -> str:
    truth = emulator.state()
    product = next(a for a in truth["applications"] if a["appId"] == seeds.PRODUCT_APP_ID)
    return str(product["servicePrincipal"]["objectId"])


def _preflight(settings: Settings, **kwargs: Any) -> PreflightReport:
    return _run(permissions.preflight(settings, **kwargs, retry_total=0))


def _adopt(settings: Settings, **kwargs: Any) -> AdoptReport:
    async def go() -> AdoptReport:
        admin = secret_credential(settings, ADMIN_APP_ID, ADMIN_SECRET)
        try:
            return await permissions.adopt(settings, admin_credential=admin, **kwargs, retry_total=0)
        finally:
            await admin.close()

    return _run(go())


def _failures(report: PreflightReport, check: str | None = None) -> list[Check]:
    return [f for f in report.failures if check is None or f.check == check]


# -- pure helpers ---------------------------------------------------------------------------------------------
def test_required_actions_are_the_role_file() -> None:
    on_disk = tuple(json.loads((ROOT / "infra/app/rotator-role-actions.json").read_text()))
    assert permissions.required_actions() == on_disk
    assert on_disk == permissions.REQUIRED_ARM_ACTIONS
    cert_role = tuple(json.loads((ROOT / "infra/app/rotator-cert-role-actions.json").read_text()))
    assert cert_role == permissions.CERT_ARM_ACTIONS
    assert on_disk + cert_role == ROTATOR_ARM_ACTIONS  # the emulator grants both roles
    assert permissions.required_actions(ROOT / "no-such-file.json") == permissions.REQUIRED_ARM_ACTIONS


def test_helpers() -> None:
    assert permissions.token_claims("not-a-jwt") == {}
    assert permissions.role_name("custom") == "custom"
    report = PreflightReport("c", "o", 1, (Check("s", "x", True), Check("s2", "y", False, "m", "fix")))
    assert not report.ok and report.rows()[0] == ("s2", "y", "MISSING", "m", "fix")
    assert len(report.headers) == len(report.rows()[0])
    assert json.loads(json.dumps(report.to_json()))["findings"][1]["fix"] == "fix"


# -- the emulator route -----------------------------------------------------------------------------------------
def _arm_get(emulator: EmulatorControl, settings: Settings, path: str, token: str | None = None) -> httpx.Response:
    async def bearer() -> str:
        credential = product_credential(settings)
        try:
            return (await credential.get_token(ARM_AUDIENCE + "/.default")).token
        finally:
            await credential.close()

    value = token if token is not None else _run(bearer())
    with httpx.Client(verify=emulator.ssl_context()) as http:
        return http.get(
            f"{emulator.endpoint}{path}/providers/Microsoft.Authorization/permissions",
            params={"api-version": "2022-04-01"},
            headers={"Authorization": f"Bearer {value}"} if value else {},
        )


def test_permissions_route_returns_the_union_and_refuses_a_bad_token(
    emulator: EmulatorControl, emu_settings: Settings
) -> None:
    doc = _doc()
    spec = _cluster(doc, "aks-payments")
    sub = f"/subscriptions/{spec['subscription_id']}"
    rg = f"{sub}/resourceGroups/{spec['resource_group']}"
    cluster = _cluster_id(spec)
    doc["role_assignments"] = [
        {"principal": seeds.PRODUCT_APP_ID, "scope": sub, "actions": ["Microsoft.Resources/subscriptions/read"]},
        {"principal": seeds.PRODUCT_APP_ID, "scope": rg, "actions": ["Microsoft.ContainerService/*/read"]},
        {"principal": seeds.PRODUCT_APP_ID, "scope": cluster, "actions": [RESET_ACTION]},
        {"principal": ADMIN_APP_ID, "scope": sub, "actions": ["*"]},  # someone else's: never shown
    ]
    _reset(emulator, doc)

    def actions(path: str) -> list[str]:
        response = _arm_get(emulator, emu_settings, path)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["nextLink"] is None
        for block in body["value"]:
            assert set(block) == {"actions", "notActions", "dataActions", "notDataActions"}
        return sorted(a for block in body["value"] for a in block["actions"])

    assert actions(sub) == ["Microsoft.Resources/subscriptions/read"]
    assert actions(rg) == ["Microsoft.ContainerService/*/read", "Microsoft.Resources/subscriptions/read"]
    assert actions(cluster) == sorted(
        ["Microsoft.ContainerService/*/read", RESET_ACTION, "Microsoft.Resources/subscriptions/read"]
    )
    assert (
        _arm_get(emulator, emu_settings, f"{rg}/providers/Microsoft.ContainerService/managedClusters/nope").status_code
        == 404
    )
    assert emulator.requests()["arm.permissions"] == 4

    refused = _arm_get(emulator, emu_settings, cluster, token="e30.e30.bad")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert _arm_get(emulator, emu_settings, cluster, token="").status_code == 401


# -- preflight ----------------------------------------------------------------------------------------------------
def test_preflight_ok_on_the_documented_roles(emulator: EmulatorControl, emu_settings: Settings) -> None:
    _reset(emulator, _doc())
    stages: list[tuple[str, int, int]] = []
    report = _preflight(emu_settings, progress=lambda stage, done, total: stages.append((stage, done, total)))
    assert report.ok, report.rows()
    assert report.clusters == 5
    assert report.object_id == _product_sp(emulator)
    checks = {(f.check) for f in report.findings}
    assert {CHECK_ARM_ACTIONS, CHECK_GRAPH_ROLE, CHECK_APP_OWNER, CHECK_SP_OWNER, CHECK_VAULT_LIST} <= checks
    # aks-checkout's secret lives on its service principal: exactly one sp-owner check
    assert sum(f.check == CHECK_SP_OWNER for f in report.findings) == 1
    assert sum(f.check == CHECK_ARM_ACTIONS for f in report.findings) == 5
    assert ("ARM permissions", 5, 5) in stages
    vault = next(v for v in emulator.state()["vaults"] if v["name"] == seeds.VAULT)
    probe = vault["secrets"][PROBE_SECRET]
    assert len(probe) == 1 and probe[0]["tags"]["purpose"] == "aks-rotator-preflight"
    assert "managed-by" not in probe[0]["tags"]
    json.dumps(report.to_json())


def test_a_second_preflight_writes_no_new_secret_version(emulator: EmulatorControl, emu_settings: Settings) -> None:
    _reset(emulator, _doc())
    assert _preflight(emu_settings).ok
    second = _preflight(emu_settings)
    assert second.ok, second.rows()
    vault = next(v for v in emulator.state()["vaults"] if v["name"] == seeds.VAULT)
    (probe,) = vault["secrets"][PROBE_SECRET]
    assert "checked" in probe["tags"]
    (write,) = [f for f in second.findings if f.check == CHECK_VAULT_WRITE]
    assert "no new version" in write.note


def test_preflight_names_exactly_the_missing_arm_action(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = _doc()
    spec = _cluster(doc, "aks-payments")
    sub = spec["subscription_id"]
    for ra in doc["role_assignments"]:
        if ra["principal"] == seeds.PRODUCT_APP_ID and ra["scope"] == f"/subscriptions/{sub}":
            ra["actions"] = [a for a in ra["actions"] if a != RESET_ACTION]
    _reset(emulator, doc)
    report = _preflight(emu_settings)
    failures = _failures(report)
    # the two clusters of that subscription (aks-payments, aks-checkout) miss exactly that action; nothing else
    assert {f.check for f in failures} == {CHECK_ARM_ACTIONS}
    assert sorted(f.scope.rsplit("/", 1)[-1] for f in failures) == ["aks-checkout", "aks-payments"]
    for finding in failures:
        assert finding.missing == RESET_ACTION
        assert finding.fix.startswith(f"az role assignment create --assignee {emu_settings.client_id} --role ")
        assert finding.fix.endswith(f"--scope /subscriptions/{sub}")
    assert "AKS credential rotator" in failures[0].fix


def test_preflight_given_cluster_ids_checks_only_those(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = _doc()
    _reset(emulator, doc)
    wanted = _cluster_id(_cluster(doc, "aks-analytics"))
    report = _preflight(emu_settings, cluster_ids=[wanted, wanted.replace("aks-analytics", "aks-missing")])
    assert report.clusters == 1
    assert [f.scope for f in report.findings if f.check == CHECK_ARM_ACTIONS] == [wanted]
    (missing,) = report.failures
    assert missing.scope.endswith("aks-missing") and missing.check == "cluster-read"


def test_preflight_reports_an_application_not_owned(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = _doc()
    app = _app(doc, "aks-payments")
    app["owned_by_product"] = False
    checkout = _app(doc, "aks-checkout")
    checkout["owned_by_product"] = False
    _reset(emulator, doc)
    report = _preflight(emu_settings)
    oid = _product_sp(emulator)
    by_check = {(f.check, f.scope.split()[1]): f for f in report.failures}
    assert set(by_check) == {
        (CHECK_APP_OWNER, app["app_id"]),
        (CHECK_APP_OWNER, checkout["app_id"]),
        (CHECK_SP_OWNER, checkout["app_id"]),
    }
    assert (
        by_check[CHECK_APP_OWNER, app["app_id"]].fix
        == f"az ad app owner add --id {app['app_id']} --owner-object-id {oid}"
    )
    sp_fix = by_check[CHECK_SP_OWNER, checkout["app_id"]].fix
    sp_id = checkout["service_principal"]["object_id"]
    assert sp_fix.startswith(
        f"az rest --method POST --uri '{emu_settings.graph_endpoint}/v1.0/servicePrincipals/{sp_id}/owners/$ref'"
    )
    assert f"directoryObjects/{oid}" in sp_fix


def test_preflight_reports_a_missing_graph_role(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = _doc()
    doc["graph_app_roles"][seeds.PRODUCT_APP_ID] = []
    _reset(emulator, doc)
    report = _preflight(emu_settings)
    role = _failures(report, CHECK_GRAPH_ROLE)
    assert len(role) == 1
    assert role[0].missing == "Microsoft Graph app role Application.ReadWrite.OwnedBy"
    oid = _product_sp(emulator)
    assert f"servicePrincipals/{oid}/appRoleAssignments" in role[0].fix
    assert "18a4783c-866b-4cc7-a460-3d5e5662c884" in role[0].fix
    assert not _failures(report, CHECK_ARM_ACTIONS)


def test_preflight_with_read_write_all_passes_with_a_note(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = _doc()
    doc["graph_app_roles"][seeds.PRODUCT_APP_ID] = ["Application.ReadWrite.All"]
    _app(doc, "aks-payments")["owned_by_product"] = False
    _reset(emulator, doc)
    report = _preflight(emu_settings)
    assert report.ok, report.rows()
    assert any("broader than" in f.note for f in report.findings if f.check == CHECK_GRAPH_ROLE)


def test_preflight_reports_missing_key_vault_role(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = _doc()
    doc["vault_roles"] = []
    _reset(emulator, doc)
    report = _preflight(emu_settings)
    failures = report.failures
    assert {f.check for f in failures} == {CHECK_VAULT_LIST, CHECK_VAULT_WRITE}
    listing = next(f for f in failures if f.check == CHECK_VAULT_LIST)
    assert listing.missing == "Microsoft.KeyVault/vaults/secrets/readMetadata/action"
    assert listing.fix == (
        f'az role assignment create --assignee {emu_settings.client_id} --role "Key Vault Secrets Officer" '
        f'--scope "$(az keyvault show --name {seeds.VAULT} --query id -o tsv)"'
    )
    write = next(f for f in failures if f.check == CHECK_VAULT_WRITE)
    assert write.missing == "Microsoft.KeyVault/vaults/secrets/setSecret/action"

    doc["vault_roles"] = [{"principal": seeds.PRODUCT_APP_ID, "vault": seeds.VAULT, "role": "Key Vault Secrets User"}]
    _reset(emulator, doc)
    (write,) = _preflight(emu_settings).failures  # a reader can list but not write
    assert (write.check, write.missing) == (CHECK_VAULT_WRITE, "Microsoft.KeyVault/vaults/secrets/setSecret/action")


def test_preflight_reports_a_credential_without_tokens(emulator: EmulatorControl, emu_settings: Settings) -> None:
    _reset(emulator, _doc())

    async def go() -> PreflightReport:
        wrong = secret_credential(emu_settings, seeds.PRODUCT_APP_ID, "not-the-secret-at-all-0123456789")
        try:
            return await permissions.preflight(emu_settings, credential=wrong, retry_total=0)
        finally:
            await wrong.close()

    report = _run(go())
    assert {f.check for f in report.failures} == {"arm-token", "graph-token", "keyvault-token"}
    assert report.clusters == 0 and report.object_id is None


# -- adopt --------------------------------------------------------------------------------------------------------
def _unowned_doc() -> dict[str, Any]:
    doc = _doc()
    for name in ("aks-payments", "aks-checkout"):
        _app(doc, name)["owned_by_product"] = False
    return doc


def test_adopt_dry_run_changes_nothing(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = _unowned_doc()
    _reset(emulator, doc)
    report = _adopt(emu_settings, cluster_ids=None, all_clusters=True, dry_run=True)
    assert report.ok and report.dry_run
    assert report.product_object_id == _product_sp(emulator)
    statuses = {(a.app_id, a.holder): a.status for a in report.actions}
    payments, checkout = _app(doc, "aks-payments")["app_id"], _app(doc, "aks-checkout")["app_id"]
    assert statuses[payments, "application"] == "would_add"
    assert statuses[checkout, "application"] == "would_add"
    assert statuses[checkout, "servicePrincipal"] == "would_add"
    assert statuses[_app(doc, "aks-analytics")["app_id"], "application"] == "ok"
    counts = emulator.requests()
    assert counts.get("mutations", 0) == 0, counts
    assert not _preflight(emu_settings).ok
    assert len(report.rows()) == len(report.actions) and len(report.headers) == len(report.rows()[0])


def test_adopt_adds_owners_then_is_a_no_op(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = _unowned_doc()
    _reset(emulator, doc)
    assert not _preflight(emu_settings).ok

    first = _adopt(emu_settings, cluster_ids=None, all_clusters=True, dry_run=False)
    assert first.ok, first.rows()
    assert first.changed == 3
    assert emulator.requests()["mutations.graph"] == 3

    emulator.clear_requests()
    second = _adopt(emu_settings, cluster_ids=None, all_clusters=True, dry_run=False)
    assert second.ok and second.changed == 0
    assert {a.status for a in second.actions} == {"ok"}
    assert emulator.requests().get("mutations", 0) == 0

    report = _preflight(emu_settings)
    assert report.ok, report.rows()


def test_adopt_one_cluster(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = _unowned_doc()
    _reset(emulator, doc)
    target = _cluster_id(_cluster(doc, "aks-payments"))
    report = _adopt(emu_settings, cluster_ids=[target], all_clusters=False, dry_run=False)
    assert [(a.holder, a.status, a.clusters) for a in report.actions] == [("application", "added", (target,))]
    failures = _preflight(emu_settings).failures
    assert {f.scope.split()[1] for f in failures} == {_app(doc, "aks-checkout")["app_id"]}


def test_adopt_needs_a_selection_and_an_admin(emulator: EmulatorControl, emu_settings: Settings) -> None:
    _reset(emulator, _unowned_doc())
    with pytest.raises(permissions.AdoptError):
        _adopt(emu_settings, cluster_ids=None, all_clusters=False, dry_run=True)

    async def as_product() -> AdoptReport:
        product = product_credential(emu_settings)
        try:
            return await permissions.adopt(
                emu_settings,
                cluster_ids=None,
                all_clusters=True,
                dry_run=False,
                admin_credential=product,
                retry_total=0,
            )
        finally:
            await product.close()

    report = _run(as_product())  # OwnedBy may not add owners
    assert not report.ok
    assert {a.status for a in report.actions if a.status != "ok"} == {"failed"}
    assert all("403" in a.detail for a in report.actions if a.status == "failed")


def test_admin_credential_from_environment(emu_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.identity.aio import AzureCliCredential, ClientSecretCredential

    monkeypatch.delenv(permissions.ADMIN_CLIENT_ID_ENV, raising=False)
    monkeypatch.delenv(permissions.ADMIN_CLIENT_SECRET_ENV, raising=False)
    assert isinstance(permissions.admin_credential(emu_settings), AzureCliCredential)
    monkeypatch.setenv(permissions.ADMIN_CLIENT_ID_ENV, ADMIN_APP_ID)
    monkeypatch.setenv(permissions.ADMIN_CLIENT_SECRET_ENV, ADMIN_SECRET)
    assert isinstance(permissions.admin_credential(emu_settings), ClientSecretCredential)
