"""The one service layer shared by every entry point: REST, GraphQL, Service Bus and Event Grid.

Every call names its `Actor`: a customer acts on its own orders only (`Forbidden` otherwise), a trusted caller
on any. Authentication is the entry points' job; what an actor may do is decided here, for all of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any

from fulfillment.domain import Actor, FieldError, Forbidden, InvalidRequest, Order, StatusChange
from fulfillment.ports import IdempotencyKey, OrderChanges, OrderRepository, Page
from fulfillment.service.requests import CreateOrderRequest, new_order, parse_create_order, unicode_problem
from fulfillment.telemetry import ORDERS_ACCEPTED, current_traceparent

log = logging.getLogger("fulfillment.orders")


class OrderService:
    def __init__(self, orders: OrderRepository, changes: OrderChanges, *, max_page_size: int = 100,
                 idempotency_key_lifetime: timedelta = timedelta(hours=24)):
        self._orders = orders
        self._changes = changes
        self._max_page_size = max_page_size
        self._key_lifetime = idempotency_key_lifetime

    async def place(self, payload: Any, *, source: str, actor: Actor, idempotency_key: str | None = None) -> Order:
        """Validates a decoded CreateOrderRequest, stores the order and enqueues its saga.

        Raises `InvalidRequest` (wrong shape), `Forbidden` (another customer's order), `InvalidOrder` (breaks the
        rules) or `IdempotencyKeyReused` (the actor's key came before with another request). The same key with
        the same request returns the order it made. The saga is started by the worker from the outbox, so
        accepting an order never waits on the orchestrator.
        """
        request = parse_create_order(payload)
        actor.check_acts_for(request.customerId)
        order = new_order(request)
        order.trace_parent = current_traceparent()
        idempotency = self._idempotency(actor, idempotency_key, request) if idempotency_key is not None else None
        stored = await self._orders.add(order, idempotency=idempotency)
        if stored.id == order.id:
            ORDERS_ACCEPTED.labels(source).inc()
        log.info("order accepted", extra={"order_id": stored.id, "customer_id": stored.customer_id,
                                          "source": source, "actor": actor.name, "duplicate": stored.id != order.id})
        return stored

    async def get(self, order_id: str, *, actor: Actor) -> Order:
        """Raises `OrderNotFound` or `Forbidden`."""
        order = await self._orders.get(order_id)
        actor.check_acts_for(order.customer_id)
        return order

    async def get_many(self, order_ids: list[str], *, actor: Actor) -> list[Order | Forbidden | None]:
        """For a DataLoader: each order in its id's place, None if unknown, a `Forbidden` if not the actor's."""
        return [(actor.refusal_for(order.customer_id) or order) if order is not None else None
                for order in await self._orders.get_many(order_ids)]

    async def list_by_customer(self, customer_id: str, *, actor: Actor, first: int | None = None,
                               after: str | None = None) -> Page:
        if problem := unicode_problem(customer_id):  # a lone surrogate: no store can look it up
            raise InvalidRequest([FieldError("customerId", problem)])
        actor.check_acts_for(customer_id)
        limit = min(first or self._max_page_size, self._max_page_size)
        return await self._orders.list_by_customer(customer_id, limit=max(limit, 1), cursor=after)

    async def cancel(self, order_id: str, *, actor: Actor) -> Order:
        """Asks the saga to stop at its next step boundary and compensate; the order then ends `cancelled`.

        Raises `Forbidden`, or `InvalidTransition` when the order is already terminal.
        """
        def cancel_if_allowed(order: Order) -> None:
            actor.check_acts_for(order.customer_id)
            order.request_cancellation()

        order = await self._orders.update(order_id, cancel_if_allowed)
        log.info("order cancellation requested", extra={"order_id": order_id, "actor": actor.name})
        return order

    async def status_changes(self, order_id: str, *, actor: Actor) -> AsyncIterator[tuple[StatusChange, Order]]:
        """The order's current status, then every later change once and in order, until it is terminal; each
        with the order as read when the change was seen (it may have moved on since).

        No change is skipped however fast the saga runs or however late this reader wakes: the changes are
        read from the order's history, written with each status, not sampled. Raises `OrderNotFound` or
        `Forbidden` before anything is yielded.
        """
        sent: int | None = None  # how much of the history has been yielded
        async with aclosing(self._changes.watch(order_id)) as versions:
            async for order in versions:
                if sent is None:
                    actor.check_acts_for(order.customer_id)
                    sent = len(order.status_history) - 1
                for change in order.status_history[sent:]:
                    yield change, order
                sent = len(order.status_history)
                if order.status.is_terminal:
                    return

    def _idempotency(self, actor: Actor, key: str, request: CreateOrderRequest) -> IdempotencyKey:
        """The key within the actor's scope, with the fingerprint of the request as validated (so the same
        order sent with its keys in another order, or other white space, is the same request)."""
        canonical = json.dumps(request.model_dump(), default=str, separators=(",", ":"))
        fingerprint = hashlib.sha256(canonical.encode()).hexdigest()
        return IdempotencyKey(actor.name, key, fingerprint, datetime.now(UTC) + self._key_lifetime)
