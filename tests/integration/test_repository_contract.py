"""The `OrderRepository` + `SagaOutbox` contract, run against every store: SQLite and Cosmos DB.

The Cosmos DB leg runs the real async SDK against `@vercel/cosmosdb-server` (tests/cosmos_server), started
once per session; each test gets a database of its own. "Two instances" means two repository objects with
their own connections to one store, as the gateway and the worker processes share it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from azure.cosmos import PartitionKey
from azure.cosmos.aio import CosmosClient, DatabaseProxy

from fulfillment.adapters.cosmos_orders import create_cosmos_repository, idempotency_record_id
from fulfillment.adapters.sqlite_orders import SqliteOrderRepository
from fulfillment.domain import (
    IdempotencyKeyReused,
    InvalidRequest,
    InvalidTransition,
    OrderNotFound,
    OrderStatus,
    StoreUnavailable,
)
from fulfillment.ports import IdempotencyKey
from fulfillment.service.requests import new_order, parse_create_order
from fulfillment.settings import Settings
from tests.cosmos_server.server import EMULATOR_KEY, CosmosServer

LEASE = timedelta(seconds=30)
EXPIRED = timedelta(seconds=-1)
UNKNOWN_ID = "00000000-0000-0000-0000-000000000000"
TWENTY_LETTERS = [chr(65 + n) for n in range(20)]


# --- fixtures ----------------------------------------------------------------------------------

def cosmos_settings(server: CosmosServer, **options) -> Settings:
    return Settings(cosmos_connection_string=server.connection_string,
                    cosmos_database_name=f"contract-{uuid.uuid4().hex[:12]}", **options)


@pytest.fixture(params=["sqlite", "cosmos"])
def store(request, tmp_path) -> Callable:
    """Opens a repository instance on this test's store; every call opens another one on the same store."""
    if request.param == "sqlite":
        return lambda: SqliteOrderRepository(tmp_path / "orders.db")
    settings = cosmos_settings(request.getfixturevalue("cosmos_server"))
    return lambda: create_cosmos_repository(settings)


@pytest.fixture
async def open_repository(store) -> AsyncIterator[Callable]:
    opened = []

    def open_one():
        opened.append(store())
        return opened[-1]

    yield open_one
    for repository in opened:
        await repository.close()


@pytest.fixture
def repository(open_repository):
    return open_repository()


def an_order(seed_order, customer="cust-001"):
    return new_order(parse_create_order({**seed_order, "customerId": customer}))


async def race_twenty_updates(one, two, order_id) -> list[str]:
    """Two instances append a letter each to the order's flow run id, ten times each, all at once; returns
    every letter `change` was called with (a change is re-applied after a conflict)."""
    applied = []

    def append(order, letter):
        applied.append(letter)
        order.attach_flow_run(f"{order.flow_run_id or ''}{letter}")

    await asyncio.gather(*(repository.update(order_id, lambda o, letter=letter: append(o, letter))
                           for letter, repository in zip(TWENTY_LETTERS, [one, two] * 10, strict=True)))
    return applied


async def add_orders(repository, seed_order, count, customer="cust-001") -> list[str]:
    return [(await repository.add(an_order(seed_order, customer))).id for _ in range(count)]


# --- orders ------------------------------------------------------------------------------------

async def test_an_added_order_reads_back_equal_and_is_enqueued(repository, seed_order):
    order = an_order(seed_order)
    await repository.add(order)
    stored = await repository.get(order.id)
    assert stored.total_amount == Decimal("149.93") and stored.items == order.items
    assert stored.created_at == order.created_at and stored.status == OrderStatus.PROCESSING
    assert [e.order_id for e in await repository.claim("w1", limit=10, lease=LEASE)] == [order.id]


@pytest.mark.parametrize("order_id", [UNKNOWN_ID, "not/an?id#at\\all", ""])
async def test_unknown_orders_are_not_found(repository, order_id):
    with pytest.raises(OrderNotFound):
        await repository.get(order_id)
    with pytest.raises(OrderNotFound):
        await repository.update(order_id, lambda order: order.attach_flow_run("run"))


