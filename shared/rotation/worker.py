"""The local worker (`aks-rotator worker`, `run --once`, tests, benchmarks): the queue trigger as the Functions
host runs it — receive, handle, delete on success, redeliver a failure, poison after the max dequeue count.

A step may outlast the message's visibility timeout: the message then reappears (dequeue count + 1) and another
loop or worker may take it, so this worker's pop receipt goes stale and its delete answers 404 `MessageNotFound`
or 400 `PopReceiptMismatch`. That is not an error of the step: the next delivery of the same message is stale or
re-runs an idempotent step under the cluster lease (shared.rotation.machine), so the worker logs it and goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

from shared.logs import log_event, redact
from shared.queues import Received, RotationQueues
from shared.rotation.deps import Deps, deps_for
from shared.rotation.machine import MAX_DEQUEUE_COUNT, handle_message, handle_poison
from shared.settings import Settings

log = logging.getLogger("shared.rotation")


@dataclass
class DrainReport:
    received: int = 0
    handled: int = 0
    errors: int = 0
    poisoned: int = 0
    receipts_lost: int = 0  # messages whose visibility ran out mid-step: another delivery owns them now
    actions: dict[str, int] = field(default_factory=dict)
    invocation_seconds: float = 0.0  # sum of handle_message durations (function execution time)
    wall_seconds: float = 0.0


async def drain(
    settings: Settings,
    *,
    max_messages: int | None = None,
    idle_exit: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
    deps: Deps | None = None,
    batch_size: int = 8,
    visibility_timeout: int = 30,
    retry_delay_seconds: int = 30,
    idle_wait_seconds: float = 1.0,
) -> DrainReport:
    """Process the rotation queue like the Functions host would: receive, handle, delete on success; a message
    that raises reappears after `retry_delay_seconds` and after MAX_DEQUEUE_COUNT deliveries goes to poison
    (and the poison handler runs). With `idle_exit` it returns once no message is visible."""
    report = DrainReport()
    started = time.monotonic()
    async with deps_for(settings, deps) as d:
        while max_messages is None or report.received < max_messages:
            want = batch_size if max_messages is None else min(batch_size, max_messages - report.received)
            batch = await d.queues.receive(max_messages=max(1, min(32, want)), visibility_timeout=visibility_timeout)
            if not batch:
                if idle_exit:
                    break
                await asyncio.sleep(idle_wait_seconds)
                continue
            report.received += len(batch)
            await asyncio.gather(*(_one(d, item, report, retry_delay_seconds) for item in batch))
            if progress is not None:
                progress("rotations", report.handled, report.received)
    report.wall_seconds = time.monotonic() - started
    return report


async def _one(deps: Deps, item: Received, report: DrainReport, retry_delay: int) -> None:
    settings = deps.settings
    if not item.valid_encoding:
        await _poison(deps, item, report)
        return
    t0 = time.perf_counter()
    try:
        outcome = await handle_message(settings, item.body, dequeue_count=item.dequeue_count, deps=deps)
    except Exception as exc:  # the host: log, redeliver, poison after the max count
        report.invocation_seconds += time.perf_counter() - t0
        report.errors += 1
        log_event(
            log,
            logging.WARNING,
            "rotation.delivery_failed",
            f"delivery failed: {type(exc).__name__}: {redact(str(exc))[:300]}",
            dequeue_count=item.dequeue_count,
        )
        if item.dequeue_count >= MAX_DEQUEUE_COUNT:
            await _poison(deps, item, report)
        else:
            await _release(deps.queues, item, retry_delay)
        return
    report.invocation_seconds += time.perf_counter() - t0
    report.handled += 1
    report.actions[outcome.action] = report.actions.get(outcome.action, 0) + 1
    await _delete(deps.queues, item, report)


async def _poison(deps: Deps, item: Received, report: DrainReport) -> None:
    """Move a message to the poison queue and run the poison handler — only while this worker still owns it: a
    message whose visibility ran out belongs to its next delivery, which decides for itself."""
    owned = await _renew(deps.queues, item, report)
    if owned is None:
        return
    await deps.queues.poison(item.body)
    await _delete(deps.queues, owned, report)
    report.poisoned += 1
    await handle_poison(deps.settings, item.body, deps=deps)


def _code(exc: AzureError) -> str:
    code = getattr(exc, "error_code", None)  # the storage SDK's StorageErrorCode (a str enum) or None
    return str(getattr(code, "value", code))


def _stale_receipt(exc: AzureError) -> bool:
    """Azure Queue Storage's answers to a pop receipt that is no longer the message's: 404 `MessageNotFound`
    (deleted by its next delivery) or 400 `PopReceiptMismatch` (received again since)."""
    if isinstance(exc, ResourceNotFoundError):
        return True
    return isinstance(exc, HttpResponseError) and _code(exc) == "PopReceiptMismatch"


def _lost(item: Received, report: DrainReport, exc: AzureError) -> None:
    report.receipts_lost += 1
    log_event(
        log,
        logging.WARNING,
        "rotation.visibility_lost",
        f"message {item.id} became visible again before its step ended ({_code(exc)}); its next "
        "delivery continues the rotation (the step is idempotent under the cluster lease)",
        dequeue_count=item.dequeue_count,
    )


async def _delete(queues: RotationQueues, item: Received, report: DrainReport) -> None:
    """Remove a handled message; a stale pop receipt means another delivery owns it now (not an error)."""
    try:
        await queues.delete(item)
    except AzureError as exc:
        if not _stale_receipt(exc):
            raise
        _lost(item, report, exc)


async def _renew(queues: RotationQueues, item: Received, report: DrainReport) -> Received | None:
    """The message with a fresh pop receipt if this worker still owns it, else None."""
    try:
        return await queues.hold(item)
    except AzureError as exc:
        if not _stale_receipt(exc):
            raise
        _lost(item, report, exc)
        return None


async def _release(queues: RotationQueues, item: Received, delay: int) -> None:
    """Make a failed message visible again after `delay` seconds (the host's retry interval)."""
    with contextlib.suppress(AzureError):
        await queues.release(item, delay)
