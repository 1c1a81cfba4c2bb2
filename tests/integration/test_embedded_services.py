"""The embedded SQLite services as separate processes share them (the order store: test_repository_contract.py),
and the inventory's model: a stock count is of units on hand, of which orders in flight hold some until they
are released or shipped."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from fulfillment.adapters.sqlite_services import EmbeddedServices, FaultInjector, SqliteInventory, SqliteShipping
from fulfillment.domain import OrderItem, StepRefused, TransientFault


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


@pytest.fixture
async def services(tmp_path):
    store = EmbeddedServices(tmp_path / "services.db", FaultInjector(0))
    yield store
    await store.close()


def five(product_id: str = "prod-1") -> list[OrderItem]:
    return [OrderItem(product_id, "Thing", 5, Decimal("1.00"))]


async def test_a_stock_count_keeps_the_units_held_by_orders_in_flight(services):
    inventory = SqliteInventory(services, default_stock=100)
    await inventory.reserve("order-1", five())
    await inventory.set_stock("prod-1", 40)
    assert await inventory.available("prod-1") == 35
    assert await inventory.release("order-1") is True
    assert await inventory.available("prod-1") == 40


async def test_shipped_units_leave_the_warehouse_and_are_no_longer_held(services):
    inventory, shipping = SqliteInventory(services, default_stock=100), SqliteShipping(services)
    await inventory.reserve("order-1", five())
    await shipping.create_shipment("order-1", "cust-1", five())
    assert await inventory.available("prod-1") == 95
    await inventory.set_stock("prod-1", 95)  # the warehouse counts what is left after the shipment
    assert await inventory.available("prod-1") == 95
    assert await inventory.release("order-1") is False  # nothing to give back: the units have gone
    assert await inventory.available("prod-1") == 95


async def test_a_count_below_the_held_units_leaves_nothing_to_reserve_until_released(services):
    inventory = SqliteInventory(services, default_stock=100)
    await inventory.reserve("order-1", five())
    await inventory.set_stock("prod-1", 3)
    assert await inventory.available("prod-1") == 0
    with pytest.raises(StepRefused, match="1 wanted, 0 available"):
        await inventory.reserve("order-2", [OrderItem("prod-1", "Thing", 1, Decimal("1.00"))])
    await inventory.release("order-1")
    assert await inventory.available("prod-1") == 3


async def test_a_count_only_keeps_the_units_held_of_its_own_product(services):
    inventory = SqliteInventory(services, default_stock=100)
    await inventory.reserve("order-1", [*five("prod-1"), OrderItem("prod-2", "Other", 7, Decimal("1.00"))])
    await inventory.set_stock("prod-2", 10)
    await inventory.set_stock("prod-3", 10)
    assert [await inventory.available(p) for p in ("prod-1", "prod-2", "prod-3")] == [95, 3, 10]
