"""`OrderService.status_changes` over `OrderChanges`, run against every store: SQLite and Cosmos DB.

Two containers share one store, as the gateway (the subscriber) and the worker (the saga) do; the saga runs
with the embedded services, as fast as it can.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from fulfillment.bootstrap import Container, bootstrap
from fulfillment.domain import Actor, Forbidden, OrderNotFound, OrderStatus, Step
from fulfillment.settings import Settings

S = OrderStatus
COMPLETED_PATH = [S.PROCESSING, S.INVENTORY_RESERVED, S.PAYMENT_PROCESSED, S.SHIPPED, S.COMPLETED]
FAILED_PATH = [S.PROCESSING, S.INVENTORY_RESERVED, S.PAYMENT_PROCESSED, S.COMPENSATING, S.FAILED]
OPERATOR = Actor.trusted("test")


@pytest.fixture(params=["sqlite", "cosmos"])
def store_settings(request, tmp_path) -> Settings:
    settings = Settings(data_dir=tmp_path, prefect_api_url="http://127.0.0.1:9/api", retry_base_seconds=0.001)
    if request.param == "cosmos":
        server = request.getfixturevalue("cosmos_server")
        settings = settings.model_copy(update={"cosmos_connection_string": server.connection_string,
                                               "cosmos_database_name": f"changes-{uuid.uuid4().hex[:12]}"})
    return settings


@pytest.fixture
async def gateway(store_settings) -> AsyncIterator[Container]:
    container = bootstrap(store_settings)
    yield container
    await container.aclose()


@pytest.fixture
async def worker(store_settings) -> AsyncIterator[Container]:
    container = bootstrap(store_settings)
    yield container
    await container.aclose()


def hazmat(seed_order) -> dict:
    """Fails CreateShipment: the saga compensates and the order ends failed."""
    return {**seed_order, "items": [{**seed_order["items"][0], "productId": "hazmat-1"}]}


@pytest.mark.parametrize("fails", [False, True], ids=["completes", "fails"])
@pytest.mark.parametrize("subscriber", ["follows", "sleeps through the saga"])
async def test_every_status_is_reported_once_and_in_order_however_fast_the_saga(gateway, worker, seed_order,
                                                                                fails, subscriber):
    order = await gateway.order_service.place(hazmat(seed_order) if fails else seed_order, source="test",
                                              actor=OPERATOR)
    changes = gateway.order_service.status_changes(order.id, actor=OPERATOR)
    first, _ = await anext(changes)
    if subscriber == "follows":
        saga = asyncio.create_task(worker.saga.run(order.id))
        statuses = [first.status, *[change.status async for change, _ in changes]]
        await saga
    else:
        await worker.saga.run(order.id)
        statuses = [first.status, *[change.status async for change, _ in changes]]
    assert statuses == (FAILED_PATH if fails else COMPLETED_PATH)


async def test_a_late_subscriber_gets_the_current_status_first_then_what_follows(gateway, worker, seed_order,
                                                                                 store_settings, report_figure):
    order = await gateway.order_service.place(seed_order, source="test", actor=OPERATOR)
    await worker.orders.update(order.id, lambda o: o.record_step(Step.RESERVE_INVENTORY, "res-1"))
    changes = gateway.order_service.status_changes(order.id, actor=OPERATOR)
    current, seen = await anext(changes)
    assert current.status is S.INVENTORY_RESERVED and seen.saga.reservation_id == "res-1"

    written = time.perf_counter()
    await worker.orders.update(order.id, lambda o: o.record_step(Step.PROCESS_PAYMENT, "tx-1"))
    following, seen = await anext(changes)
    delay_ms = (time.perf_counter() - written) * 1000
    assert following.status is S.PAYMENT_PROCESSED and seen.saga.transaction_id == "tx-1"
    await changes.aclose()
    store = "Cosmos DB" if store_settings.cosmos_connection_string else "SQLite"
    report_figure(f"status push ({store}): a status written by another store instance reached the subscriber "
                  f"{delay_ms:.0f} ms after its write began")


async def test_a_finished_order_answers_its_final_status_and_ends(gateway, worker, seed_order):
    order = await gateway.order_service.place(seed_order, source="test", actor=OPERATOR)
    await worker.saga.run(order.id)
    assert [change.status async for change, _ in gateway.order_service.status_changes(order.id, actor=OPERATOR)] \
        == [S.COMPLETED]


async def test_a_customer_watches_its_own_orders_only(gateway, seed_order):
    order = await gateway.order_service.place(seed_order, source="test", actor=OPERATOR)
    owner = Actor.customer("owner", seed_order["customerId"])
    assert (await anext(gateway.order_service.status_changes(order.id, actor=owner)))[0].status is S.PROCESSING
    with pytest.raises(Forbidden):
        await anext(gateway.order_service.status_changes(order.id, actor=Actor.customer("other", "cust-other")))
    with pytest.raises(OrderNotFound):
        await anext(gateway.order_service.status_changes(str(uuid.uuid4()), actor=OPERATOR))


async def test_a_watch_skips_writes_to_other_orders(gateway, worker, seed_order):
    watched = await gateway.order_service.place(seed_order, source="test", actor=OPERATOR)
    other = await gateway.order_service.place(seed_order, source="test", actor=OPERATOR)
    versions = gateway.orders.watch(watched.id)
    assert (await anext(versions)).status is S.PROCESSING
    await worker.orders.update(other.id, lambda o: o.attach_flow_run("run-other"))
    await worker.orders.update(watched.id, lambda o: o.attach_flow_run("run-watched"))
    assert (await anext(versions)).flow_run_id == "run-watched"
    await versions.aclose()
