"""Ports: what the service layer needs from the outside world, named by role.

Adapters in `fulfillment.adapters` implement these, one technology per module; `bootstrap` picks them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol

from fulfillment.domain import Order, OrderItem


@dataclass(frozen=True)
class Page:
    """Orders newest first, each with its cursor (opaque: passed back, the next page starts after that order),
    and whether more orders come after the last."""

    orders: list[Order]
    cursors: list[str]
    has_more: bool

    @property
    def next_cursor(self) -> str | None:
        """The last order's cursor while more orders follow; None on the last page."""
        return self.cursors[-1] if self.has_more else None


@dataclass(frozen=True)
class IdempotencyKey:
    """A caller's idempotency key (a client's `Idempotency-Key`, a message id, an event id) within its `scope`
    (the caller, or the entry point), the fingerprint of the request it came with, and until when it is kept."""

    scope: str
    key: str
    fingerprint: str
    expires_at: datetime

    @property
    def scoped(self) -> str:
        return f"{self.scope}:{self.key}"


class OrderRepository(Protocol):
    """Orders with their saga state. Adding an order also enqueues its saga (see `SagaOutbox`)."""

    async def add(self, order: Order, *, idempotency: IdempotencyKey | None = None) -> Order:
        """Stores `order` and enqueues its saga in one atomic write.

        With an idempotency key already seen and not expired (a client's retry, a redelivered message), nothing
        is written: the order stored the first time is returned, or `IdempotencyKeyReused` raised when the key
        came then with another request (another fingerprint).
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


class OrderChanges(Protocol):
    """Wakes the watchers of an order when it is written, by this process or another one of the stack."""

    def watch(self, order_id: str) -> AsyncIterator[Order]:
        """The order as stored now, then again after each write that changed it, for as long as the caller
        iterates (and closes it with `aclose`). Writes close together may come as one, the latest: what a
        watcher must not miss is kept on the order itself (`Order.status_history`). Raises `OrderNotFound`."""
        ...


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
    """An `Inventory.StockUpdated` or `Inventory.LowStock` event, as received.

    `event_time` is when the event happened (Event Grid `eventTime`, CloudEvents `time`), or when it was received
    if the event did not say; stock updates of a product apply in this order. Always timezone-aware, in UTC.
    """

    event_id: str
    event_type: str
    product_id: str
    quantity_available: int
    threshold: int | None = None
    warehouse_id: str | None = None
    trace_parent: str | None = None
    event_time: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if self.event_time.tzinfo is None:
            raise ValueError(f"event {self.event_id}: event_time {self.event_time} has no timezone")
        object.__setattr__(self, "event_time", self.event_time.astimezone(UTC))

    def says_the_same_as(self, other: InventoryEvent) -> bool:
        """Whether `other` (stored under the same id) is a redelivery of this event rather than another event
        under a reused id. The time and trace are left out: a CloudEvent without `time` takes its receipt time."""
        return (self.event_type, self.product_id, self.quantity_available, self.threshold, self.warehouse_id) == (
            other.event_type, other.product_id, other.quantity_available, other.threshold, other.warehouse_id)

    def to_json(self) -> dict[str, Any]:
        """The event as JSON values (the time in ISO 8601), as stored and as a flow run's parameter."""
        return {**asdict(self), "event_time": self.event_time.isoformat()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, received_at: float | None = None) -> InventoryEvent:
        """The event `to_json` (or `dataclasses.asdict`) gave. One stored before events carried their time
        takes `received_at` (epoch seconds) instead."""
        when = data.get("event_time")
        if isinstance(when, str):
            when = datetime.fromisoformat(when)
        elif when is None:
            when = datetime.fromtimestamp(received_at, UTC) if received_at is not None else datetime.now(UTC)
        return cls(**{**data, "event_time": when})


class StockTurn(StrEnum):
    """Whether an `Inventory.StockUpdated` event may set its product's stock now (`begin_stock_update`)."""

    APPLY = "apply"  # the newest the product has seen, or a re-run of one whose application was cut short
    STALE = "stale"  # not newer than one applied or being applied (or itself, applied already): skip it
    WAIT = "wait"  # newer than one still being applied, whose late write could land after ours: try again soon

    @classmethod
    def of(cls, event: InventoryEvent, *, latest_id: str | None, latest_time: datetime | None,
           held_until: float | None, now: float) -> StockTurn:
        """The rule, against the product's latest admitted update (`held_until`: epoch seconds until which it
        is being applied, None once it was applied). Each inbox applies it atomically with its mark."""
        if latest_id is None or latest_time is None:
            return cls.APPLY
        if latest_id == event.event_id:
            return cls.STALE if held_until is None else cls.APPLY
        if event.event_time <= latest_time:
            return cls.STALE
        return cls.WAIT if held_until is not None and held_until > now else cls.APPLY


class InventoryEventInbox(Protocol):
    """Inventory events accepted by the webhook and not yet applied, deduplicated by event id.

    An event id is remembered after it is applied, so a redelivery, even after a restart, is recognised.

    Stock updates of a product apply in event time, whatever order they arrive or run in: the inbox keeps, per
    product, a mark of the latest update admitted (its id and time, and until when it is being applied).
    `begin_stock_update` admits an event by `StockTurn.of` and moves the mark to it before the stock is set;
    `finish_stock_update` records that it was set. So a process that dies in between leaves the mark on an
    event that a re-run applies again (setting stock is idempotent), while older events are skipped.
    """

    async def record(self, event: InventoryEvent) -> bool:
        """Stores the event to be applied; False if this event id was recorded before (a redelivery), and
        `IdempotencyKeyReused` if it was recorded with other content."""
        ...

    async def claim(self, worker_id: str, *, limit: int, lease: timedelta) -> list[tuple[InventoryEvent, int]]:
        """Due events with the number of claims so far."""
        ...

    async def renew(self, worker_id: str, event_ids: Sequence[str], *, lease: timedelta) -> None: ...

    async def release(self, worker_id: str, event_id: str, *, error: str, retry_in: timedelta) -> None: ...

    async def done(self, event_id: str) -> None: ...

    async def begin_stock_update(self, event: InventoryEvent, *, hold: timedelta) -> StockTurn:
        """Decides, atomically, whether this StockUpdated event may set its product's stock (`StockTurn.of`);
        when it may, marks it as the product's latest update, being applied for at most `hold`: a newer event
        waits that long for this one's stock write to land (or for `finish_stock_update`)."""
        ...

    async def finish_stock_update(self, event: InventoryEvent) -> None:
        """Records that the event's stock was set, if it is still the product's latest update."""
        ...

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

    async def flow_runs(self, flow_run_ids: Sequence[str]) -> list[FlowRunInfo | None]:
        """Each run in its id's place, None where the orchestrator has no such run (for a DataLoader)."""
        ...

    async def is_reachable(self) -> bool: ...

    async def aclose(self) -> None: ...
