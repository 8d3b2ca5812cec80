"""What the randomized simulations (tests/test_simulation_random.py) found: each shrunk to a minimal deterministic
scenario, `xfail(strict=True)` with the reason until the product handles it, then kept as a regression test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from tests.support.engine import World
from tests.support.world import estate

LRO_FAIL = {"kind": "lro_fail", "surface": "arm", "operation": "resetServicePrincipalProfile", "times": 1}


@pytest.fixture
def emulator_cleared(emulator: EmulatorControl) -> Iterator[EmulatorControl]:
    yield emulator
    emulator.clear_faults()


def world(emulator: EmulatorControl, azurite: Azurite, clusters: list[dict[str, Any]], **modes: Any) -> World:
    built = World(emulator, azurite, estate(clusters))
    if modes:
        emulator.set_modes(**modes)
    return built


# Found by seed 1005 (30 days): `lro_location_only` with a transient `lro_fail` of the reset.
def test_failed_reset_seen_through_location_is_a_failed_reset(
    emulator_cleared: EmulatorControl, azurite: Azurite
) -> None:
    found = world(emulator_cleared, azurite, [{"name": "aks-a", "days": 10}], lro_location_only=True)
    emulator_cleared.add_faults(LRO_FAIL)
    found.run(3)
    found.check()
