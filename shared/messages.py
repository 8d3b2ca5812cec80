"""The versioned rotation message and every other inbound payload, validated at the edge.

Everything that arrives from outside (a queue message, an HTTP body, an event) goes through one mechanism:
size limit, strict UTF-8, strict JSON (no duplicate keys, no NaN), a JSON object, then a frozen pydantic model in
strict mode with unknown fields forbidden. Every rejection is an `InvalidInput` whose text says what was wrong and
never echoes the payload: echoed names are short (at most 40 characters) and values are not echoed at all.

This module is pure: no I/O, no Azure SDK imports. See docs/messages.md for the schema.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Generic, Literal, TypeVar, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from shared import clock

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_REQUEST_BYTES",
    "QUEUED_KINDS",
    "REASONS",
    "SCHEMA_VERSION",
    "STEPS",
    "ClusterRef",
    "CredentialKind",
    "InvalidInput",
    "Reason",
    "RotationMessage",
    "RotationRequest",
    "Step",
    "check_allowed",
    "expiry_generation",
    "new_correlation_id",
    "new_rotation_message",
    "on_demand_generation",
    "parse_cluster_id",
    "parse_json_model",
    "parse_message",
    "parse_rotation_request",
    "rotation_id_for",
    "validate_resource_id",
]

SCHEMA_VERSION: Final = 1
MAX_MESSAGE_BYTES: Final = 8192  # a queue message may be 64 KiB; ours are a few hundred bytes
MAX_REQUEST_BYTES: Final = 4096  # HTTP body of an on-demand rotation request
MAX_ATTEMPT: Final = 10_000
_ECHO_LIMIT: Final = 40  # longest name ever echoed in an error (the hard rule is 80)
_PROBLEM_LIMIT: Final = 120

Reason = Literal["due", "urgent", "expired", "on_demand", "keyvault_event"]
Step = Literal["create", "store", "prove", "apply", "verify", "finish", "retire"]
REASONS: Final[tuple[str, ...]] = get_args(Reason)
URGENT_REASONS: Final = frozenset({"urgent", "expired"})  # rotate outside windows and past the blast-radius cap
STEPS: Final[tuple[str, ...]] = get_args(Step)


class CredentialKind(enum.StrEnum):
    """What is rotated. `aad_server_secret` (legacy AAD integration) is reported only, never queued."""

    SP_SECRET = "sp_secret"  # noqa: S105 (a kind name, not a secret)
    CLUSTER_CERTIFICATE = "cluster_certificate"
    AAD_SERVER_SECRET = "aad_server_secret"  # noqa: S105
    MIGRATION = "migration"  # to managed identity: submitted by the scan for tagged clusters (shared.migration)

    @property
    def queueable(self) -> bool:
        return self in QUEUED_KINDS


QUEUED_KINDS: Final = frozenset(
    {CredentialKind.SP_SECRET, CredentialKind.CLUSTER_CERTIFICATE, CredentialKind.MIGRATION}
)


class InvalidInput(ValueError):
    """The single rejection exception for every edge (queue, event, HTTP body).

    `str(exc)` is short and safe to log or return to a caller: it names what was wrong and never contains the
    payload. `field` names the offending field when there is one.
    """

    def __init__(self, reason: str, field: str | None = None) -> None:
        reason = _printable(reason)
        if len(reason) > 2 * _PROBLEM_LIMIT:
            reason = reason[: 2 * _PROBLEM_LIMIT - 1] + "…"
        super().__init__(reason)
        self.reason = reason
        self.field = field


def _printable(text: str) -> str:
    """Replace control and other non-printable characters (no log-line injection through an echoed name)."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _echo(text: str, limit: int = _ECHO_LIMIT) -> str:
    """A safe, short echo of a name taken from the input."""
    text = _printable(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------------------------
# Cluster resource ids
# --------------------------------------------------------------------------------------------------------------

_GUID_PATTERN = r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}"
_GUID = re.compile(_GUID_PATTERN)
# Fixed segments are matched case-insensitively (Resource Graph and ARM disagree on their case); the resource group
# follows the ARM rules (1-90 of letters, digits, _ - . ( ), not ending in a period), the cluster name the AKS ones.
_CLUSTER_ID = re.compile(
    r"/(?i:subscriptions)/(?P<subscription>" + _GUID_PATTERN + r")"
    r"/(?i:resourceGroups)/(?P<group>[-\w.()]{1,90})(?<!\.)"
    r"/(?i:providers)/(?i:Microsoft\.ContainerService)/(?i:managedClusters)"
    r"/(?P<name>[a-zA-Z0-9][-_a-zA-Z0-9]{0,62})"
)
_CLUSTER_ID_PROBLEM: Final = (
    "must be /subscriptions/{guid}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{name}"
)


