"""Event Grid deliveries (contract §6): each event, in either schema, to the service that handles its type.

Inventory events are recorded in the inbox, deduplicated by event id, and applied by the worker in an
`inventory-event` flow run; `Orders.OrderSubmitted` places the order exactly as `POST /api/orders` does,
with the event id as idempotency key, so a redelivered event yields the same order and one saga.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fulfillment.domain import FieldError, InvalidRequest
from fulfillment.ports import InventoryEvent, InventoryEventInbox
from fulfillment.service.orders import OrderService
from fulfillment.service.requests import parse
from fulfillment.telemetry import LOW_STOCK_ALERTS, current_traceparent

log = logging.getLogger("fulfillment.events")



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


class _EventGridEvent(BaseModel):
    model_config = ConfigDict(strict=True)
    id: str = Field(min_length=1)
    eventType: str = Field(min_length=1)
    subject: str
    data: Any = None
    dataVersion: str


class _CloudEvent(BaseModel):
    model_config = ConfigDict(strict=True)
    id: str = Field(min_length=1)
    type: str = Field(min_length=1)
    source: str = Field(min_length=1)
    specversion: str
    data: Any = None


class _StockLevel(BaseModel):
    model_config = ConfigDict(strict=True)
    productId: str = Field(min_length=1)
    quantityAvailable: int = Field(ge=0)
    warehouseId: str | None = None


class _LowStock(_StockLevel):
    threshold: int = Field(ge=0)


def parse_envelope(raw: Any) -> Envelope:
    """One event of a delivery, in Event Grid schema or CloudEvents 1.0; `InvalidRequest` if it is neither."""
    if isinstance(raw, dict) and "specversion" in raw:
        cloud = parse(_CloudEvent, raw)
        if cloud.specversion != "1.0":
            raise InvalidRequest([FieldError("specversion", f"must be 1.0, got {cloud.specversion!r}")])
        return Envelope(cloud.id, cloud.type, cloud.data)
    event = parse(_EventGridEvent, raw)
    return Envelope(event.id, event.eventType, event.data)


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
                await self._orders.place(envelope.data, source="eventgrid", idempotency_key=f"eventgrid:{envelope.id}")
                return Outcome.ACCEPTED
            case _:
                log.warning("event type not handled", extra={"event_id": envelope.id, "event_type": envelope.type})
                return Outcome.IGNORED

    async def _inventory(self, envelope: Envelope) -> Outcome:
        level = parse(_LowStock if envelope.type == EventType.LOW_STOCK else _StockLevel, envelope.data, prefix="data")
        event = InventoryEvent(
            event_id=envelope.id, event_type=envelope.type, product_id=level.productId,
            quantity_available=level.quantityAvailable, threshold=getattr(level, "threshold", None),
            warehouse_id=level.warehouseId, trace_parent=current_traceparent())
        return Outcome.ACCEPTED if await self._inbox.record(event) else Outcome.DUPLICATE


def low_stock_alert(event: InventoryEvent) -> None:
    LOW_STOCK_ALERTS.inc()
    log.warning("low stock", extra={"event_id": event.event_id, "product_id": event.product_id,
                                    "quantity_available": event.quantity_available, "threshold": event.threshold,
                                    "warehouse_id": event.warehouse_id})
