"""`OrderRepository` and `SagaOutbox` on Azure Cosmos DB (async SDK), selected by a connection string or by an
account endpoint reached with managed identity. docs/cosmos.md explains the layout and its request-unit costs.

Layout: one container, partition key `/id`, two kinds of document.
- An order: the shared shape of `documents.py`, plus `type: "order"` and, while its saga is still to be run,
  `sagaDispatch: {availableAt, claimedBy, attempts, lastError}`. The outbox entry lives on the order itself,
  so `add` is one create and no order can exist without its saga entry (Cosmos DB transactions cover one
  partition only, and an order and another document never share one under `/id`).
- An idempotency record: `{id: "idempotency-<sha256 of the key>", type: "idempotencyKey", orderId}`.

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

Claims: a worker queries the due entries, then claims each with an ETag-conditional replace. A 412 means
another worker, or a saga update, wrote the order since the query: the entry is left for the next poll, so
two workers never hold one entry. A dead worker's entry becomes due again when its lease ends.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import AzureError
from azure.cosmos import PartitionKey
from azure.cosmos.aio import ContainerProxy, CosmosClient
from azure.cosmos.exceptions import (
    CosmosAccessConditionFailedError,
    CosmosHttpResponseError,
    CosmosResourceExistsError,
    CosmosResourceNotFoundError,
)
from azure.identity.aio import DefaultAzureCredential

from fulfillment.adapters.documents import from_document, to_document
from fulfillment.domain import ConcurrencyConflict, FieldError, InvalidRequest, Order, OrderNotFound, StoreUnavailable
from fulfillment.ports import OutboxEntry, Page
from fulfillment.settings import Settings

Document = dict[str, Any]
T = TypeVar("T")

PARTITION_KEY = "/id"
ORDER = "order"
IDEMPOTENCY_RECORD = "idempotencyKey"
CHARACTERS_COSMOS_IDS_CANNOT_HOLD = frozenset("/\\?#")
MAX_WRITE_CONFLICTS = 50
# The SDK retries a 429 after the server's `x-ms-retry-after-ms`, up to this many times and this long in all.
THROTTLE_RETRIES = 9
THROTTLE_MAX_WAIT_SECONDS = 30
INDEXING_POLICY = {
    "indexingMode": "consistent",
    "includedPaths": [{"path": "/*"}],
    # No query looks inside these; leaving them out of the index makes every write cheaper.
    "excludedPaths": [{"path": "/items/*"}, {"path": "/saga/*"}, {"path": '/"_etag"/?'}],
}
LIST_BY_CUSTOMER = "SELECT * FROM c WHERE c.customerId = @customerId ORDER BY c.createdAt DESC"
DUE_FOR_DISPATCH = ("SELECT TOP @limit * FROM c WHERE c.sagaDispatch.availableAt <= @now"
                    " ORDER BY c.sagaDispatch.availableAt")
PENDING_DISPATCHES = "SELECT VALUE COUNT(1) FROM c WHERE IS_DEFINED(c.sagaDispatch)"


@dataclass(frozen=True)
class CosmosTarget:
    """Where the orders container is and how to reach it."""

    endpoint: str
    key: str | None  # None: Microsoft Entra ID through DefaultAzureCredential (managed identity)
    database: str
    container: str
    create_if_missing: bool
    verify_tls: bool


def create_cosmos_repository(settings: Settings) -> CosmosOrderRepository:
    """The store the settings select: a connection string, else an account endpoint with managed identity.

    Does no I/O: the client opens, and the database and container are created if missing, on first use.
    """
    if settings.cosmos_connection_string:
        endpoint, key = _endpoint_and_key(settings.cosmos_connection_string)
    elif settings.cosmos_endpoint:
        endpoint, key = settings.cosmos_endpoint, None
    else:
        raise ValueError("Cosmos DB needs OrderProcessing__CosmosConnectionString or OrderProcessing__CosmosEndpoint")
    return CosmosOrderRepository(CosmosTarget(
        endpoint=endpoint, key=key, database=settings.cosmos_database_name,
        container=settings.cosmos_container_name, create_if_missing=settings.cosmos_create_if_missing,
        verify_tls=settings.cosmos_verify_tls))


def idempotency_record_id(idempotency_key: str) -> str:
    """A Cosmos DB id for any key: ids cannot hold `/`, `\\`, `?` or `#`, and their length is limited."""
    return f"idempotency-{hashlib.sha256(idempotency_key.encode()).hexdigest()}"


class CosmosOrderRepository:
    def __init__(self, target: CosmosTarget):
        self._target = target
        self._container: ContainerProxy | None = None
        self._opening = asyncio.Lock()
        self._resources = AsyncExitStack()

    # --- OrderRepository -----------------------------------------------------------------------

    async def add(self, order: Order, *, idempotency_key: str | None = None) -> Order:
        with _translated_errors("store an order"):
            container = await self._ready()
            if idempotency_key is None:
                await container.create_item(_new_order_document(order))
                return order
            return await self._add_once(container, order, idempotency_key)

    async def get(self, order_id: str) -> Order:
        with _translated_errors("read an order"):
            return from_document(await self._read_order(await self._ready(), order_id))

    async def get_many(self, order_ids: Sequence[str]) -> list[Order | None]:
        return list(await asyncio.gather(*(self._find(order_id) for order_id in order_ids)))

    async def list_by_customer(self, customer_id: str, *, limit: int, cursor: str | None = None) -> Page:
        continuation = _continuation_in(cursor) if cursor else None
        with _translated_errors("list a customer's orders"), _rejected_cursor(cursor):
            container = await self._ready()
            pages = container.query_items(LIST_BY_CUSTOMER, parameters=[{"name": "@customerId", "value": customer_id}],
                                          max_item_count=limit).by_page(continuation)
            orders: list[Order] = []
            async for page in pages:  # a cross-partition query may answer an empty page before a full one
                orders = [from_document(document) async for document in page]
                if orders:
                    break
            return Page(orders=orders, next_cursor=_cursor_for(pages.continuation_token))

    async def update(self, order_id: str, change: Callable[[Order], None]) -> Order:
        def apply_change(document: Document) -> Document:
            order = from_document(document)
            change(order)
            return {**document, **to_document(order)}

        with _translated_errors("update an order"):
            return from_document(await self._rewrite(order_id, apply_change))

    async def close(self) -> None:
        self._container = None
        await self._resources.aclose()

    # --- SagaOutbox ----------------------------------------------------------------------------

    async def claim(self, worker_id: str, *, limit: int, lease: timedelta) -> list[OutboxEntry]:
        with _translated_errors("claim saga outbox entries"):
            container = await self._ready()
            now = time.time()
            due = container.query_items(DUE_FOR_DISPATCH, parameters=[{"name": "@limit", "value": limit},
                                                                      {"name": "@now", "value": now}])
            claims = [_claim(container, document, worker_id, now + lease.total_seconds()) async for document in due]
            return [entry for entry in await asyncio.gather(*claims) if entry is not None]

    async def renew(self, worker_id: str, order_ids: Sequence[str], *, lease: timedelta) -> None:
        until = time.time() + lease.total_seconds()
        with _translated_errors("renew saga outbox leases"):
            await asyncio.gather(*(self._change_claim(order_id, worker_id, availableAt=until)
                                   for order_id in order_ids))

    async def release(self, worker_id: str, order_id: str, *, error: str, retry_in: timedelta) -> None:
        with _translated_errors("release a saga outbox entry"):
            await self._change_claim(order_id, worker_id, claimedBy=None,
                                     availableAt=time.time() + retry_in.total_seconds(), lastError=error)

    async def done(self, order_id: str) -> None:
        def without_dispatch(document: Document) -> Document | None:
            if "sagaDispatch" not in document:
                return None
            return {name: value for name, value in document.items() if name != "sagaDispatch"}

        with _translated_errors("mark a saga done"), suppress(OrderNotFound):
            await self._rewrite(order_id, without_dispatch)

    async def pending_count(self) -> int:
        with _translated_errors("count pending sagas"):
            container = await self._ready()
            return sum([count async for count in container.query_items(PENDING_DISPATCHES)])

    # --- helpers -------------------------------------------------------------------------------

    async def _ready(self) -> ContainerProxy:
        if self._container is None:
            async with self._opening:
                if self._container is None:
                    self._container = await self._open()
        return self._container

    async def _open(self) -> ContainerProxy:
        target = self._target
        async with AsyncExitStack() as opening:
            credential = target.key or await opening.enter_async_context(DefaultAzureCredential())
            client = CosmosClient(target.endpoint, credential, **_client_options(target))
            # Closed even if entering fails: the SDK's __aenter__ then leaves its HTTP session open.
            opening.push_async_callback(client.close)
            await client.__aenter__()
            container = await _container(client, target)
            self._resources = opening.pop_all()
        return container

    async def _add_once(self, container: ContainerProxy, order: Order, idempotency_key: str) -> Order:
        record = {"id": idempotency_record_id(idempotency_key), "type": IDEMPOTENCY_RECORD, "orderId": order.id}
        try:
            await container.create_item(record)
        except CosmosResourceExistsError:
            record = await container.read_item(record["id"], partition_key=record["id"])
            order = _renamed(order, record["orderId"])
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

    async def _rewrite(self, order_id: str, revise: Callable[[Document], Document | None]) -> Document:
        """Replaces the order's document by `revise(document)` unless another writer got there first, in
        which case it re-reads and revises again. `revise` returns None to leave the document as it is."""
        container = await self._ready()
        for _ in range(MAX_WRITE_CONFLICTS):
            document = await self._read_order(container, order_id)
            revised = revise(document)
            if revised is None:
                return document
            try:
                return await container.replace_item(order_id, revised, etag=document["_etag"],
                                                    match_condition=MatchConditions.IfNotModified)
            except CosmosAccessConditionFailedError:
                continue
        raise ConcurrencyConflict(f"order {order_id} kept changing under {MAX_WRITE_CONFLICTS} attempts to write it")

    async def _change_claim(self, order_id: str, worker_id: str, **changes: Any) -> None:
        """Changes the order's outbox entry if `worker_id` still holds its claim."""
        def revise(document: Document) -> Document | None:
            dispatch = document.get("sagaDispatch")
            if dispatch is None or dispatch["claimedBy"] != worker_id:
                return None
            return {**document, "sagaDispatch": {**dispatch, **changes}}

        with suppress(OrderNotFound):
            await self._rewrite(order_id, revise)


