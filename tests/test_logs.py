"""Structured logs: JSON lines, idempotent configuration, and no secret ever reaching the output."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from shared import logs
from shared.logs import (
    ALERT_EVENTS,
    ALERTED_EVENTS,
    MASK,
    JsonFormatter,
    SecretRedactor,
    alert,
    clear_secrets,
    configure_logging,
    log_event,
    redact,
    register_secret,
)

CANARY = "CANARY~Zq8Q~f7d.Kx_93hJ-2LpWvN0aBcD"  # shaped like a Graph secretText


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    last_resort_filters = logging.lastResort.filters[:] if logging.lastResort else []
    root.handlers = []
    clear_secrets()
    yield
    root.handlers = handlers
    root.setLevel(level)
    if logging.lastResort is not None:
        logging.lastResort.filters = last_resort_filters
    clear_secrets()


@pytest.fixture
def stream() -> io.StringIO:
    buf = io.StringIO()
    configure_logging("DEBUG", stream=buf)
    return buf


def bare_root() -> None:
    """Drop handlers pytest's log capture added for this test phase, so the root looks like a fresh process."""
    logging.getLogger().handlers = []


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


# ----------------------------------------------------------------------------------------------------------------
# JSON lines and configuration


def test_one_json_object_per_line_with_extra_fields(stream: io.StringIO) -> None:
    log = logging.getLogger("rotator.test")
    log.info("rotation %s started", "r1", extra={"rotation_id": "r1", "cluster_id": "/c", "correlation_id": "c1"})
    log.warning("multi\nline")
    first, second = lines(stream)
    assert first["msg"] == "rotation r1 started"
    assert (first["level"], first["logger"]) == ("INFO", "rotator.test")
    assert (first["rotation_id"], first["cluster_id"], first["correlation_id"]) == ("r1", "/c", "c1")
    assert datetime.fromisoformat(first["ts"]).tzinfo is not None and first["ts"].endswith("Z")
    assert second["msg"] == "multi\nline"
    assert len(stream.getvalue().splitlines()) == 2


def test_extra_values_that_are_not_json_are_rendered(stream: io.StringIO) -> None:
    when = datetime(2025, 1, 1, tzinfo=UTC)
    logging.getLogger("t").info("x", extra={"when": when, "ids": ("a", "b"), "obj": object(), "msg_extra": 1})
    (record,) = lines(stream)
    assert record["when"] == "2025-01-01T00:00:00+00:00"
    assert record["ids"] == ["a", "b"]
    assert record["obj"].startswith("<object object")


def test_configure_is_idempotent_and_reconfigurable() -> None:
    bare_root()
    first, second = io.StringIO(), io.StringIO()
    handler = configure_logging("INFO", stream=first)
    assert configure_logging("INFO", stream=first) is handler
    assert configure_logging("WARNING", stream=second) is handler
    root = logging.getLogger()
    assert len(root.handlers) == 1
    assert root.level == logging.WARNING
    assert sum(isinstance(f, SecretRedactor) for f in root.handlers[0].filters) == 1
    logging.getLogger("t").warning("to second")
    logging.getLogger("t").info("below level")
    assert first.getvalue() == ""
    assert [r["msg"] for r in lines(second)] == ["to second"]


def test_text_output_when_nothing_else_is_installed() -> None:
    bare_root()
    buf = io.StringIO()
    configure_logging("INFO", json_output=False, stream=buf)
    logging.getLogger("t").info("hello")
    assert buf.getvalue().rstrip().endswith("INFO t: hello")