@dataclass(frozen=True, slots=True)
class ClusterRef:
    """The parts of a managedCluster resource id (subscription id lower-cased)."""

    subscription_id: str
    resource_group: str
    name: str

    @property
    def resource_id(self) -> str:
        """The id in ARM's canonical casing."""
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.ContainerService/managedClusters/{self.name}"
        )

    @property
    def key(self) -> str:
        """Identity of the cluster: ARM ids are case-insensitive, so the lower-cased id."""
        return self.resource_id.lower()


def parse_cluster_id(cluster_id: str) -> ClusterRef:
    """Split a managedCluster ARM resource id; raise InvalidInput (field `cluster_id`) if it is not one."""
    if not isinstance(cluster_id, str):
        raise InvalidInput("cluster_id: must be a string", field="cluster_id")
    match = _CLUSTER_ID.fullmatch(cluster_id)
    if match is None:
        raise InvalidInput(f"cluster_id: {_CLUSTER_ID_PROBLEM}", field="cluster_id")
    return ClusterRef(match["subscription"].lower(), match["group"], match["name"])


def check_allowed(settings: Settings, cluster_id: str) -> ClusterRef:
    """The edge check every inbound cluster id passes before anything acts on it: a managedCluster id whose
    subscription is in SUBSCRIPTION_ALLOWLIST (an empty list allows every subscription, as discovery does).

    Raises InvalidInput (field `cluster_id`) without echoing the id.
    """
    ref = parse_cluster_id(cluster_id)
    allowed = settings.subscription_allowlist
    if allowed and ref.subscription_id not in {sub.lower() for sub in allowed}:
        raise InvalidInput("cluster_id: subscription is not in SUBSCRIPTION_ALLOWLIST", field="cluster_id")
    return ref


def validate_resource_id(cluster_id: str) -> str:
    """Return `cluster_id` unchanged if it is a managedCluster resource id, else raise InvalidInput."""
    parse_cluster_id(cluster_id)
    return cluster_id


# --------------------------------------------------------------------------------------------------------------
# Identity (dedup)
# --------------------------------------------------------------------------------------------------------------


def expiry_generation(observed_expiry: datetime) -> str:
    """The generation string of a due credential: its expiry in UTC, to the second (`2025-01-31T12:00:00Z`)."""
    if observed_expiry.tzinfo is None:
        raise InvalidInput("observed_expiry: must include a timezone", field="observed_expiry")
    return observed_expiry.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def on_demand_generation(day: date) -> str:
    """The generation string of an on-demand rotation: at most one per cluster, kind and app per UTC day."""
    return f"on-demand-{day.isoformat()}"


def rotation_id_for(cluster_id: str, kind: CredentialKind | str, app_id: str | None, generation: str) -> str:
    """Deterministic rotation id: the same due credential always maps to the same id (queue and table dedup).

    First 32 hex characters of sha256 over the lower-cased cluster id, kind, app id and generation.
    """
    parse_cluster_id(cluster_id)
    try:
        kind_value = CredentialKind(kind).value
    except ValueError:
        raise InvalidInput("kind: unknown credential kind", field="kind") from None
    if app_id is not None and not _GUID.fullmatch(app_id):
        raise InvalidInput("app_id: must be a GUID", field="app_id")
    if not generation:
        raise InvalidInput("generation: must not be empty", field="generation")
    parts = (cluster_id.lower(), kind_value, (app_id or "").lower(), generation.lower())
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:32]


def new_correlation_id() -> str:
    """A fresh correlation id (32 hex characters) for a discovery run or an HTTP request."""
    return uuid.uuid4().hex


# --------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("is out of range") from None


def _check_cluster_id(value: str) -> str:
    if not _CLUSTER_ID.fullmatch(value):
        raise ValueError(_CLUSTER_ID_PROBLEM)
    return value


def _check_queueable(value: CredentialKind) -> CredentialKind:
    if value not in QUEUED_KINDS:
        raise ValueError(f"{value.value} is reported only, never queued")
    return value


