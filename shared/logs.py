"""Structured (JSON) logs that never carry secrets, and alert-level records.

* `configure_logging()` installs one JSON-lines handler on the root logger (idempotent) and the `SecretRedactor`
  filter on every root handler, including handlers the Functions host installed before us.
* `register_secret()` is called by the code that handles a new secret the moment it exists; from then on the
  value is replaced by `***` wherever it would be logged: message, arguments, extra fields, exception text; so are
  its URL-encoded and base64 forms (also inside a longer base64 text), and a text that ends in the first part of it
  (cut short before it reached us). Values are forgotten after `SECRET_TTL_SECONDS` or beyond `MAX_SECRETS`.
  Callers that shorten text redact first, then truncate. Well-known secret shapes (client_secret=,
  "secretText": "...", Bearer tokens, SAS sig=, AccountKey=, ..., also URL-encoded) are redacted even when never
  registered.
* `log_event()` / `alert()` write records with an `event` name that alert rules match on.

This module is pure (no I/O beyond the stream it is given).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime
from typing import IO, Any, Final, Literal, cast
from urllib.parse import quote

from pydantic import SecretStr

__all__ = [
    "ALERTED_EVENTS",
    "ALERT_EVENTS",
    "EVENT_CREDENTIAL_OVERDUE",
    "EVENT_INPUT_REJECTED",
    "EVENT_KEYVAULT_SECRET_EXPIRED",
    "EVENT_MIGRATION_FAILED",
    "EVENT_ROTATION_BLOCKED",
    "EVENT_ROTATION_FAILED",
    "EVENT_ROTATION_POISON",
    "EVENT_ROTATION_STALLED",
    "EVENT_ROTATION_URGENT",
    "MASK",
    "AlertEvent",
    "JsonFormatter",
    "SecretRedactor",
    "alert",
    "clear_secrets",
    "configure_logging",
    "log_event",
    "redact",
    "register_secret",
]

MASK: Final = "***"
MAX_SECRETS: Final = 50_000  # registered forms (each secret adds up to 8: plain, URL-encoded, base64 variants)
# A secret shows up in logs around its own rotation; a value read back from Key Vault later is registered again.
SECRET_TTL_SECONDS: Final = 3 * 24 * 3600
MIN_SECRET_LENGTH: Final = 8  # shorter values would mangle ordinary log text; real secrets are far longer

EVENT_ROTATION_FAILED: Final = "rotation.failed"
EVENT_ROTATION_POISON: Final = "rotation.poison"
# finish/retire keeps meeting transient trouble (or was poisoned and resumed): alive, not moving, nothing undone
EVENT_ROTATION_STALLED: Final = "rotation.stalled"
EVENT_CREDENTIAL_OVERDUE: Final = "credential.overdue"
EVENT_KEYVAULT_SECRET_EXPIRED: Final = "keyvault.secret_expired"  # noqa: S105 (an event name)
EVENT_ROTATION_BLOCKED: Final = "rotation.blocked"  # waiting on something only a person can fix, or kept both
EVENT_INPUT_REJECTED: Final = "input.rejected"  # log_event at WARNING, not an alert
EVENT_ROTATION_URGENT: Final = "rotation.urgent"  # applied outside the maintenance window (rotation.py)
EVENT_MIGRATION_FAILED: Final = "migration.failed"  # a migration to managed identity stopped: a person acts

AlertEvent = Literal[
    "rotation.failed",
    "rotation.poison",
    "rotation.stalled",
    "rotation.blocked",
    "credential.overdue",
    "keyvault.secret_expired",
    "migration.failed",
]
ALERT_EVENTS: Final = frozenset(
    {
        EVENT_ROTATION_FAILED,
        EVENT_ROTATION_POISON,
        EVENT_ROTATION_STALLED,
        EVENT_ROTATION_BLOCKED,
        EVENT_CREDENTIAL_OVERDUE,
        EVENT_KEYVAULT_SECRET_EXPIRED,
        EVENT_MIGRATION_FAILED,
    }
)
# Every event an alert rule in infra/app/alerts.bicep watches: the alert-level records plus two that are not failures
# but must reach a human (a forced node image upgrade; rejected input, a bug or someone probing).
ALERTED_EVENTS: Final = ALERT_EVENTS | {EVENT_ROTATION_URGENT, EVENT_INPUT_REJECTED}

# --------------------------------------------------------------------------------------------------------------
# Redaction
# --------------------------------------------------------------------------------------------------------------

_QUOTED_KEYS = (
    "secretText|secret|value|client_secret|clientSecret|password|access_token|refresh_token|id_token|client_assertion"
    "|accountKey|AccountKey|sharedAccessSignature|privateKey|private_key"
)
_PATTERNS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # PEM private keys (certificate material).
    (
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.DOTALL),
        MASK,
    ),
    # JSON / Python-repr style: "secretText": "...", 'value': '...'.
    (
        re.compile(
            r"""(?P<k>(?P<q>["'])(?:""" + _QUOTED_KEYS + r""")(?P=q)\s*:\s*)(?P<v>["'])(?:(?!(?P=v))[^\\]|\\.)*(?P=v)"""
        ),
        r"\g<k>\g<v>" + MASK + r"\g<v>",
    ),
    # Authorization header values of any scheme, then bare Bearer/Basic tokens anywhere.
    (re.compile(r"""(?i)(?P<k>\bauthorization["']?\s*[:=]\s*["']?)[^"'\r\n,}]+"""), r"\g<k>" + MASK),
    (re.compile(r"(?i)\b(?P<k>bearer|basic)\s+[A-Za-z0-9\-._~+/]{16,}=*"), r"\g<k> " + MASK),
    # Unlabelled JWTs.
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), MASK),
    # key=value forms: client_secret=..., password: ..., connection-string AccountKey=..., SAS sig=..., and the same
    # URL-encoded (client_secret%3D..., sig%3D...).
    (
        re.compile(
            r"(?i)(?:(?<![A-Za-z0-9_])|(?<=%26)|(?<=%3F)|(?<=%3B))(?P<k>(?:client_secret|client_assertion|password|access_token|refresh_token"
            r"|accountkey|sharedaccesskey|sharedaccesssignature)(?:\s*[=:]\s*|%3[DA](?:%20)*)|sig(?:=|%3D))"
            r"(?P<v>[^&;\s\"',}]+)"
        ),
        r"\g<k>" + MASK,
    ),
    # URL-encoded JSON: %22secretText%22%3A%22...%22
    (
        re.compile(r"(?i)(?P<k>%22(?:" + _QUOTED_KEYS + r")%22(?:%3A|:)(?:%20|\s)*%22)(?:(?!%22).)*%22"),
        r"\g<k>" + MASK + "%22",
    ),
)


