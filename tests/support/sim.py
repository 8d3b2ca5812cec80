"""A discrete-event simulation of the Functions host: the real handlers, the real emulator and Azurite, simulated time.

Only time is simulated. The product's clock (`shared.clock`) and the emulator's clock move together; the rotation
queue keeps its messages in simulated time (a delay of three days is three simulated days), because Azurite's
visibility timeouts run on the wall clock. Everything else is real: the row store, the audit, the leases (Azurite),
Entra, ARM/AKS, Graph and Key Vault (the emulator), through the real SDKs.

What the host does, and the simulation with it:
* the timer fires on `ROTATION_SCHEDULE` (NCRONTAB, UTC) and runs `shards.run_scheduled`, as function_app.py does
  (an estate over SCAN_SHARD_SUBSCRIPTIONS: its shard messages are then handled as `scan_shard` would);
* a queue message becomes visible at its delay; a failed delivery comes back after host.json's
  `visibilityTimeout` and goes to the poison queue after `maxDequeueCount` (then `handle_poison` runs) — this is
  `rotation.drain`, the same loop `aks-rotator worker` runs;
* Key Vault raises `SecretNearExpiry` 30 days before the `exp` of a secret's latest version and `SecretExpired`
  at `exp` (Event Grid schema, to `events.handle_event`);
* world events (callables at given instants) change the estate through the emulator's control surface.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from emulator.sandbox import EmulatorControl
from shared import clock, events, queues, rotation, shards
from shared.messages import RotationMessage
from shared.queues import Peeked, Received, encode
from shared.record import RotationRecord
from shared.rotation import Deps
from shared.settings import Settings
from shared.store import RotationStore
from shared.vault import MANAGED_BY, MANAGED_BY_TAG
from tests.support.invariants import check_state, check_stuck

HOST_JSON = json.loads((Path(__file__).resolve().parents[2] / "host.json").read_text())
_QUEUES = HOST_JSON["extensions"]["queues"]
MAX_DEQUEUE_COUNT: int = _QUEUES["maxDequeueCount"]
VISIBILITY_TIMEOUT = int(
    sum(int(p) * m for p, m in zip(_QUEUES["visibilityTimeout"].split(":"), (3600, 60, 1), strict=True))
)
NEAR_EXPIRY_DAYS = 30  # Key Vault raises SecretNearExpiry 30 days before exp
TOKEN_REFRESH = timedelta(minutes=30)  # reopen clients before the emulator's one-hour tokens expire in sim time


# -- time ------------------------------------------------------------------------------------------------------
class SimClock:
    """Product time = the emulator's time: wall clock + an offset both advance together."""

    def __init__(self, emulator: EmulatorControl) -> None:
        self.emulator = emulator
        emulator_now = datetime.fromisoformat(emulator.state()["now"].replace("Z", "+00:00"))
        self.offset = (emulator_now - datetime.now(UTC)).total_seconds()

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    def advance_to(self, moment: datetime) -> None:
        seconds = (moment - self.now()).total_seconds()
        if seconds > 0:
            self.emulator.advance(seconds)
            self.offset += seconds


_FIELD_RANGES = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6))  # sec min hour day month day-of-week