def _check_requestable(value: CredentialKind) -> CredentialKind:
    if value is CredentialKind.MIGRATION:
        raise ValueError("migration is opted into by the cluster's tag, never requested")
    return _check_queueable(value)


ClusterId = Annotated[str, AfterValidator(_check_cluster_id)]
QueuedKind = Annotated[CredentialKind, AfterValidator(_check_queueable)]
RequestedKind = Annotated[CredentialKind, AfterValidator(_check_requestable)]


class RotationMessage(BaseModel):
    """One queued rotation (schema version 1). Never carries a secret."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    rotation_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    cluster_id: ClusterId
    kind: QueuedKind
    app_id: str | None = Field(default=None, validate_default=True)
    observed_expiry: AwareDatetime | None = None
    reason: Reason
    correlation_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    step: Step | None = None
    attempt: int = Field(default=0, ge=0, le=MAX_ATTEMPT)
    not_before: AwareDatetime | None = None

    @field_validator("app_id")
    @classmethod
    def _app_id(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if value is None:
            if kind is CredentialKind.SP_SECRET:
                raise ValueError("is required for kind sp_secret")
            return None
        if kind is CredentialKind.CLUSTER_CERTIFICATE:
            raise ValueError("must be absent for kind cluster_certificate")
        if not _GUID.fullmatch(value):
            raise ValueError("must be a GUID")
        return value.lower()

    @field_validator("observed_expiry", "not_before")
    @classmethod
    def _to_utc(cls, value: datetime | None) -> datetime | None:
        return _utc(value)

    @property
    def cluster_key(self) -> str:
        """Lower-cased cluster id: the identity used for locks, rows and rotation ids."""
        return self.cluster_id.lower()

    @property
    def cluster(self) -> ClusterRef:
        return parse_cluster_id(self.cluster_id)

    def to_json(self) -> str:
        """Compact, stable JSON (declaration order, null fields omitted, datetimes as ISO 8601 UTC)."""
        return self.model_dump_json(exclude_none=True)

    def requeue(self, step: Step, *, not_before: datetime | None = None, attempt: int | None = None) -> RotationMessage:
        """The message the worker queues for itself to resume at `step` (attempt + 1 unless given)."""
        data = self.model_dump()
        data.update(step=step, not_before=not_before, attempt=self.attempt + 1 if attempt is None else attempt)
        return _validate_python(RotationMessage, data, _MESSAGE_WHAT)


class RotationRequest(BaseModel):
    """Body of the on-demand rotation HTTP endpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster_id: ClusterId
    kind: RequestedKind = CredentialKind.SP_SECRET
    reason: Literal["on_demand"] = "on_demand"

    @property
    def cluster(self) -> ClusterRef:
        return parse_cluster_id(self.cluster_id)


# --------------------------------------------------------------------------------------------------------------
# The one parsing mechanism
# --------------------------------------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidInput(f"duplicate field {_echo(key)!r}", field=_echo(key))
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise InvalidInput(f"{name} is not allowed in JSON")


