"""The SQLite order store, outbox and embedded services, as separate processes would share them."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

import pytest

from fulfillment.adapters.sqlite_orders import SqliteOrderRepository
from fulfillment.adapters.sqlite_services import EmbeddedServices, FaultInjector, SqliteInventory
from fulfillment.domain import OrderItem, OrderNotFound, StepRefused, TransientFault
from fulfillment.service.requests import new_order, parse_create_order

LEASE = timedelta(seconds=30)


@pytest.fixture
async def repository(tmp_path):
    repository = SqliteOrderRepository(tmp_path / "orders.db")
    yield repository
    await repository.close()


def an_order(seed_order, customer="cust-001"):
    return new_order(parse_create_order({**seed_order, "customerId": customer}))


async def test_an_added_order_reads_back_equal_and_is_enqueued(repository, seed_order):
    order = an_order(seed_order)
    await repository.add(order)
    stored = await repository.get(order.id)
    assert stored.total_amount == Decimal("149.93") and stored.items == order.items
    assert stored.created_at == order.created_at
    assert [e.order_id for e in await repository.claim("w1", limit=10, lease=LEASE)] == [order.id]


async def test_the_same_idempotency_key_yields_the_first_order_and_one_saga(repository, seed_order):
    first = await repository.add(an_order(seed_order), idempotency_key="message-1")
    second = await repository.add(an_order(seed_order), idempotency_key="message-1")
    assert second.id == first.id
    assert await repository.pending_count() == 1


async def test_unknown_orders_are_not_found(repository):
    with pytest.raises(OrderNotFound):
        await repository.get("00000000-0000-0000-0000-000000000000")


async def test_a_claimed_entry_is_not_claimed_twice_until_its_lease_ends(repository, seed_order):
    order = an_order(seed_order)
    await repository.add(order)
    assert len(await repository.claim("w1", limit=10, lease=LEASE)) == 1
    assert await repository.claim("w2", limit=10, lease=LEASE) == []
    await repository.release("w1", order.id, error="prefect down", retry_in=timedelta(0))
    (entry,) = await repository.claim("w2", limit=10, lease=timedelta(seconds=-1))
    assert entry.attempts == 2
    (expired,) = await repository.claim("w3", limit=10, lease=LEASE)  # w2's lease had already ended
    assert expired.order_id == order.id
    await repository.done(order.id)
    assert await repository.pending_count() == 0


async def test_two_processes_updating_one_order_lose_neither_change(tmp_path, seed_order):
    one, two = SqliteOrderRepository(tmp_path / "o.db"), SqliteOrderRepository(tmp_path / "o.db")
    order = an_order(seed_order)
    await one.add(order)
    try:
        await asyncio.gather(*(
            repo.update(order.id, lambda o, n=n: o.attach_flow_run(f"{o.flow_run_id or ''}{chr(65 + n)}"))
            for n, repo in enumerate([one, two] * 10)
        ))
        stored = await one.get(order.id)
    finally:
        await one.close()
        await two.close()
    assert sorted(stored.flow_run_id) == [chr(65 + n) for n in range(20)]


async def test_listing_is_newest_first_and_pages_without_gaps(repository, seed_order):
    ids = []
    for _ in range(7):
        ids.append((await repository.add(an_order(seed_order))).id)
    await repository.add(an_order(seed_order, customer="someone-else"))
    seen, cursor = [], None
    while True:
        page = await repository.list_by_customer("cust-001", limit=3, cursor=cursor)
        seen += [order.id for order in page.orders]
        if not (cursor := page.next_cursor):
            break
    assert seen == list(reversed(ids))


async def test_concurrent_reservations_from_two_processes_never_oversell(tmp_path):
    stores = [EmbeddedServices(tmp_path / "services.db", FaultInjector(0)) for _ in range(2)]
    inventories = [SqliteInventory(store, default_stock=10) for store in stores]
    item = OrderItem("prod-1", "Thing", 3, Decimal("1.00"))

    async def reserve(n):
        try:
            return await inventories[n % 2].reserve(f"order-{n}", [item])
        except StepRefused:
            return None

    try:
        outcomes = await asyncio.gather(*(reserve(n) for n in range(8)))
        left = await inventories[0].available("prod-1")
    finally:
        for store in stores:
            await store.close()
    assert sum(outcome is not None for outcome in outcomes) == 3
    assert left == 1


async def test_injected_faults_are_transient(tmp_path):
    store = EmbeddedServices(tmp_path / "services.db", FaultInjector(0.999))
    try:
        with pytest.raises(TransientFault):
            await SqliteInventory(store, default_stock=10).reserve("o", [])
    finally:
        await store.close()
