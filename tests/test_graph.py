"""shared.graph (the product's Graph client) against the emulator through the real msgraph-sdk."""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from emulator import seeds
from emulator.sandbox import EmulatorControl
from shared import graph as graph_module
from shared import logs
from shared.azure import product_credential
from shared.graph import (
    GraphAuthorizationError,
    GraphError,
    GraphOps,
    PasswordPolicyError,
)
from shared.settings import Settings

T = TypeVar("T")


def _estate(roles: list[str], apps: int = 0, seed: int = 3, **extra: Any) -> dict[str, Any]:
    doc = seeds.demo()
    doc["graph_app_roles"] = {seeds.PRODUCT_APP_ID: roles}
    rng = random.Random(seed)
    for i in range(apps):
        password = {"display_name": "rbac", "expires_in_days": rng.uniform(1, 400)}
        spec: dict[str, Any] = {"app_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "display_name": f"a{i}"}
        if i % 7 == 0:  # ~15%: the secret lives on the service principal
            spec["service_principal"] = {"password_credentials": [password]}
        else:
            spec["password_credentials"] = [password]
        doc["applications"].append(spec)
    doc.update(extra)
    return doc


def _ops(settings: Settings, body: Callable[[GraphOps], Awaitable[T]], **kwargs: Any) -> T:
    async def go() -> T:
        credential = product_credential(settings)
        try:
            async with GraphOps(settings, credential, **kwargs) as ops:
                return await body(ops)
        finally:
            await credential.close()

    return asyncio.run(go())


def _graph_http_requests(counts: dict[str, int]) -> int:
    """HTTP requests that reached Graph (batch items are counted under their operation and graph.batch_item)."""
    graph = sum(v for k, v in counts.items() if k.startswith("graph.") and k != "graph.batch_item")
    return graph - counts.get("graph.batch_item", 0)


def _app(state: dict[str, Any], app_id: str) -> dict[str, Any]:
    return next(a for a in state["applications"] if a["appId"] == app_id)


# -- lookup ---------------------------------------------------------------------------------------------------
def test_lookup_1000_apps_in_few_batched_requests(emulator: EmulatorControl, emu_settings: Settings) -> None:
    emulator.reset(_estate(["Application.ReadWrite.OwnedBy"], apps=1000))
    state = emulator.state()
    ids = [a["appId"] for a in state["applications"] if a["appId"] != seeds.PRODUCT_APP_ID][-1000:]
    # shared apps (one app behind several clusters) appear repeatedly; unknown ids are simply absent
    unknown = str(uuid.uuid4())
    asked = ids + ids[:100] + [i.upper() for i in ids[100:150]] + [unknown]
    emulator.clear_requests()

    found = _ops(emu_settings, lambda ops: ops.lookup_apps(asked))

    counts = emulator.requests()
    batches = math.ceil(2 * math.ceil(1000 / 15) / 20)
    assert counts["graph.batch"] == batches  # ceil(2*1000/15/20) = 7
    assert _graph_http_requests(counts) == batches
    assert counts["graph.batch_item"] == 2 * math.ceil(1000 / 15)  # each id looked up once
    assert set(found) == {i.lower() for i in ids} and unknown not in found
    for app_id in ids[::37]:
        truth = _app(state, app_id)
        creds = found[app_id]
        assert creds.application_object_id == truth["objectId"]
        assert creds.service_principal_object_id == truth["servicePrincipal"]["objectId"]
        assert [p.key_id for p in creds.application_passwords] == [p["keyId"] for p in truth["passwordCredentials"]]
        sp_truth = truth["servicePrincipal"]["passwordCredentials"]
        assert [p.key_id for p in creds.service_principal_passwords] == [p["keyId"] for p in sp_truth]
    on_sp = [c for c in found.values() if c.service_principal_passwords]
    assert on_sp and all(
        p.end is not None and p.end.tzinfo is not None for c in on_sp for p in c.service_principal_passwords
    )


def test_lookup_retries_throttled_and_failed_items(emulator: EmulatorControl, emu_settings: Settings) -> None:
    emulator.reset(_estate(["Application.Read.All"], apps=60))
    ids = [a["appId"] for a in emulator.state()["applications"]]
    emulator.add_faults(
        {"kind": "throttle", "surface": "graph", "operation": "listServicePrincipals", "times": 3, "retry_after": 1},
        {"kind": "status", "surface": "graph", "operation": "listApplications", "status": 503, "times": 2},
        {"kind": "throttle", "surface": "graph", "operation": "batch", "times": 1, "retry_after": 1},
    )
    emulator.clear_requests()

    found = _ops(emu_settings, lambda ops: ops.lookup_apps(ids), backoff_seconds=0.05)

    assert set(found) == {i.lower() for i in ids}
    assert all(c.application_object_id and c.service_principal_object_id for c in found.values())
    counts = emulator.requests()
    items = 2 * math.ceil(len(ids) / 15)
    assert counts["graph.batch_item"] == items + 5  # every throttled / failed item was sent again
    assert all(f["times"] == 0 for f in emulator.faults())


def test_lookup_follows_next_links_inside_later_batches(
    emulator: EmulatorControl, emu_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.reset(_estate(["Application.Read.All"], apps=40))
    ids = [a["appId"] for a in emulator.state()["applications"]]
    monkeypatch.setattr(graph_module, "LOOKUP_TOP", 4)  # 15 ids per filter -> 4 pages per sub-request
    emulator.clear_requests()

    found = _ops(emu_settings, lambda ops: ops.lookup_apps(ids))

    assert set(found) == {i.lower() for i in ids}
    assert all(c.application_object_id and c.service_principal_object_id for c in found.values())
    counts = emulator.requests()
    filters = math.ceil(len(ids) / 15)
    pages = sum(math.ceil(min(15, len(ids) - i) / 4) for i in range(0, len(ids), 15))
    assert counts["graph.batch_item"] == 2 * pages > 2 * filters
    assert _graph_http_requests(counts) == counts["graph.batch"] <= 2 * math.ceil(15 / 4)


def test_lookup_gives_up_after_bounded_attempts(emulator: EmulatorControl, emu_settings: Settings) -> None:
    emulator.reset(_estate(["Application.Read.All"]))
    emulator.add_faults({"kind": "status", "surface": "graph", "operation": "listApplications", "status": 500})
    emulator.clear_requests()
    with pytest.raises(GraphError, match="gave up after 3 attempts"):
        _ops(emu_settings, lambda ops: ops.lookup_apps([seeds.PRODUCT_APP_ID]), max_attempts=3, backoff_seconds=0.01)
    assert emulator.requests()["graph.listApplications"] == 3


def test_lookup_without_read_permission_is_an_authorization_error(
    emulator: EmulatorControl, emu_settings: Settings
) -> None:
    emulator.reset(_estate([]))
    with pytest.raises(GraphAuthorizationError, match="403 Authorization_RequestDenied"):
        _ops(emu_settings, lambda ops: ops.lookup_apps([seeds.PRODUCT_APP_ID]))


# -- passwords ------------------------------------------------------------------------------------------------
def test_add_and_remove_password_idempotently(emulator: EmulatorControl, emu_settings: Settings) -> None:
    emulator.reset(_estate(["Application.ReadWrite.OwnedBy"]))
    demo = seeds.demo()
    on_app, on_sp = demo["applications"][0], demo["applications"][1]  # aks-payments (app), aks-checkout (SP)
    state = emulator.state()
    app_oid = _app(state, on_app["app_id"])["objectId"]
    sp_oid = _app(state, on_sp["app_id"])["servicePrincipal"]["objectId"]
    end = datetime.now(UTC) + timedelta(days=90)
    logs.clear_secrets()

    async def add(ops: GraphOps) -> list[Any]:
        first = await ops.add_password("application", app_oid, "rotator-1", end)
        second = await ops.add_password("servicePrincipal", sp_oid, "rotator-2", end)
        return [
            first,
            second,
            await ops.passwords("application", app_oid),
            await ops.passwords("servicePrincipal", sp_oid),
        ]

    first, second, app_pw, sp_pw = _ops(emu_settings, add)
    for new in (first, second):
        secret = new.secret.get_secret_value()
        assert len(secret) == 40 and secret not in repr(new) and secret not in str(new)
        assert logs.redact(f"value={secret}") == f"value={logs.MASK}"  # registered for redaction at once
        assert abs((new.end - end).total_seconds()) < 1
    assert first.key_id in [p.key_id for p in app_pw] and second.key_id in [p.key_id for p in sp_pw]
    assert next(p for p in app_pw if p.key_id == first.key_id).hint == first.secret.get_secret_value()[:3]
    truth = _app(emulator.state(), on_app["app_id"])
    digest = hashlib.sha256(first.secret.get_secret_value().encode()).hexdigest()
    assert any(p["keyId"] == first.key_id and p["secretSha256"] == digest for p in truth["passwordCredentials"])

    async def remove(ops: GraphOps) -> None:
        await ops.remove_password("application", app_oid, first.key_id)
        await ops.remove_password("application", app_oid, first.key_id)  # already gone: no error
        await ops.remove_password("servicePrincipal", sp_oid, second.key_id)
        await ops.remove_password("servicePrincipal", sp_oid, str(uuid.uuid4()))  # never existed: no error

    _ops(emu_settings, remove)
    truth = _app(emulator.state(), on_sp["app_id"])
    assert second.key_id not in [p["keyId"] for p in truth["servicePrincipal"]["passwordCredentials"]]
    assert first.key_id not in [p["keyId"] for p in _app(emulator.state(), on_app["app_id"])["passwordCredentials"]]

    with pytest.raises(GraphError, match="404 Request_ResourceNotFound"):
        _ops(emu_settings, lambda ops: ops.remove_password("application", str(uuid.uuid4()), first.key_id))


def test_add_password_errors_are_mapped_and_secret_free(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = _estate(["Application.ReadWrite.OwnedBy"])
    doc["applications"][0]["policy"] = {"block_password_addition": True}
    doc["applications"][1]["policy"] = {"max_password_lifetime_days": 30}
    doc["applications"][2]["password_limit"] = 1
    doc["applications"][3]["owned_by_product"] = False
    emulator.reset(doc)
    state = emulator.state()
    oid = [_app(state, a["app_id"])["objectId"] for a in doc["applications"][:4]]
    end = datetime.now(UTC) + timedelta(days=60)
    errors: list[GraphError] = []

    async def attempt(ops: GraphOps, object_id: str) -> None:
        try:
            await ops.add_password("application", object_id, "rotator", end)
        except GraphError as exc:
            errors.append(exc)

    async def body(ops: GraphOps) -> None:
        for object_id in oid:
            await attempt(ops, object_id)

    _ops(emu_settings, body)
    assert [type(e) for e in errors] == [
        PasswordPolicyError,
        PasswordPolicyError,
        PasswordPolicyError,
        GraphAuthorizationError,
    ]
    assert [e.code for e in errors] == [
        "CredentialTypeNotAllowedAsPerAppPolicy",
        "CredentialInvalidLifetimeAsPerAppPolicy",
        "TooManyAppPasswords",
        "Authorization_RequestDenied",
    ]
    canaries = emulator.canaries()
    for exc in errors:
        text = str(exc) + repr(exc) + repr(exc.__cause__) + repr(exc.__context__)
        assert len(str(exc)) < 120 and not any(c in text for c in canaries)


def test_add_password_is_not_retried_after_5xx_but_is_after_429(
    emulator: EmulatorControl, emu_settings: Settings
) -> None:
    emulator.reset(_estate(["Application.ReadWrite.OwnedBy"]))
    oid = emulator.state()["applications"][1]["objectId"]
    end = datetime.now(UTC) + timedelta(days=30)
    emulator.add_faults({"kind": "status", "surface": "graph", "operation": "addApplicationPassword", "status": 503})
    emulator.clear_requests()
    with pytest.raises(GraphError, match="503"):
        _ops(emu_settings, lambda ops: ops.add_password("application", oid, "x", end))
    assert emulator.requests()["graph.addApplicationPassword"] == 1

    emulator.clear_faults()
    emulator.add_faults(
        {"kind": "throttle", "surface": "graph", "operation": "addApplicationPassword", "times": 1, "retry_after": 1}
    )
    new = _ops(emu_settings, lambda ops: ops.add_password("application", oid, "x", end))
    assert new.key_id in [p["keyId"] for p in emulator.state()["applications"][1]["passwordCredentials"]]


# -- policy and owners ----------------------------------------------------------------------------------------
def test_max_password_lifetime(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = _estate(
        ["Application.ReadWrite.OwnedBy", "Policy.Read.All"],
        default_app_management_policy={"max_password_lifetime_days": 90},
    )
    doc["applications"][0]["policy"] = {"max_password_lifetime_days": 30}
    emulator.reset(doc)
    state = emulator.state()
    own, default = (_app(state, a["app_id"])["objectId"] for a in doc["applications"][:2])

    async def body(ops: GraphOps) -> list[timedelta | None]:
        return [await ops.max_password_lifetime(own), await ops.max_password_lifetime(default)]

    assert _ops(emu_settings, body) == [timedelta(days=30), timedelta(days=90)]

    doc.pop("default_app_management_policy")
    emulator.reset(doc)
    assert _ops(emu_settings, lambda ops: ops.max_password_lifetime(default)) is None
    emulator.reset(_estate(["Application.ReadWrite.OwnedBy"]))  # no Policy.Read.All: 403 -> None
    assert _ops(emu_settings, lambda ops: ops.max_password_lifetime(default)) is None


def test_owners_and_add_owner(emulator: EmulatorControl, emu_settings: Settings) -> None:
    doc = _estate(["Application.ReadWrite.All"])
    doc["applications"][0]["owned_by_product"] = False
    emulator.reset(doc)
    state = emulator.state()
    oid = _app(state, doc["applications"][0]["app_id"])["objectId"]
    product_sp = _app(state, seeds.PRODUCT_APP_ID)["servicePrincipal"]["objectId"]

    async def body(ops: GraphOps) -> list[list[str]]:
        before = await ops.owners("application", oid)
        await ops.add_owner("application", oid, product_sp)
        await ops.add_owner("application", oid, product_sp)  # already an owner: no error
        return [before, await ops.owners("application", oid)]

    assert _ops(emu_settings, body) == [[], [product_sp]]

    emulator.reset(_estate(["Application.ReadWrite.OwnedBy"]))
    with pytest.raises(GraphAuthorizationError):
        _ops(emu_settings, lambda ops: ops.add_owner("application", oid, product_sp))


def test_concurrent_service_principal_lookups_each_get_their_own(
    emulator: EmulatorControl, emu_settings: Settings
) -> None:
    """msgraph's `service_principals_with_app_id` builder writes the app id into the client's shared path
    parameters; concurrent look-ups must still each reach their own application's service principal."""
    emulator.reset(_estate(["Application.ReadWrite.OwnedBy"], apps=8))
    apps = [a for a in emulator.state()["applications"] if a.get("servicePrincipal")]
    assert len(apps) >= 4

    async def look(ops: GraphOps) -> list[str | None]:
        return list(await asyncio.gather(*(ops.service_principal_id(a["appId"]) for a in apps)))

    found = _ops(emu_settings, look)
    assert found == [a["servicePrincipal"]["objectId"] for a in apps]
