"""`Inventory.StockUpdated` applied in event time per product (`apply_stock_update`), over the SQLite inbox and
the embedded inventory: whatever order events arrive or run in, a run dies or a `done` is lost."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY
from pydantic import TypeAdapter

from fulfillment.adapters.sqlite_inventory_events import SqliteInventoryEventInbox
from fulfillment.adapters.sqlite_services import EmbeddedServices, FaultInjector, SqliteInventory
from fulfillment.domain import OrderItem
from fulfillment.ports import InventoryEvent
from fulfillment.service.events import StockUpdateUnderWay, apply_stock_update

T0 = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
PRODUCT = "prod-1"


def stock_updated(event_id: str, seconds: float, quantity: int) -> InventoryEvent:
    return InventoryEvent(event_id=event_id, event_type="Inventory.StockUpdated", product_id=PRODUCT,
                          quantity_available=quantity, event_time=T0 + timedelta(seconds=seconds))


class Warehouse:
    """The embedded inventory, with a stock write that can be slowed down or made to fail once."""

    def __init__(self, inventory: SqliteInventory):
        self.inventory = inventory
        self.delay, self.fail_next = 0.0, False

    async def set_stock(self, product_id: str, quantity: int) -> None:
        await asyncio.sleep(self.delay)
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("the process died before its stock write")
        await self.inventory.set_stock(product_id, quantity)

    async def available(self, product_id: str = PRODUCT) -> int:
        return await self.inventory.available(product_id)


@pytest.fixture
async def inbox(tmp_path):
    inbox = SqliteInventoryEventInbox(tmp_path / "orders.db")
    yield inbox
    await inbox.close()


@pytest.fixture
async def warehouse(tmp_path):
    services = EmbeddedServices(tmp_path / "services.db", FaultInjector(0))
    yield Warehouse(SqliteInventory(services, default_stock=100))
    await services.close()


async def apply(inbox, warehouse, event: InventoryEvent, **options) -> bool:
    return await apply_stock_update(inbox, warehouse, event, **options)


async def test_updates_arriving_out_of_order_leave_the_newest_count(inbox, warehouse):
    assert await apply(inbox, warehouse, stock_updated("e2", 2, 40)) is True
    assert await apply(inbox, warehouse, stock_updated("e1", 1, 90)) is False
    assert await warehouse.available() == 40


async def test_a_skipped_update_logs_one_info_line_and_is_counted(inbox, warehouse, caplog):
    await apply(inbox, warehouse, stock_updated("e2", 2, 40))
    before = REGISTRY.get_sample_value("order_saga_stale_stock_events_total") or 0
    with caplog.at_level(logging.INFO, logger="fulfillment.events"):
        await apply(inbox, warehouse, stock_updated("e1", 1, 90))
    assert [(r.levelno, r.event_id) for r in caplog.records if r.name == "fulfillment.events"] == [
        (logging.INFO, "e1")]
    assert REGISTRY.get_sample_value("order_saga_stale_stock_events_total") == before + 1


async def test_an_update_whose_run_died_before_its_write_is_applied_by_its_rerun(inbox, warehouse):
    warehouse.fail_next = True
    with pytest.raises(ConnectionError):
        await apply(inbox, warehouse, stock_updated("e2", 2, 40))
    assert await apply(inbox, warehouse, stock_updated("e1", 1, 90)) is False  # older than the one cut short
    assert await apply(inbox, warehouse, stock_updated("e2", 2, 40)) is True
    assert await warehouse.available() == 40


async def test_a_rerun_whose_done_was_lost_changes_nothing_once_a_newer_update_applied(inbox, warehouse):
    await apply(inbox, warehouse, stock_updated("e1", 1, 10))
    await apply(inbox, warehouse, stock_updated("e2", 2, 20))
    assert await apply(inbox, warehouse, stock_updated("e1", 1, 10)) is False
    assert await apply(inbox, warehouse, stock_updated("e2", 2, 20)) is False  # applied already: not again
    assert await warehouse.available() == 20


async def test_a_newer_update_waits_for_an_older_one_still_being_written(inbox, warehouse):
    warehouse.delay = 0.3  # e1's write lands long after e2 was admitted

    async def newer_shortly_after():
        await asyncio.sleep(0.05)
        return await apply(inbox, warehouse, stock_updated("e2", 2, 20))

    assert await asyncio.gather(apply(inbox, warehouse, stock_updated("e1", 1, 10)), newer_shortly_after()) == [
        True, True]
    assert await warehouse.available() == 20


async def test_a_newer_update_gives_up_waiting_after_its_patience_to_be_retried(inbox, warehouse):
    await inbox.begin_stock_update(stock_updated("e1", 1, 10), hold=timedelta(minutes=1))  # its run hangs
    with pytest.raises(StockUpdateUnderWay):
        await apply(inbox, warehouse, stock_updated("e2", 2, 20), patience_seconds=0.05)
    assert await warehouse.available() == 100


async def test_a_stock_update_keeps_the_units_under_reservation(inbox, warehouse):
    await warehouse.inventory.reserve("order-1", [OrderItem(PRODUCT, "Thing", 5, Decimal("1.00"))])
    await apply(inbox, warehouse, stock_updated("e1", 1, 40))
    assert await warehouse.available() == 35


def as_json_parameter(event: InventoryEvent) -> dict:
    """What a flow run started through the Prefect API receives: the parameter in pydantic's JSON mode."""
    return TypeAdapter(dict).dump_python(asdict(event), mode="json")


@pytest.mark.parametrize("as_parameter", [asdict, as_json_parameter, InventoryEvent.to_json])
def test_an_event_reads_back_from_its_flow_run_parameter(as_parameter):
    event = stock_updated("e1", 1.5, 10)
    assert InventoryEvent.from_json(as_parameter(event)) == event
