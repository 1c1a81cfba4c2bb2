"""`InventoryEventInbox` on Azure Cosmos DB, in the orders' container (cosmos_orders.py), so that with Cosmos DB
selected everything durable lives there. docs/cosmos.md shows the document and its costs.

An event is one document: `{id: "inventory-event-<sha256 of the event id>", type: "inventoryEvent", event,
receivedAt, appliedAt: null, applyDispatch: {availableAt, claimedBy, attempts, lastError}}`. `record` is one
create, whose 409 is a redelivery. `done` removes `applyDispatch` and sets `appliedAt` but keeps the document,
so a later redelivery still meets that 409. Claims work as the saga outbox's do (cosmos_leases.py).

The mark of a product's latest admitted stock update (`StockTurn`) is one document per product:
`{id: "latest-stock-event-<sha256 of the product id>", type: "latestStockEvent", productId, eventId, eventTime,
heldUntil}`, `heldUntil` (epoch seconds) while the update is being applied, null once it was. It is created,
or replaced ETag-conditionally, only when the rule admits the event; a 409 or 412 means another update moved
the mark first, so the rule is applied again to what that one wrote.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import suppress
from datetime import datetime, timedelta

from azure.core import MatchConditions
from azure.cosmos.exceptions import (
    CosmosAccessConditionFailedError,
    CosmosResourceExistsError,
    CosmosResourceNotFoundError,
)

from fulfillment.adapters.cosmos_common import (
    MAX_WRITE_CONFLICTS,
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
from fulfillment.domain import ConcurrencyConflict, IdempotencyKeyReused
from fulfillment.ports import InventoryEvent, StockTurn
from fulfillment.settings import Settings

INVENTORY_EVENT = "inventoryEvent"
LATEST_STOCK_EVENT = "latestStockEvent"
INBOX = LeasedDocuments(INVENTORY_EVENT, "applyDispatch")


def create_cosmos_inventory_event_inbox(settings: Settings) -> CosmosInventoryEventInbox:
    """The inbox in the container the settings select, as `create_cosmos_repository` picks it.

    Does no I/O: the client opens, and the database and container are created if missing, on first use.
    """
    return CosmosInventoryEventInbox(cosmos_target(settings))


def inventory_event_document_id(event_id: str) -> str:
    """The id of an event's document (an event id may be any string: see `hashed_id`)."""
    return hashed_id("inventory-event", event_id)


def latest_stock_event_document_id(product_id: str) -> str:
    return hashed_id("latest-stock-event", product_id)


class CosmosInventoryEventInbox:
    def __init__(self, target: CosmosTarget):
        self._container = ContainerOnFirstUse(target)

    async def record(self, event: InventoryEvent) -> bool:
        with translated_errors("record an inventory event"):
            container = await self._container.ready()
            document = _new_event_document(event)
            try:
                await container.create_item(document)
            except CosmosResourceExistsError:
                stored = await container.read_item(document["id"], partition_key=document["id"])
                if not event.says_the_same_as(InventoryEvent.from_json(stored["event"], received_at=time.time())):
                    raise IdempotencyKeyReused(event.event_id) from None
                return False
            return True

    async def claim(self, worker_id: str, *, limit: int, lease: timedelta) -> list[tuple[InventoryEvent, int]]:
        with translated_errors("claim inventory events"):
            claimed = await INBOX.claim(await self._container.ready(), worker_id, limit, lease)
            return [(InventoryEvent.from_json(document["event"], received_at=document["receivedAt"]),
                     INBOX.attempts(document)) for document in claimed]

    async def renew(self, worker_id: str, event_ids: Sequence[str], *, lease: timedelta) -> None:
        renewal = INBOX.renewal(worker_id, lease)
        with translated_errors("renew inventory event leases"):
            await asyncio.gather(*(self._rewrite_if_found(event_id, renewal) for event_id in event_ids))

    async def release(self, worker_id: str, event_id: str, *, error: str, retry_in: timedelta) -> None:
        with translated_errors("release an inventory event"):
            await self._rewrite_if_found(event_id, INBOX.release(worker_id, error, retry_in))

    async def done(self, event_id: str) -> None:
        with translated_errors("mark an inventory event applied"):
            await self._rewrite_if_found(event_id, _applied)

    async def begin_stock_update(self, event: InventoryEvent, *, hold: timedelta) -> StockTurn:
        document_id = latest_stock_event_document_id(event.product_id)
        with translated_errors("admit a stock update"):
            container = await self._container.ready()
            for _ in range(MAX_WRITE_CONFLICTS):
                latest = None
                with suppress(CosmosResourceNotFoundError):
                    latest = await container.read_item(document_id, partition_key=document_id)
                now = time.time()
                latest_id, latest_time, held_until = (
                    (latest["eventId"], datetime.fromisoformat(latest["eventTime"]), latest["heldUntil"]) if latest
                    else (None, None, None))
                turn = StockTurn.of(event, latest_id=latest_id, latest_time=latest_time, held_until=held_until,
                                    now=now)
                if turn is not StockTurn.APPLY:
                    return turn
                mark = {"id": document_id, "type": LATEST_STOCK_EVENT, "productId": event.product_id,
                        "eventId": event.event_id, "eventTime": event.event_time.isoformat(),
                        "heldUntil": now + hold.total_seconds()}
                try:
                    if latest is None:
                        await container.create_item(mark)
                    else:
                        await container.replace_item(document_id, mark, etag=latest["_etag"],
                                                     match_condition=MatchConditions.IfNotModified)
                    return turn
                except (CosmosResourceExistsError, CosmosAccessConditionFailedError):
                    continue  # another update moved the mark first: decide again against it
        raise ConcurrencyConflict(f"the latest stock update of {event.product_id} kept changing under "
                                  f"{MAX_WRITE_CONFLICTS} attempts to admit {event.event_id}")

    async def finish_stock_update(self, event: InventoryEvent) -> None:
        def applied(latest: Document) -> Document | None:
            if latest["eventId"] != event.event_id or latest["heldUntil"] is None:
                return None
            return {**latest, "heldUntil": None}

        document_id = latest_stock_event_document_id(event.product_id)
        with translated_errors("mark a stock update applied"):
            container = await self._container.ready()
            with suppress(CosmosResourceNotFoundError):
                await rewrite(container, lambda: container.read_item(document_id, partition_key=document_id),
                              applied, name=f"latest stock update of {event.product_id}")

    async def close(self) -> None:
        await self._container.close()

    async def _rewrite_if_found(self, event_id: str, revise: Revision) -> None:
        container = await self._container.ready()
        document_id = inventory_event_document_id(event_id)
        with suppress(CosmosResourceNotFoundError):
            await rewrite(container, lambda: container.read_item(document_id, partition_key=document_id), revise,
                          name=f"inventory event {event_id}")


def _new_event_document(event: InventoryEvent) -> Document:
    return INBOX.enqueued({"id": inventory_event_document_id(event.event_id), "type": INVENTORY_EVENT,
                           "event": event.to_json(), "receivedAt": time.time(), "appliedAt": None})


def _applied(document: Document) -> Document | None:
    return INBOX.finished(document, appliedAt=time.time())
