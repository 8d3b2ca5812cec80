"""The product's one clock. Every rule that depends on the time (due, urgent, maintenance windows, grace periods,
retry ids, row timestamps, secret lifetimes) reads it here, so a simulation can move the product's time together
with the emulator's. Production: UTC now. Logs and telemetry keep wall-clock time (they record when things ran).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

Source = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


_source: Source = _utc_now


def now() -> datetime:
    """The current time (aware, UTC)."""
    return _source().astimezone(UTC)


@contextlib.contextmanager
def use(source: Source) -> Iterator[None]:
    """Read the time from `source` within the block (simulations and tests; one process-wide clock)."""
    global _source
    previous, _source = _source, source
    try:
        yield
    finally:
        _source = previous