def _field(text: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if body == "*":
            start, end = low, high
        elif "-" in body:
            start, end = (int(x) for x in body.split("-", 1))
        else:
            start = end = int(body)
        values.update(range(start, end + 1, step))
    return values


def next_fire(schedule: str, after: datetime) -> datetime:
    """The next instant after `after` that the six-field NCRONTAB `schedule` (UTC) fires."""
    fields = [_field(text, lo, hi) for text, (lo, hi) in zip(schedule.split(), _FIELD_RANGES, strict=True)]
    seconds, minutes, hours, days, months, weekdays = fields
    moment = after.replace(microsecond=0) + timedelta(seconds=1)
    for _ in range(366 * 24 * 60):  # minute steps over a year at most
        cron_weekday = (moment.weekday() + 1) % 7  # NCRONTAB: 0 = Sunday
        if moment.month in months and moment.day in days and cron_weekday in weekdays and moment.hour in hours:
            if moment.minute in minutes:
                later = [s for s in sorted(seconds) if s >= moment.second]
                if later:
                    return moment.replace(second=later[0])
            moment = moment.replace(second=0) + timedelta(minutes=1)
        else:
            moment = moment.replace(minute=0, second=0) + timedelta(hours=1)
    raise ValueError(f"{schedule!r} does not fire within a year")


# -- the queue in simulated time ---------------------------------------------------------------------------------
@dataclass
class _Message:
    id: str
    body: str
    visible_at: datetime
    inserted_on: datetime
    dequeue_count: int = 0
    pop_receipt: str = ""


class SimQueues:
    """`RotationQueues` with visibility on the simulated clock (one instance shared by every producer/consumer)."""

    def __init__(self, now: Callable[[], datetime], name: str = "rotations") -> None:
        self._now = now
        self._name = name
        self.messages: dict[str, _Message] = {}
        self.poisoned: list[str] = []
        self.sent = 0

    # the RotationQueues surface
    @property
    def queue_name(self) -> str:
        return self._name

    @property
    def poison_name(self) -> str:
        return f"{self._name}-poison"

    async def __aenter__(self) -> SimQueues:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ensure(self) -> None:
        return None

    async def send(self, message_json: str, delay_seconds: int = 0) -> str:
        now = self._now()
        message = _Message(uuid.uuid4().hex, message_json, now + timedelta(seconds=delay_seconds), now)
        self.messages[message.id] = message
        self.sent += 1
        return message.id

    async def receive(self, max_messages: int = 1, visibility_timeout: int = 30) -> list[Received]:
        now = self._now()
        visible = sorted((m for m in self.messages.values() if m.visible_at <= now), key=lambda m: m.visible_at)
        out = []
        for message in visible[:max_messages]:
            message.dequeue_count += 1
            message.pop_receipt = uuid.uuid4().hex
            message.visible_at = now + timedelta(seconds=visibility_timeout)
            out.append(
                Received(message.id, message.pop_receipt, message.body, message.dequeue_count, message.inserted_on)
            )
        return out

    async def delete(self, received: Received) -> None:
        message = self.messages.get(received.id)
        if message is not None and message.pop_receipt == received.pop_receipt:
            del self.messages[received.id]

    async def release(self, received: Received, delay_seconds: int) -> None:
        message = self.messages.get(received.id)
        if message is not None and message.pop_receipt == received.pop_receipt:
            message.visible_at = self._now() + timedelta(seconds=delay_seconds)

    async def hold(self, received: Received, seconds: int = 30) -> Received:
        message = self.messages.get(received.id)
        if message is None or message.pop_receipt != received.pop_receipt:
            raise ResourceNotFoundError("The specified message does not exist.")  # as the service (a stale receipt)
        message.pop_receipt = uuid.uuid4().hex
        message.visible_at = self._now() + timedelta(seconds=seconds)
        return dataclasses.replace(received, pop_receipt=message.pop_receipt)

    async def poison(self, body: str) -> str:
        self.poisoned.append(body)
        return uuid.uuid4().hex

    async def peek(self, n: int = 32) -> list[Peeked]:
        return [Peeked(m.id, m.body, m.dequeue_count, m.inserted_on) for m in list(self.messages.values())[:n]]

    async def peek_poison(self, n: int = 32) -> list[Peeked]:
        return [Peeked(str(i), body, 0, None) for i, body in enumerate(self.poisoned[:n])]

    async def approximate_counts(self) -> dict[str, int]:
        return {self.queue_name: len(self.messages), self.poison_name: len(self.poisoned)}

    def next_visible(self) -> datetime | None:
        return min((m.visible_at for m in self.messages.values()), default=None)

    @staticmethod
    def wire(body: str) -> str:
        return encode(body)


# -- alerts ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Alert:
    at: datetime  # simulated time
    event: str
    message: str
    fields: dict[str, Any]


class AlertLog(logging.Handler):
    """Every alert-level record (alert=True) with the simulated time it was raised at."""

    _STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def __init__(self, now: Callable[[], datetime]) -> None:
        super().__init__(logging.DEBUG)
        self._now = now
        self.alerts: list[Alert] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "alert", False):
            fields = {k: v for k, v in record.__dict__.items() if k not in self._STANDARD}
            self.alerts.append(Alert(self._now(), str(getattr(record, "event", "")), record.getMessage(), fields))

    def about(self, cluster_id: str) -> list[Alert]:
        key = cluster_id.lower()
        return [a for a in self.alerts if str(a.fields.get("cluster_id", "")).lower() == key]


# -- the host --------------------------------------------------------------------------------------------------
WorldEvent = Callable[["Simulation"], Awaitable[None] | None]
_KeyVaultEvent = tuple[datetime, str, str, str, str, int]  # when, event type, vault, secret name, version, exp


@dataclass(order=True)
class _Scheduled:
    at: datetime
    seq: int
    action: WorldEvent = field(compare=False)
    label: str = field(compare=False, default="")


