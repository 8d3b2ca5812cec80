"""OpenTelemetry for Application Insights: traces correlated by rotation id, metrics, structured logs.

Exporting is switched on only when `APPLICATIONINSIGHTS_CONNECTION_STRING` is set; otherwise the OpenTelemetry
API is a no-op and instrumentation costs nothing. Attributes carry ids and numbers only, never secret values.
Whatever else reaches the exporter (spans of the Azure SDKs with their exception events, log records however they
got to the exporter's handler) passes `RedactingSpanProcessor` / `RedactingLogRecordProcessor` first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk._logs import LogRecordProcessor, ReadWriteLogRecord
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.trace import Status, StatusCode

from shared.logs import redact
from shared.settings import Settings

_tracer = trace.get_tracer("aks_credential_rotator")
_meter = metrics.get_meter("aks_credential_rotator")
_days_to_expiry = _meter.create_histogram(
    "credential.days_to_expiry", unit="d", description="Days until a discovered credential expires"
)
_outcomes = _meter.create_counter("rotation.outcomes", description="Rotations by outcome")
_step_seconds = _meter.create_histogram("rotation.step.duration", unit="s", description="Rotation step duration")
_configured = False


def configure(settings: Settings) -> bool:
    """Install the Azure Monitor exporter once, if a connection string is configured."""
    global _configured
    if _configured or settings.appinsights_connection_string is None:
        return _configured
    from azure.identity import ManagedIdentityCredential
    from azure.monitor.opentelemetry import configure_azure_monitor

    kwargs: dict[str, Any] = {}
    if settings.client_secret is None:
        # infra/ disables local auth on Application Insights: telemetry is sent with the managed identity.
        kwargs["credential"] = ManagedIdentityCredential(client_id=settings.client_id)
    configure_azure_monitor(
        connection_string=settings.appinsights_connection_string.get_secret_value(),
        logger_name="shared",
        # Run before the exporter's own processors (azure-monitor-opentelemetry adds custom processors first).
        span_processors=[RedactingSpanProcessor()],
        log_record_processors=[RedactingLogRecordProcessor()],
        **kwargs,
    )
    _configured = True
    return True


def _redacted(attributes: Any) -> dict[str, Any]:
    return {key: redact(value) if isinstance(value, str) else value for key, value in (attributes or {}).items()}


class RedactingSpanProcessor(SpanProcessor):
    """Redacts a finished span's status message, string attributes and events (exception.message and
    exception.stacktrace of spans the Azure SDKs record) before the exporting processors that follow see it.

    OpenTelemetry hands every processor the same ReadableSpan, which has no public setters; its fields are replaced
    here (tests/test_telemetry.py checks this against the installed SDK)."""

    def on_end(self, span: ReadableSpan) -> None:
        span._attributes = _redacted(span.attributes)
        span._events = tuple(Event(event.name, _redacted(event.attributes), event.timestamp) for event in span.events)
        if span.status.description:
            span._status = Status(span.status.status_code, redact(span.status.description))


class RedactingLogRecordProcessor(LogRecordProcessor):
    """Redacts a log record's body and string attributes (exception text included) before it is exported."""

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        record = log_record.log_record
        if isinstance(record.body, str):
            record.body = redact(record.body)
        for key, value in list((record.attributes or {}).items()):
            if isinstance(value, str):
                record.attributes[key] = redact(value)  # type: ignore[index]

    def shutdown(self) -> None:
        """Nothing to flush."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@contextmanager
def span(name: str, **attributes: str | int | float | bool) -> Iterator[Any]:
    """A trace span; pass `rotation_id=` so every step of one rotation correlates.

    An escaping exception is recorded by type and redacted message only (OpenTelemetry's own exception event
    would export `str(exc)` and the stack unfiltered)."""
    with _tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as current:
        try:
            yield current
        except BaseException as exc:
            current.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {redact(str(exc))[:200]}"))
            raise


def days_to_expiry(days: float, *, kind: str, cluster: str) -> None:
    _days_to_expiry.record(days, {"kind": kind, "cluster": cluster})


def rotation_outcome(outcome: str, *, kind: str) -> None:
    _outcomes.add(1, {"outcome": outcome, "kind": kind})


def step_duration(step: str, seconds: float) -> None:
    _step_seconds.record(seconds, {"step": step})