def test_host_handlers_get_the_redactor_and_keep_doing_the_output() -> None:
    bare_root()
    host_out = io.StringIO()
    host = logging.StreamHandler(host_out)
    logging.getLogger().addHandler(host)
    assert configure_logging("INFO", json_output=False) is None
    assert logging.getLogger().handlers == [host]
    register_secret(CANARY)
    logging.getLogger("t").info("secret is %s", CANARY)
    assert CANARY not in host_out.getvalue() and MASK in host_out.getvalue()
    # With JSON on, ours is added next to the host's, and both are redacted.
    ours_out = io.StringIO()
    configure_logging("INFO", json_output=True, stream=ours_out)
    assert len(logging.getLogger().handlers) == 2
    logging.getLogger("t").info("again %s", CANARY)
    assert CANARY not in host_out.getvalue() + ours_out.getvalue()
    assert lines(ours_out)[0]["msg"] == f"again {MASK}"


def test_invalid_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("LOUD")


def test_sdk_loggers_are_quiet_unless_debug() -> None:
    configure_logging("INFO", stream=io.StringIO())
    assert logging.getLogger("azure").level == logging.WARNING
    configure_logging("DEBUG", stream=io.StringIO())
    assert logging.getLogger("azure").level == logging.DEBUG


# ----------------------------------------------------------------------------------------------------------------
# Secrets never reach the output


def test_registered_canary_is_masked_everywhere(stream: io.StringIO) -> None:
    log = logging.getLogger("rotator.secret")
    assert register_secret(CANARY)
    log.info("in the message " + CANARY)
    log.info("in the args %s / %r", CANARY, {"k": CANARY})
    log.info("in extra", extra={"body": CANARY, "nested": {"list": [CANARY, 1]}, "secret_obj": Holder()})
    log.debug("in stack", stack_info=True, extra={"tag": f"pre-{CANARY}-post"})
    try:
        try:
            raise KeyError(CANARY)
        except KeyError as inner:
            raise RuntimeError(f"wrapped {CANARY}") from inner
    except RuntimeError:
        log.exception("in the exception")
    log_event(log, logging.WARNING, "input.rejected", f"event {CANARY}", payload=CANARY)
    alert(log, "rotation.failed", "alert", error=RuntimeError(CANARY))
    output = stream.getvalue()
    assert CANARY not in output
    assert CANARY[:20] not in output
    records = lines(stream)
    assert len(records) == 7
    assert records[0]["msg"] == f"in the message {MASK}"
    assert records[2]["nested"] == {"list": [MASK, 1]}
    assert records[3]["tag"] == f"pre-{MASK}-post"
    assert "RuntimeError: wrapped ***" in records[4]["exc"] and "KeyError" in records[4]["exc"]
    assert records[5]["payload"] == MASK


class Holder:
    def __str__(self) -> str:
        return f"Holder({CANARY})"


def test_secret_registered_as_secretstr_and_url_encoded_form() -> None:
    secret = "a+b/c=d~e" + "f" * 20
    assert register_secret(SecretStr(secret))
    assert redact(f"plain {secret} encoded a%2Bb%2Fc%3Dd~e{'f' * 20}") == f"plain {MASK} encoded {MASK}"
    assert not register_secret(None)
    assert not register_secret("short")
    assert redact("short") == "short"


def test_redactor_works_standalone_on_a_foreign_handler() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(SecretRedactor())
    log = logging.getLogger("standalone")
    log.addHandler(handler)
    log.propagate = False
    try:
        register_secret(CANARY)
        try:
            raise ValueError(CANARY)
        except ValueError:
            log.exception("boom %s", CANARY)
    finally:
        log.removeHandler(handler)
        log.propagate = True
    assert CANARY not in out.getvalue()
    assert "ValueError: ***" in out.getvalue()


def test_json_formatter_redacts_without_the_filter() -> None:
    register_secret(CANARY)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m %s", (CANARY,), None)
    record.body = CANARY
    rendered = JsonFormatter().format(record)
    assert CANARY not in rendered and json.loads(rendered)["body"] == MASK


def test_unformattable_arguments_do_not_raise_or_leak(stream: io.StringIO) -> None:
    register_secret(CANARY)
    logging.getLogger("t").info("%d items %s", CANARY)
    assert CANARY not in stream.getvalue()
    assert "unformattable" in lines(stream)[0]["msg"]


