"""OpenTelemetry: every rotation step is a span correlated by rotation id, metrics are recorded, and nothing secret
appears in any span, attribute or metric (the canary check covers telemetry too)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from emulator.azurite import Azurite
from emulator.sandbox import EmulatorControl
from shared import discovery, rotation, telemetry
from shared.logs import register_secret
from shared.settings import Settings
from tests.plugins.azurite import StorageNames
from tests.plugins.emulator import product_env

SPANS = InMemorySpanExporter()
METRICS = InMemoryMetricReader()
_tracer_provider = TracerProvider()
_tracer_provider.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(_tracer_provider)
metrics.set_meter_provider(MeterProvider(metric_readers=[METRICS]))


def _settle(settings: Settings, emulator: EmulatorControl, rounds: int = 60) -> list[rotation.RotationView]:
    for _ in range(rounds):
        asyncio.run(rotation.drain(settings))
        views = asyncio.run(rotation.status(settings))
        if all(v.state in ("succeeded", "failed") for v in views):
            return views
        emulator.advance(60)  # AKS operations finish in emulator time
    raise AssertionError("rotations did not settle")


def test_spans_and_metrics_for_a_scan_and_its_rotations(
    emulator: EmulatorControl, azurite: Azurite, storage_names: StorageNames
) -> None:
    settings = Settings.from_env(
        product_env(
            emulator,
            azurite,
            storage_names,
            PROOF_SUCCESSES="1",
            PROOF_SPACING_SECONDS="0",
            REQUEUE_DELAY_SECONDS="0",
            LRO_POLL_SECONDS="0",
            RETIRE_GRACE_SECONDS="0",
        )
    )
    SPANS.clear()
    asyncio.run(discovery.scan(settings))
    views = _settle(settings, emulator)
    assert {v.state for v in views} == {"succeeded"} and len(views) == 2

    spans = SPANS.get_finished_spans()
    steps_by_rotation: dict[str, set[str]] = {}
    for span in spans:
        attributes = dict(span.attributes or {})
        if span.name.startswith("rotation.") and "rotation_id" in attributes:
            steps_by_rotation.setdefault(str(attributes["rotation_id"]), set()).add(span.name)
    assert set(steps_by_rotation) == {v.rotation_id for v in views}
    for names in steps_by_rotation.values():
        assert {"rotation.create", "rotation.prove", "rotation.apply", "rotation.verify", "rotation.retire"} <= names

    collected = METRICS.get_metrics_data()
    assert collected is not None
    points: dict[str, list[dict[str, object]]] = {}
    for resource in collected.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(dict(p.attributes or {}) for p in metric.data.data_points)
    assert {"outcome": "succeeded", "kind": "sp_secret"} in points["rotation.outcomes"]
    assert {p["step"] for p in points["rotation.step.duration"]} >= {"create", "prove", "apply", "verify"}
    assert any(p["kind"] == "sp_secret" for p in points["credential.days_to_expiry"])

    everything = json.dumps(
        [span.to_json() for span in spans] + [collected.to_json()],
        default=str,
    )
    leaked = [secret for secret in emulator.canaries() if secret in everything]
    assert leaked == []


def test_a_failing_span_exports_the_error_type_and_a_redacted_message_only() -> None:
    canary = "canary-span~5f1d0c9e7a"
    register_secret(canary)
    SPANS.clear()
    with pytest.raises(RuntimeError), telemetry.span("rotation.test", rotation_id="r1"):
        raise RuntimeError(f"AKS said no to {canary}")
    (span,) = SPANS.get_finished_spans()
    assert span.status.description == "RuntimeError: AKS said no to ***"
    assert span.events == () or all(e.name != "exception" for e in span.events)
    assert canary not in span.to_json()


def test_exported_spans_pass_the_redacting_processor_first() -> None:
    """What the Azure SDKs record (exception events with message and stack, attributes) is redacted before export."""
    canary = "canary-sdk-span~9b2e4f1a7c"
    register_secret(canary)
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(telemetry.RedactingSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(exported))
    tracer = provider.get_tracer("azure-sdk-like")
    with pytest.raises(ValueError), tracer.start_as_current_span("KeyVault.set_secret") as current:
        current.set_attribute("http.url", f"https://v.vault.azure.net/?x={canary}")
        current.set_attribute("http.status_code", 400)
        raise ValueError(f"Key Vault said: {canary}")
    (span,) = exported.get_finished_spans()
    events = [e for e in span.events if e.name == "exception"]
    assert events and "***" in str(dict(events[0].attributes or {}))  # the event is kept, its text redacted
    assert dict(span.attributes or {})["http.status_code"] == 400
    assert canary not in span.to_json()


def test_exported_log_records_pass_the_redacting_processor_first() -> None:
    """A record reaching the exporter's handler without the logging filter (added later, another logger) still
    leaves redacted, exception text included."""
    from opentelemetry.instrumentation.logging.handler import LoggingHandler
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

    canary = "canary-log-record~4c8d2a6e1f"
    register_secret(canary)
    exported = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(telemetry.RedactingLogRecordProcessor())
    provider.add_log_record_processor(SimpleLogRecordProcessor(exported))
    log = logging.getLogger("unfiltered-exporter-test")
    handler = LoggingHandler(logger_provider=provider)
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise RuntimeError(f"graph said {canary}")
        except RuntimeError:
            log.exception("failed with %s", canary)
    finally:
        log.removeHandler(handler)
        log.propagate = True
    (record,) = exported.get_finished_logs()
    rendered = json.dumps({"body": record.log_record.body, "attributes": dict(record.log_record.attributes or {})})
    assert "***" in rendered and canary not in rendered


def test_configure_puts_the_redacting_processors_in_front_of_the_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    import azure.monitor.opentelemetry

    seen: dict[str, Any] = {}
    monkeypatch.setattr(azure.monitor.opentelemetry, "configure_azure_monitor", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(telemetry, "_configured", False)
    settings = Settings.from_env(
        {
            "AZURE_TENANT_ID": "00000000-0000-0000-0000-00000000000a",
            "AZURE_CLIENT_ID": "00000000-0000-0000-0000-00000000000b",
            "AZURE_CLIENT_SECRET": "local-app-registration-secret",  # no managed identity outside Azure
            "KEY_VAULT_URL": "https://v.vault.azure.net",
            "AzureWebJobsStorage__accountName": "st",
            "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000",
        }
    )
    assert telemetry.configure(settings)
    assert [type(p) for p in seen["span_processors"]] == [telemetry.RedactingSpanProcessor]
    assert [type(p) for p in seen["log_record_processors"]] == [telemetry.RedactingLogRecordProcessor]
    assert seen["logger_name"] == "shared"
