"""Event Grid deliveries (contract §6): each event, in either schema, to the service that handles its type.

Inventory events are recorded in the inbox, deduplicated by event id, and applied by the worker in an
`inventory-event` flow run; `Orders.OrderSubmitted` places the order exactly as `POST /api/orders` does,
with the event id as idempotency key, so a redelivered event yields the same order and one saga (and an id
sent again with another order is a poison event).

Every event carries its time: Event Grid schema requires `eventTime`, so an event without a valid one is
refused; CloudEvents makes `time` optional, so an event without one takes its receipt time, and one with an
invalid `time` is refused. A time must be RFC 3339 with a UTC offset and at most `MAX_CLOCK_SKEW` ahead of
ours: an event dated far ahead would make every later update of its product look stale. Stock updates of a
product then apply in that time order (`apply_stock_update`), whatever order they arrive or run in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator

from fulfillment.domain import Actor, FieldError, IdempotencyKeyReused, InvalidRequest
from fulfillment.ports import Inventory, InventoryEvent, InventoryEventInbox, StockTurn
from fulfillment.service.orders import OrderService
from fulfillment.service.requests import Text, parse
from fulfillment.telemetry import LOW_STOCK_ALERTS, STALE_STOCK_EVENTS, current_traceparent

log = logging.getLogger("fulfillment.events")
WEBHOOK = Actor.trusted("eventgrid")  # a delivery is authenticated by the webhook key; its event ids are one scope

MAX_STOCK = 1_000_000_000  # units of one product: any count beyond is a producer's bug, not a warehouse
MAX_PRODUCT_ID_LENGTH = 200
MAX_CLOCK_SKEW = timedelta(days=1)
STOCK_UPDATE_HOLD = timedelta(minutes=1)
"""How long an admitted stock update holds off newer ones of its product while its write may still land: far
beyond a downstream call's timeout, so an update whose run died mid-write never lands after a newer one."""
TURN_PATIENCE_SECONDS = 5.0  # a newer update waits this long in its run for an older one to finish, then retries


def _event_time(value: Any) -> datetime:
    """An RFC 3339 date-time with a UTC offset, in UTC, at most `MAX_CLOCK_SKEW` ahead of this clock."""
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise ValueError("must be an RFC 3339 date-time, e.g. 2026-01-31T12:00:00Z")
    if parsed.tzinfo is None:
        raise ValueError("must have a UTC offset, e.g. 2026-01-31T12:00:00Z")
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("must lie within the years 1 to 9999 in UTC") from None
    if parsed > datetime.now(UTC) + MAX_CLOCK_SKEW:
        raise ValueError(f"must not be more than {MAX_CLOCK_SKEW.total_seconds() / 3600:g} hours ahead of the "
                         "receiver's clock")
    return parsed


EventTime = Annotated[datetime, PlainValidator(_event_time)]
ProductId = Annotated[Text, Field(min_length=1, max_length=MAX_PRODUCT_ID_LENGTH)]
Units = Annotated[int, Field(ge=0, le=MAX_STOCK)]  # strict: not a bool, not 3.0


class EventType(StrEnum):
    STOCK_UPDATED = "Inventory.StockUpdated"
    LOW_STOCK = "Inventory.LowStock"
    ORDER_SUBMITTED = "Orders.OrderSubmitted"


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"  # a type this service does not handle
    POISON = "poison"  # malformed: retrying cannot help


@dataclass(frozen=True)
class Envelope:
    id: str
    type: str
    data: Any
    time: datetime  # when the event happened, or was received if it did not say (CloudEvents only)


class _EventGridEvent(BaseModel):
    model_config = ConfigDict(strict=True)
    id: Text = Field(min_length=1)
    eventType: Text = Field(min_length=1)
    subject: Text
    eventTime: EventTime
    data: Any = None
    dataVersion: Text


class _CloudEvent(BaseModel):
    model_config = ConfigDict(strict=True)
    id: Text = Field(min_length=1)
    type: Text = Field(min_length=1)
    source: Text = Field(min_length=1)
    specversion: Text
    time: EventTime | None = None
    data: Any = None


class _StockLevel(BaseModel):
    model_config = ConfigDict(strict=True)
    productId: ProductId
    quantityAvailable: Units
    warehouseId: Text | None = None


class _LowStock(_StockLevel):
    threshold: Units


