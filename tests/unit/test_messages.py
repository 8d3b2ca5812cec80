"""The edge validation layer: every rule of the rotation message, the HTTP body and the error text."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.messages import (
    MAX_MESSAGE_BYTES,
    MAX_REQUEST_BYTES,
    STEPS,
    ClusterRef,
    CredentialKind,
    InvalidInput,
    RotationMessage,
    RotationRequest,
    expiry_generation,
    new_rotation_message,
    on_demand_generation,
    parse_cluster_id,
    parse_json_model,
    parse_message,
    parse_rotation_request,
    rotation_id_for,
    validate_resource_id,
)

SUB = "0b1f6471-1bf0-4dda-aec3-111122223333"
APP = "6a7b8c9d-0000-4000-8000-00000000abcd"
CLUSTER = f"/subscriptions/{SUB}/resourceGroups/rg-prod/providers/Microsoft.ContainerService/managedClusters/aks-1"
EXPIRY = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CANARY = "CANARY-" + "x" * 120  # longer than anything an error may echo


def valid(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schema_version": 1,
        "rotation_id": rotation_id_for(CLUSTER, "sp_secret", APP, expiry_generation(EXPIRY)),
        "cluster_id": CLUSTER,
        "kind": "sp_secret",
        "app_id": APP,
        "observed_expiry": "2025-03-01T12:00:00Z",
        "reason": "due",
        "correlation_id": "run-2025-02-01.abc_1",
        "attempt": 0,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()


def raw(body: dict[str, Any]) -> str:
    return json.dumps(body)


def rejected(payload: str | bytes) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        parse_message(payload)
    return info.value


# ----------------------------------------------------------------------------------------------------------------
# Valid messages and round trip


def test_valid_message_parses_with_types_and_normalisation() -> None:
    msg = parse_message(raw(valid(app_id=APP.upper(), observed_expiry="2025-03-01T14:00:00+02:00")))
    assert msg.kind is CredentialKind.SP_SECRET
    assert msg.app_id == APP  # lower-cased
    assert msg.observed_expiry == EXPIRY
    assert msg.observed_expiry is not None and msg.observed_expiry.utcoffset() == timedelta(0)
    assert msg.step is None and msg.not_before is None and msg.attempt == 0
    assert msg.cluster == ClusterRef(SUB, "rg-prod", "aks-1")
    assert msg.cluster_key == CLUSTER.lower()


def test_bytes_and_text_are_equivalent() -> None:
    text = raw(valid())
    assert parse_message(text.encode()) == parse_message(text)


def test_round_trip_is_stable_and_compact() -> None:
    msg = parse_message(raw(valid(step="prove", attempt=3, not_before="2025-02-01T00:00:00Z")))
    text = msg.to_json()
    assert " " not in text
    assert parse_message(text) == msg
    assert parse_message(text).to_json() == text
    assert json.loads(text)["not_before"] == "2025-02-01T00:00:00Z"
    assert "null" not in text


def test_cluster_certificate_without_app_id() -> None:
    msg = parse_message(raw(valid(kind="cluster_certificate", app_id=_DROP)))
    assert msg.kind is CredentialKind.CLUSTER_CERTIFICATE and msg.app_id is None


@pytest.mark.parametrize("reason", ["due", "urgent", "expired", "on_demand", "keyvault_event"])
def test_every_reason(reason: str) -> None:
    assert parse_message(raw(valid(reason=reason))).reason == reason


@pytest.mark.parametrize("step", STEPS)
def test_every_step(step: str) -> None:
    assert parse_message(raw(valid(step=step))).step == step


def test_requeue_sets_step_and_counts_attempts() -> None:
    msg = parse_message(raw(valid()))
    later = datetime(2025, 2, 1, tzinfo=UTC)
    again = msg.requeue("verify", not_before=later)
    assert (again.step, again.attempt, again.not_before) == ("verify", 1, later)
    assert again.rotation_id == msg.rotation_id
    assert again.requeue("finish", attempt=0).attempt == 0
    with pytest.raises(InvalidInput):
        msg.requeue("finish", attempt=10_001)


def test_messages_are_frozen() -> None:
    msg = parse_message(raw(valid()))
    with pytest.raises(ValueError, match="frozen"):
        msg.attempt = 5  # type: ignore[misc]


# ----------------------------------------------------------------------------------------------------------------
# Every rule rejects


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"schema_version": 2}, "schema_version", "unsupported schema_version"),
        ({"schema_version": "1"}, "schema_version", "unsupported schema_version"),
        ({"schema_version": True}, "schema_version", "unsupported schema_version"),
        ({"schema_version": _DROP}, "schema_version", "missing"),
        ({"rotation_id": "ABC"}, "rotation_id", "pattern"),
        ({"rotation_id": "0" * 31 + "G"}, "rotation_id", "pattern"),
        ({"rotation_id": _DROP}, "rotation_id", "missing"),
        ({"cluster_id": "/subscriptions/x/resourceGroups/rg"}, "cluster_id", "managedClusters"),
        ({"cluster_id": CLUSTER.replace("ContainerService", "Compute")}, "cluster_id", "managedClusters"),
        ({"cluster_id": CLUSTER + "/"}, "cluster_id", "managedClusters"),
        ({"cluster_id": CLUSTER + "\n"}, "cluster_id", "managedClusters"),
        ({"cluster_id": CLUSTER.replace("rg-prod", "r" * 91)}, "cluster_id", "managedClusters"),
        ({"cluster_id": CLUSTER.replace("rg-prod", "rg.")}, "cluster_id", "managedClusters"),
        ({"cluster_id": CLUSTER.replace("rg-prod", "rg/x")}, "cluster_id", "managedClusters"),
        ({"cluster_id": CLUSTER.replace("aks-1", "-aks")}, "cluster_id", "managedClusters"),
        ({"cluster_id": CLUSTER.replace("aks-1", "a" * 64)}, "cluster_id", "managedClusters"),
        ({"cluster_id": CLUSTER.replace(SUB, "not-a-guid")}, "cluster_id", "managedClusters"),
        ({"cluster_id": 5}, "cluster_id", "string"),
        ({"kind": "aad_server_secret"}, "kind", "never queued"),
        ({"kind": "password"}, "kind", "kind"),
        ({"app_id": _DROP}, "app_id", "required for kind sp_secret"),
        ({"app_id": None}, "app_id", "required for kind sp_secret"),
        ({"app_id": "not-a-guid"}, "app_id", "GUID"),
        ({"kind": "cluster_certificate"}, "app_id", "absent"),
        ({"observed_expiry": "2025-03-01T12:00:00"}, "observed_expiry", "timezone"),
        ({"observed_expiry": "yesterday"}, "observed_expiry", "datetime"),
        ({"not_before": "2025-03-01 12:00"}, "not_before", "timezone"),
        ({"reason": "because"}, "reason", "reason"),
        ({"reason": _DROP}, "reason", "missing"),
        ({"correlation_id": "a" * 65}, "correlation_id", "pattern"),
        ({"correlation_id": "has space"}, "correlation_id", "pattern"),
        ({"correlation_id": ""}, "correlation_id", "pattern"),
        ({"step": "rollback"}, "step", "step"),
        ({"attempt": -1}, "attempt", "greater than or equal"),
        ({"attempt": 10_001}, "attempt", "less than or equal"),
        ({"attempt": "1"}, "attempt", "integer"),
        ({"attempt": 1.5}, "attempt", "integer"),
        ({"attempt": True}, "attempt", "integer"),
        ({"client_secret": "abc"}, "client_secret", "unknown field"),
        ({"secretText": "abc"}, "secretText", "unknown field"),
    ],
)
def test_each_rule_rejects(overrides: dict[str, Any], field: str, words: str) -> None:
    exc = rejected(raw(valid(**overrides)))
    assert exc.field == field
    assert words in str(exc)
    assert str(exc).startswith("rotation message")


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object, not an array"),
        ('"text"', "not a string"),
        ("null", "not null"),
        ("42", "not a number"),
        ('{"schema_version": NaN}', "NaN is not allowed"),
        ('{"schema_version": 1, "schema_version": 1}', "duplicate field 'schema_version'"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        ("{\ud800}", "not valid UTF-8"),
        ("[" * 5000 + "]" * 5000, "limit"),
        ("[" * 4000 + "]" * 4000, "JSON"),
        ('{"schema_version": 1' + "0" * 5000 + "}", "JSON"),
    ],
)
def test_structural_rejections(payload: str | bytes, words: str) -> None:
    assert words in str(rejected(payload))


def test_size_limit_is_enforced_on_bytes_and_text() -> None:
    body = valid(correlation_id="c")
    filler = MAX_MESSAGE_BYTES - len(raw(body).encode())
    at_limit = raw(body)[:-1] + " " * filler + "}"
    assert len(at_limit.encode()) == MAX_MESSAGE_BYTES
    assert parse_message(at_limit).correlation_id == "c"
    over = at_limit[:-1] + " }"
    assert "limit is 8192" in str(rejected(over.encode()))
    assert "8192" in str(rejected(over))
    # Multi-byte characters count as bytes, not characters.
    wide = json.dumps(valid(correlation_id="c" + "é" * (MAX_MESSAGE_BYTES // 2)), ensure_ascii=False)
    assert len(wide) < MAX_MESSAGE_BYTES < len(wide.encode())
    assert "8192" in str(rejected(wide))


def test_wrong_input_type_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="JSON text or bytes"):
        parse_message(123)  # type: ignore[arg-type]


def test_many_errors_are_summarised() -> None:
    exc = rejected("{}".replace("{}", '{"schema_version": 1}'))
    assert "(and" in str(exc) and "more)" in str(exc)


# ----------------------------------------------------------------------------------------------------------------
# Error text never carries the payload


@pytest.mark.parametrize(
    "overrides",
    [
        {CANARY: "v"},
        {"cluster_id": CANARY},
        {"correlation_id": CANARY},
        {"app_id": CANARY},
        {"reason": CANARY},
        {"observed_expiry": CANARY},
        {"kind": CANARY},
        {"attempt": CANARY},
        {"step": CANARY},
        {"rotation_id": CANARY},
        {"schema_version": CANARY},
        {"extra\nfield\x1b[31m" + CANARY: 1},
    ],
)
def test_error_text_never_echoes_long_values(overrides: dict[str, Any]) -> None:
    exc = rejected(raw(valid(**overrides)))
    text = str(exc)
    assert CANARY[:41] not in text
    assert "x" * 41 not in text
    assert len(text) <= 240
    assert "\n" not in text and "\x1b" not in text
    assert exc.field is None or len(exc.field) <= 40


def test_invalid_json_error_does_not_echo_it() -> None:
    text = str(rejected('{"value": "' + CANARY + '", oops}'))
    assert "xxxxxxxx" not in text and "not valid JSON" in text


def _has_long_common_substring(source: str, text: str, length: int = 81) -> bool:
    return any(source[i : i + length] in text for i in range(len(source) - length + 1))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=200),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=100), children, max_size=4),
    max_leaves=12,
)
_FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "schema_version": st.sampled_from([1, 2, "1", None, True, 1.0]),
    "rotation_id": st.sampled_from(["0" * 32, "x" * 100]) | st.text(max_size=120),
    "cluster_id": st.sampled_from([CLUSTER, CLUSTER.upper(), CLUSTER.lower()]) | st.text(max_size=300),
    "kind": st.sampled_from(["sp_secret", "cluster_certificate", "aad_server_secret"]) | st.text(),
    "app_id": st.sampled_from([APP, APP.upper(), None]) | st.text(max_size=120),
    "observed_expiry": st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()) | st.text(max_size=90),
    "reason": st.sampled_from(["due", "urgent", "on_demand"]) | st.text(max_size=90),
    "correlation_id": st.from_regex(r"[A-Za-z0-9._-]{1,80}", fullmatch=True) | st.text(max_size=120),
    "step": st.sampled_from([*STEPS, None]) | st.text(max_size=90),
    "attempt": st.integers(min_value=-5, max_value=20_000) | st.text(max_size=90),
    "not_before": st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-14))])).map(
        lambda d: d.isoformat()
    )
    | _json_values,
}


@st.composite
def _message_like(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message with a few fields replaced, dropped or added: exercises every rule near the valid space."""
    body = valid()
    for key in draw(st.lists(st.sampled_from(sorted(_FIELD_VALUES)), max_size=3, unique=True)):
        if draw(st.booleans()):
            body[key] = draw(_FIELD_VALUES[key])
        else:
            body.pop(key, None)
    body.update(draw(st.dictionaries(st.text(max_size=120), _json_values, max_size=1)))
    return body


