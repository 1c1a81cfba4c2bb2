"""The `InventoryEventInbox` contract, run against every store: SQLite and Cosmos DB.

As in test_repository_contract.py, the Cosmos DB leg runs the real async SDK against the session's local
server, a database of its own per test; "another instance" is another inbox object with its own connection
to the same store, as after a restart or in another process.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from fulfillment.adapters.cosmos_inventory_events import (
    create_cosmos_inventory_event_inbox,
    inventory_event_document_id,
)
from fulfillment.adapters.cosmos_orders import create_cosmos_repository
from fulfillment.adapters.sqlite_inventory_events import SqliteInventoryEventInbox
from fulfillment.domain import IdempotencyKeyReused, OrderNotFound
from fulfillment.ports import InventoryEvent, StockTurn
from fulfillment.service.requests import new_order, parse_create_order
from fulfillment.settings import Settings
from tests.cosmos_server.server import CosmosServer

LEASE = timedelta(seconds=30)
EXPIRED = timedelta(seconds=-1)
LATER = timedelta(hours=1)
HOLD = timedelta(minutes=1)
T0 = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def an_event(event_id: str = "event-1", *, at: datetime = T0, product: str = "prod-100") -> InventoryEvent:
    return InventoryEvent(event_id=event_id, event_type="Inventory.StockUpdated", product_id=product,
                          quantity_available=7, event_time=at)


def seconds(n: float) -> datetime:
    return T0 + timedelta(seconds=n)


def cosmos_settings(server: CosmosServer) -> Settings:
    return Settings(cosmos_connection_string=server.connection_string,
                    cosmos_database_name=f"inbox-{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["sqlite", "cosmos"])
def store(request, tmp_path) -> Callable:
    """Opens an inbox instance on this test's store; every call opens another one on the same store."""
    if request.param == "sqlite":
        return lambda: SqliteInventoryEventInbox(tmp_path / "orders.db")
    settings = cosmos_settings(request.getfixturevalue("cosmos_server"))
    return lambda: create_cosmos_inventory_event_inbox(settings)


@pytest.fixture
async def open_inbox(store) -> AsyncIterator[Callable]:
    opened = []

    def open_one():
        opened.append(store())
        return opened[-1]

    yield open_one
    for inbox in opened:
        await inbox.close()


@pytest.fixture
def inbox(open_inbox):
    return open_inbox()


async def test_an_event_id_is_recorded_once_even_across_instances(open_inbox):
    one, another = open_inbox(), open_inbox()
    assert await one.record(an_event()) is True
    assert await one.record(an_event()) is False
    assert await another.record(an_event()) is False
    assert await another.record(an_event("event-2")) is True


async def test_an_event_id_recorded_with_other_content_is_refused(inbox):
    assert await inbox.record(an_event()) is True
    assert await inbox.record(replace(an_event(at=seconds(5)), trace_parent="00-another-delivery-01")) is False
    with pytest.raises(IdempotencyKeyReused):
        await inbox.record(replace(an_event(), quantity_available=8))
    with pytest.raises(IdempotencyKeyReused):
        await inbox.record(an_event(product="prod-other"))
    (claimed, _), = await inbox.claim("w1", limit=10, lease=LEASE)
    assert claimed == an_event()


async def test_a_claimed_event_reads_back_as_recorded_whatever_its_id(inbox):
    event = InventoryEvent(event_id="a/b\\c?d#e" + "x" * 300, event_type="Inventory.LowStock", product_id="prod-200",
                           quantity_available=2, threshold=5, warehouse_id="wh-1", trace_parent="00-ab-cd-01",
                           event_time=datetime(2026, 1, 31, 13, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1))))
    assert await inbox.record(event) is True
    (claimed, attempts), = await inbox.claim("w1", limit=10, lease=LEASE)
    assert (claimed, attempts) == (event, 1)
    assert claimed.event_time == seconds(0.123456) and claimed.event_time.tzinfo is UTC


async def test_a_claimed_event_is_not_claimed_again_until_its_lease_ends(inbox):
    await inbox.record(an_event())
    assert await inbox.claim("w1", limit=10, lease=EXPIRED) == [(an_event(), 1)]
    assert await inbox.claim("w2", limit=10, lease=LEASE) == [(an_event(), 2)]  # w1's lease had ended
    assert await inbox.claim("w3", limit=10, lease=LEASE) == []