class _Registry:
    """Process-wide set of known secret values, bounded by age (`ttl_seconds`) and by count (oldest go first)."""

    _PREFIX = MIN_SECRET_LENGTH
    _SCAN_THRESHOLD = 32  # above this many values, index by prefix instead of searching for each
    _TAIL_MIN = 12  # a shorter cut-off beginning is too likely to be ordinary text ("preflight-" starts the probe)

    def __init__(
        self,
        capacity: int = MAX_SECRETS,
        ttl_seconds: float = SECRET_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._capacity = capacity
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}  # value -> expiry; ordered by (re-)registration, so by expiry too
        self._snapshot: tuple[str, ...] = ()
        self._index: dict[str, tuple[str, ...]] = {}
        self._longest = 0
        self._earliest = float("inf")

    def add(self, value: str) -> bool:
        return self.add_all((value,)) > 0

    def add_all(self, values: Iterable[str]) -> int:
        """Register every value long enough; returns how many were. One rebuild for all of them."""
        wanted = [v for v in values if len(v) >= MIN_SECRET_LENGTH]
        if not wanted:
            return 0
        with self._lock:
            now = self._clock()
            for value in wanted:
                self._values.pop(value, None)
                self._values[value] = now + self._ttl
            self._forget(now)
            while len(self._values) > self._capacity:
                del self._values[next(iter(self._values))]
            self._rebuild()
        return len(wanted)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._rebuild()

    def _forget(self, now: float) -> None:
        while self._values:
            oldest = next(iter(self._values))
            if self._values[oldest] > now:
                break
            del self._values[oldest]

    def _rebuild(self) -> None:
        values = tuple(sorted(self._values, key=len, reverse=True))  # longest first: no partial masks
        index: dict[str, list[str]] = {}
        for value in values:
            index.setdefault(value[: self._PREFIX], []).append(value)
        self._snapshot = values
        self._index = {prefix: tuple(group) for prefix, group in index.items()}
        self._longest = len(values[0]) if values else 0
        self._earliest = next(iter(self._values.values()), float("inf"))

    def __len__(self) -> int:
        if self._clock() >= self._earliest:
            with self._lock:
                self._forget(self._clock())
                self._rebuild()
        return len(self._snapshot)

    def redact(self, text: str) -> str:
        if self._clock() >= self._earliest:
            with self._lock:
                self._forget(self._clock())
                self._rebuild()
        values, index = self._snapshot, self._index  # consistent view without the lock
        if not values or len(text) < MIN_SECRET_LENGTH:
            return text
        if len(values) <= self._SCAN_THRESHOLD:
            for value in values:
                if value in text:
                    text = text.replace(value, MASK)
        else:
            found: set[str] = set()
            width = self._PREFIX
            for i in range(len(text) - width + 1):
                group = index.get(text[i : i + width])
                if group:
                    found.update(value for value in group if text.startswith(value, i))
            for value in sorted(found, key=len, reverse=True):
                text = text.replace(value, MASK)
        return self._cut_tail(text, index)

    def _cut_tail(self, text: str, index: Mapping[str, tuple[str, ...]]) -> str:
        """Mask a text's end that is the beginning of a known value (the text was cut short before reaching us)."""
        width = self._PREFIX
        for i in range(max(0, len(text) - self._longest), len(text) - self._TAIL_MIN + 1):
            tail = text[i:]
            if any(value.startswith(tail) for value in index.get(text[i : i + width], ())):
                return text[:i] + MASK
        return text