def _check_parse(payload: str | bytes) -> None:
    try:
        msg = parse_message(payload)
    except InvalidInput as exc:
        source = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        text = str(exc)
        assert not _has_long_common_substring(source, text)
        assert not _has_long_common_substring(json.dumps(source)[1:-1], text)
    else:
        assert isinstance(msg, RotationMessage)
        assert parse_message(msg.to_json()) == msg


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=9000) | st.binary(max_size=9000))
def test_property_arbitrary_text_and_bytes(payload: str | bytes) -> None:
    _check_parse(payload)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_json_values)
def test_property_arbitrary_json(value: Any) -> None:
    _check_parse(json.dumps(value))


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(_message_like(), st.booleans())
def test_property_message_like_objects(body: dict[str, Any], as_bytes: bool) -> None:
    text = json.dumps(body, ensure_ascii=False)
    _check_parse(text.encode("utf-8", "surrogatepass") if as_bytes else text)


# ----------------------------------------------------------------------------------------------------------------
# Identity


def test_rotation_id_is_deterministic_and_case_insensitive() -> None:
    gen = expiry_generation(EXPIRY)
    first = rotation_id_for(CLUSTER, CredentialKind.SP_SECRET, APP, gen)
    assert len(first) == 32 and all(c in "0123456789abcdef" for c in first)
    assert rotation_id_for(CLUSTER.lower(), "sp_secret", APP.upper(), gen.lower()) == first
    elsewhere = EXPIRY.astimezone(timezone(timedelta(hours=5)))
    assert rotation_id_for(CLUSTER, "sp_secret", APP, expiry_generation(elsewhere)) == first


