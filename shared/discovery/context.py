"""One scan's run context (settings, clock, counters, stage timings, progress), shared by every step of
discovery, and the error that stops a scan before anything is queued."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from shared.settings import Settings

Progress = Callable[[str, int, int], None]


class DiscoveryError(Exception):
    """Discovery could not build a trustworthy inventory (e.g. the identity lacks a right); nothing was queued."""


class Scan:
    """Per-scan context: settings, clock, counters, progress."""

    def __init__(self, settings: Settings, now: datetime, progress: Progress | None) -> None:
        self.settings = settings
        self.now = now
        self.progress = progress
        self.errors: list[str] = []
        self.requests: Counter[str] = Counter()
        self.stages: dict[str, float] = {}

    def tick(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            with contextlib.suppress(Exception):  # a broken progress bar must not break the scan
                self.progress(stage, done, total)

    @contextlib.contextmanager
    def stage(self, name: str) -> Any:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - started
