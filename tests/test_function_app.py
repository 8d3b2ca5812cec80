"""function_app.py: registration and bindings, then the whole pipeline through the very functions the host calls.

The Functions host cannot run here, so the end-to-end test plays its part: a real TimerRequest starts the scan,
real QueueMessage objects carry what Azurite holds (decoded as the host decodes base64) and the Key Vault events
Event Grid writes to its queue, real HttpRequest objects hit the HTTP functions.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueClient

from emulator import seeds
from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from shared import runtime
from tests.plugins.azurite import StorageNames
from tests.plugins.emulator import product_env

FAST = {
    "PROOF_SUCCESSES": "2",
    "PROOF_SPACING_SECONDS": "0",
    "REQUEUE_DELAY_SECONDS": "0",
    "LRO_POLL_SECONDS": "0",
    "RETIRE_GRACE_SECONDS": "0",
}


@pytest.fixture(scope="module")
def function_app_module() -> Any:
    import function_app

    return function_app


@pytest.fixture(scope="module")
def functions(function_app_module: Any) -> dict[str, dict[str, Any]]:
    app = function_app_module.app
    app.functions_bindings = None  # get_functions() is not idempotent
    return {fn.get_function_name(): json.loads(fn.get_function_json()) for fn in app.get_functions()}


def _trigger(bindings: dict[str, Any]) -> dict[str, Any]:
    return next(b for b in bindings["bindings"] if b["direction"] == "IN" or "Trigger" in b["type"])


def test_every_function_is_registered_once(functions: dict[str, dict[str, Any]]) -> None:
    assert set(functions) == {
        "scan_estate",
        "scan_shard",
        "rotate_credential",
        "rotation_poison",
        "keyvault_events",
        "http_status",
        "http_request_rotation",
    }


def test_trigger_bindings(functions: dict[str, dict[str, Any]]) -> None:
    timer = _trigger(functions["scan_estate"])
    assert timer["type"] == "timerTrigger" and timer["schedule"] == "%ROTATION_SCHEDULE%"
    assert timer["useMonitor"] is True and timer["runOnStartup"] is False
    queue = _trigger(functions["rotate_credential"])
    assert (queue["type"], queue["queueName"], queue["connection"]) == (
        "queueTrigger",
        "%ROTATION_QUEUE%",
        "AzureWebJobsStorage",
    )
    shard = _trigger(functions["scan_shard"])
    assert (shard["type"], shard["queueName"]) == ("queueTrigger", "%ROTATION_QUEUE%-scan")
    poison = _trigger(functions["rotation_poison"])
    assert poison["queueName"] == "%ROTATION_QUEUE%-poison"
    events_queue = _trigger(functions["keyvault_events"])
    assert (events_queue["type"], events_queue["queueName"]) == ("queueTrigger", "keyvault-events")
    status = _trigger(functions["http_status"])
    assert (status["type"], status["route"], status["methods"], status["authLevel"]) == (
        "httpTrigger",
        "status",
        ["GET"],
        "FUNCTION",
    )
    rotate = _trigger(functions["http_request_rotation"])
    assert (rotate["route"], rotate["methods"], rotate["authLevel"]) == ("rotations", ["POST"], "FUNCTION")


def test_host_json_queue_settings_match_the_worker() -> None:
    from pathlib import Path

    from shared.rotation import MAX_DEQUEUE_COUNT

    host = json.loads((Path(__file__).parent.parent / "host.json").read_text())
    queues = host["extensions"]["queues"]
    assert queues["messageEncoding"] == "base64"  # what shared.queues writes
    assert queues["maxDequeueCount"] == MAX_DEQUEUE_COUNT  # what the local drain emulates


@pytest.fixture
def app_env(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    env = product_env(
        emulator,
        azurite,
        storage_names,
        **FAST,
    )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runtime.settings.cache_clear()
    yield env
    runtime.settings.cache_clear()


def _deliver_queue(function_app: Any, env: dict[str, str], emulator: EmulatorControl, rounds: int = 200) -> int:
    """Play the host's queue listener: hand each visible message to the trigger, delete it if it returned."""
    queue = QueueClient.from_connection_string(env["AzureWebJobsStorage"], env["ROTATION_QUEUE"])
    delivered = 0
    try:
        for _ in range(rounds):
            batch = list(queue.receive_messages(max_messages=16, visibility_timeout=30))
            if not batch:
                if queue.get_queue_properties().approximate_message_count == 0:
                    return delivered
                emulator.advance(60)  # let an AKS operation finish in emulator time
                continue
            for item in batch:
                message = QueueMessage(
                    id=item.id,
                    body=base64.b64decode(item.content),
                    dequeue_count=item.dequeue_count,
                    pop_receipt=item.pop_receipt,
                )
                asyncio.run(function_app.rotate_credential(message))
                queue.delete_message(item)
                delivered += 1
    finally:
        queue.close()
    raise AssertionError(f"queue not idle after {rounds} rounds")


