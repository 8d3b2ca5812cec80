"""The emulator at scale: Resource Graph pages from an index (same rows and authorization as a full rebuild),
Graph's resource-unit cost, and a stop within a second of SIGTERM whatever a request is doing."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import httpx
import pytest
from multidict import MultiDict

from emulator import graph, resource_graph, seeds
from emulator.core import Emulator
from emulator.rbac import can, visible_subscriptions
from emulator.sandbox import EmulatorProcess
from emulator.seeds import ROTATOR_ARM_ACTIONS

OTHER = "0b9c7c55-0000-4000-8000-000000000001"


def _mixed_estate() -> dict[str, Any]:
    """Grants at subscription, resource-group and cluster scope, a read-less grant and another principal's."""
    doc = seeds.generate(clusters=120, subscriptions=6, seed=5)
    subs = [s["id"] for s in doc["subscriptions"]]
    product = doc["product"]["app_id"]
    clusters = doc["clusters"]
    rg_scope = f"/subscriptions/{subs[1]}/resourceGroups/{clusters[1]['resource_group']}"
    one = clusters[2]
    cluster_scope = (
        f"/subscriptions/{one['subscription_id']}/resourceGroups/{one['resource_group']}"
        f"/providers/Microsoft.ContainerService/managedClusters/{one['name']}"
    )
    doc["role_assignments"] = [
        {"principal": product, "scope": f"/subscriptions/{subs[0]}", "actions": list(ROTATOR_ARM_ACTIONS)},
        {"principal": product, "scope": rg_scope, "actions": ["Microsoft.ContainerService/managedClusters/*"]},
        {"principal": product, "scope": cluster_scope, "actions": ["Microsoft.ContainerService/*/read"]},
        {"principal": product, "scope": f"/subscriptions/{subs[3]}", "actions": ["Microsoft.Resources/*/read"]},
        {"principal": OTHER, "scope": f"/subscriptions/{subs[4]}", "actions": ["*"]},
    ]
    return doc


def _brute_force(emu: Emulator, principal: str, requested: set[str]) -> list[str]:
    """What the emulator answered before the index: every cluster authorized one by one."""
    visible = {s.lower() for s in visible_subscriptions(emu.estate, principal)}
    scope = (requested & visible) if requested else visible
    action = "Microsoft.ContainerService/managedClusters/read"
    return sorted(
        key
        for key, c in emu.estate.clusters.items()
        if c.subscription_id.lower() in scope and can(emu.estate, principal, action, c.id)
    )


@pytest.mark.parametrize("principal", ["product", OTHER, "nobody"])
def test_indexed_visibility_matches_authorizing_every_cluster(principal: str) -> None:
    emu = Emulator(_mixed_estate())
    who = emu.estate.product_app_id if principal == "product" else principal
    subs = [s.lower() for s in emu.estate.subscriptions]
    for requested in (set(), {subs[0], subs[1]}, {subs[2]}, {subs[4]}):
        expected = _brute_force(emu, who, requested)
        assert resource_graph._visible_keys(emu, who, requested) == (expected, False)
    if principal == "product":
        assert 0 < len(_brute_force(emu, who, set())) < len(emu.estate.clusters)


def test_index_follows_changes_to_the_estate() -> None:
    emu = Emulator(_mixed_estate())
    who = emu.estate.product_app_id
    before, _ = resource_graph._visible_keys(emu, who, set())
    removed = before[0]
    del emu.estate.clusters[removed]
    after, _ = resource_graph._visible_keys(emu, who, set())
    assert removed not in after and after == _brute_force(emu, who, set())


@pytest.mark.parametrize(
    ("template", "method", "query", "units"),
    [
        ("/applications", "GET", {}, 2),
        ("/applications", "GET", {"$select": "id", "$filter": "appId in ('a')"}, 1),
        ("/servicePrincipals", "GET", {"$select": "id"}, 1),
        ("/applications", "GET", {"$top": "5", "$select": "id"}, 1),
        ("/applications", "GET", {"$expand": "owners"}, 3),
        ("/applications/{id}/addPassword", "POST", {}, 1),
    ],
)
def test_graph_resource_units_follow_the_published_costs(
    template: str, method: str, query: dict[str, str], units: int
) -> None:
    op = next(o for o in graph._OPS if o.template == template and o.method == method)
    assert graph.resource_units(op, method, MultiDict(query)) == units


@pytest.mark.timeout(120)
def test_sigterm_stops_the_emulator_within_a_second_during_a_long_request() -> None:
    process = EmulatorProcess("--clusters", "2000", "--subscriptions", "20", startup_timeout=90)
    try:
        control = process.control
        control.add_faults({"kind": "latency", "surface": "arm", "latency_ms": 60_000})
        outcome: list[BaseException | int] = []

        def slow_request() -> None:
            try:
                response = httpx.get(
                    f"{control.endpoint}/subscriptions?api-version=2022-12-01", verify=control.ssl_context(), timeout=90
                )
                outcome.append(response.status_code)
            except httpx.HTTPError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=slow_request, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while control.requests().get("arm.listSubscriptions", 0) < 1:  # the request is inside its latency
            assert time.monotonic() < deadline, "the request never reached the emulator"
        started = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)
        process.proc.wait(timeout=10)
        assert time.monotonic() - started < 1.0
        thread.join(timeout=10)
        assert outcome and not isinstance(outcome[0], int)  # the request was cut, not answered
    finally:
        process.close()
