"""Fault injection (`/_emulator/faults`) and the per-principal rate limits real services apply.

A rule matches requests by surface and operation (the route name, `fnmatch` patterns) and optionally by a
substring of the path; it fires `times` times (or forever) with `probability`.
"""

from __future__ import annotations

import fnmatch
import random
import time
import uuid
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

SURFACES = ("entra", "arm", "resourcegraph", "graph", "keyvault")
FaultKind = Literal["latency", "status", "throttle", "drop", "lro_fail", "replication_delay"]
KINDS: tuple[str, ...] = ("latency", "status", "throttle", "drop", "lro_fail", "replication_delay")


@dataclass
class FaultRule:
    kind: str
    surface: str = "*"
    operation: str = "*"
    match: str | None = None
    status: int = 503
    retry_after: int = 1
    latency_ms: int = 0
    seconds: float = 0.0
    message: str | None = None
    times: int | None = None
    probability: float = 1.0
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    fired: int = 0

    @classmethod
    def parse(cls, spec: dict[str, Any]) -> FaultRule:
        allowed = set(cls.__dataclass_fields__) - {"id", "fired"}
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        rule = cls(**spec)
        if rule.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        if rule.surface != "*" and rule.surface not in SURFACES:
            raise ValueError(f"surface must be '*' or one of {SURFACES}")
        if not 0.0 <= rule.probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        return rule

    def public(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Faults:
    def __init__(self, rng: random.Random) -> None:
        self.rules: list[FaultRule] = []
        self.rng = rng

    def take(self, surface: str, operation: str, kinds: tuple[str, ...], path: str = "") -> FaultRule | None:
        """The first rule of one of `kinds` that matches and fires now (consuming one of its `times`)."""
        for rule in self.rules:
            if rule.kind not in kinds or rule.times == 0:
                continue
            if rule.surface not in ("*", surface) or not fnmatch.fnmatchcase(operation, rule.operation):
                continue
            if rule.match and rule.match.lower() not in path.lower():
                continue
            if rule.probability < 1.0 and self.rng.random() >= rule.probability:
                continue
            if rule.times is not None:
                rule.times -= 1
            rule.fired += 1
            return rule
        return None

    def find(self, surface: str, kind: str, path: str = "") -> FaultRule | None:
        """The first matching rule of `kind`, without consuming it: a standing condition such as a replication delay."""
        for rule in self.rules:
            matched = not rule.match or rule.match.lower() in path.lower()
            if rule.kind == kind and rule.times != 0 and rule.surface in ("*", surface) and matched:
                return rule
        return None

    def latency_ms(self, surface: str, operation: str, path: str) -> int:
        total = 0
        for rule in self.rules:
            if rule.kind != "latency" or rule.times == 0 or rule.surface not in ("*", surface):
                continue
            if fnmatch.fnmatchcase(operation, rule.operation) and (
                not rule.match or rule.match.lower() in path.lower()
            ):
                if rule.times is not None:
                    rule.times -= 1
                rule.fired += 1
                total += rule.latency_ms
        return total


class TokenBucket:
    """ARM-style throttling: a bucket per principal, refilled continuously (real time, not emulator time)."""

    def __init__(self, capacity: float, refill_per_second: float) -> None:
        self.capacity = capacity
        self.refill = refill_per_second
        self._levels: dict[str, tuple[float, float]] = {}

    def take(self, key: str, cost: float = 1.0) -> tuple[bool, int, float]:
        """(allowed, remaining, seconds until `cost` tokens are available). A refused request takes nothing."""
        now = time.monotonic()
        level, since = self._levels.get(key, (self.capacity, now))
        level = min(self.capacity, level + (now - since) * self.refill)
        self._levels[key] = (level, now)
        if level >= cost:
            level -= cost
            self._levels[key] = (level, now)
            return True, int(level), 0.0
        return False, 0, (cost - level) / self.refill

    def used(self, key: str) -> float:
        """Fraction of the capacity in use for `key` now (0 when it never called)."""
        level, since = self._levels.get(key, (self.capacity, time.monotonic()))
        level = min(self.capacity, level + (time.monotonic() - since) * self.refill)
        return 1.0 - level / self.capacity


class WindowQuota:
    """Resource Graph user quota: N queries per window per principal."""

    def __init__(self, limit: int, window_seconds: float) -> None:
        self.limit = limit
        self.window = window_seconds
        self._windows: dict[str, tuple[float, int]] = {}

    def take(self, key: str) -> tuple[bool, int, float]:
        """(allowed, remaining after this call, seconds until the window resets)."""
        now = time.monotonic()
        start, used = self._windows.get(key, (now, 0))
        if now - start >= self.window:
            start, used = now, 0
        resets = self.window - (now - start)
        if used >= self.limit:
            self._windows[key] = (start, used)
            return False, 0, resets
        used += 1
        self._windows[key] = (start, used)
        return True, self.limit - used, resets


class RefusalStreaks:
    """Judge-side record of quota refusals (429s), kept in the request counts: `throttled.<surface>` counts every
    refusal and `throttled_again.<surface>` every refusal of a request whose previous attempt was refused too (a
    client that does not wait long enough). A request is identified by `key` (caller, method, URL or body)."""

    def __init__(self) -> None:
        self._streaks: dict[tuple[str, ...], int] = {}

    def record(self, counts: Counter[str], surface: str, key: tuple[str, ...], refused: bool) -> None:
        full = (surface, *key)
        if not refused:
            self._streaks.pop(full, None)
            return
        streak = self._streaks.get(full, 0) + 1
        self._streaks[full] = streak
        counts[f"throttled.{surface}"] += 1
        if streak > 1:
            counts[f"throttled_again.{surface}"] += 1


_STREAKS: weakref.WeakKeyDictionary[object, RefusalStreaks] = weakref.WeakKeyDictionary()


def refusals(owner: object) -> RefusalStreaks:
    """The refusal record of one emulator (`owner`)."""
    return _STREAKS.setdefault(owner, RefusalStreaks())
