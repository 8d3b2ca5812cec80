"""The local worker (`aks-rotator worker`, `run --once`, tests, benchmarks): the queue trigger as the Functions
host runs it — receive, handle, delete on success, redeliver a failure, poison after the max dequeue count."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from azure.core.exceptions import AzureError

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
        await deps.queues.poison(item.body)
        await deps.queues.delete(item)
        report.poisoned += 1
        await handle_poison(settings, item.body, deps=deps)
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
            await deps.queues.poison(item.body)
            await deps.queues.delete(item)
            report.poisoned += 1
            await handle_poison(settings, item.body, deps=deps)
        else:
            await _release(deps.queues, item, retry_delay)
        return
    report.invocation_seconds += time.perf_counter() - t0
    report.handled += 1
    report.actions[outcome.action] = report.actions.get(outcome.action, 0) + 1
    await deps.queues.delete(item)


async def _release(queues: RotationQueues, item: Received, delay: int) -> None:
    """Make a failed message visible again after `delay` seconds (the host's retry interval)."""
    with contextlib.suppress(AzureError):
        await queues.release(item, delay)