def _encoded_forms(plain: str) -> set[str]:
    """How `plain` can appear encoded: URL-encoded, and base64 (standard and URL-safe alphabet) at each of the three
    byte offsets it can have inside a longer base64 text, keeping only the characters that depend on it alone."""
    forms = {quote(plain, safe="")}
    raw = plain.encode("utf-8")
    for offset, first in ((0, 0), (1, 2), (2, 3)):  # leading characters that mix in the preceding bytes
        last = 8 * (offset + len(raw)) // 6  # characters made only of this value's bits
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            forms.add(encode(b"\0" * offset + raw).decode("ascii")[first:last])
    forms.discard(plain)
    return forms


_REGISTRY: Final = _Registry()


def register_secret(value: str | SecretStr | None) -> bool:
    """Remember a secret value so it is masked in every log record from now on.

    Call it the moment a secret exists (e.g. right after addPassword returns). Values shorter than
    MIN_SECRET_LENGTH are not registered (returns False). Its URL-encoded and base64 forms are registered too.
    """
    if value is None:
        return False
    plain = value.get_secret_value() if isinstance(value, SecretStr) else value
    if len(plain) < MIN_SECRET_LENGTH:
        return False
    return _REGISTRY.add_all((plain, *_encoded_forms(plain))) > 0


def clear_secrets() -> None:
    """Forget every registered value (tests)."""
    _REGISTRY.clear()


def redact(text: str) -> str:
    """Mask registered secret values and well-known secret shapes in `text`."""
    text = _REGISTRY.redact(text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if depth < 5 and isinstance(value, Mapping):
        return {redact(str(k)): _redact_value(v, depth + 1) for k, v in value.items()}
    if depth < 5 and isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v, depth + 1) for v in value]
    return redact(str(value))


_STANDARD_ATTRS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_DONE: Final = "_aks_rotator_redacted"


def _extra_keys(record: logging.LogRecord) -> list[str]:
    return [key for key in record.__dict__ if key not in _STANDARD_ATTRS and not key.startswith("_")]


class SecretRedactor(logging.Filter):
    """Masks secrets in a record before any handler formats it: message (with its arguments rendered), extra
    fields, exception and stack text. The exception is kept as redacted text (`exc_text`), never as the live
    exception object, so no later handler can render the unredacted message. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _DONE, False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # bad %-arguments: keep the template only
            message = f"{record.msg} [unformattable log arguments]"
        record.msg = redact(message)
        record.args = None
        for key in _extra_keys(record):
            record.__dict__[key] = _redact_value(record.__dict__[key])
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        setattr(record, _DONE, True)
        return True


_REDACTOR: Final = SecretRedactor()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then extra fields (event, rotation_id, alert, ...)."""

    _CORE: Final = ("ts", "level", "logger", "msg")

    def format(self, record: logging.LogRecord) -> str:
        _REDACTOR.filter(record)  # also safe when used without the filter installed
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _extra_keys(record):
            payload[f"extra_{key}" if key in self._CORE else key] = record.__dict__[key]
        if record.exc_text:
            payload["exc"] = record.exc_text
        if record.stack_info:
            payload["stack"] = record.stack_info
        return json.dumps(payload, ensure_ascii=False, default=lambda obj: redact(str(obj)))