async def _container(client: CosmosClient, target: CosmosTarget) -> ContainerProxy:
    if target.create_if_missing:
        database = await _if_not_exists(lambda: client.create_database_if_not_exists(target.database))
        container, properties = await _if_not_exists(lambda: database.create_container_if_not_exists(
            target.container, partition_key=PartitionKey(PARTITION_KEY), indexing_policy=INDEXING_POLICY,
            return_properties=True))
    else:
        container = client.get_database_client(target.database).get_container_client(target.container)
        properties = await container.read()  # a missing container fails here, not later as "no such order"
    paths = properties["partitionKey"]["paths"]
    if paths != [PARTITION_KEY]:  # every read by id would answer "not found"
        raise StoreUnavailable(f"Cosmos DB container {target.database}/{target.container} is partitioned by "
                               f"{paths}, not [{PARTITION_KEY!r}] (docs/cosmos.md)")
    return container


async def _if_not_exists(create: Callable[[], Awaitable[T]]) -> T:
    try:
        return await create()
    except CosmosResourceExistsError:  # another process created it between the SDK's read and its create
        return await create()


async def _claim(container: ContainerProxy, document: Document, worker_id: str, until: float) -> OutboxEntry | None:
    dispatch = document["sagaDispatch"]
    attempts = dispatch["attempts"] + 1
    claimed = {**document, "sagaDispatch": {**dispatch, "claimedBy": worker_id, "availableAt": until,
                                            "attempts": attempts}}
    try:
        await container.replace_item(document["id"], claimed, etag=document["_etag"],
                                     match_condition=MatchConditions.IfNotModified)
    except (CosmosAccessConditionFailedError, CosmosResourceNotFoundError):
        return None  # written since the query: claimed by another worker, or due again at the next poll
    return OutboxEntry(document["id"], attempts)


