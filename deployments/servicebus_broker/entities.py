"""Queues, their dead-letter queues and message locks: the Service Bus semantics, without any AMQP.

Only the broker's event thread touches these objects.
"""

from __future__ import annotations

import heapq
import time
import uuid
from collections import Counter
from dataclasses import dataclass

from deployments.servicebus_broker.amqp import StoredMessage

DEAD_LETTER_SUFFIX = "/$deadletterqueue"


class LockLost(Exception):
    """The lock token is unknown or its lock has expired (`com.microsoft:message-lock-lost`)."""


class EntityNotFound(Exception):
    pass


@dataclass
class Lock:
    token: uuid.UUID
    queue: Queue
    message: StoredMessage
    locked_until: float  # epoch seconds
    holder: str  # the name of the receiver the message was delivered to


class Queue:
    def __init__(self, name: str):
        self.name = name
        self._available: list[tuple[int, StoredMessage]] = []  # a heap by sequence number

    def put(self, message: StoredMessage) -> None:
        heapq.heappush(self._available, (message.sequence_number, message))

    def take(self) -> StoredMessage | None:
        return heapq.heappop(self._available)[1] if self._available else None

    def __len__(self) -> int:
        return len(self._available)

    def clear(self) -> None:
        self._available.clear()


class Namespace:
    """Queues by lower-cased name (`orders`, `orders/$deadletterqueue`), with peek-lock semantics."""

    def __init__(self, queue_names: list[str], *, lock_duration: float, max_delivery_count: int):
        self.lock_duration = lock_duration
        self.max_delivery_count = max_delivery_count
        self.queues: dict[str, Queue] = {}
        for name in queue_names:
            for entity in (name.lower(), name.lower() + DEAD_LETTER_SUFFIX):
                self.queues[entity] = Queue(entity)
        self.locks: dict[uuid.UUID, Lock] = {}
        self.stats: Counter[str] = Counter()
        self.deliveries_by_receiver: Counter[str] = Counter()
        self._sequence = 0

    def queue(self, entity: str) -> Queue:
        try:
            return self.queues[entity]
        except KeyError:
            raise EntityNotFound(f"the messaging entity '{entity}' could not be found") from None

    def next_sequence_number(self) -> int:
        self._sequence += 1
        return self._sequence

    def lock_next(self, queue: Queue, receiver: str) -> Lock | None:
        message = queue.take()
        if message is None:
            return None
        lock = Lock(uuid.uuid4(), queue, message, time.time() + self.lock_duration, receiver)
        self.locks[lock.token] = lock
        self.delivered(receiver)
        return lock

    def delivered(self, receiver: str) -> None:
        self.stats["deliveries"] += 1
        self.deliveries_by_receiver[receiver] += 1

    def complete(self, token: uuid.UUID) -> None:
        self._unlock(token)
        self.stats["completed"] += 1

    def abandon(self, token: uuid.UUID) -> None:
        lock = self._unlock(token)
        self.stats["abandoned"] += 1
        self._redeliver(lock.queue, lock.message.redelivered())

    def release(self, token: uuid.UUID) -> None:
        """Gives the message back without counting a delivery attempt (a receiver closing with credit left)."""
        lock = self._unlock(token)
        self.stats["released"] += 1
        lock.queue.put(lock.message)

    def dead_letter(self, token: uuid.UUID, reason: str, description: str) -> None:
        lock = self._unlock(token)
        self.stats["dead_lettered"] += 1
        self._dead_letter(lock.queue, lock.message, reason, description)

    def renew(self, token: uuid.UUID) -> float:
        lock = self._held(token)
        lock.locked_until = time.time() + self.lock_duration
        self.stats["renewals"] += 1
        return lock.locked_until

    def expire_locks(self) -> set[Queue]:
        """Returns the messages of expired locks to their queues; the queues that got messages back."""
        now = time.time()
        expired = [lock for lock in self.locks.values() if lock.locked_until <= now]
        for lock in expired:
            del self.locks[lock.token]
            self.stats["lock_expired"] += 1
            self._redeliver(lock.queue, lock.message.redelivered())
        return {lock.queue for lock in expired}

    def purge(self) -> None:
        for queue in self.queues.values():
            queue.clear()
        self.locks.clear()
        self.stats.clear()
        self.deliveries_by_receiver.clear()

    def counts(self) -> dict[str, int]:
        """Messages available per queue, and `locked` for those held by a receiver."""
        return {**{name: len(queue) for name, queue in self.queues.items()}, "locked": len(self.locks)}

    def locked_message_ids(self) -> dict[str, list[str | None]]:
        held: dict[str, list[str | None]] = {}
        for lock in self.locks.values():
            held.setdefault(lock.holder, []).append(lock.message.message_id)
        return held

    def _held(self, token: uuid.UUID) -> Lock:
        lock = self.locks.get(token)
        if lock is None or lock.locked_until <= time.time():
            raise LockLost(f"the lock {token} is lost: it expired or the message was settled")
        return lock

    def _unlock(self, token: uuid.UUID) -> Lock:
        lock = self._held(token)
        del self.locks[token]
        return lock

    def _redeliver(self, queue: Queue, message: StoredMessage) -> None:
        if message.delivery_count >= self.max_delivery_count:
            self._dead_letter(queue, message, "MaxDeliveryCountExceeded",
                              f"Message could not be consumed after {self.max_delivery_count} delivery attempts.")
        else:
            queue.put(message)

    def _dead_letter(self, queue: Queue, message: StoredMessage, reason: str, description: str) -> None:
        dead_letter_queue = self.queues.get(queue.name + DEAD_LETTER_SUFFIX, queue)  # a DLQ keeps its own
        dead_letter_queue.put(message.dead_lettered(queue.name, reason, description))
