"""What the worker runs: each durable queue of the store seen as jobs, one Prefect flow run each.

A job names its deployment, its flow run (name, tags, parameters) and an idempotency key, so a job claimed
again after a crash gets the same flow run rather than a second one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Protocol

from fulfillment.domain import OrderStatus
from fulfillment.ports import FailureAnnouncer, InventoryEventInbox, OrderRepository, SagaOutbox


@dataclass(frozen=True)
class Job:
    key: str
    attempts: int
    deployment: str
    run_name: str
    parameters: dict[str, Any]
    tags: tuple[str, ...] = ()
    trace_parent: str | None = None  # continues the entry point's trace in the flow run


class JobNotFinished(Exception):
    """The job's flow run ended without finishing the job: it is released and tried again later."""


class JobSource(Protocol):
    async def claim(self, worker_id: str, limit: int, lease: timedelta) -> list[Job]: ...

    async def needs_run(self, job: Job) -> bool:
        """False when an earlier run already did the work and only `done` is left (e.g. an announcement)."""
        ...

    async def renew(self, worker_id: str, keys: Sequence[str], lease: timedelta) -> None: ...

    async def release(self, worker_id: str, key: str, error: str, retry_in: timedelta) -> None: ...

    async def started(self, job: Job, flow_run_id: str) -> None: ...

    async def done(self, key: str, flow_run_completed: bool) -> None:
        """Lets go of a job whose flow run has ended; raises `JobNotFinished` if it must run again."""
        ...


class SagaJobs:
    """Orders waiting in the outbox → `order-saga` runs named `order-<id>`, tagged with the customer id.

    A failed order is announced (`FailureAnnouncer`) before its outbox entry is done: if the announcement
    fails, the job is retried, the re-run saga changes nothing, and the announcement is tried again.
    """

    def __init__(self, outbox: SagaOutbox, orders: OrderRepository, failures: FailureAnnouncer):
        self._outbox, self._orders, self._failures = outbox, orders, failures

    async def claim(self, worker_id: str, limit: int, lease: timedelta) -> list[Job]:
        entries = await self._outbox.claim(worker_id, limit=limit, lease=lease)
        orders = await self._orders.get_many([entry.order_id for entry in entries])
        return [Job(key=entry.order_id, attempts=entry.attempts, deployment="order-saga",
                    run_name=f"order-{entry.order_id}", parameters={"order_id": entry.order_id},
                    tags=(order.customer_id,) if order else (), trace_parent=order.trace_parent if order else None)
                for entry, order in zip(entries, orders, strict=True)]

    async def needs_run(self, job: Job) -> bool:
        return not (await self._orders.get(job.key)).status.is_terminal

    async def renew(self, worker_id: str, keys: Sequence[str], lease: timedelta) -> None:
        await self._outbox.renew(worker_id, keys, lease=lease)

    async def release(self, worker_id: str, key: str, error: str, retry_in: timedelta) -> None:
        await self._outbox.release(worker_id, key, error=error, retry_in=retry_in)

    async def started(self, job: Job, flow_run_id: str) -> None:
        await self._orders.update(job.key, lambda order: order.attach_flow_run(flow_run_id))

    async def done(self, key: str, flow_run_completed: bool) -> None:
        """The order's status, not the flow run's, says whether the saga is over (a failed saga's run fails)."""
        order = await self._orders.get(key)
        if not order.status.is_terminal:
            raise JobNotFinished(f"the saga of order {key} stopped at {order.status}")
        if order.status is OrderStatus.FAILED:
            await self._failures.order_failed(order)
        await self._outbox.done(key)


class InventoryEventJobs:
    """Inventory events waiting in the inbox → `inventory-event` runs named `inventory-<productId>`."""

    def __init__(self, inbox: InventoryEventInbox):
        self._inbox = inbox

    async def claim(self, worker_id: str, limit: int, lease: timedelta) -> list[Job]:
        return [Job(key=event.event_id, attempts=attempts, deployment="inventory-event",
                    run_name=f"inventory-{event.product_id}", parameters={"event": asdict(event)},
                    tags=(event.event_type,), trace_parent=event.trace_parent)
                for event, attempts in await self._inbox.claim(worker_id, limit=limit, lease=lease)]

    async def needs_run(self, job: Job) -> bool:
        return True

    async def renew(self, worker_id: str, keys: Sequence[str], lease: timedelta) -> None:
        await self._inbox.renew(worker_id, keys, lease=lease)

    async def release(self, worker_id: str, key: str, error: str, retry_in: timedelta) -> None:
        await self._inbox.release(worker_id, key, error=error, retry_in=retry_in)

    async def started(self, job: Job, flow_run_id: str) -> None:
        pass

    async def done(self, key: str, flow_run_completed: bool) -> None:
        if not flow_run_completed:
            raise JobNotFinished(f"inventory event {key} was not applied")
        await self._inbox.done(key)