def _new_order_document(order: Order) -> Document:
    dispatch = {"availableAt": time.time(), "claimedBy": None, "attempts": 0, "lastError": None}
    return {**to_document(order), "type": ORDER, "sagaDispatch": dispatch}


def _renamed(order: Order, order_id: str) -> Order:
    return from_document({**to_document(order), "id": order_id})


def _client_options(target: CosmosTarget) -> dict[str, Any]:
    return {
        "connection_verify": target.verify_tls,
        # An emulator on plain http:// advertises an https:// address; following it fails the first call.
        "enable_endpoint_discovery": not target.endpoint.startswith("http://"),
        "retry_throttle_total": THROTTLE_RETRIES,
        "retry_throttle_backoff_max": THROTTLE_MAX_WAIT_SECONDS,
    }


def _endpoint_and_key(connection_string: str) -> tuple[str, str]:
    parts = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)
    if not parts.get("AccountEndpoint") or not parts.get("AccountKey"):
        raise ValueError("the Cosmos DB connection string needs AccountEndpoint=...;AccountKey=...")
    return parts["AccountEndpoint"], parts["AccountKey"]


def _cursor_for(continuation: str | None) -> str | None:
    if continuation is None:
        return None
    return base64.urlsafe_b64encode(json.dumps({"continuation": continuation}).encode()).decode()


def _continuation_in(cursor: str) -> str:
    try:
        continuation = json.loads(base64.urlsafe_b64decode(cursor.encode()))["continuation"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        continuation = None
    if not isinstance(continuation, str):
        raise _invalid_cursor()
    return continuation


@contextmanager
def _rejected_cursor(cursor: str | None) -> Iterator[None]:
    """Cosmos DB answers 400 to a continuation token it did not issue (or no longer accepts)."""
    try:
        yield
    except CosmosHttpResponseError as error:
        if cursor is not None and error.status_code == 400:
            raise _invalid_cursor() from error
        raise


def _invalid_cursor() -> InvalidRequest:
    return InvalidRequest([FieldError("after", "is not a cursor returned by this API")])


@contextmanager
def _translated_errors(action: str) -> Iterator[None]:
    """SDK errors that remain once 404s, 409s and 412s were handled where they mean something: a conflict
    nobody expected, or the store being unavailable (429 after the SDK's retries, 5xx, auth, network)."""
    try:
        yield
    except (CosmosResourceExistsError, CosmosAccessConditionFailedError) as error:
        raise ConcurrencyConflict(f"Cosmos DB could not {action}: {_summary(error)}") from error
    except AzureError as error:
        raise StoreUnavailable(f"Cosmos DB could not {action}: {_summary(error)}") from error


def _summary(error: AzureError) -> str:
    status = getattr(error, "status_code", None)
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"{status} {first_line}" if status else first_line
