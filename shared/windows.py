"""When may a rotation touch a cluster: its AKS maintenance configurations, else the MAINTENANCE_WINDOW setting.

`resetServicePrincipalProfile` performs a node image upgrade on scale-set clusters, so every apply is a
maintenance event. The rule (see docs/design.md):

1. The cluster's AKS maintenance configurations named `aksManagedNodeOSUpgradeSchedule` or `default`: the apply
   may run when any of them allows it (`MaintenanceWindow` below, read by `shared.aks`).
2. Else the product's `MAINTENANCE_WINDOW` setting (`"Sat,Sun 01:00-05:00"`, UTC; an end before the start
   crosses midnight).
3. Else any time.

An urgent rotation (expiry nearer than URGENT_DAYS) ignores all of this; the caller decides that.
Pure: no I/O.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any, Protocol

RELEVANT_CONFIGURATIONS = ("aksmanagednodeosupgradeschedule", "default")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_ARM_DAYS = {d: i for i, d in enumerate(_WEEKDAYS)}
_WEEK_INDEX = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": 5}
_SETTING = re.compile(r"^(?P<days>[A-Za-z,]+) (?P<sh>\d\d):(?P<sm>\d\d)-(?P<eh>\d\d):(?P<em>\d\d)$")


class Window(Protocol):
    """What the apply step needs from a window (`MaintenanceWindow` and `SettingWindow` have this shape)."""

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


# -- AKS maintenance configurations ------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """A `maintenanceWindow` recurrence (aksManagedAutoUpgradeSchedule / aksManagedNodeOSUpgradeSchedule)."""

    kind: str  # "daily" | "weekly" | "absoluteMonthly" | "relativeMonthly"
    interval: int
    duration: timedelta
    start_time: time
    utc_offset: timedelta
    start_date: date | None = None
    day_of_week: int | None = None  # 0 = Monday
    day_of_month: int | None = None
    week_index: int | None = None  # 1-4, 5 = last

    @property
    def tz(self) -> timezone:
        return timezone(self.utc_offset)

    def occurs_on(self, day: date) -> bool:
        if self.start_date is not None and day < self.start_date:
            return False
        anchor = self.start_date or date(2000, 1, 3)  # a Monday
        if self.kind == "daily":
            return (day - anchor).days % self.interval == 0
        if self.kind == "weekly":
            monday = anchor - timedelta(days=anchor.weekday())
            return day.weekday() == self.day_of_week and ((day - monday).days // 7) % self.interval == 0
        months = (day.year - anchor.year) * 12 + day.month - anchor.month
        if months % self.interval:
            return False
        if self.kind == "absoluteMonthly":
            return day.day == self.day_of_month
        if self.kind == "relativeMonthly":
            if day.weekday() != self.day_of_week:
                return False
            if self.week_index == 5:
                return day.day + 7 > calendar.monthrange(day.year, day.month)[1]
            return (day.day - 1) // 7 + 1 == self.week_index
        return False

    def start_on(self, day: date) -> datetime:
        return datetime.combine(day, self.start_time, self.tz).astimezone(UTC)


@dataclass(frozen=True)
class MaintenanceWindow:
    """A parsed maintenance configuration. Times are UTC.

    `hour_slots`: allowed (weekday 0=Monday, hour) pairs from `timeInWeek`; `schedule`: the `maintenanceWindow`
    recurrence; `not_allowed`: blackout intervals (`notAllowedTime`, `notAllowedDates`), half-open.
    """

    name: str
    hour_slots: frozenset[tuple[int, int]] = frozenset()
    schedule: Schedule | None = None
    not_allowed: tuple[tuple[datetime, datetime], ...] = ()

    @classmethod
    def from_arm(cls, name: str, properties: Mapping[str, Any]) -> MaintenanceWindow:
        slots = frozenset(
            (_ARM_DAYS[str(item["day"]).lower()], int(hour))
            for item in properties.get("timeInWeek") or []
            if str(item.get("day", "")).lower() in _ARM_DAYS
            for hour in item.get("hourSlots") or []
        )
        blackout = [
            (_utc(span["start"]), _utc(span["end"]))
            for span in properties.get("notAllowedTime") or []
            if span.get("start") and span.get("end")
        ]
        schedule = None
        window = properties.get("maintenanceWindow")
        if window:
            schedule = _schedule(window)
            for span in window.get("notAllowedDates") or []:
                first = datetime.combine(date.fromisoformat(str(span["start"])), time(), schedule.tz)
                last = datetime.combine(date.fromisoformat(str(span["end"])), time(), schedule.tz)
                blackout.append((first.astimezone(UTC), (last + timedelta(days=1)).astimezone(UTC)))
        return cls(name=name, hour_slots=slots, schedule=schedule, not_allowed=tuple(blackout))

    def _blocked(self, moment: datetime) -> bool:
        return any(start <= moment < end for start, end in self.not_allowed)

    def allows(self, moment: datetime) -> bool:
        """True if maintenance may run at `moment` (aware datetime) under this configuration."""
        moment = moment.astimezone(UTC)
        if self._blocked(moment):
            return False
        if self.schedule is not None:
            return any(start <= moment < start + self.schedule.duration for start in self._starts_around(moment))
        return (moment.weekday(), moment.hour) in self.hour_slots

    def _starts_around(self, moment: datetime) -> Iterator[datetime]:
        assert self.schedule is not None
        local = moment.astimezone(self.schedule.tz).date()
        span = self.schedule.duration.days + 2
        for offset in range(-span, 1):
            day = local + timedelta(days=offset)
            if self.schedule.occurs_on(day):
                yield self.schedule.start_on(day)

    def next_start(self, after: datetime, horizon: timedelta = timedelta(days=800)) -> datetime:
        """The earliest moment >= `after` at which `allows()` is true; ValueError if none within `horizon`."""
        after = after.astimezone(UTC)
        candidates: list[datetime] = [after]
        candidates += [end for _, end in self.not_allowed if end > after]
        if self.schedule is not None:
            first = after.astimezone(self.schedule.tz).date() - timedelta(days=1)
            for offset in range(horizon.days + 1):
                day = first + timedelta(days=offset)
                if self.schedule.occurs_on(day):
                    candidates.append(self.schedule.start_on(day))
        elif self.hour_slots:
            hour = after.replace(minute=0, second=0, microsecond=0)
            for step in range(1, 24 * 7 * 8 + 1):
                candidates.append(hour + timedelta(hours=step))
        for candidate in sorted(c for c in candidates if after <= c <= after + horizon):
            if self.allows(candidate):
                return candidate
        raise ValueError(f"maintenance configuration {self.name!r} opens no window within {horizon.days} days")


def _utc(value: Any) -> datetime:
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _offset(text: str | None) -> timedelta:
    if not text:
        return timedelta()
    match = re.fullmatch(r"([+-])(\d{1,2}):(\d{2})", text.strip())
    if match is None:
        raise ValueError(f"invalid utcOffset {text!r}")
    delta = timedelta(hours=int(match[2]), minutes=int(match[3]))
    return -delta if match[1] == "-" else delta


def _schedule(window: Mapping[str, Any]) -> Schedule:
    raw = window.get("schedule") or {}
    hours, minutes = (int(part) for part in str(window.get("startTime", "00:00")).split(":")[:2])
    common: dict[str, Any] = {
        "duration": timedelta(hours=int(window.get("durationHours") or 4)),
        "start_time": time(hours, minutes),
        "utc_offset": _offset(window.get("utcOffset")),
        "start_date": date.fromisoformat(str(window["startDate"])) if window.get("startDate") else None,
    }
    if raw.get("daily"):
        return Schedule("daily", int(raw["daily"].get("intervalDays") or 1), **common)
    if raw.get("weekly"):
        weekly = raw["weekly"]
        day = _ARM_DAYS[str(weekly["dayOfWeek"]).lower()]
        return Schedule("weekly", int(weekly.get("intervalWeeks") or 1), day_of_week=day, **common)
    if raw.get("absoluteMonthly"):
        monthly = raw["absoluteMonthly"]
        interval = int(monthly.get("intervalMonths") or 1)
        return Schedule("absoluteMonthly", interval, day_of_month=int(monthly["dayOfMonth"]), **common)
    if raw.get("relativeMonthly"):
        monthly = raw["relativeMonthly"]
        return Schedule(
            "relativeMonthly",
            int(monthly.get("intervalMonths") or 1),
            day_of_week=_ARM_DAYS[str(monthly["dayOfWeek"]).lower()],
            week_index=_WEEK_INDEX[str(monthly["weekIndex"]).lower()],
            **common,
        )
    raise ValueError("maintenanceWindow has no recognised schedule")


def windows_allow(windows: Iterable[MaintenanceWindow], moment: datetime, name: str = "default") -> bool | None:
    """Whether the configuration called `name` allows `moment`; None when no such configuration exists."""
    for window in windows:
        if window.name.lower() == name.lower():
            return window.allows(moment)
    return None