async def test_get_many_answers_in_the_asked_order_with_none_for_unknown_ids(repository, seed_order):
    first, second = await add_orders(repository, seed_order, 2)
    found = await repository.get_many([second, UNKNOWN_ID, first])
    assert [order and order.id for order in found] == [second, None, first]


def keyed(key: str, fingerprint: str = "body-1", *, scope: str = "servicebus", lifetime_s: float = 3600):
    return IdempotencyKey(scope, key, fingerprint, datetime.now(UTC) + timedelta(seconds=lifetime_s))


async def test_the_same_idempotency_key_yields_the_first_order_and_one_saga(repository, seed_order):
    first = await repository.add(an_order(seed_order), idempotency=keyed("message-1"))
    second = await repository.add(an_order(seed_order), idempotency=keyed("message-1"))
    other = await repository.add(an_order(seed_order), idempotency=keyed("message-2"))
    elsewhere = await repository.add(an_order(seed_order), idempotency=keyed("message-1", scope="key:abc"))
    assert second.id == first.id != other.id != elsewhere.id != first.id
    assert await repository.pending_count() == 3


async def test_a_key_sent_again_with_another_request_is_refused_and_stores_nothing(repository, seed_order):
    first = await repository.add(an_order(seed_order), idempotency=keyed("message-1", "body-1"))
    with pytest.raises(IdempotencyKeyReused) as refused:
        await repository.add(an_order(seed_order), idempotency=keyed("message-1", "body-2"))
    assert refused.value.key == "message-1"
    assert await repository.pending_count() == 1
    assert (await repository.add(an_order(seed_order), idempotency=keyed("message-1", "body-1"))).id == first.id


async def test_an_expired_key_makes_a_new_order(repository, seed_order):
    first = await repository.add(an_order(seed_order), idempotency=keyed("message-1", lifetime_s=0.2))
    await asyncio.sleep(0.3)
    again = await repository.add(an_order(seed_order), idempotency=keyed("message-1", "body-2"))
    assert again.id != first.id
    assert (await repository.add(an_order(seed_order), idempotency=keyed("message-1", "body-2"))).id == again.id


async def test_concurrent_deliveries_of_one_message_store_one_order(open_repository, seed_order):
    one, two = open_repository(), open_repository()
    stored = await asyncio.gather(*(repository.add(an_order(seed_order), idempotency=keyed("message-1"))
                                    for repository in [one, two] * 4))
    assert len({order.id for order in stored}) == 1
    assert await one.pending_count() == 1


async def test_a_change_that_raises_leaves_the_order_as_it_was(repository, seed_order):
    order = an_order(seed_order)
    await repository.add(order)
    await repository.update(order.id, lambda o: o.complete())
    with pytest.raises(InvalidTransition):
        await repository.update(order.id, lambda o: o.request_cancellation())
    stored = await repository.get(order.id)
    assert stored.status == OrderStatus.COMPLETED and not stored.cancel_requested


async def test_two_instances_updating_one_order_lose_neither_change(open_repository, seed_order):
    one, two = open_repository(), open_repository()
    order = await one.add(an_order(seed_order))
    await race_twenty_updates(one, two, order.id)
    stored = await two.get(order.id)
    assert sorted(stored.flow_run_id) == TWENTY_LETTERS


# --- listing -----------------------------------------------------------------------------------

async def test_listing_is_newest_first_and_pages_without_gaps(repository, seed_order):
    ids = await add_orders(repository, seed_order, 7)
    await add_orders(repository, seed_order, 1, customer="someone-else")
    pages, cursor = [], None
    while True:
        page = await repository.list_by_customer("cust-001", limit=3, cursor=cursor)
        pages.append([order.id for order in page.orders])
        if not (cursor := page.next_cursor):
            break
    assert [len(page) for page in pages] == [3, 3, 1]
    assert sum(pages, []) == list(reversed(ids))


