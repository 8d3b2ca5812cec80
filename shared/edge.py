"""What happens to input that fails validation at any entry point (queue, event, HTTP, CLI).

It changes nothing else: it is logged at warning with a correlation id, recorded with its reason in the audit
table's `rejected` partition (a redacted, truncated excerpt only), and counted by the `input.rejected` alert
query. It never echoes a secret or a large payload.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.logs import EVENT_INPUT_REJECTED, log_event, redact
from shared.messages import InvalidInput, new_correlation_id
from shared.store import RotationStore

log = logging.getLogger(__name__)
EXCERPT_CHARS = 200


async def reject(
    store: RotationStore,
    source: str,
    problem: InvalidInput,
    raw: str | bytes,
    correlation_id: str | None = None,
    **fields: Any,
) -> str:
    """Record a rejected input; returns the correlation id to hand back to the caller. `fields` (who sent it, when
    known: `shared.caller`) go into the log line."""
    correlation_id = correlation_id or new_correlation_id()
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    # Lone surrogates (a str that never was UTF-8) cannot be stored or logged as text: mark them like bad bytes.
    text = text[: EXCERPT_CHARS * 4].encode("utf-8", errors="replace").decode("utf-8")
    reason = redact(problem.reason)  # names echoed from the input (at most 40 characters) may be secrets too
    log_event(
        log,
        logging.WARNING,
        EVENT_INPUT_REJECTED,
        f"{source} input rejected: {reason}",
        source=source,
        field=redact(problem.field) if problem.field else None,
        correlation_id=correlation_id,
        **fields,
    )
    await store.record_rejection(source, reason, correlation_id, redact(text)[:EXCERPT_CHARS])
    return correlation_id
