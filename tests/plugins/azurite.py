"""Fixtures for Azurite: one in-memory instance per test session, unique storage names per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from emulator.azurite import Azurite
from shared.settings import Settings

DUMMY_TENANT_ID = "00000000-0000-4000-8000-000000000001"
DUMMY_CLIENT_ID = "00000000-0000-4000-8000-000000000002"


@dataclass(frozen=True)
class StorageNames:
    """Queue, table and container names no other test uses (tests share one Azurite)."""

    queue: str
    state_table: str
    audit_table: str
    lock_container: str

    @property
    def poison_queue(self) -> str:
        return f"{self.queue}-poison"


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    instance = Azurite()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def storage_names() -> StorageNames:
    suffix = uuid.uuid4().hex[:12]
    return StorageNames(
        queue=f"rot-{suffix}",
        state_table=f"state{suffix}",
        audit_table=f"audit{suffix}",
        lock_container=f"locks-{suffix}",
    )


def storage_env(azurite: Azurite, names: StorageNames, **overrides: str) -> dict[str, str]:
    """App settings pointing the product's storage at Azurite (other endpoints are unreachable placeholders)."""
    env = {
        "AZURE_TENANT_ID": DUMMY_TENANT_ID,
        "AZURE_CLIENT_ID": DUMMY_CLIENT_ID,
        "KEY_VAULT_URL": "https://127.0.0.1:1/kv/x",
        "AzureWebJobsStorage": azurite.connection_string,
        "ROTATION_QUEUE": names.queue,
        "STATE_TABLE": names.state_table,
        "AUDIT_TABLE": names.audit_table,
        "LOCK_CONTAINER": names.lock_container,
    }
    env.update(overrides)
    return env


@pytest.fixture
def storage_settings(azurite: Azurite, storage_names: StorageNames) -> Settings:
    return Settings.from_env(storage_env(azurite, storage_names))