def test_rotation_id_differs_when_any_part_differs() -> None:
    gen = expiry_generation(EXPIRY)
    ids = {
        rotation_id_for(CLUSTER, "sp_secret", APP, gen),
        rotation_id_for(CLUSTER.replace("aks-1", "aks-2"), "sp_secret", APP, gen),
        rotation_id_for(CLUSTER, "cluster_certificate", None, gen),
        rotation_id_for(CLUSTER, "sp_secret", APP.replace("abcd", "abce"), gen),
        rotation_id_for(CLUSTER, "sp_secret", APP, expiry_generation(EXPIRY + timedelta(seconds=1))),
        rotation_id_for(CLUSTER, "sp_secret", APP, on_demand_generation(date(2025, 2, 1))),
    }
    assert len(ids) == 6


def test_generation_strings() -> None:
    plus_two = datetime(2025, 3, 1, 14, 0, 0, 999_999, tzinfo=timezone(timedelta(hours=2)))
    assert expiry_generation(plus_two) == "2025-03-01T12:00:00Z"
    assert on_demand_generation(date(2025, 2, 1)) == "on-demand-2025-02-01"
    with pytest.raises(InvalidInput):
        expiry_generation(datetime(2025, 3, 1))


def test_rotation_id_for_validates_its_parts() -> None:
    for args in [("bad", "sp_secret", APP, "g"), (CLUSTER, "nope", APP, "g"), (CLUSTER, "sp_secret", "x", "g")]:
        with pytest.raises(InvalidInput):
            rotation_id_for(*args)
    with pytest.raises(InvalidInput, match="generation"):
        rotation_id_for(CLUSTER, "sp_secret", APP, "")