def parse_envelope(raw: Any) -> Envelope:
    """One event of a delivery, in Event Grid schema or CloudEvents 1.0; `InvalidRequest` if it is neither."""
    if isinstance(raw, dict) and "specversion" in raw:
        cloud = parse(_CloudEvent, raw)
        if cloud.specversion != "1.0":
            raise InvalidRequest([FieldError("specversion", f"must be 1.0, got {cloud.specversion!r}")])
        return Envelope(cloud.id, cloud.type, cloud.data, cloud.time or datetime.now(UTC))
    event = parse(_EventGridEvent, raw)
    return Envelope(event.id, event.eventType, event.data, event.eventTime)


class EventService:
    def __init__(self, orders: OrderService, inbox: InventoryEventInbox):
        self._orders = orders
        self._inbox = inbox

    async def handle(self, envelope: Envelope) -> Outcome:
        """Raises `InvalidRequest` for a poison event and `StoreUnavailable` for a transient fault."""
        match envelope.type:
            case EventType.STOCK_UPDATED | EventType.LOW_STOCK:
                return await self._inventory(envelope)
            case EventType.ORDER_SUBMITTED:
                return await self._place(envelope)
            case _:
                log.warning("event type not handled", extra={"event_id": envelope.id, "event_type": envelope.type})
                return Outcome.IGNORED

    async def _place(self, envelope: Envelope) -> Outcome:
        try:
            await self._orders.place(envelope.data, source="eventgrid", actor=WEBHOOK, idempotency_key=envelope.id)
        except IdempotencyKeyReused as error:
            raise _reused_id(error) from None
        return Outcome.ACCEPTED

    async def _inventory(self, envelope: Envelope) -> Outcome:
        level = parse(_LowStock if envelope.type == EventType.LOW_STOCK else _StockLevel, envelope.data, prefix="data")
        event = InventoryEvent(
            event_id=envelope.id, event_type=envelope.type, product_id=level.productId,
            quantity_available=level.quantityAvailable, threshold=getattr(level, "threshold", None),
            warehouse_id=level.warehouseId, trace_parent=current_traceparent(), event_time=envelope.time)
        try:
            return Outcome.ACCEPTED if await self._inbox.record(event) else Outcome.DUPLICATE
        except IdempotencyKeyReused as error:
            raise _reused_id(error) from None


def _reused_id(error: IdempotencyKeyReused) -> InvalidRequest:
    """An event id sent again with other content is a poison event, like any other it cannot process."""
    return InvalidRequest([FieldError("id", str(error))])


class StockUpdateUnderWay(Exception):
    """An older update of the product is still being applied: this one's run fails, to be retried later."""


async def apply_stock_update(inbox: InventoryEventInbox, inventory: Inventory, event: InventoryEvent, *,
                             patience_seconds: float = TURN_PATIENCE_SECONDS) -> bool:
    """Sets the product's stock from an `Inventory.StockUpdated` event, in event time per product.

    The inbox admits the event (`StockTurn`) and marks it as the product's latest update before the stock is
    set, then records it as set. An event not newer than one applied or being applied, or already applied
    itself (its `done` was lost), is skipped: False, one INFO line and `STALE_STOCK_EVENTS`. A run that died
    between mark and write is re-run and sets the same stock again. An event newer than one still being
    applied waits for it, up to `patience_seconds`, then raises `StockUpdateUnderWay`.
    """
    turn = await inbox.begin_stock_update(event, hold=STOCK_UPDATE_HOLD)
    deadline, pause = time.monotonic() + patience_seconds, 0.02
    while turn is StockTurn.WAIT:
        if time.monotonic() >= deadline:
            raise StockUpdateUnderWay(f"an older stock update of {event.product_id} is still being applied")
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.5)
        turn = await inbox.begin_stock_update(event, hold=STOCK_UPDATE_HOLD)
    if turn is StockTurn.STALE:
        STALE_STOCK_EVENTS.inc()
        log.info("stale stock update skipped", extra={
            "event_id": event.event_id, "product_id": event.product_id, "event_time": event.event_time.isoformat(),
            "quantity_available": event.quantity_available})
        return False
    await inventory.set_stock(event.product_id, event.quantity_available)
    await inbox.finish_stock_update(event)
    return True


def low_stock_alert(event: InventoryEvent) -> None:
    LOW_STOCK_ALERTS.inc()
    log.warning("low stock", extra={"event_id": event.event_id, "product_id": event.product_id,
                                    "quantity_available": event.quantity_available, "threshold": event.threshold,
                                    "warehouse_id": event.warehouse_id})
