"""Key Vault events (Event Grid) → the same rotation messages the timer queues.

Event Grid writes each event to the `keyvault-events` Storage queue as one message holding one JSON event; the
queue trigger hands its body over as bytes (`function_app.keyvault_events`), `aks-rotator event FILE` the bytes of
a file. Key Vault publishes `Microsoft.KeyVault.SecretNearExpiry` (30 days before `exp`) and `SecretExpired` for the
*current* version of a secret, in the Event Grid schema or the CloudEvents 1.0 schema. The documented samples
are inconsistent about field casing (`Id`/`VaultName`/`NBF`/`EXP` vs `id`/`vaultName`/`nbf`/`exp`) and send
`NBF`/`EXP` as strings of epoch seconds where the schema says numbers, so both are accepted here.
Only secrets this product wrote (tag `managed-by`) in an allowed vault are acted on; everything else is recorded
and ignored.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from shared import edge, rotation
from shared.azure import product_credential
from shared.logs import EVENT_KEYVAULT_SECRET_EXPIRED, alert, log_event
from shared.messages import MAX_MESSAGE_BYTES, CredentialKind, InvalidInput, check_allowed, new_rotation_message
from shared.settings import Settings
from shared.store import RotationStore
from shared.vault import VaultStore, VersionState, vault_name

log = logging.getLogger(__name__)

NEAR_EXPIRY = "Microsoft.KeyVault.SecretNearExpiry"
EXPIRED = "Microsoft.KeyVault.SecretExpired"
HANDLED_TYPES = frozenset({NEAR_EXPIRY, EXPIRED})
_VAULT_TOPIC = re.compile(
    r"^/subscriptions/[0-9a-fA-F-]{36}/resourceGroups/[-\w\._\(\)]{1,90}/providers/Microsoft\.KeyVault/vaults/"
    r"(?P<vault>[a-zA-Z0-9-]{3,24})$",
    re.IGNORECASE,
)
_SECRET_NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
_VERSION = re.compile(r"^[0-9a-fA-F]{32}$")


@dataclass(frozen=True)
class SecretEvent:
    """What the product needs from a Key Vault secret event, whichever schema delivered it."""

    event_id: str
    event_type: str
    vault: str
    secret_name: str
    version: str
    expires_on: datetime | None


def _epoch(value: Any, field: str) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInput(f"{field} must be epoch seconds", field)
    try:
        seconds = float(value)
    except ValueError:
        raise InvalidInput(f"{field} must be epoch seconds", field) from None
    if not 0 <= seconds < 253402300800:  # year 10000
        raise InvalidInput(f"{field} is out of range", field)
    return datetime.fromtimestamp(seconds, UTC)


def _text(data: dict[str, Any], key: str, pattern: re.Pattern[str] | None = None) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"data.{key} is missing", f"data.{key}")
    value = value.strip()
    if pattern is not None and not pattern.match(value):
        raise InvalidInput(f"data.{key} is not valid", f"data.{key}")
    return value


def parse_event(raw: str | bytes) -> SecretEvent:
    """Parse one Event Grid or CloudEvents Key Vault event; `InvalidInput` on anything malformed."""
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput("event is not valid UTF-8 text") from None
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidInput(f"event larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise InvalidInput("event is not valid JSON") from None
    if isinstance(doc, list) and len(doc) == 1:  # a file saved from the documented samples, which are arrays
        doc = doc[0]
    if not isinstance(doc, dict):
        raise InvalidInput("event must be a JSON object")
    cloud = "specversion" in doc
    event_type = doc.get("type" if cloud else "eventType")
    topic = doc.get("source" if cloud else "topic")
    event_id = doc.get("id")
    if not isinstance(event_type, str) or not event_type.startswith("Microsoft.KeyVault."):
        raise InvalidInput("not a Key Vault event", "type" if cloud else "eventType")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 128:
        raise InvalidInput("event id is missing", "id")
    if not isinstance(topic, str) or not (match := _VAULT_TOPIC.match(topic.strip())):
        raise InvalidInput("topic is not a Key Vault resource id", "source" if cloud else "topic")
    body = doc.get("data")
    if not isinstance(body, dict):
        raise InvalidInput("data is missing", "data")
    data = {str(k).strip().lower(): v for k, v in body.items()}
    if str(data.get("objecttype", "")).strip().lower() != "secret":
        raise InvalidInput("not a secret event", "data.objectType")
    vault = _text(data, "vaultname", re.compile(r"^[a-zA-Z0-9-]{3,24}$"))
    if vault.lower() != match.group("vault").lower():
        raise InvalidInput("data.vaultName does not match the topic", "data.vaultName")
    name = _text(data, "objectname", _SECRET_NAME)
    version = _text(data, "version", _VERSION)
    object_id = data.get("id")
    if isinstance(object_id, str) and object_id:
        path = urlparse(object_id).path.rstrip("/").split("/")
        if len(path) < 2 or path[-2].lower() != name.lower() or path[-1].lower() != version.lower():
            raise InvalidInput("data.id does not match objectName/version", "data.id")
    return SecretEvent(
        event_id=event_id,
        event_type=event_type,
        vault=vault.lower(),
        secret_name=name,
        version=version.lower(),
        expires_on=_epoch(data.get("exp"), "data.exp"),
    )


def vault_allowed(settings: Settings, vault: str) -> bool:
    """VAULT_ALLOWLIST, or else only the vault this product writes to."""
    return vault.lower() in (settings.vault_allowlist or (vault_name(settings.key_vault_url),))


@dataclass(frozen=True)
class EventOutcome:
    action: str  # "queued" | "duplicate" | "already_active" | "ignored" | "rejected"
    reason: str
    rotation_id: str | None = None


async def handle_event(settings: Settings, raw: str | bytes) -> EventOutcome:
    """The Key Vault events trigger: validate, map the secret to its cluster by our tags, queue through `submit`."""
    try:
        event = parse_event(raw)
    except InvalidInput as exc:
        await _reject(settings, exc, raw)
        return EventOutcome("rejected", exc.reason)
    fields: dict[str, Any] = {"event_id": event.event_id, "vault": event.vault, "secret": event.secret_name}
    if event.event_type not in HANDLED_TYPES:
        log_event(log, logging.INFO, "keyvault.event_ignored", f"ignored {event.event_type}", **fields)
        return EventOutcome("ignored", f"event type {event.event_type} is not acted on")
    if not vault_allowed(settings, event.vault):
        log_event(log, logging.WARNING, "keyvault.event_ignored", "vault is not in VAULT_ALLOWLIST", **fields)
        return EventOutcome("ignored", "vault is not allowed")
    credential = product_credential(settings)
    try:
        async with VaultStore(settings, credential) as vault:
            versions = await vault.versions(event.secret_name)
    finally:
        await credential.close()
    stored = next((v for v in versions if v.version.lower() == event.version), None)
    if stored is None or not stored.labels.managed:
        log_event(log, logging.INFO, "keyvault.event_ignored", "secret is not managed by this product", **fields)
        return EventOutcome("ignored", "secret is not managed by this product")
    if stored.labels.state is not VersionState.CURRENT:
        # A replayed or late event about a version that is no longer the cluster's secret.
        return EventOutcome("ignored", f"version is {stored.labels.state or 'untagged'}, not current")
    expired = event.event_type == EXPIRED
    try:
        message = new_rotation_message(
            cluster_id=stored.labels.cluster_id,
            kind=CredentialKind.SP_SECRET,
            reason="expired" if expired else "keyvault_event",
            app_id=stored.labels.app_id or None,
            observed_expiry=stored.expires_on,  # Key Vault's own, never the event's `exp` (the engine re-reads it)
        )
    except InvalidInput as exc:
        await _reject(settings, exc, f"tags of {event.secret_name}/{event.version}")
        return EventOutcome("rejected", exc.reason)
    try:
        check_allowed(settings, message.cluster_id)
    except InvalidInput as exc:
        log_event(log, logging.WARNING, "keyvault.event_ignored", exc.reason, **fields)
        return EventOutcome("ignored", exc.reason)
    if expired:
        alert(
            log,
            EVENT_KEYVAULT_SECRET_EXPIRED,
            "a cluster's secret expired in Key Vault: rotating now",
            cluster_id=message.cluster_id,
            **fields,
        )
    result = await rotation.submit(settings, message)
    return EventOutcome(result.status, result.detail, message.rotation_id)


async def _reject(settings: Settings, problem: InvalidInput, raw: str | bytes) -> None:
    async with RotationStore(settings) as store:
        await store.ensure()
        await edge.reject(store, "eventgrid", problem, raw)