def test_new_rotation_message_uses_the_dedup_identity() -> None:
    due = new_rotation_message(cluster_id=CLUSTER, kind="sp_secret", reason="due", app_id=APP, observed_expiry=EXPIRY)
    again = new_rotation_message(
        cluster_id=CLUSTER.lower(), kind=CredentialKind.SP_SECRET, reason="urgent", app_id=APP, observed_expiry=EXPIRY
    )
    assert due.rotation_id == again.rotation_id == valid()["rotation_id"]
    assert due.correlation_id != again.correlation_id
    on_demand = new_rotation_message(
        cluster_id=CLUSTER, kind="sp_secret", reason="on_demand", app_id=APP, today=date(2025, 2, 1)
    )
    expected = rotation_id_for(CLUSTER, "sp_secret", APP, "on-demand-2025-02-01")
    assert on_demand.rotation_id == expected
    assert parse_message(on_demand.to_json()) == on_demand
    with pytest.raises(InvalidInput, match="app_id"):
        new_rotation_message(cluster_id=CLUSTER, kind="sp_secret", reason="due", observed_expiry=EXPIRY)


# ----------------------------------------------------------------------------------------------------------------
# Cluster ids


@pytest.mark.parametrize(
    "cluster_id",
    [
        CLUSTER,
        CLUSTER.lower(),
        CLUSTER.upper().replace(SUB.upper(), SUB),
        CLUSTER.replace("rg-prod", "My_RG.(test)-1"),
        CLUSTER.replace("rg-prod", "r" * 90).replace("aks-1", "a" * 63),
        CLUSTER.replace("rg-prod", "ré").replace("aks-1", "A_b-9"),
    ],
)
def test_valid_cluster_ids(cluster_id: str) -> None:
    ref = parse_cluster_id(cluster_id)
    assert ref.subscription_id == SUB
    assert ref.key == cluster_id.lower() or ref.key == ref.resource_id.lower()
    assert validate_resource_id(cluster_id) == cluster_id
    assert parse_cluster_id(ref.resource_id) == ref