@pytest.mark.parametrize("prefix", [b"", b"a", b"ab", b"client:"])
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_base64_forms_are_masked_at_any_offset(prefix: bytes, encode: Any) -> None:
    """A secret inside a base64 blob (Basic auth, an encoded body) is masked wherever it starts in the blob."""
    secret = "Zq8Q~a+b/c?d.Kx_93hJ-2LpWvN0aBcD"
    register_secret(secret)
    blob = encode(prefix + secret.encode() + b" and more").decode()
    redacted = redact(f"Authorization-ish {blob}")
    assert MASK in redacted
    whole = encode(secret.encode()).decode().rstrip("=")
    for start in range(len(whole) - 12):  # no 12 characters of the secret's own encoding survive
        assert whole[start : start + 12] not in redacted


def test_text_cut_short_inside_a_secret_is_masked_from_there() -> None:
    secret = "preflight-" + "Q" * 30
    register_secret(secret)
    assert redact(f"detail: {secret[:20]}") == f"detail: {MASK}"
    assert redact(f"{'x' * 180}{secret}"[:200]) == "x" * 180 + MASK  # truncated before redaction: still masked
    assert redact("running preflight-") == "running preflight-"  # too short to be more than ordinary text


def test_truncating_after_redacting_leaves_nothing_of_the_secret() -> None:
    register_secret(CANARY)
    text = "y" * 195 + CANARY
    assert CANARY[:5] not in redact(text)[:200]


def test_registry_forgets_values_after_their_time() -> None:
    now = [1000.0]
    registry = logs._Registry(capacity=100, ttl_seconds=60, clock=lambda: now[0])
    registry.add("old-secret-value-1")
    now[0] += 30
    registry.add("newer-secret-value-2")
    assert registry.redact("old-secret-value-1 newer-secret-value-2") == f"{MASK} {MASK}"
    now[0] += 31  # the first is 61 s old
    assert registry.redact("old-secret-value-1 newer-secret-value-2") == f"old-secret-value-1 {MASK}"
    assert len(registry) == 1
    registry.add("newer-secret-value-2")  # registering again restarts its clock
    now[0] += 59
    assert registry.redact("newer-secret-value-2") == MASK
    now[0] += 2
    assert len(registry) == 0 and registry.redact("newer-secret-value-2") == "newer-secret-value-2"


def test_registry_is_bounded_and_forgets_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = logs._Registry(capacity=50)
    values = [f"secret-value-{i:04d}-padding" for i in range(60)]
    for value in values:
        registry.add(value)
    assert len(registry) == 50
    assert registry.redact(values[0]) == values[0]  # forgotten
    assert registry.redact(f"a {values[59]} b {values[10]}") == f"a {MASK} b {MASK}"  # prefix-index path