async def test_a_released_event_is_due_again_after_retry_in(inbox):
    await inbox.record(an_event())
    await inbox.claim("w1", limit=10, lease=LEASE)
    await inbox.release("w1", "event-1", error="prefect down", retry_in=timedelta(0))
    assert await inbox.claim("w2", limit=10, lease=LEASE) == [(an_event(), 2)]
    await inbox.release("w2", "event-1", error="prefect down", retry_in=LATER)
    assert await inbox.claim("w3", limit=10, lease=LEASE) == []


async def test_an_applied_event_is_never_claimed_again_and_stays_recognised(open_inbox):
    one, another = open_inbox(), open_inbox()
    await one.record(an_event())
    await one.claim("w1", limit=10, lease=EXPIRED)
    await one.done("event-1")
    await one.release("w1", "event-1", error="too late", retry_in=timedelta(0))
    await one.done("event-1")
    await one.done("never-recorded")
    assert await another.claim("w2", limit=10, lease=LEASE) == []
    assert await another.record(an_event()) is False


async def test_only_the_holder_of_a_claim_can_renew_or_release_it(inbox):
    await inbox.record(an_event())
    await inbox.claim("w1", limit=10, lease=EXPIRED)
    await inbox.renew("w2", ["event-1"], lease=LEASE)
    await inbox.release("w2", "event-1", error="not mine", retry_in=LATER)
    assert await inbox.claim("w3", limit=10, lease=EXPIRED) == [(an_event(), 2)]  # still due: w2 changed nothing
    await inbox.renew("w3", ["event-1", "never-recorded"], lease=LEASE)
    assert await inbox.claim("w4", limit=10, lease=LEASE) == []


async def test_two_workers_claiming_at_once_never_share_an_event(open_inbox):
    one, two = open_inbox(), open_inbox()
    event_ids = [f"event-{n}" for n in range(10)]
    for event_id in event_ids:
        await one.record(an_event(event_id))
    claims = await asyncio.gather(*(inbox.claim(f"w{n}", limit=4, lease=LEASE)
                                    for n, inbox in enumerate([one, two] * 3)))
    claimed = [event.event_id for events in claims for event, _ in events]
    assert len(claimed) == len(set(claimed))
    claimed += [event.event_id for event, _ in await one.claim("late", limit=10, lease=LEASE)]
    assert sorted(claimed) == sorted(event_ids)


# --- Stock updates of a product, in event time -----------------------------------------------------

async def test_the_first_stock_update_of_a_product_applies(inbox):
    assert await inbox.begin_stock_update(an_event(), hold=HOLD) is StockTurn.APPLY


async def test_a_newer_stock_update_applies_after_the_last_one_was_applied(inbox):
    await inbox.begin_stock_update(an_event("e1"), hold=HOLD)
    await inbox.finish_stock_update(an_event("e1"))
    assert await inbox.begin_stock_update(an_event("e2", at=seconds(1)), hold=HOLD) is StockTurn.APPLY


async def test_an_update_older_than_or_as_old_as_the_applied_one_is_stale(open_inbox):
    one, another = open_inbox(), open_inbox()
    await one.begin_stock_update(an_event("e2", at=seconds(2)), hold=HOLD)
    await one.finish_stock_update(an_event("e2", at=seconds(2)))
    assert await another.begin_stock_update(an_event("e1", at=seconds(1)), hold=HOLD) is StockTurn.STALE
    assert await another.begin_stock_update(an_event("e2-twin", at=seconds(2)), hold=HOLD) is StockTurn.STALE
    assert await another.begin_stock_update(an_event("e3", at=seconds(3)), hold=HOLD) is StockTurn.APPLY


async def test_an_update_being_applied_already_makes_older_ones_stale(inbox):
    await inbox.begin_stock_update(an_event("e2", at=seconds(2)), hold=HOLD)
    assert await inbox.begin_stock_update(an_event("e1", at=seconds(1)), hold=HOLD) is StockTurn.STALE


async def test_a_rerun_of_an_update_cut_short_applies_again_and_of_an_applied_one_is_stale(open_inbox):
    before_crash, after_restart = open_inbox(), open_inbox()
    await before_crash.begin_stock_update(an_event(), hold=HOLD)  # the process dies before finishing
    assert await after_restart.begin_stock_update(an_event(), hold=HOLD) is StockTurn.APPLY
    await after_restart.finish_stock_update(an_event())
    assert await after_restart.begin_stock_update(an_event(), hold=HOLD) is StockTurn.STALE  # its `done` was lost


async def test_a_rerun_after_a_newer_update_was_applied_is_stale(inbox):
    for event in (an_event("e1", at=seconds(1)), an_event("e2", at=seconds(2))):
        await inbox.begin_stock_update(event, hold=HOLD)
        await inbox.finish_stock_update(event)
    assert await inbox.begin_stock_update(an_event("e1", at=seconds(1)), hold=HOLD) is StockTurn.STALE


