"""The rotation queue (base64 messages, delayed re-queue) and its poison queue.

The Functions host's queue trigger reads messages base64-encoded (host.json `extensions.queues.messageEncoding`
defaults to base64), so everything written here is base64 of the UTF-8 JSON text (`TextBase64EncodePolicy`) and
everything read is decoded the same way. Message bodies never carry secrets (the producer's duty); they are
still never logged here.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient, QueueServiceClient

from shared.azure import StorageResource, queue_service
from shared.settings import Settings

MAX_DELAY_SECONDS = 7 * 24 * 3600  # the service's visibility-timeout ceiling
MAX_BATCH = 32  # the service's ceiling for one receive/peek
DEFAULT_TTL_SECONDS = 7 * 24 * 3600  # the service default; extended so a delayed message never expires unseen


@dataclass(frozen=True)
class Received:
    """A message taken off a queue (invisible to others until `visibility_timeout` elapses or it is deleted).

    `body` is the decoded text. `valid_encoding` is False when the message on the wire was not base64 of UTF-8
    (something other than this product wrote it); `body` is then the raw text and the message should be
    poisoned rather than processed.
    """

    id: str
    pop_receipt: str
    body: str
    dequeue_count: int
    inserted_on: datetime | None
    valid_encoding: bool = True


@dataclass(frozen=True)
class Peeked:
    """A message looked at without taking it (no pop receipt)."""

    id: str
    body: str
    dequeue_count: int
    inserted_on: datetime | None
    valid_encoding: bool = True


def encode(text: str) -> str:
    """What goes on the wire for `text` (base64 of UTF-8), identical to `TextBase64EncodePolicy`."""
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def decode(wire: str) -> tuple[str, bool]:
    """(text, True) for base64 of UTF-8; (wire, False) for anything else."""
    try:
        return base64.b64decode(wire.encode("ascii"), validate=True).decode("utf-8"), True
    except (binascii.Error, UnicodeError, ValueError):
        return wire, False


class RotationQueues(StorageResource):
    """The rotation queue and its poison queue. Use as an async context manager (closes the clients).

    `credential` is used only for identity-based storage; when omitted the product credential is built from
    settings (and closed with this object).
    """

    def __init__(self, settings: Settings, credential: AsyncTokenCredential | None = None) -> None:
        super().__init__(settings, credential)
        self._service: QueueServiceClient = queue_service(settings, self._credential)
        # Encode with the SDK's policy; decode ourselves so one foreign message cannot break a whole receive.
        self._queue: QueueClient = self._client(settings.rotation_queue)
        self._poison: QueueClient = self._client(settings.poison_queue)

    def _client(self, name: str) -> QueueClient:
        return self._service.get_queue_client(name, message_encode_policy=TextBase64EncodePolicy())

    @property
    def queue_name(self) -> str:
        return self.settings.rotation_queue

    @property
    def poison_name(self) -> str:
        return self.settings.poison_queue

    def _clients(self) -> tuple[Any, ...]:
        return (self._queue, self._poison, self._service)

    async def ensure(self) -> None:
        """Create the rotation and poison queues if they do not exist."""
        for client in (self._queue, self._poison):
            with contextlib.suppress(ResourceExistsError):
                await client.create_queue()

    async def send(self, message_json: str, delay_seconds: int = 0) -> str:
        """Enqueue `message_json`, invisible for `delay_seconds` (capped at 7 days). Returns the message id."""
        if delay_seconds < 0:
            raise ValueError("delay_seconds must not be negative")
        delay = min(delay_seconds, MAX_DELAY_SECONDS)
        sent = await self._queue.send_message(
            message_json,
            visibility_timeout=delay or None,
            time_to_live=DEFAULT_TTL_SECONDS + delay,
        )
        return str(sent.id)

    async def receive(self, max_messages: int = 1, visibility_timeout: int = 30) -> list[Received]:
        """Take up to `max_messages` (1-32) visible messages, hiding them for `visibility_timeout` seconds."""
        if not 1 <= max_messages <= MAX_BATCH:
            raise ValueError(f"max_messages must be 1-{MAX_BATCH}")
        received: list[Received] = []
        pager = self._queue.receive_messages(
            messages_per_page=max_messages, max_messages=max_messages, visibility_timeout=visibility_timeout
        )
        async for message in pager:
            body, ok = decode(_wire_text(message.content))
            received.append(
                Received(
                    id=message.id,
                    pop_receipt=str(message.pop_receipt),
                    body=body,
                    dequeue_count=int(message.dequeue_count or 0),
                    inserted_on=message.inserted_on,
                    valid_encoding=ok,
                )
            )
        return received

    async def delete(self, received: Received) -> None:
        """Remove a received message for good (it was handled)."""
        await self._queue.delete_message(received.id, received.pop_receipt)

    async def release(self, received: Received, delay_seconds: int) -> None:
        """Make a received message visible again after `delay_seconds` (the host's retry of a failed delivery)."""
        await self._queue.update_message(
            received.id, received.pop_receipt, visibility_timeout=max(0, min(delay_seconds, MAX_DELAY_SECONDS))
        )

    async def hold(self, received: Received, seconds: int = 30) -> Received:
        """Keep a received message invisible `seconds` longer; the answer carries the new pop receipt. Raises the
        service's error when `received`'s receipt is stale (the message was received again, or deleted)."""
        updated = await self._queue.update_message(received.id, received.pop_receipt, visibility_timeout=seconds)
        return dataclasses.replace(received, pop_receipt=str(updated.pop_receipt))

    async def poison(self, body: str) -> str:
        """Put `body` on the poison queue (same encoding as the host uses). Returns the message id."""
        sent = await self._poison.send_message(body, time_to_live=-1)
        return str(sent.id)

    async def peek_poison(self, n: int = MAX_BATCH) -> list[Peeked]:
        """Up to `n` (1-32) poison messages, without changing their visibility."""
        return await self._peek(self._poison, n)

    async def peek(self, n: int = MAX_BATCH) -> list[Peeked]:
        """Up to `n` (1-32) visible rotation messages, without changing their visibility."""
        return await self._peek(self._queue, n)

    @staticmethod
    async def _peek(client: QueueClient, n: int) -> list[Peeked]:
        if not 1 <= n <= MAX_BATCH:
            raise ValueError(f"n must be 1-{MAX_BATCH}")
        peeked: list[Peeked] = []
        for message in await client.peek_messages(max_messages=n):
            body, ok = decode(_wire_text(message.content))
            peeked.append(
                Peeked(
                    id=message.id,
                    body=body,
                    dequeue_count=int(message.dequeue_count or 0),
                    inserted_on=message.inserted_on,
                    valid_encoding=ok,
                )
            )
        return peeked

    async def approximate_counts(self) -> dict[str, int]:
        """`{"rotation": n, "poison": m}`: approximate message counts (including invisible messages)."""
        counts: dict[str, int] = {}
        for key, client in (("rotation", self._queue), ("poison", self._poison)):
            props = await client.get_queue_properties()
            counts[key] = int(props.approximate_message_count or 0)
        return counts


def _wire_text(content: Any) -> str:
    if isinstance(content, bytes):
        return content.decode("ascii", errors="replace")
    return "" if content is None else str(content)


QueuesFactory = Callable[[Settings, AsyncTokenCredential | None], "RotationQueues"]


def _real(settings: Settings, credential: AsyncTokenCredential | None) -> RotationQueues:
    return RotationQueues(settings, credential)


_factory: QueuesFactory = _real


def open_queues(settings: Settings, credential: AsyncTokenCredential | None = None) -> RotationQueues:
    """The rotation queue client every producer and consumer uses (a simulation substitutes one whose delays run
    on simulated time: Azurite's visibility timeouts run on the wall clock)."""
    return _factory(settings, credential)


@contextlib.contextmanager
def substitute(factory: QueuesFactory) -> Iterator[None]:
    """Use `factory` for `open_queues` within the block (tests and simulations)."""
    global _factory
    previous, _factory = _factory, factory
    try:
        yield
    finally:
        _factory = previous