def test_pipeline_through_the_host_entry_points(
    function_app_module: Any, app_env: dict[str, str], emulator: EmulatorControl
) -> None:
    before = emulator.state()
    asyncio.run(function_app_module.scan_estate(TimerRequest(past_due=True)))
    delivered = _deliver_queue(function_app_module, app_env, emulator)
    assert delivered >= 2  # two due clusters, several steps each

    after = emulator.state()
    held_before = {c["id"]: c["heldKeyId"] for c in before["clusters"]}
    for cluster in after["clusters"]:
        assert cluster["outage_seconds"] == 0
        name = cluster["id"].rsplit("/", 1)[-1]
        if name in ("aks-payments", "aks-checkout"):  # due in 3 and 20 days
            assert cluster["heldKeyId"] != held_before[cluster["id"]] and cluster["heldValid"]
        else:
            assert cluster["heldKeyId"] == held_before[cluster["id"]]

    response = asyncio.run(function_app_module.http_status(func.HttpRequest(method="GET", url="/api/status", body=b"")))
    summary = json.loads(response.get_body())
    assert response.status_code == 200 and summary["rotations"] == {"succeeded": 2}


def test_http_rotation_request_rejects_bad_bodies_and_changes_nothing(
    function_app_module: Any, app_env: dict[str, str], emulator: EmulatorControl
) -> None:
    emulator.clear_requests()
    bad = [b"{not json", b'{"cluster_id": "/subscriptions/x"}', b'{"cluster_id": "a", "extra": 1}', b"[]"]
    for body in bad:
        response = asyncio.run(
            function_app_module.http_request_rotation(func.HttpRequest(method="POST", url="/api/rotations", body=body))
        )
        payload = json.loads(response.get_body())
        assert response.status_code == 400 and payload["error"] and payload["correlationId"]
    assert emulator.requests().get("mutations", 0) == 0


def test_event_for_a_secret_the_product_does_not_own_is_ignored(
    function_app_module: Any, app_env: dict[str, str], emulator: EmulatorControl
) -> None:
    """Event Grid writes one event per message to the keyvault-events queue (EventGridSchema); the trigger passes
    the bytes on unchanged: a secret the product does not own changes nothing, and a malformed body is rejected."""
    emulator.clear_requests()
    sub = seeds.demo()["subscriptions"][0]["id"]
    body = {
        "id": "7b1f3c2a-0000-4000-8000-000000000002",
        "topic": f"/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/rotator-kv",
        "subject": "someone-elses-secret",
        "eventType": "Microsoft.KeyVault.SecretNearExpiry",
        "eventTime": "2026-11-29T00:00:00Z",
        "dataVersion": "1",
        "data": {
            "Id": "https://rotator-kv.vault.azure.net/secrets/someone-elses-secret/0123456789abcdef0123456789abcdef",
            "VaultName": "rotator-kv",
            "ObjectType": "Secret",
            "ObjectName": "someone-elses-secret",
            "Version": "0123456789abcdef0123456789abcdef",
            "NBF": None,
            "EXP": 1795478400,
        },
    }
    asyncio.run(function_app_module.keyvault_events(QueueMessage(body=json.dumps(body).encode())))
    assert emulator.requests().get("keyvault.getSecretVersions", 0) >= 1  # it looked the secret up in Key Vault
    assert emulator.requests().get("mutations", 0) == 0
    asyncio.run(function_app_module.keyvault_events(QueueMessage(body=b"\xff not an event")))  # rejected
    assert emulator.requests().get("mutations", 0) == 0