async def test_a_rerun_cut_short_after_a_newer_update_took_over_is_stale(inbox):
    await inbox.begin_stock_update(an_event("e1", at=seconds(1)), hold=EXPIRED)
    assert await inbox.begin_stock_update(an_event("e2", at=seconds(2)), hold=HOLD) is StockTurn.APPLY
    assert await inbox.begin_stock_update(an_event("e1", at=seconds(1)), hold=HOLD) is StockTurn.STALE
    await inbox.finish_stock_update(an_event("e1", at=seconds(1)))  # changes nothing: e2 is the latest
    assert await inbox.begin_stock_update(an_event("e3", at=seconds(3)), hold=HOLD) is StockTurn.WAIT


async def test_a_newer_update_waits_while_an_older_one_is_being_applied(open_inbox):
    one, another = open_inbox(), open_inbox()
    await one.begin_stock_update(an_event("e1", at=seconds(1)), hold=HOLD)
    assert await another.begin_stock_update(an_event("e2", at=seconds(2)), hold=HOLD) is StockTurn.WAIT
    await one.finish_stock_update(an_event("e1", at=seconds(1)))
    assert await another.begin_stock_update(an_event("e2", at=seconds(2)), hold=HOLD) is StockTurn.APPLY


async def test_a_newer_update_takes_over_once_the_older_ones_hold_ran_out(inbox):
    await inbox.begin_stock_update(an_event("e1", at=seconds(1)), hold=EXPIRED)
    assert await inbox.begin_stock_update(an_event("e2", at=seconds(2)), hold=HOLD) is StockTurn.APPLY


async def test_the_updates_of_each_product_are_ordered_apart(inbox):
    await inbox.begin_stock_update(an_event("a2", at=seconds(2), product="prod-a"), hold=HOLD)
    assert await inbox.begin_stock_update(an_event("b1", at=seconds(1), product="prod-b"), hold=HOLD) is StockTurn.APPLY
    assert await inbox.begin_stock_update(an_event("a/1", at=seconds(1), product="prod/a#?"), hold=HOLD) is (
        StockTurn.APPLY)


async def test_concurrent_updates_of_a_product_admit_exactly_one(open_inbox):
    one, two = open_inbox(), open_inbox()
    events = [an_event(f"e{n}", at=seconds(n)) for n in range(8)]
    turns = await asyncio.gather(*(inbox.begin_stock_update(event, hold=HOLD)
                                   for inbox, event in zip([one, two] * 4, events, strict=True)))
    assert turns.count(StockTurn.APPLY) == 1


# --- Cosmos DB only ----------------------------------------------------------------------------

async def test_events_share_the_orders_container_unseen_by_the_order_repository(cosmos_server, seed_order):
    settings = cosmos_settings(cosmos_server)
    inbox, orders = create_cosmos_inventory_event_inbox(settings), create_cosmos_repository(settings)
    try:
        await inbox.record(an_event())
        await inbox.begin_stock_update(an_event(), hold=HOLD)
        order = await orders.add(new_order(parse_create_order(seed_order)))
        assert (await orders.list_by_customer(order.customer_id, limit=10)).orders == [order]
        assert [entry.order_id for entry in await orders.claim("w1", limit=10, lease=LEASE)] == [order.id]
        assert await orders.pending_count() == 1
        with pytest.raises(OrderNotFound):
            await orders.get(inventory_event_document_id("event-1"))
        assert await inbox.claim("w1", limit=10, lease=LEASE) == [(an_event(), 1)]
    finally:
        await inbox.close()
        await orders.close()


# --- SQLite only -------------------------------------------------------------------------------

async def test_an_event_stored_before_events_had_a_time_takes_its_receipt_time(tmp_path):
    inbox = SqliteInventoryEventInbox(tmp_path / "orders.db")
    try:
        await inbox.record(an_event())
        received_at = T0.timestamp() - 60
        legacy = '{"event_id": "event-1", "event_type": "Inventory.StockUpdated", "product_id": "prod-100", ' \
                 '"quantity_available": 7, "threshold": null, "warehouse_id": null, "trace_parent": null}'
        with closing(sqlite3.connect(tmp_path / "orders.db")) as db, db:
            db.execute("UPDATE inventory_events SET event = ?, received_at = ?", (legacy, received_at))
        (event, _), = await inbox.claim("w1", limit=10, lease=LEASE)
        assert event.event_time == T0 - timedelta(seconds=60)
    finally:
        await inbox.close()