_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _OurHandler(logging.StreamHandler[IO[str]]):
    """Marker type: the handler configure_logging installed."""


_CONFIG_LOCK: Final = threading.Lock()
_NOISY_LOGGERS: Final = ("azure", "msal", "urllib3", "httpx", "httpcore", "kiota", "msgraph", "aiohttp")


def _install_redactor(handler: logging.Handler) -> None:
    if not any(isinstance(f, SecretRedactor) for f in handler.filters):
        handler.addFilter(_REDACTOR)


class _CurrentStderr(io.TextIOBase):
    """Writes to whatever `sys.stderr` is at the moment (hosts and test runners swap and close it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        if not sys.stderr.closed:
            sys.stderr.flush()


_CURRENT_STDERR = _CurrentStderr()


def configure_logging(
    level: str | int = "INFO",
    json_output: bool = True,
    *,
    stream: IO[str] | None = None,
    quiet_sdks: bool = True,
    formatter: logging.Formatter | None = None,
) -> logging.Handler | None:
    """Configure the root logger; idempotent (a second call reconfigures, never adds a second handler).

    * json_output=True: our JSON-lines handler on `stream` (stderr by default).
    * json_output=False: plain text from our handler, unless other handlers (the Functions host's) are already
      installed, in which case ours is removed and the host's handlers do the output.
    * Always: the SecretRedactor on every root handler and on logging.lastResort. Call this after anything else
      that adds root handlers (e.g. Azure Monitor), or call it again.
    * quiet_sdks: Azure SDK / HTTP library loggers are held at WARNING unless level is DEBUG.
    * formatter: replaces the JSON formatter of our handler (the CLI's console lines, `shared/console.py`).
    Returns our handler, or None when the host's handlers are used.
    """
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError("log level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    root = logging.getLogger()
    with _CONFIG_LOCK:
        root.setLevel(numeric)
        ours = [h for h in root.handlers if isinstance(h, _OurHandler)]
        others = [h for h in root.handlers if not isinstance(h, _OurHandler)]
        handler: _OurHandler | None = ours[0] if ours else None
        for extra in ours[1:]:
            root.removeHandler(extra)
        if not json_output and others:
            if handler is not None:
                root.removeHandler(handler)
            handler = None
        else:
            target: IO[str] = stream if stream is not None else cast(IO[str], _CURRENT_STDERR)
            if handler is None:
                handler = _OurHandler(target)
                root.addHandler(handler)
            elif handler.stream is not target:
                handler.setStream(target)
            handler.setFormatter(formatter or (JsonFormatter() if json_output else logging.Formatter(_TEXT_FORMAT)))
        # Root handlers, and those an exporter put on the product's own logger (Azure Monitor uses "shared").
        for each in (*root.handlers, *logging.getLogger("shared").handlers):
            _install_redactor(each)
        if logging.lastResort is not None:
            _install_redactor(logging.lastResort)
        if quiet_sdks:
            for name in _NOISY_LOGGERS:
                logging.getLogger(name).setLevel(logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING)
    return handler


def log_event(
    logger: logging.Logger,
    level: int | str,
    event: str,
    message: str,
    *,
    alert: bool = False,
    exc_info: Any = None,
    **fields: Any,
) -> None:
    """Log `message` with `event=` (and `alert=`) plus `fields` as structured extra fields."""
    _emit(logger, level, event, message, alert=alert, exc_info=exc_info, fields=fields)


def _emit(
    logger: logging.Logger,
    level: int | str,
    event: str,
    message: str,
    *,
    alert: bool,
    exc_info: Any,
    fields: Mapping[str, Any],
) -> None:
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        numeric = logging.ERROR
    extra: dict[str, Any] = {"event": event, "alert": alert}
    for key, value in fields.items():
        # LogRecord refuses extra keys that shadow its attributes; keep the value under another name.
        extra[f"field_{key}" if key in _STANDARD_ATTRS else key] = value
    logger.log(numeric, "%s", message, exc_info=exc_info, extra=extra, stacklevel=3)  # the caller of log_event/alert


def alert(logger: logging.Logger, event: AlertEvent, message: str, *, exc_info: Any = None, **fields: Any) -> None:
    """An alert-level record: ERROR, alert=True, event= one of ALERT_EVENTS (alert rules match on these)."""
    _emit(logger, logging.ERROR, event, message, alert=True, exc_info=exc_info, fields=fields)
