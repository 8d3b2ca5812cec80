"""Migration to managed identity against the emulator through the product's clients: the role-assignment and
identity wire (docs/emulator.md), the plan (`migrate --plan`), and what breaks when a cluster switches before its
new identity holds what the service principal had."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from emulator.azurite import Azurite
from emulator.role_assignments import ASSIGNMENTS_QUERY as EMULATED_QUERY
from emulator.sandbox import EmulatorControl, settings_env
from shared import clock
from shared.aks import AksError
from shared.migration import plan as rules
from shared.migration.arm import ASSIGNMENTS_QUERY, Identity
from shared.migration.collect import Sources, collect, open_sources
from shared.settings import Settings
from tests.plugins.azurite import StorageNames
from tests.plugins.emulator import product_env
from tests.support import migration

T = TypeVar("T")
CLI = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "aks-rotator")
ESTATE = [
    {"name": "aks-vnet", "vnet": True},
    {"name": "aks-acr", "acr": True, "pools": ["system", "gpu", "batch"]},
    {"name": "aks-shared-a", "app": "shared-sp", "vnet": True, "acr": True},
    {"name": "aks-shared-b", "app": "shared-sp", "acr": True},
    {"name": "aks-msi", "msi": True},
]


def _run(settings: Settings, work: Callable[[Sources], Awaitable[T]]) -> T:
    async def go() -> T:
        async with open_sources(settings) as src:
            return await work(src)

    return asyncio.run(go())


def _cluster(state: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in state["clusters"] if c["id"].endswith("/" + name))


def test_the_query_texts_agree() -> None:
    assert " ".join(ASSIGNMENTS_QUERY.split()) == " ".join(EMULATED_QUERY.split())


def test_role_assignments_identities_and_their_propagation(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = migration.estate(ESTATE, propagation_seconds=1800)
    emulator.reset(doc)
    subnet, _ = migration.scopes(doc)
    rg = f"/subscriptions/{doc['subscriptions'][0]['id']}/resourceGroups/rg-aks-vnet"
    uami = f"{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-aks-aks-vnet"
    network = "4d97b98b-1d4f-4787-a291-c67834d212e7"

    async def work(src: Sources) -> None:
        first = await src.arm.ensure_identity(uami, "westeurope", {})
        again = await src.arm.ensure_identity(uami, "westeurope", {})
        assert first == again and first.principal_id
        sub = doc["subscriptions"][0]["id"]
        assert await src.arm.assignments_for(sub, first.principal_id) == []
        created = await src.arm.create_assignment(subnet, first.principal_id, network)
        assert created is not None and created.role_id == network
        assert await src.arm.create_assignment(subnet, first.principal_id, network) is None  # 409 RoleAssignmentExists
        assert await src.arm.assignments_for(sub, first.principal_id) == []  # not propagated yet
        emulator.advance(1800)
        listed = await src.arm.assignments_for(sub, first.principal_id)
        assert [(a.role_id, a.scope) for a in listed] == [(network, subnet)]
        rows = await src.arm.assignments_graph([sub])
        assert any(r.principal_id == first.principal_id and r.role_id == network for r in rows)
        with pytest.raises(AksError) as refused:  # an unknown principal without principalType
            await src.arm._send(
                "PUT",
                f"{subnet}/providers/Microsoft.Authorization/roleAssignments/0e2b3c4d-0000-4000-8000-000000000001",
                "2022-04-01",
                {"properties": {"principalId": "00000000-0000-4000-8000-0000000000aa", "roleDefinitionId": network}},
            )
        assert refused.value.code == "PrincipalNotFound"

    _run(emu_settings, work)


def test_plan_names_grants_identities_pools_and_blockers(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = migration.estate(ESTATE)
    emulator.reset(doc)
    subnet, registry = migration.scopes(doc)
    collected = _run(emu_settings, lambda src: collect(src, now=clock.now()))
    plans = {p.name: p for p in collected.plans}
    assert sorted(plans) == ["aks-acr", "aks-shared-a", "aks-shared-b", "aks-vnet"]  # not the MSI cluster
    vnet = plans["aks-vnet"]
    assert vnet.stage is rules.Stage.SERVICE_PRINCIPAL
    assert [(g.component, g.role, g.scope) for g in vnet.grants if g.role != "Managed Identity Operator"] == [
        (rules.Component.CONTROL_PLANE, "Network Contributor", subnet)
    ]
    acr = plans["aks-acr"]
    assert (acr.grants[0].component, acr.grants[0].role) == (rules.Component.KUBELET, "AcrPull")
    assert acr.grants[0].identity == acr.kubelet_identity and acr.kubelet_identity.endswith("id-aks-aks-acr-kubelet")
    assert [p.name for p in acr.pools] == ["system", "gpu", "batch"]
    assert any("--enable-managed-identity" in c for c in acr.commands)
    assert any(f'--role "AcrPull" --scope {registry}' in c for c in acr.commands)
    assert "Microsoft.Authorization/roleAssignments@2022-04-01" in acr.bicep
    shared = plans["aks-shared-a"]
    assert any("also used by 1 other cluster(s): aks-shared-b" in b.text for b in shared.blockers)
    assert shared.executable  # sharing blocks only retiring the application
    assert "cannot switch back" in shared.irreversible


def test_switching_before_the_grants_breaks_what_the_sp_could_do(
    emulator: EmulatorControl, emu_settings: Settings
) -> None:
    doc = migration.estate([{"name": "aks-vnet", "vnet": True, "acr": True}])
    emulator.reset(doc)
    cluster_id = _cluster(emulator.state(), "aks-vnet")["id"]
    rg = cluster_id.split("/providers/")[0]

    async def work(src: Sources) -> None:
        ids = [f"{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{n}" for n in ("cp", "kubelet")]
        cp, kubelet = [await src.arm.ensure_identity(i, "westeurope", {}) for i in ids]
        assert isinstance(cp, Identity)
        assert await src.arm.begin_identity_update(cluster_id, cp, kubelet)

    async def upgrade(src: Sources) -> None:
        assert await src.arm.begin_node_image_upgrade(cluster_id, "system")

    _run(emu_settings, work)
    emulator.advance(3600)
    _run(emu_settings, upgrade)  # a new token: the first one expired meanwhile
    emulator.advance(3600)
    state = emulator.state()
    truth = _cluster(state, "aks-vnet")
    assert truth["identityType"] == "UserAssigned" and truth["clientId"] != "msi"
    assert [(p["name"], p["usesSecret"], p["kubeletIdentity"]) for p in truth["nodePools"]] == [
        ("system", False, True),
        ("user", True, False),
    ]
    broken = {(b["component"], b["role"]) for b in state["brokenOperations"]}
    assert broken == {("controlPlane", "Network Contributor"), ("system", "AcrPull")}


def test_cli_plan_json_and_text(emulator: EmulatorControl, emu_settings: Settings, tmp_path: Path) -> None:
    emulator.reset(migration.estate(ESTATE))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}, "COLUMNS": "200"}
    env.update(settings_env(emulator.ready, "UseDevelopmentStorage=true"))
    text = subprocess.run([CLI, "migrate", "--plan", "--all"], env=env, capture_output=True, text=True, check=False)
    assert text.returncode == 0, text.stderr
    assert "== aks-vnet  (service_principal)" in text.stdout and "cannot switch back" in text.stdout
    assert "- [control_plane] Network Contributor on " in text.stdout  # brackets printed, not read as markup
    doc = subprocess.run(
        [CLI, "migrate", "--plan", "--all", "--json"], env=env, capture_output=True, text=True, check=False
    )
    plans = json.loads(doc.stdout)["plans"]
    assert {p["name"] for p in plans} == {"aks-vnet", "aks-acr", "aks-shared-a", "aks-shared-b"}
    assert all(p["executable"] for p in plans)


def test_cli_execute_tagged_and_preflight(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    clusters = [
        {"name": "aks-vnet", "vnet": True, "tags": {"aks-rotator-migrate": "true"}},
        {"name": "aks-acr", "acr": True},
    ]
    doc = migration.estate(clusters, propagation_seconds=1800)
    emulator.reset(doc)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}, "COLUMNS": "200"}
    env.update(product_env(emulator, azurite, storage_names))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, "migrate", *args], env=env, capture_output=True, text=True, check=False)

    assert cli("--execute", "--all").returncode == 2  # execution names its clusters
    assert cli("--plan").returncode == 2
    rights = cli("--preflight", "--all", "--json")
    assert rights.returncode == 0, rights.stdout + rights.stderr
    assert {f["check"] for f in json.loads(rights.stdout)["findings"]} == {"migration-actions"}
    run = cli("--execute", "--tagged", "--json")
    assert run.returncode == 0, run.stderr
    steps = json.loads(run.stdout)["steps"]
    assert [(s["cluster_id"].rsplit("/", 1)[-1], s["phase"]) for s in steps] == [("aks-vnet", "propagation")]
    state = emulator.state()
    assert [c["identityType"] for c in state["clusters"]] == ["None", "None"]  # nothing switched before propagation
    trail = json.loads(cli("--audit", "--cluster", steps[0]["cluster_id"], "--json").stdout)["audit"]
    expected = [("identities", "ensured"), ("grants", "granted"), ("grants", "granted")]  # Network Contributor, MIO
    assert [(r["step"], r["outcome"]) for r in trail] == expected
    doc["role_assignments"] = [ra for ra in doc["role_assignments"] if "roleAssignments/write" not in str(ra)]
    emulator.reset(doc)
    missing = cli("--preflight", "--all", "--json")
    assert missing.returncode == 1
    assert all(
        "Microsoft.Authorization/roleAssignments/write" in f["missing"] for f in json.loads(missing.stdout)["findings"]
    )


def test_role_assignment_lists_at_scope_and_refusals(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = migration.estate([{"name": "aks-vnet", "vnet": True}])
    emulator.reset(doc)
    subnet, _ = migration.scopes(doc)
    sub = doc["subscriptions"][0]["id"]
    vnet = subnet.rsplit("/subnets/", 1)[0]
    path = "/providers/Microsoft.Authorization/roleAssignments"

    async def work(src: Sources) -> None:
        at_subnet = await src.arm._send_filter(subnet + path, "atScope()")
        at_vnet = await src.arm._send_filter(vnet + path, "atScope()")
        below_vnet = await src.arm._send(GET := "GET", vnet + path, "2022-04-01")
        assert [v["properties"]["scope"] for v in at_subnet["value"]] == [subnet]  # at (or above) the subnet
        assert at_vnet["value"] == []  # the subnet's grant is below the VNet: not at or above it
        assert [v["properties"]["scope"] for v in below_vnet["value"]] == [subnet]  # no filter: below counts
        with pytest.raises(AksError) as unsupported:
            await src.arm._send_filter(vnet + path, "roleDefinitionId eq 'x'")
        assert unsupported.value.status == 400
        with pytest.raises(AksError) as missing:
            uami = f"/subscriptions/{sub}/resourceGroups/rg-aks-vnet/providers/Microsoft.ManagedIdentity"
            await src.arm._send(GET, f"{uami}/userAssignedIdentities/nobody", "2023-01-31")
        assert missing.value.status == 404 and missing.value.code == "ResourceNotFound"

    _run(emu_settings, work)


def test_retirement_removes_only_the_products_passwords() -> None:
    """Once no cluster uses the application: what the product created goes, anything else stays (reported)."""
    from shared.credentials import HeldPassword
    from shared.graph import PasswordInfo

    def held(key: str, name: str | None, holder: Any = "application") -> HeldPassword:
        return HeldPassword(holder, "obj", PasswordInfo(key, name, None, None, None))

    ours = held("A1B2C3D4-0000-0000-0000-000000000001", "aks-rotator " + "1" * 32)
    on_sp = held("a1b2c3d4-0000-0000-0000-000000000002", "aks-rotator " + "2" * 32, "servicePrincipal")
    foreign = [held("a1b2c3d4-0000-0000-0000-000000000003", "pipeline"), held("a1b2c3d4-0000-0000-0000-4", None)]
    remove, keep = rules.retirement([ours, *foreign, on_sp])
    assert (remove, keep) == ([ours, on_sp], foreign)
    assert rules.retirement(foreign) == ([], foreign)


def test_a_migration_is_never_requested_over_http() -> None:
    """The tag is the only way in: `POST /api/rotations` cannot ask for a migration (the body is refused)."""
    from shared.messages import InvalidInput, parse_rotation_request

    sub = "/subscriptions/0b1f6471-1bf0-4dda-aec3-111122223333"
    cluster = sub + "/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/a"
    assert parse_rotation_request(json.dumps({"cluster_id": cluster})).kind == "sp_secret"
    with pytest.raises(InvalidInput, match="opted into by the cluster's tag"):
        parse_rotation_request(json.dumps({"cluster_id": cluster, "kind": "migration"}))


def test_a_migration_message_nobody_submitted_changes_nothing(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    """The queue is not a command channel for migrations either: a well-formed migration message for a real SP
    cluster, with no row `submit` wrote (the scan submits only tagged clusters), is rejected; nothing moves."""
    from shared.messages import CredentialKind, new_rotation_message
    from shared.queues import RotationQueues
    from tests.support.engine import make_settings, run_until_idle

    emulator.reset(migration.estate([{"name": "aks-vnet", "vnet": True}]))
    settings = make_settings(emulator, azurite, storage_names)
    before = emulator.state()
    cluster = before["clusters"][0]
    forged = new_rotation_message(
        cluster_id=cluster["id"], kind=CredentialKind.MIGRATION, reason="on_demand", app_id=cluster["clientId"]
    )

    async def send() -> None:
        async with RotationQueues(settings) as queues:
            await queues.ensure()
            await queues.send(forged.to_json())

    asyncio.run(send())
    report = asyncio.run(run_until_idle(settings))
    after = emulator.state()
    assert report.actions == {"rejected": 1}
    assert after["operations"] == before["operations"] and after["clusters"][0]["clientId"] == cluster["clientId"]