def test_cluster_ref_canonical_id() -> None:
    ref = parse_cluster_id(CLUSTER.lower())
    assert ref.resource_id == CLUSTER.replace("rg-prod", "rg-prod").lower().replace(
        "resourcegroups", "resourceGroups"
    ).replace("microsoft.containerservice/managedclusters", "Microsoft.ContainerService/managedClusters")


@pytest.mark.parametrize(
    "cluster_id",
    ["", "aks-1", CLUSTER[1:], CLUSTER + "/agentPools/p1", " " + CLUSTER, CLUSTER.replace("/", "\\")],
)
def test_invalid_cluster_ids(cluster_id: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_cluster_id(cluster_id)
    assert info.value.field == "cluster_id"


# ----------------------------------------------------------------------------------------------------------------
# HTTP body and other edges


def test_rotation_request_defaults_and_rules() -> None:
    req = parse_rotation_request(json.dumps({"cluster_id": CLUSTER}).encode())
    assert (req.kind, req.reason) == (CredentialKind.SP_SECRET, "on_demand")
    assert req.cluster.name == "aks-1"
    cert = parse_rotation_request(json.dumps({"cluster_id": CLUSTER, "kind": "cluster_certificate"}).encode())
    assert cert.kind is CredentialKind.CLUSTER_CERTIFICATE
    for body, words in [
        ({"cluster_id": CLUSTER, "reason": "due"}, "reason"),
        ({"cluster_id": CLUSTER, "kind": "aad_server_secret"}, "never queued"),
        ({"cluster_id": CLUSTER, "app_id": APP}, "unknown field 'app_id'"),
        ({"cluster_id": "nope"}, "managedClusters"),
        ({}, "missing field 'cluster_id'"),
    ]:
        with pytest.raises(InvalidInput, match=words) as info:
            parse_rotation_request(json.dumps(body).encode())
        assert str(info.value).startswith("rotation request")


def test_rotation_request_uses_the_same_structural_checks() -> None:
    too_big = json.dumps({"cluster_id": CLUSTER, "pad": "p" * MAX_REQUEST_BYTES}).encode()
    for payload, words in [(too_big, "limit"), (b"\xc3", "UTF-8"), (b"[]", "JSON object"), (b"{,}", "JSON")]:
        with pytest.raises(InvalidInput, match=words):
            parse_rotation_request(payload)


def test_parse_json_model_for_other_edges() -> None:
    req = parse_json_model(RotationRequest, json.dumps({"cluster_id": CLUSTER}), what="event", max_bytes=1000)
    assert req.cluster_id == CLUSTER
    with pytest.raises(InvalidInput, match=r"^event is 1001 bytes; the limit is 1000$"):
        parse_json_model(RotationRequest, b"x" * 1001, what="event", max_bytes=1000)


def test_invalid_input_is_a_value_error_with_safe_text() -> None:
    exc = InvalidInput("bad\nthing" + "y" * 500, field="f")
    assert isinstance(exc, ValueError) and exc.field == "f"
    assert "\n" not in str(exc) and len(str(exc)) <= 240