class Simulation:
    """Run the product's triggers against the emulator + Azurite over simulated days."""

    def __init__(
        self,
        emulator: EmulatorControl,
        settings: Settings,
        *,
        keyvault_events: bool = True,
        workers: int = 4,
        sdk_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.emulator = emulator
        self.settings = settings
        self.clock = SimClock(emulator)
        self.queues = SimQueues(self.clock.now, settings.rotation_queue)
        self.alerts = AlertLog(self.clock.now)
        self.keyvault_events = keyvault_events
        self.workers = workers
        self.sdk_kwargs = sdk_kwargs or {"retry_total": 0}
        self.scans: list[tuple[datetime, str]] = []  # (when, outcome)
        self.events_sent: set[tuple[str, str]] = set()  # (version, event type)
        self.deliveries = 0
        self._world: list[_Scheduled] = []
        self._seq = itertools.count()
        self.log: list[str] = []  # what happened, for a failure message
        self.initial: dict[str, Any] | None = None
        self.seed: int | None = None
        self._vault_read: tuple[int, list[_KeyVaultEvent]] | None = None  # (keyvault mutations, every event)

    def now(self) -> datetime:
        return self.clock.now()

    def at(self, moment: datetime, action: WorldEvent, label: str = "") -> None:
        """Schedule a world event (it runs before the product's work at that instant)."""
        heapq.heappush(self._world, _Scheduled(moment, next(self._seq), action, label))

    def after(self, delay: timedelta, action: WorldEvent, label: str = "") -> None:
        self.at(self.now() + delay, action, label)

    @contextlib.contextmanager
    def _installed(self) -> Iterator[None]:
        root = logging.getLogger()
        root.addHandler(self.alerts)
        with clock.use(self.clock.now), queues.substitute(lambda _settings, _credential=None: self.queues):
            try:
                yield
            finally:
                root.removeHandler(self.alerts)

    async def run(self, duration: timedelta) -> None:
        """Advance through `duration` of simulated time, doing at each instant what the host would."""
        if self.initial is None:
            self.initial = self.emulator.state()
        self._vault_read = None  # the test may have changed the estate between runs
        with self._installed():
            await self._loop(self.now() + duration)

    async def settle(self, limit: timedelta, step: timedelta = timedelta(hours=1)) -> None:
        """Run on until the queue is empty (what was started has ended or is parked on nothing), at most `limit`:
        a bounded run ends between rotations, not inside one."""
        end = self.now() + limit
        while self.queues.messages and self.now() < end:
            await self.run(min(step, end - self.now()))

    async def submit(self, messages: Sequence[RotationMessage]) -> list[rotation.SubmitResult]:
        """Queue `messages` as a producer does (`rotation.submit`: dedup, record), on the simulated queue and clock."""
        with self._installed():
            async with RotationStore(self.settings) as store:
                await store.ensure()
                rotations = queues.open_queues(self.settings)  # this simulation's queue
                return [await rotation.submit(self.settings, m, store=store, queues=rotations) for m in messages]

    def world(self, event: str, **body: Any) -> WorldEvent:
        """A world event for `at`/`after`: `POST /_emulator/world/{event}` (docs/emulator.md, "World events")."""

        def act(sim: Simulation) -> None:
            sim.emulator.world(event, **body)

        return act

    def check(self, records: Mapping[str, RotationRecord]) -> None:
        """The whole promise over the whole estate, at the end of a run (tests/support/invariants.py)."""
        state = self.emulator.state()
        found = check_state(state, records, alerts=self.alerts.alerts, before=self.initial)
        found.problems += check_stuck(records, self.alerts.alerts, now=self.now(), settings=self.settings).problems
        assert not found.problems, self.explain(found.problems)

    def explain(self, problems: Sequence[str]) -> str:
        tail = "\n  ".join(self.log[-60:])
        return f"the promise broke (seed {self.seed}):\n- " + "\n- ".join(problems[:30]) + f"\nlast events:\n  {tail}"

    async def _loop(self, end: datetime) -> None:
        next_timer = next_fire(self.settings.rotation_schedule, self.now())
        deps_cm: contextlib.AbstractAsyncContextManager[Deps] | None = None
        deps: Deps | None = None
        opened_at = self.now()
        try:
            while True:
                candidates = [next_timer, end]
                if (visible := self.queues.next_visible()) is not None:
                    candidates.append(visible)
                if self._world:
                    candidates.append(self._world[0].at)
                if self.keyvault_events and (kv := self._next_keyvault_event()) is not None:
                    candidates.append(kv[0])
                moment = min(candidates)
                if moment >= end and moment != visible:
                    self.clock.advance_to(end)
                    return
                self.clock.advance_to(moment)
                while self._world and self._world[0].at <= self.now():
                    item = heapq.heappop(self._world)
                    self.log.append(f"{self.now():%Y-%m-%d %H:%M} world: {item.label}")
                    self._vault_read = None  # a world event may change Key Vault without a Key Vault request
                    result = item.action(self)
                    if asyncio.iscoroutine(result):
                        await result
                if self.now() >= next_timer:
                    await self._timer()
                    next_timer = next_fire(self.settings.rotation_schedule, self.now())
                if self.keyvault_events:
                    await self._keyvault_events()
                if (visible := self.queues.next_visible()) is None or visible > self.now():
                    if self.now() >= end:
                        return
                    continue  # nothing to deliver: no clients to open (most instants of a long run)
                if deps is None or self.now() - opened_at > TOKEN_REFRESH:
                    if deps_cm is not None:
                        await deps_cm.__aexit__(None, None, None)
                    deps_cm = Deps.open(self.settings, sdk_kwargs=self.sdk_kwargs, graph_attempts=2)
                    deps = await deps_cm.__aenter__()
                    deps.sleep = self._sleep
                    opened_at = self.now()
                report = await rotation.drain(
                    self.settings,
                    deps=deps,
                    batch_size=self.workers,
                    visibility_timeout=600,
                    retry_delay_seconds=VISIBILITY_TIMEOUT,
                )
                self.deliveries += report.received
                if report.received:
                    self.log.append(f"{self.now():%Y-%m-%d %H:%M} deliveries {report.received}: {report.actions}")
                if self.now() >= end:
                    return
        finally:
            if deps_cm is not None:
                await deps_cm.__aexit__(None, None, None)

    async def _sleep(self, seconds: float) -> None:
        """The engine's in-invocation waits pass simulated time."""
        self.clock.advance_to(self.now() + timedelta(seconds=seconds))

    async def _timer(self) -> None:
        try:
            report = await shards.run_scheduled(self.settings)  # what function_app.scan_estate runs
            if report is None:  # sharded: the host hands each shard message to function_app.scan_shard
                report = await shards.drain(self.settings)
            outcome = f"ok: {report.by_action()}"
        except Exception as exc:  # the host records a failed invocation; the next schedule tries again
            outcome = f"failed: {type(exc).__name__}: {exc}"
        self.scans.append((self.now(), outcome))
        self.log.append(f"{self.now():%Y-%m-%d %H:%M} scan {outcome}")

    # Key Vault events: SecretNearExpiry 30 days before exp of a secret's latest version, SecretExpired at exp.
    def _keyvault_schedule(self) -> list[_KeyVaultEvent]:
        """The events not sent yet. The vault is read again only after a Key Vault write (the emulator's count of
        `mutations.keyvault`) or a world event: reading the whole truth at every instant dominated long runs."""
        writes = self.emulator.requests().get("mutations.keyvault", 0)
        if self._vault_read is None or self._vault_read[0] != writes:
            self._vault_read = (writes, self._read_keyvault_events())
        return [event for event in self._vault_read[1] if (event[4], event[1]) not in self.events_sent]

    def _read_keyvault_events(self) -> list[_KeyVaultEvent]:
        out = []
        for vault in self.emulator.state()["vaults"]:
            for name, versions in vault["secrets"].items():
                if not versions:
                    continue
                latest = max(versions, key=lambda v: (v.get("created") or 0, v["version"]))
                tags = latest.get("tags") or {}
                if tags.get(MANAGED_BY_TAG) != MANAGED_BY or not latest.get("exp") or not latest.get("enabled", True):
                    continue
                exp = datetime.fromtimestamp(latest["exp"], tz=UTC)
                for when, kind in ((exp - timedelta(days=NEAR_EXPIRY_DAYS), events.NEAR_EXPIRY), (exp, events.EXPIRED)):
                    out.append((when, kind, vault["name"], name, latest["version"], int(latest["exp"])))
        return sorted(out)

    def _next_keyvault_event(self) -> _KeyVaultEvent | None:
        schedule = self._keyvault_schedule()
        return schedule[0] if schedule else None

    async def _keyvault_events(self) -> None:
        for when, kind, vault, name, version, exp in self._keyvault_schedule():
            if when > self.now():
                break
            self.events_sent.add((version, kind))
            doc = keyvault_event(kind, vault, name, version, exp)
            outcome = await events.handle_event(self.settings, json.dumps(doc).encode())  # as the queue has it
            self.log.append(f"{self.now():%Y-%m-%d %H:%M} keyvault {kind.rsplit('.', 1)[-1]} {name}: {outcome.action}")


def keyvault_event(kind: str, vault: str, name: str, version: str, exp: int) -> dict[str, Any]:
    """An Event Grid schema event as Key Vault sends it (docs/emulator.md, "Key Vault events")."""
    topic = f"/subscriptions/{uuid.UUID(int=0)}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{vault}"
    return {
        "id": str(uuid.uuid4()),
        "topic": topic,
        "subject": name,
        "eventType": kind,
        "eventTime": datetime.now(UTC).isoformat(),
        "data": {
            "Id": f"https://{vault}.vault.azure.net/secrets/{name}/{version}",
            "VaultName": vault,
            "ObjectType": "Secret",
            "ObjectName": name,
            "Version": version,
            "NBF": None,
            "EXP": exp,
        },
        "dataVersion": "1",
        "metadataVersion": "1",
    }
