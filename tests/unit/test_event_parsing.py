"""Key Vault event parsing: both schemas, both casings, NBF/EXP as numbers or strings; everything else rejected."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.events import EXPIRED, NEAR_EXPIRY, parse_event
from shared.messages import InvalidInput
from shared.vault import vault_name

SUB = "6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
TOPIC = f"/subscriptions/{SUB}/resourceGroups/rg-rotator/providers/Microsoft.KeyVault/vaults/rotator-kv"
VERSION = "ee059b2bb5bc48398a53b168c6cdcb10"

# As the Key Vault documentation's sample shows it: PascalCase data keys, NBF/EXP as strings.
EVENT_GRID = {
    "id": "00eccf70-95a7-4e7c-8299-2eb17ee9ad64",
    "topic": TOPIC,
    "subject": "aks-sp-payments-0123456789ab",
    "eventType": NEAR_EXPIRY,
    "eventTime": "2026-11-24T01:08:33.1036736Z",
    "data": {
        "Id": f"https://rotator-kv.vault.azure.net/secrets/aks-sp-payments-0123456789ab/{VERSION}",
        "VaultName": "rotator-kv",
        "ObjectType": "Secret",
        "ObjectName": "aks-sp-payments-0123456789ab",
        "Version": VERSION,
        "NBF": "1559081980",
        "EXP": "1795478400",
    },
    "dataVersion": "1",
    "metadataVersion": "1",
}

CLOUD_EVENT = {
    "specversion": "1.0",
    "id": "a4d2c1f0-95a7-4e7c-8299-2eb17ee9ad64",
    "source": TOPIC,
    "subject": "aks-sp-payments-0123456789ab",
    "type": EXPIRED,
    "time": "2026-11-24T01:08:33Z",
    "data": {
        "id": f"https://rotator-kv.vault.azure.net/secrets/aks-sp-payments-0123456789ab/{VERSION}",
        "vaultName": "rotator-kv",
        "objectType": "Secret",
        "objectName": "aks-sp-payments-0123456789ab",
        "version": VERSION,
        "nbf": None,
        "exp": 1795478400,
    },
}


def test_event_grid_schema_with_documented_casing() -> None:
    event = parse_event(json.dumps(EVENT_GRID))
    assert event.event_type == NEAR_EXPIRY and event.vault == "rotator-kv"
    assert event.secret_name == "aks-sp-payments-0123456789ab" and event.version == VERSION
    assert event.expires_on == datetime.fromtimestamp(1795478400, UTC)


def test_cloudevents_schema_with_camel_case_and_numbers() -> None:
    event = parse_event(json.dumps(CLOUD_EVENT).encode())
    assert event.event_type == EXPIRED and event.expires_on == datetime.fromtimestamp(1795478400, UTC)


def test_single_element_array_as_the_documented_samples_show_it() -> None:
    assert parse_event(json.dumps([EVENT_GRID])).event_id == EVENT_GRID["id"]


def _mutate(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(EVENT_GRID)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("eventType",), "Microsoft.Storage.BlobCreated", "eventType"),
        (("topic",), "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/a", "topic"),
        (("data", "VaultName"), "other-kv", "data.vaultName"),
        (("data", "ObjectType"), "Key", "data.objectType"),
        (("data", "ObjectName"), "../../etc/passwd", "data.objectname"),
        (("data", "Version"), "'; DROP TABLE rotations;--", "data.version"),
        (("data", "EXP"), "tomorrow", "data.exp"),
        (("data", "EXP"), [1], "data.exp"),
        (("data", "Id"), "https://rotator-kv.vault.azure.net/secrets/other/" + VERSION, "data.id"),
        (("data",), KeyError, "data"),
        (("id",), KeyError, "id"),
    ],
)
def test_malformed_events_are_rejected_naming_the_field(path: tuple[str, ...], value: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_event(json.dumps(_mutate(path, value)))
    assert caught.value.field is not None and caught.value.field.lower() == field.lower()


def test_oversized_and_non_json_events_are_rejected() -> None:
    with pytest.raises(InvalidInput, match="larger"):
        parse_event("{" + " " * 10000 + "}")
    with pytest.raises(InvalidInput, match="JSON"):
        parse_event(b"\xff\xfe not json")


def test_vault_name_in_azure_and_on_the_emulator() -> None:
    assert vault_name("https://rotator-kv.vault.azure.net") == "rotator-kv"
    assert vault_name("https://127.0.0.1:8443/kv/rotator-kv") == "rotator-kv"


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=50),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=10), c),
        max_leaves=20,
    )
)
def test_arbitrary_json_is_parsed_or_rejected_cleanly(doc: Any) -> None:
    try:
        parse_event(json.dumps(doc))
    except InvalidInput as exc:
        assert len(str(exc)) <= 240