def _load_json_object(raw: str | bytes, *, what: str, max_bytes: int) -> tuple[dict[str, Any], str]:
    """Size, UTF-8 and JSON checks shared by every edge; returns the object and its text."""
    if isinstance(raw, str):
        if len(raw) > max_bytes:
            raise InvalidInput(f"{what} is larger than the limit of {max_bytes} bytes")
        try:
            size = len(raw.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidInput(f"{what} is not valid UTF-8 text") from None
        text = raw
    elif isinstance(raw, bytes | bytearray | memoryview):
        data = bytes(raw)
        size = len(data)
        if size > max_bytes:
            raise InvalidInput(f"{what} is {size} bytes; the limit is {max_bytes}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{what} is not valid UTF-8 text") from None
    else:
        raise InvalidInput(f"{what} must be JSON text or bytes")
    if size > max_bytes:
        raise InvalidInput(f"{what} is {size} bytes; the limit is {max_bytes}")
    if not text.strip():
        raise InvalidInput(f"{what} is empty")
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
    except InvalidInput as exc:
        raise InvalidInput(f"{what}: {exc.reason}", field=exc.field) from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON ({exc.msg} at character {exc.pos})") from None
    except (ValueError, RecursionError):  # e.g. integers beyond the digit limit, absurd nesting
        raise InvalidInput(f"{what} is not acceptable JSON") from None
    if not isinstance(obj, dict):
        raise InvalidInput(f"{what} must be a JSON object, not {_json_type(obj)}")
    return obj, text


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _from_validation_error(exc: ValidationError, what: str) -> InvalidInput:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    first = errors[0]
    loc = ".".join(_echo(str(part)) for part in first["loc"])
    field = loc or None
    kind = first["type"]
    if kind == "extra_forbidden":
        problem = f"unknown field {loc!r}"
    elif kind == "missing":
        problem = f"missing field {loc!r}"
    else:
        msg = str(first["msg"]).removeprefix("Value error, ")
        if len(msg) > _PROBLEM_LIMIT:
            msg = msg[: _PROBLEM_LIMIT - 1] + "…"
        problem = f"{loc}: {msg}" if loc else msg
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return InvalidInput(f"{what}: {problem}{more}", field=field)


def _validate_python(model: type[M], data: dict[str, Any], what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _from_validation_error(exc, what) from None


@dataclass(frozen=True, slots=True)
class _Edge(Generic[M]):
    """How one kind of inbound payload is checked: the same mechanism, configured per edge."""

    what: str
    model: type[M]
    max_bytes: int
    schema_versions: frozenset[int] | None = None  # versioned payloads must declare a known schema_version

    def parse(self, raw: str | bytes) -> M:
        obj, text = _load_json_object(raw, what=self.what, max_bytes=self.max_bytes)
        if self.schema_versions is not None:
            version = obj.get("schema_version")
            if "schema_version" not in obj:
                raise InvalidInput(f"{self.what}: missing field 'schema_version'", field="schema_version")
            if type(version) is not int or version not in self.schema_versions:
                known = ", ".join(str(v) for v in sorted(self.schema_versions))
                raise InvalidInput(
                    f"{self.what}: unsupported schema_version (this build reads {known})", field="schema_version"
                )
        try:
            # Strict: no "5" for an int, no 1 for a bool; JSON strings for datetimes and enum values.
            return self.model.model_validate_json(text, strict=True)
        except ValidationError as exc:
            raise _from_validation_error(exc, self.what) from None
        except (ValueError, OverflowError, RecursionError):
            raise InvalidInput(f"{self.what} could not be validated") from None


_MESSAGE_WHAT: Final = "rotation message"
_MESSAGE_EDGE: Final = _Edge(_MESSAGE_WHAT, RotationMessage, MAX_MESSAGE_BYTES, frozenset({SCHEMA_VERSION}))
_REQUEST_EDGE: Final = _Edge("rotation request", RotationRequest, MAX_REQUEST_BYTES)


def parse_message(raw: str | bytes) -> RotationMessage:
    """Validate a rotation queue message (JSON text, or bytes already base64-decoded); raise InvalidInput."""
    return _MESSAGE_EDGE.parse(raw)


def parse_rotation_request(raw: bytes | str) -> RotationRequest:
    """Validate the body of an on-demand rotation HTTP request; raise InvalidInput."""
    return _REQUEST_EDGE.parse(raw)


def parse_json_model(model: type[M], raw: str | bytes, *, what: str, max_bytes: int = MAX_MESSAGE_BYTES) -> M:
    """The same checks for any other inbound JSON payload (e.g. an Event Grid event) and model."""
    return _Edge(what, model, max_bytes).parse(raw)


def new_rotation_message(
    *,
    cluster_id: str,
    kind: CredentialKind | str,
    reason: Reason,
    app_id: str | None = None,
    observed_expiry: datetime | None = None,
    correlation_id: str | None = None,
    generation: str | None = None,
    today: date | None = None,
) -> RotationMessage:
    """Build a validated first-step message with its deterministic rotation id; raise InvalidInput.

    The generation defaults to the observed expiry (a due credential) or `on-demand-<UTC date>`.
    """
    if generation is None:
        if observed_expiry is not None:
            generation = expiry_generation(observed_expiry)
        else:
            generation = on_demand_generation(today or clock.now().date())
    data: dict[str, Any] = {
        "rotation_id": rotation_id_for(cluster_id, kind, app_id, generation),
        "cluster_id": cluster_id,
        "kind": kind,
        "app_id": app_id,
        "observed_expiry": observed_expiry,
        "reason": reason,
        "correlation_id": correlation_id or new_correlation_id(),
    }
    return _validate_python(RotationMessage, data, _MESSAGE_WHAT)
