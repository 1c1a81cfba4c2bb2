"""The embedded SQLite services as separate processes share them (the order store: test_repository_contract.py)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from fulfillment.adapters.sqlite_services import EmbeddedServices, FaultInjector, SqliteInventory
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
