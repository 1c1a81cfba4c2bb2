"""Inventory events as a Prefect flow: one run per event, named `inventory-<productId>`."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.runtime import container
from fulfillment.ports import InventoryEvent
from fulfillment.service.events import EventType, apply_stock_update, low_stock_alert


@task(name="SetStock", cache_policy=NO_CACHE)
async def set_stock(event: InventoryEvent) -> bool:
    """False when a newer stock update of the product was applied, so this one is skipped."""
    services = container()
    return await apply_stock_update(services.inventory_events, services.inventory, event)


@task(name="RaiseLowStockAlert", cache_policy=NO_CACHE)
async def raise_low_stock_alert(event: InventoryEvent) -> None:
    low_stock_alert(event)


@flow(name="inventory-event", flow_run_name="inventory-{event[product_id]}", persist_result=False,
      validate_parameters=False)
async def inventory_event(event: dict[str, Any]) -> str:
    """Sets the product's stock (`Inventory.StockUpdated`, in event time per product) or raises a low-stock
    alert. `event` is an `InventoryEvent` as a dict, its time a datetime or, through the Prefect API, a string."""
    inventory = InventoryEvent.from_json(event)
    if inventory.event_type == EventType.LOW_STOCK:
        await raise_low_stock_alert(inventory)
        return f"low stock: {inventory.product_id} at {inventory.quantity_available}"
    if not await set_stock(inventory):
        return f"skipped: not newer than the last stock update of {inventory.product_id}"
    return f"stock of {inventory.product_id} set to {inventory.quantity_available}"
