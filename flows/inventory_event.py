"""Inventory events as a Prefect flow: one run per event, named `inventory-<productId>`."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.runtime import container
from fulfillment.ports import InventoryEvent
from fulfillment.service.events import EventType, low_stock_alert


@task(name="SetStock", cache_policy=NO_CACHE)
async def set_stock(event: InventoryEvent) -> None:
    await container().inventory.set_stock(event.product_id, event.quantity_available)


@task(name="RaiseLowStockAlert", cache_policy=NO_CACHE)
async def raise_low_stock_alert(event: InventoryEvent) -> None:
    low_stock_alert(event)


@flow(name="inventory-event", flow_run_name="inventory-{event[product_id]}", persist_result=False,
      validate_parameters=False)
async def inventory_event(event: dict[str, Any]) -> str:
    """Sets the product's available stock (`Inventory.StockUpdated`) or raises a low-stock alert."""
    inventory = InventoryEvent(**event)
    if inventory.event_type == EventType.LOW_STOCK:
        await raise_low_stock_alert(inventory)
        return f"low stock: {inventory.product_id} at {inventory.quantity_available}"
    await set_stock(inventory)
    return f"stock of {inventory.product_id} set to {inventory.quantity_available}"