def test_large_registry_still_masks_longest_match() -> None:
    for i in range(200):
        register_secret(f"bulk-secret-{i:05d}-xyz")
    register_secret(CANARY)
    register_secret(CANARY + "-longer")
    assert redact(f"x{CANARY}-longer y {CANARY} z bulk-secret-00199-xyz") == f"x{MASK} y {MASK} z {MASK}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("POST token client_secret=abc123def&grant_type=x", "POST token client_secret=***&grant_type=x"),
        ("client_secret: s3cr3t", "client_secret: ***"),
        ('{"secretText": "Zq8~abc\\"d", "keyId": "k1"}', '{"secretText": "***", "keyId": "k1"}'),
        ('{"value": "kv-secret", "id": "https://v/secrets/s"}', '{"value": "***", "id": "https://v/secrets/s"}'),
        ("{'value': 'kv-secret'}", "{'value': '***'}"),
        ("Authorization: Bearer abc.def.ghi", "Authorization: ***"),
        ('headers={"Authorization": "Bearer tok"}', 'headers={"Authorization": "***"}'),
        ("sent Bearer eyJ0eXAiOiJKV1QiLCJhbGciOi.x.y", "sent Bearer ***"),
        ("jwt eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln here", "jwt *** here"),
        (
            "https://a.queue.core.windows.net/q?sv=2021&sig=AbC%2Bd%3D&se=2025",
            "https://a.queue.core.windows.net/q?sv=2021&sig=***&se=2025",
        ),
        (
            "DefaultEndpointsProtocol=https;AccountName=dev;AccountKey=Eby8vdM02x+NOcq/FlPJQ==;BlobEndpoint=x",
            "DefaultEndpointsProtocol=https;AccountName=dev;AccountKey=***;BlobEndpoint=x",
        ),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY----- tail", "*** tail"),
        ("password=hunter22 user=x", "password=*** user=x"),
        ("grant_type=x&client_secret%3Dabc%2Bdef%26scope%3Dy", "grant_type=x&client_secret%3D***"),
        ("q?sv%3D1%26sig%3DAbC%252B", "q?sv%3D1%26sig%3D***"),
        (
            "body=%7B%22secretText%22%3A%22Zq8~abc%22%2C%22keyId%22%3A%22k%22%7D",
            "body=%7B%22secretText%22%3A%22***%22%2C%22keyId%22%3A%22k%22%7D",
        ),
        ("basic checks passed; signature=ok; value 5", "basic checks passed; signature=ok; value 5"),
    ],
)
def test_patterns(text: str, expected: str) -> None:
    assert redact(text) == expected


# ----------------------------------------------------------------------------------------------------------------
# Events and alerts


def test_alert_and_log_event_records(stream: io.StringIO) -> None:
    log = logging.getLogger("rotator.alerts")
    alert(log, "credential.overdue", "cluster credential overdue", cluster_id="/c", days=-2, name="shadowed")
    log_event(log, "WARNING", "input.rejected", "bad message", field="kind")
    log_event(log, logging.INFO, "rotation.done", "done", rotation_id="r1")
    first, second, third = lines(stream)
    assert first == first | {
        "level": "ERROR",
        "event": "credential.overdue",
        "alert": True,
        "msg": "cluster credential overdue",
        "cluster_id": "/c",
        "days": -2,
        "field_name": "shadowed",
        "logger": "rotator.alerts",
    }
    assert (second["level"], second["event"], second["alert"], second["field"]) == (
        "WARNING",
        "input.rejected",
        False,
        "kind",
    )
    assert (third["level"], third["rotation_id"]) == ("INFO", "r1")


def test_alert_points_at_its_caller() -> None:
    seen: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    log = logging.getLogger("caller")
    log.addHandler(Capture())
    try:
        alert(log, "rotation.poison", "poison")
        log_event(log, logging.ERROR, "x", "y")
    finally:
        log.handlers.clear()
    assert [r.funcName for r in seen] == ["test_alert_points_at_its_caller"] * 2


def test_alert_with_exception_is_redacted(stream: io.StringIO) -> None:
    register_secret(CANARY)
    try:
        raise RuntimeError(f"graph said {CANARY}")
    except RuntimeError:
        alert(logging.getLogger("t"), "rotation.failed", "rotation failed", exc_info=True, rotation_id="r")
    (record,) = lines(stream)
    assert record["alert"] is True and "RuntimeError: graph said ***" in record["exc"]
    assert CANARY not in stream.getvalue()


def test_alert_events_are_the_documented_six() -> None:
    assert {
        "rotation.failed",
        "rotation.poison",
        "rotation.stalled",
        "rotation.blocked",
        "credential.overdue",
        "keyvault.secret_expired",
        "migration.failed",
    } == ALERT_EVENTS
    assert ALERT_EVENTS | {"rotation.urgent", "input.rejected"} == ALERTED_EVENTS