async def test_each_orders_cursor_continues_just_after_that_order(repository, seed_order):
    ids = list(reversed(await add_orders(repository, seed_order, 5)))
    page = await repository.list_by_customer("cust-001", limit=3)
    assert len(page.cursors) == 3 and page.next_cursor == page.cursors[-1]
    for position, cursor in enumerate(page.cursors):
        rest = await repository.list_by_customer("cust-001", limit=10, cursor=cursor)
        assert [order.id for order in rest.orders] == ids[position + 1:]


async def test_a_page_that_holds_the_last_order_has_no_next_cursor_but_a_cursor_for_each_order(
        repository, seed_order):
    await add_orders(repository, seed_order, 3)
    page = await repository.list_by_customer("cust-001", limit=3)
    assert len(page.orders) == 3 and not page.has_more and page.next_cursor is None
    after_the_last = await repository.list_by_customer("cust-001", limit=3, cursor=page.cursors[-1])
    assert after_the_last.orders == [] and not after_the_last.has_more


async def test_an_unknown_customer_has_no_orders(repository):
    page = await repository.list_by_customer("nobody", limit=10)
    assert page.orders == [] and page.next_cursor is None


@pytest.mark.parametrize("cursor", ["not a cursor", "eyJub3QiOiAiYSBjdXJzb3IifQ=="])
async def test_a_cursor_this_store_did_not_issue_is_invalid(repository, cursor):
    with pytest.raises(InvalidRequest):
        await repository.list_by_customer("cust-001", limit=3, cursor=cursor)


# --- saga outbox -------------------------------------------------------------------------------

async def test_a_claimed_entry_is_not_claimed_twice_until_its_lease_ends(repository, seed_order):
    order = an_order(seed_order)
    await repository.add(order)
    assert len(await repository.claim("w1", limit=10, lease=LEASE)) == 1
    assert await repository.claim("w2", limit=10, lease=LEASE) == []
    await repository.release("w1", order.id, error="prefect down", retry_in=timedelta(0))
    (entry,) = await repository.claim("w2", limit=10, lease=EXPIRED)
    assert entry.attempts == 2
    (expired,) = await repository.claim("w3", limit=10, lease=LEASE)  # w2's lease had already ended
    assert expired.order_id == order.id
    await repository.done(order.id)
    assert await repository.pending_count() == 0
    assert (await repository.get(order.id)).id == order.id


async def test_two_workers_claiming_at_once_never_share_an_entry(open_repository, seed_order):
    one, two = open_repository(), open_repository()
    ids = await add_orders(one, seed_order, 10)
    claims = await asyncio.gather(*(repository.claim(f"w{n}", limit=4, lease=LEASE)
                                    for n, repository in enumerate([one, two] * 3)))
    claimed = [entry.order_id for entries in claims for entry in entries]
    assert len(claimed) == len(set(claimed))
    claimed += [entry.order_id for entry in await one.claim("late", limit=10, lease=LEASE)]
    assert sorted(claimed) == sorted(ids)


async def test_only_the_holder_of_a_claim_can_renew_or_release_it(repository, seed_order):
    order = an_order(seed_order)
    await repository.add(order)
    await repository.claim("w1", limit=1, lease=EXPIRED)
    await repository.renew("w2", [order.id], lease=LEASE)
    await repository.release("w2", order.id, error="not mine", retry_in=timedelta(hours=1))
    (entry,) = await repository.claim("w3", limit=1, lease=EXPIRED)  # still due: w2 changed nothing
    await repository.renew("w3", [order.id], lease=LEASE)
    assert entry.order_id == order.id
    assert await repository.claim("w4", limit=1, lease=LEASE) == []


async def test_saga_updates_and_outbox_writes_racing_on_one_order_keep_both(open_repository, seed_order):
    one, two = open_repository(), open_repository()
    order = an_order(seed_order)
    await one.add(order)
    await one.claim("w1", limit=1, lease=LEASE)
    await asyncio.gather(
        one.release("w1", order.id, error="flaky", retry_in=timedelta(0)),
        *(two.update(order.id, lambda o, n=n: o.attach_flow_run(f"{o.flow_run_id or ''}{n}")) for n in range(5)),
    )
    assert sorted((await one.get(order.id)).flow_run_id) == list("01234")
    (entry,) = await two.claim("w2", limit=1, lease=LEASE)
    assert entry.attempts == 2


