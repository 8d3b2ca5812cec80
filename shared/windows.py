"""When may a rotation touch a cluster: its AKS maintenance configurations, else the MAINTENANCE_WINDOW setting.

`resetServicePrincipalProfile` performs a node image upgrade on scale-set clusters, so every apply is a
maintenance event. The rule (see docs/design.md):

1. The cluster's AKS maintenance configurations named `aksManagedNodeOSUpgradeSchedule` or `default`: the apply
   may run when any of them allows it (parsed by `shared.aks.MaintenanceWindow`).
2. Else the product's `MAINTENANCE_WINDOW` setting (`"Sat,Sun 01:00-05:00"`, UTC; an end before the start
   crosses midnight).
3. Else any time.

An urgent rotation (expiry nearer than URGENT_DAYS) ignores all of this; the caller decides that.
Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Protocol

RELEVANT_CONFIGURATIONS = ("aksmanagednodeosupgradeschedule", "default")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SETTING = re.compile(r"^(?P<days>[A-Za-z,]+) (?P<sh>\d\d):(?P<sm>\d\d)-(?P<eh>\d\d):(?P<em>\d\d)$")


class Window(Protocol):
    """What the apply step needs from a window (shared.aks.MaintenanceWindow has this shape)."""

    @property
    def name(self) -> str: ...

    def allows(self, moment: datetime) -> bool: ...

    def next_start(self, after: datetime, horizon: timedelta = ...) -> datetime: ...


@dataclass(frozen=True)
class SettingWindow:
    """The MAINTENANCE_WINDOW setting: weekdays (0 = Monday) and a UTC time-of-day span."""

    days: frozenset[int]
    start: time
    end: time | None  # None = 24:00
    name: str = "MAINTENANCE_WINDOW"

    @classmethod
    def parse(cls, text: str) -> SettingWindow:
        match = _SETTING.match(text.strip())
        if match is None:
            raise ValueError("MAINTENANCE_WINDOW must look like 'Sat,Sun 01:00-05:00' (UTC)")
        days = frozenset(_DAYS.index(d.strip().lower()[:3]) for d in match["days"].split(","))
        start = time(int(match["sh"]), int(match["sm"]))
        end = None if (match["eh"], match["em"]) == ("24", "00") else time(int(match["eh"]), int(match["em"]))
        return cls(days, start, end)

    def _spans_from(self, day: datetime) -> tuple[datetime, datetime]:
        """The window that opens on `day`'s date (UTC)."""
        opens = datetime.combine(day.date(), self.start, UTC)
        if self.end is None:
            closes = datetime.combine(day.date() + timedelta(days=1), time(), UTC)
        else:
            closes = datetime.combine(day.date(), self.end, UTC)
            if closes <= opens:  # crosses midnight
                closes += timedelta(days=1)
        return opens, closes

    def allows(self, moment: datetime) -> bool:
        moment = moment.astimezone(UTC)
        for back in (0, 1):  # a window that opened yesterday may still be open
            day = moment - timedelta(days=back)
            if day.weekday() in self.days:
                opens, closes = self._spans_from(day)
                if opens <= moment < closes:
                    return True
        return False

    def next_start(self, after: datetime, horizon: timedelta = timedelta(days=800)) -> datetime:
        after = after.astimezone(UTC)
        if self.allows(after):
            return after
        for offset in range(0, 9):
            day = after + timedelta(days=offset)
            if day.weekday() in self.days:
                opens, _ = self._spans_from(day)
                if opens >= after and opens - after <= horizon:
                    return opens
        raise ValueError("MAINTENANCE_WINDOW opens no window")


def effective_windows(configured: Iterable[Window], setting: str | None) -> list[Window]:
    """The windows that govern an apply: the relevant AKS configurations, else the setting, else none ([])."""
    relevant = [w for w in configured if w.name.lower() in RELEVANT_CONFIGURATIONS]
    if relevant:
        return relevant
    if setting:
        return [SettingWindow.parse(setting)]
    return []


def is_open(windows: Sequence[Window], moment: datetime) -> bool:
    """True when no window is configured or any of them allows `moment`."""
    return not windows or any(w.allows(moment) for w in windows)


def next_open(windows: Sequence[Window], moment: datetime) -> datetime | None:
    """The earliest moment >= `moment` at which `is_open`; None when no window will ever open."""
    if is_open(windows, moment):
        return moment
    starts: list[datetime] = []
    for window in windows:
        try:
            starts.append(window.next_start(moment))
        except ValueError:
            continue
    return min(starts) if starts else None


def describe(windows: Sequence[Window]) -> str:
    return ", ".join(w.name for w in windows) if windows else "any time"
