"""OpenTelemetry for Application Insights: traces correlated by rotation id, metrics, structured logs.

Exporting is switched on only when `APPLICATIONINSIGHTS_CONNECTION_STRING` is set; otherwise the OpenTelemetry
API is a no-op and instrumentation costs nothing. Attributes carry ids and numbers only, never secret values.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import metrics, trace
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
        **kwargs,
    )
    _configured = True
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