async def test_done_is_harmless_for_unknown_or_finished_orders(repository, seed_order):
    order = an_order(seed_order)
    await repository.add(order)
    await repository.done(order.id)
    await repository.done(order.id)
    await repository.done(UNKNOWN_ID)
    assert await repository.pending_count() == 0
    assert await repository.claim("w1", limit=1, lease=LEASE) == []


# --- Cosmos DB only ----------------------------------------------------------------------------

@pytest.fixture
async def open_cosmos() -> AsyncIterator[Callable]:
    """Opens a Cosmos DB repository for the given settings; all are closed after the test."""
    opened = []

    def open_one(settings: Settings):
        opened.append(create_cosmos_repository(settings))
        return opened[-1]

    yield open_one
    for repository in opened:
        await repository.close()


@asynccontextmanager
async def raw_database(server: CosmosServer, settings: Settings) -> AsyncIterator[DatabaseProxy]:
    """The test's database through the bare SDK, to set up what the adapter would never write itself."""
    async with CosmosClient(server.url, credential=EMULATOR_KEY, enable_endpoint_discovery=False) as client:
        yield await client.create_database_if_not_exists(settings.cosmos_database_name)


async def test_a_redelivery_after_a_crash_between_the_key_and_the_order_stores_the_order(
        cosmos_server, open_cosmos, seed_order):
    settings = cosmos_settings(cosmos_server)
    repository = open_cosmos(settings)
    await repository.pending_count()  # creates the database and container
    order_id = str(uuid.uuid4())
    async with raw_database(cosmos_server, settings) as database:  # what the crashed first attempt left
        await database.get_container_client(settings.cosmos_container_name).create_item(
            {"id": idempotency_record_id("servicebus:message-1"), "type": "idempotencyKey", "orderId": order_id,
             "fingerprint": "body-1", "expiresAt": time.time() + 3600})
    stored = await repository.add(an_order(seed_order), idempotency=keyed("message-1"))
    assert stored.id == order_id and (await repository.get(order_id)).id == order_id
    assert await repository.pending_count() == 1
    with pytest.raises(OrderNotFound):
        await repository.get(idempotency_record_id("servicebus:message-1"))  # a record is not an order


async def test_racing_writers_really_conflict_and_reapply_their_changes(cosmos_server, open_cosmos, seed_order):
    settings = cosmos_settings(cosmos_server)
    one, two = open_cosmos(settings), open_cosmos(settings)
    order = await one.add(an_order(seed_order))
    applied = await race_twenty_updates(one, two, order.id)
    assert len(applied) > 20  # writes met a 412, re-read and re-applied (typically 130-170 calls here)
    assert sorted((await one.get(order.id)).flow_run_id) == TWENTY_LETTERS


async def test_an_unreachable_account_is_unavailable(open_cosmos):
    closed_port = f"AccountEndpoint=http://127.0.0.1:9/;AccountKey={EMULATOR_KEY};"
    with pytest.raises(StoreUnavailable):
        await open_cosmos(Settings(cosmos_connection_string=closed_port)).get(UNKNOWN_ID)


async def test_a_container_not_partitioned_by_id_is_refused(cosmos_server, open_cosmos):
    settings = cosmos_settings(cosmos_server)
    async with raw_database(cosmos_server, settings) as database:
        await database.create_container(settings.cosmos_container_name, partition_key=PartitionKey("/customerId"))
    with pytest.raises(StoreUnavailable, match="partitioned by"):
        await open_cosmos(settings).get(UNKNOWN_ID)


async def test_a_missing_container_is_unavailable_when_creation_is_off(cosmos_server, open_cosmos):
    with pytest.raises(StoreUnavailable):
        await open_cosmos(cosmos_settings(cosmos_server, cosmos_create_if_missing=False)).get(UNKNOWN_ID)
