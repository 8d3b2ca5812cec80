"""shared/vault.py against the emulated Key Vault through the real aio SecretClient."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from emulator import seeds
from emulator.sandbox import EmulatorControl
from shared.azure import product_credential
from shared.settings import Settings
from shared.vault import (
    CONTENT_TYPE,
    StoredVersion,
    VaultError,
    VaultForbidden,
    VaultNotFound,
    VaultStore,
    secret_name_for,
)

T = TypeVar("T")
CLUSTER = (
    "/subscriptions/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0/resourceGroups/rg-aks-payments"
    "/providers/Microsoft.ContainerService/managedClusters/aks-payments"
)
SECRET = "rotated~secret.value-0123456789ABCDEFGHIJ"


def run(settings: Settings, body: Callable[[VaultStore], Awaitable[T]], **client_kwargs: Any) -> T:
    async def main() -> T:
        credential = product_credential(settings)
        async with credential, VaultStore(settings, credential, **client_kwargs) as store:
            return await body(store)

    return asyncio.run(main())


def _expiry(days: float = 30) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)


def test_secret_name_for_is_deterministic_readable_and_valid() -> None:
    name = secret_name_for(CLUSTER)
    assert name == secret_name_for(CLUSTER.upper())
    assert name.startswith("aks-sp-aks-payments-")
    assert re.fullmatch(r"[0-9a-zA-Z-]{1,127}", name)
    other = CLUSTER.replace("rg-aks-payments", "rg-other")
    assert secret_name_for(other) != name
    odd = secret_name_for(CLUSTER.rsplit("/", 1)[0] + "/" + "Weird_Name.with..dots" + "x" * 100)
    assert re.fullmatch(r"aks-sp-weird-name-with-dotsx+-[0-9a-f]{12}", odd)
    assert len(odd) <= 7 + 60 + 1 + 12


def test_store_versions_and_current_round_trip(emu_settings: Settings, emulator: EmulatorControl) -> None:
    name = secret_name_for(CLUSTER)
    expires = _expiry()

    async def body(store: VaultStore) -> tuple[StoredVersion, StoredVersion, list[StoredVersion], StoredVersion | None]:
        first = await store.store(name, SECRET + "-1", expires, {"cluster-id": CLUSTER, "state": "current"})
        second = await store.store(name, SECRET + "-2", expires, {"cluster-id": CLUSTER, "state": "pending"})
        versions = await store.versions(name)
        current = await store.current(name)
        return first, second, versions, current

    first, second, versions, current = run(emu_settings, body)
    assert first.name == name and len(first.version) == 32
    assert first.tags == {"cluster-id": CLUSTER, "state": "current", "managed-by": "aks-credential-rotator"}
    assert first.expires_on == expires
    assert {v.version for v in versions} == {first.version, second.version}
    assert current is not None and current.version == first.version
    vault = next(v for v in emulator.state()["vaults"] if v["name"] == seeds.VAULT)
    assert {e["contentType"] for e in vault["secrets"][name]} == {CONTENT_TYPE}


def test_set_tags_merges_and_moves_current(emu_settings: Settings) -> None:
    name = secret_name_for(CLUSTER)

    async def body(store: VaultStore) -> tuple[StoredVersion, StoredVersion | None, StoredVersion | None]:
        old = await store.store(name, SECRET + "-old", _expiry(), {"key-id": "k1", "state": "current"})
        new = await store.store(name, SECRET + "-new", _expiry(), {"key-id": "k2", "state": "pending"})
        await store.set_tags(name, old.version, state="previous")
        promoted = await store.set_tags(name, new.version, state="current", **{"rotation-id": "r-2"})
        return promoted, await store.current(name), await store.find_by_tag(name, "key-id", "k1")

    promoted, current, by_key = run(emu_settings, body)
    assert promoted.tags == {
        "key-id": "k2",
        "state": "current",
        "rotation-id": "r-2",
        "managed-by": "aks-credential-rotator",
    }
    assert current is not None and current.version == promoted.version
    assert by_key is not None and by_key.tags["state"] == "previous" and by_key.tags["key-id"] == "k1"


def test_current_prefers_the_newest_when_several(emu_settings: Settings, emulator: EmulatorControl) -> None:
    name = "aks-sp-several"

    async def body(store: VaultStore) -> tuple[StoredVersion, StoredVersion | None]:
        await store.store(name, SECRET + "-a", _expiry(), {"state": "current"})
        # Created timestamps are whole seconds. Advance within the same credential: a token issued after
        # advance() carries a future `iat` that the emulator's verifier currently refuses.
        emulator.advance(5)
        newer = await store.store(name, SECRET + "-b", _expiry(), {"state": "current"})
        return newer, await store.current(name)

    newer, current = run(emu_settings, body)
    assert current is not None and current.version == newer.version


def test_versions_pages_through_many(emu_settings: Settings, emulator: EmulatorControl) -> None:
    name = "aks-sp-paged"

    async def body(store: VaultStore) -> tuple[set[str], list[StoredVersion]]:
        made = {(await store.store(name, f"{SECRET}-{i}", _expiry(), {"n": str(i)})).version for i in range(28)}
        return made, await store.versions(name)

    made, versions = run(emu_settings, body)
    assert {v.version for v in versions} == made
    assert emulator.requests()["keyvault.getSecretVersions"] == 2


def test_value_reads_back_and_missing_things(emu_settings: Settings) -> None:
    name = "aks-sp-value"

    async def body(store: VaultStore) -> tuple[str, list[StoredVersion], StoredVersion | None]:
        stored = await store.store(name, SECRET, _expiry(), {})
        value = await store.value(name, stored.version)
        with pytest.raises(VaultNotFound):
            await store.value(name, "0" * 32)
        with pytest.raises(VaultNotFound):
            await store.set_tags(name, "0" * 32, state="current")
        return value, await store.versions("aks-sp-nothing-here"), await store.current("aks-sp-nothing-here")

    value, none, current = run(emu_settings, body)
    assert value == SECRET
    assert none == []
    assert current is None


def test_truth_shows_hashes_and_tags_never_the_value(emu_settings: Settings, emulator: EmulatorControl) -> None:
    name = secret_name_for(CLUSTER)
    run(emu_settings, lambda store: store.store(name, SECRET, _expiry(), {"state": "pending"}))
    truth = emulator.state()
    assert SECRET not in json.dumps(truth)
    vault = next(v for v in truth["vaults"] if v["name"] == seeds.VAULT)
    (entry,) = vault["secrets"][name]
    assert entry["tags"]["state"] == "pending"
    assert len(entry["valueSha256"]) == 64


def test_forbidden_store_raises_vault_forbidden_without_the_secret(
    emu_settings: Settings, emulator: EmulatorControl
) -> None:
    doc = seeds.demo()
    doc["vault_roles"] = [{"principal": seeds.PRODUCT_APP_ID, "vault": seeds.VAULT, "role": "Key Vault Secrets User"}]
    emulator.reset(doc)

    async def body(store: VaultStore) -> VaultForbidden:
        with pytest.raises(VaultForbidden) as info:
            await store.store("aks-sp-denied", SECRET, _expiry(), {"state": "pending"})
        return info.value

    error = run(emu_settings, body, retry_total=0)
    assert error.status == 403
    assert "HTTP 403 Forbidden/ForbiddenByRbac" in str(error)
    assert SECRET not in str(error) and SECRET not in repr(error.args)
    assert error.__cause__ is None and error.__context__ is None


def test_other_failures_are_vault_errors(emu_settings: Settings, emulator: EmulatorControl) -> None:
    emulator.add_faults({"kind": "status", "surface": "keyvault", "status": 500, "times": 1})

    async def body(store: VaultStore) -> VaultError:
        with pytest.raises(VaultError) as info:
            await store.store("aks-sp-boom", SECRET, _expiry(), {})
        return info.value

    error = run(emu_settings, body, retry_total=0)
    assert not isinstance(error, VaultForbidden)
    assert error.status == 500
    assert SECRET not in str(error)
    assert error.__context__ is None


def test_throttling_is_retried(emu_settings: Settings, emulator: EmulatorControl) -> None:
    emulator.add_faults({"kind": "throttle", "surface": "keyvault", "operation": "setSecret", "times": 1})
    stored = run(emu_settings, lambda store: store.store("aks-sp-retry", SECRET, _expiry(), {}))
    assert stored.name == "aks-sp-retry"
    assert emulator.faults()[0]["fired"] == 1
