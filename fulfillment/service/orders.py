"""The one service layer shared by every entry point: REST, GraphQL, Service Bus and Event Grid."""

from __future__ import annotations

import logging
from typing import Any

from fulfillment.domain import FieldError, InvalidRequest, Order
from fulfillment.ports import OrderRepository, Page
from fulfillment.service.requests import new_order, parse_create_order, unicode_problem
from fulfillment.telemetry import ORDERS_ACCEPTED, current_traceparent

log = logging.getLogger("fulfillment.orders")


class OrderService:
    def __init__(self, orders: OrderRepository, *, max_page_size: int = 100):
        self._orders = orders
        self._max_page_size = max_page_size

    async def place(self, payload: Any, *, source: str, idempotency_key: str | None = None) -> Order:
        """Validates a decoded CreateOrderRequest, stores the order and enqueues its saga.

        Raises `InvalidRequest` (wrong shape) or `InvalidOrder` (breaks the rules). The saga is started by
        the worker from the outbox, so accepting an order never waits on the orchestrator.
        """
        order = new_order(parse_create_order(payload))
        order.trace_parent = current_traceparent()
        stored = await self._orders.add(order, idempotency_key=idempotency_key)
        if stored.id == order.id:
            ORDERS_ACCEPTED.labels(source).inc()
        log.info("order accepted", extra={"order_id": stored.id, "customer_id": stored.customer_id,
                                          "source": source, "duplicate": stored.id != order.id})
        return stored

    async def get(self, order_id: str) -> Order:
        return await self._orders.get(order_id)

    async def get_many(self, order_ids: list[str]) -> list[Order | None]:
        return await self._orders.get_many(order_ids)

    async def list_by_customer(self, customer_id: str, *, first: int | None = None,
                               after: str | None = None) -> Page:
        if problem := unicode_problem(customer_id):  # a lone surrogate: no store can look it up
            raise InvalidRequest([FieldError("customerId", problem)])
        limit = min(first or self._max_page_size, self._max_page_size)
        return await self._orders.list_by_customer(customer_id, limit=max(limit, 1), cursor=after)

    async def cancel(self, order_id: str) -> Order:
        """Asks the saga to stop at its next step boundary and compensate; the order then ends `cancelled`.

        Raises `InvalidTransition` when the order is already terminal.
        """
        order = await self._orders.update(order_id, lambda o: o.request_cancellation())
        log.info("order cancellation requested", extra={"order_id": order_id})
        return order
