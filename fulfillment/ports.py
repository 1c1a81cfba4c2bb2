"""Ports: what the service layer needs from the outside world, named by role.

Adapters in `fulfillment.adapters` implement these, one technology per module; `bootstrap` picks them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Protocol

from fulfillment.domain import Order, OrderItem


@dataclass(frozen=True)
class Page:
    orders: list[Order]
    next_cursor: str | None  # opaque; None on the last page


class OrderRepository(Protocol):
    """Orders with their saga state. Adding an order also enqueues its saga (see `SagaOutbox`)."""

    async def add(self, order: Order, *, idempotency_key: str | None = None) -> Order:
        """Stores `order` and enqueues its saga in one atomic write.

        With an `idempotency_key` already seen (e.g. a redelivered message id), nothing is written and the
        order stored the first time is returned.
        """
        ...

    async def get(self, order_id: str) -> Order:
        """Raises `OrderNotFound`."""
        ...

    async def get_many(self, order_ids: Sequence[str]) -> list[Order | None]:
        """Orders in the same positions as `order_ids`, None where unknown (for DataLoaders)."""
        ...

    async def list_by_customer(self, customer_id: str, *, limit: int, cursor: str | None = None) -> Page:
        """A customer's orders, newest first."""
        ...

    async def update(self, order_id: str, change: Callable[[Order], None]) -> Order:
        """Applies `change` to the stored order without losing a concurrent writer's change.

        `change` may be called more than once (it is re-applied to a fresh read after a conflict), so it must
        only mutate the order it is given. Raises `OrderNotFound`.
        """
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class OutboxEntry:
    order_id: str
    attempts: int  # claims so far, this one included


class SagaOutbox(Protocol):
    """Orders whose saga is still to be run, so no stored order is left without one.

    Entries are written by `OrderRepository.add` in the same transaction as the order; a worker claims them
    with a lease, starts the saga, and marks them done when the saga is over. A claim whose lease runs out
    (the worker died) is claimed again.
    """

    async def claim(self, worker_id: str, *, limit: int, lease: timedelta) -> list[OutboxEntry]: ...

    async def renew(self, worker_id: str, order_ids: Sequence[str], *, lease: timedelta) -> None: ...

    async def release(self, worker_id: str, order_id: str, *, error: str, retry_in: timedelta) -> None:
        """Gives a claimed entry back after a failed attempt, to be claimed again after `retry_in`."""
        ...

    async def done(self, order_id: str) -> None: ...

    async def pending_count(self) -> int: ...


@dataclass(frozen=True)
class InventoryEvent:
    """An `Inventory.StockUpdated` or `Inventory.LowStock` event, as received."""

    event_id: str
    event_type: str
    product_id: str
    quantity_available: int
    threshold: int | None = None
    warehouse_id: str | None = None
    trace_parent: str | None = None


class InventoryEventInbox(Protocol):
    """Inventory events accepted by the webhook and not yet applied, deduplicated by event id.

    An event id is remembered after it is applied, so a redelivery, even after a restart, is recognised.
    """

    async def record(self, event: InventoryEvent) -> bool:
        """Stores the event to be applied; False if this event id was recorded before (a redelivery)."""
        ...

    async def claim(self, worker_id: str, *, limit: int, lease: timedelta) -> list[tuple[InventoryEvent, int]]:
        """Due events with the number of claims so far."""
        ...

    async def renew(self, worker_id: str, event_ids: Sequence[str], *, lease: timedelta) -> None: ...

    async def release(self, worker_id: str, event_id: str, *, error: str, retry_in: timedelta) -> None: ...

    async def done(self, event_id: str) -> None: ...

    async def close(self) -> None: ...


class Inventory(Protocol):
    async def reserve(self, order_id: str, items: Sequence[OrderItem]) -> str:
        """Reserves every item or none; returns the reservation id. Idempotent per order.

        Raises `StepRefused("OutOfStock", ...)` or `TransientFault`.
        """
        ...

    async def release(self, order_id: str) -> bool:
        """Returns the order's reserved units; False if there was nothing to release. Idempotent."""
        ...

    async def set_stock(self, product_id: str, quantity: int) -> None: ...

    async def available(self, product_id: str) -> int: ...


class Payments(Protocol):
    async def charge(self, order_id: str, customer_id: str, amount: Decimal) -> str:
        """Charges once per order; returns the transaction id. Raises `StepRefused("PaymentDeclined", ...)`."""
        ...

    async def refund(self, order_id: str) -> bool:
        """Refunds the order's charge; False if there was none. Idempotent."""
        ...


class Shipping(Protocol):
    async def create_shipment(self, order_id: str, customer_id: str, items: Sequence[OrderItem]) -> str:
        """Returns the tracking id, once per order. Raises `StepRefused("ShipmentRejected", ...)`."""
        ...


class FailureAnnouncer(Protocol):
    """Tells the outside world that an order's saga ended `failed` (e.g. the `order-failures` queue)."""

    async def order_failed(self, order: Order) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class FlowRunInfo:
    id: str
    state: str
    url: str


class SagaMonitor(Protocol):
    """Reads what the orchestrator knows of a saga run (for the GraphQL `flowRun` field and readiness)."""

    async def flow_run(self, flow_run_id: str) -> FlowRunInfo | None: ...

    async def is_reachable(self) -> bool: ...

    async def aclose(self) -> None: ...
