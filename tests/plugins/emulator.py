"""Fixtures for the local Azure emulator: one process per test session, reset to a known estate per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from azure.keyvault.secrets._shared import http_challenge_cache

from emulator import seeds
from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl, EmulatorProcess, settings_env
from shared.settings import Settings
from tests.plugins.azurite import StorageNames


@pytest.fixture(scope="session")
def emulator_process() -> Iterator[EmulatorProcess]:
    proc = EmulatorProcess()
    try:
        yield proc
    finally:
        proc.close()


@pytest.fixture
def emulator(emulator_process: EmulatorProcess) -> EmulatorControl:
    """The emulator, reset to the demo estate with no faults. Tests may `reset()` it to their own estate."""
    control = emulator_process.control
    control.reset(seeds.demo())
    http_challenge_cache.clear()  # the Key Vault SDK caches challenges per host:port, process-wide
    return control


@pytest.fixture
def emu_settings(emulator: EmulatorControl) -> Settings:
    """Settings pointing every Azure client at the emulator (storage left at a placeholder)."""
    return Settings.from_env(settings_env(emulator.ready, "UseDevelopmentStorage=true"))


def product_env(emulator: EmulatorControl, azurite: Azurite, names: StorageNames, **overrides: str) -> dict[str, str]:
    """The product's app settings on the emulator and Azurite, with this test's own queue, tables and container."""
    return settings_env(
        emulator.ready,
        azurite.connection_string,
        ROTATION_QUEUE=names.queue,
        STATE_TABLE=names.state_table,
        AUDIT_TABLE=names.audit_table,
        LOCK_CONTAINER=names.lock_container,
        **overrides,
    )


# What azure-core's own ARM poller reads after a 202 (the operation result at `Location`). The product never follows
# `Location`, so its role (infra/app/rotator-role-actions.json) lacks this; wire tests that drive the SDK poller
# grant it on top.
SDK_POLLER_ACTION = "Microsoft.ContainerService/locations/operationresults/read"


def grant_sdk_poller(doc: dict[str, Any]) -> dict[str, Any]:
    """Give the product's identity in `doc` SDK_POLLER_ACTION on every scope it already holds; returns `doc`."""
    for grant in doc["role_assignments"]:
        if grant["principal"] == doc["product"]["app_id"]:
            grant["actions"] = [*grant["actions"], SDK_POLLER_ACTION]
    return doc
