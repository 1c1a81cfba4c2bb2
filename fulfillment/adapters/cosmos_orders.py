"""`OrderRepository`, `OrderChanges` and `SagaOutbox` on Azure Cosmos DB (async SDK), selected by a connection
string or by an account endpoint reached with managed identity. docs/cosmos.md explains the layout and its
request-unit costs.

Layout: one container, partition key `/id`, shared with the inventory-event inbox
(cosmos_inventory_events.py); the documents of this module are of two kinds, told apart by `type`.
- An order: the shared shape of `documents.py`, plus `type: "order"` and, while its saga is still to be run,
  `sagaDispatch: {availableAt, claimedBy, attempts, lastError}`. The outbox entry lives on the order itself,
  so `add` is one create and no order can exist without its saga entry (Cosmos DB transactions cover one
  partition only, and an order and another document never share one under `/id`).
- An idempotency record: `{id: "idempotency-<sha256 of the scoped key>", type: "idempotencyKey", orderId,
  fingerprint, expiresAt}`: the request's fingerprint, to refuse the key with another request, and the epoch
  second after which the key may make a new order (the record is then replaced, ETag-conditionally).

No lost updates: every write to an existing document is a replace conditional on the ETag it was read with;
a 412 re-reads and re-applies the change. Saga updates, cancellations and outbox claims all write the order
document this way, so none overwrites another's change.

Crash windows of `add` with an idempotency key. The record is created first and fixes the order's id:
1. Crash before the record is written: nothing is stored; the redelivery starts afresh.
2. Crash after the record, before the order: the caller got no answer, so the message is redelivered; the
   redelivery finds the record, then creates the order under the id the record names. A first attempt that
   is only slow races the same way: whichever order create comes second gets a 409 and returns the stored
   order, so both callers see one order with one saga entry.
3. Crash after the order, before the answer: the redelivery finds the record and the order, and returns it.
A write that timed out but landed is case 2 or 3. Without a key, `add` is a single create.

Watching an order (`watch`): a point read conditional on the ETag last seen (If-None-Match) every
`WATCH_SECONDS`; Cosmos DB answers 304 without the document until the order is written. Not the change feed:
it is a pull as well, over a whole partition key range rather than one document, and in its latest-version
mode it coalesces writes just the same (the order's status history is what keeps every change), while the
local test server only stubs it (every pull after the first answers 304, changes or not).

Claims (cosmos_leases.py): a worker queries the due entries, then claims each with an ETag-conditional replace.
A 412 means another worker, or a saga update, wrote the order since the query: the entry is left for the next
poll, so two workers never hold one entry. A dead worker's entry becomes due again when its lease ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import suppress
from datetime import timedelta

from azure.core import MatchConditions
from azure.cosmos.aio import ContainerProxy
from azure.cosmos.exceptions import CosmosResourceExistsError, CosmosResourceNotFoundError

from fulfillment.adapters.cosmos_common import (
    ContainerOnFirstUse,
    CosmosTarget,
    Document,
    Revision,
    cosmos_target,
    hashed_id,
    rewrite,
    translated_errors,
)
from fulfillment.adapters.cosmos_leases import LeasedDocuments
from fulfillment.adapters.documents import from_document, to_document
from fulfillment.adapters.order_cursors import cursor_of, position_of
from fulfillment.domain import IdempotencyKeyReused, Order, OrderNotFound
from fulfillment.ports import IdempotencyKey, OutboxEntry, Page
from fulfillment.settings import Settings

ORDER = "order"
IDEMPOTENCY_RECORD = "idempotencyKey"
CHARACTERS_COSMOS_IDS_CANNOT_HOLD = frozenset("/\\?#")
SAGA_OUTBOX = LeasedDocuments(ORDER, "sagaDispatch")
TYPE_IS_ORDER = {"name": "@type", "value": ORDER}
# Keyset paging, as the SQLite store does (order_cursors.py); ordering by two properties needs the composite
# index of cosmos_common.INDEXING_POLICY.
LIST_BY_CUSTOMER = ("SELECT TOP @limit * FROM c WHERE c.type = @type AND c.customerId = @customerId{after}"
                    " ORDER BY c.createdAt DESC, c.id DESC")
AFTER_POSITION = " AND (c.createdAt < @createdAt OR (c.createdAt = @createdAt AND c.id < @id))"
PENDING_DISPATCHES = "SELECT VALUE COUNT(1) FROM c WHERE c.type = @type AND IS_DEFINED(c.sagaDispatch)"
WATCH_SECONDS = 0.1  # latency ~50 ms on average; ≤ 10 reads/s (1 RU each at most) per watched order in flight


def create_cosmos_repository(settings: Settings) -> CosmosOrderRepository:
    """The store the settings select: a connection string, else an account endpoint with managed identity.

    Does no I/O: the client opens, and the database and container are created if missing, on first use.
    """
    return CosmosOrderRepository(cosmos_target(settings))


def idempotency_record_id(scoped_key: str) -> str:
    """The id of the record of an idempotency key (any string: see `hashed_id`)."""
    return hashed_id("idempotency", scoped_key)


class CosmosOrderRepository:
    def __init__(self, target: CosmosTarget):
        self._container = ContainerOnFirstUse(target)

    # --- OrderRepository -----------------------------------------------------------------------

    async def add(self, order: Order, *, idempotency: IdempotencyKey | None = None) -> Order:
        with translated_errors("store an order"):
            container = await self._ready()
            if idempotency is None:
                await container.create_item(_new_order_document(order))
                return order
            return await self._add_once(container, order, idempotency)

    async def get(self, order_id: str) -> Order:
        with translated_errors("read an order"):
            return from_document(await self._read_order(await self._ready(), order_id))

    async def get_many(self, order_ids: Sequence[str]) -> list[Order | None]:
        return list(await asyncio.gather(*(self._find(order_id) for order_id in order_ids)))

    async def list_by_customer(self, customer_id: str, *, limit: int, cursor: str | None = None) -> Page:
        parameters = [TYPE_IS_ORDER, {"name": "@customerId", "value": customer_id},
                      {"name": "@limit", "value": limit + 1}]
        if cursor:
            created_at, order_id = position_of(cursor)
            parameters += [{"name": "@createdAt", "value": created_at}, {"name": "@id", "value": order_id}]
        query = LIST_BY_CUSTOMER.format(after=AFTER_POSITION if cursor else "")
        with translated_errors("list a customer's orders"):
            container = await self._ready()
            documents = [document async for document in container.query_items(query, parameters=parameters)]
        orders = [from_document(document) for document in documents[:limit]]
        return Page(orders=orders, cursors=[cursor_of(order) for order in orders], has_more=len(documents) > limit)

    async def update(self, order_id: str, change: Callable[[Order], None]) -> Order:
        def apply_change(document: Document) -> Document:
            order = from_document(document)
            change(order)
            revised = {**document, **to_document(order)}
            owed = not order.status.is_terminal and "sagaDispatch" not in document  # e.g. a failed order retried
            return SAGA_OUTBOX.enqueued(revised) if owed else revised

        with translated_errors("update an order"):
            return from_document(await self._rewrite(order_id, apply_change))

    async def close(self) -> None:
        await self._container.close()

    # --- OrderChanges --------------------------------------------------------------------------

    async def watch(self, order_id: str) -> AsyncIterator[Order]:
        with translated_errors("watch an order"):
            container = await self._ready()
            document = await self._read_order(container, order_id)
        while True:
            yield from_document(document)
            document = await _next_version(container, order_id, document["_etag"])

    # --- SagaOutbox ----------------------------------------------------------------------------

    async def claim(self, worker_id: str, *, limit: int, lease: timedelta) -> list[OutboxEntry]:
        with translated_errors("claim saga outbox entries"):
            claimed = await SAGA_OUTBOX.claim(await self._ready(), worker_id, limit, lease)
            return [OutboxEntry(document["id"], SAGA_OUTBOX.attempts(document)) for document in claimed]

    async def renew(self, worker_id: str, order_ids: Sequence[str], *, lease: timedelta) -> None:
        renewal = SAGA_OUTBOX.renewal(worker_id, lease)
        with translated_errors("renew saga outbox leases"):
            await asyncio.gather(*(self._rewrite_if_found(order_id, renewal) for order_id in order_ids))

    async def release(self, worker_id: str, order_id: str, *, error: str, retry_in: timedelta) -> None:
        with translated_errors("release a saga outbox entry"):
            await self._rewrite_if_found(order_id, SAGA_OUTBOX.release(worker_id, error, retry_in))

    async def done(self, order_id: str) -> None:
        with translated_errors("mark a saga done"):
            await self._rewrite_if_found(order_id, SAGA_OUTBOX.finished)

    async def pending_count(self) -> int:
        with translated_errors("count pending sagas"):
            container = await self._ready()
            counts = container.query_items(PENDING_DISPATCHES, parameters=[TYPE_IS_ORDER])
            return sum([count async for count in counts])

    # --- helpers -------------------------------------------------------------------------------

    async def _ready(self) -> ContainerProxy:
        return await self._container.ready()

    async def _add_once(self, container: ContainerProxy, order: Order, idempotency: IdempotencyKey) -> Order:
        record = {"id": idempotency_record_id(idempotency.scoped), "type": IDEMPOTENCY_RECORD, "orderId": order.id,
                  "fingerprint": idempotency.fingerprint, "expiresAt": idempotency.expires_at.timestamp()}
        try:
            await container.create_item(record)
        except CosmosResourceExistsError:
            kept = await rewrite(container, lambda: container.read_item(record["id"], partition_key=record["id"]),
                                 lambda earlier: record if earlier.get("expiresAt", 0) <= time.time() else None,
                                 name=f"idempotency record {record['id']}")
            if kept["fingerprint"] != idempotency.fingerprint:
                raise IdempotencyKeyReused(idempotency.key) from None
            order = _renamed(order, kept["orderId"])
        try:
            await container.create_item(_new_order_document(order))
            return order
        except CosmosResourceExistsError:  # an earlier attempt with the same key stored it
            return from_document(await self._read_order(container, order.id))

    async def _find(self, order_id: str) -> Order | None:
        try:
            return await self.get(order_id)
        except OrderNotFound:
            return None

    async def _read_order(self, container: ContainerProxy, order_id: str) -> Document:
        if not order_id or not CHARACTERS_COSMOS_IDS_CANNOT_HOLD.isdisjoint(order_id):
            raise OrderNotFound(order_id)
        try:
            document = await container.read_item(order_id, partition_key=order_id)
        except CosmosResourceNotFoundError:
            raise OrderNotFound(order_id) from None
        if document.get("type") != ORDER:
            raise OrderNotFound(order_id)
        return document

    async def _rewrite(self, order_id: str, revise: Revision) -> Document:
        """Replaces the order's document by `revise(document)`, re-reading and revising after a conflict."""
        container = await self._ready()
        return await rewrite(container, lambda: self._read_order(container, order_id), revise,
                             name=f"order {order_id}")

    async def _rewrite_if_found(self, order_id: str, revise: Revision) -> None:
        with suppress(OrderNotFound):
            await self._rewrite(order_id, revise)


async def _next_version(container: ContainerProxy, order_id: str, etag: str) -> Document:
    """The order's document once its ETag is no longer `etag`. A 304 comes back as an empty document."""
    while True:
        await asyncio.sleep(WATCH_SECONDS)
        with translated_errors("watch an order"):
            document = await container.read_item(order_id, partition_key=order_id, etag=etag,
                                                 match_condition=MatchConditions.IfModified)
        if document and document["_etag"] != etag:
            return document


def _new_order_document(order: Order) -> Document:
    return SAGA_OUTBOX.enqueued({**to_document(order), "type": ORDER})


def _renamed(order: Order, order_id: str) -> Order:
    return from_document({**to_document(order), "id": order_id})


