"""The Service Bus adapter with the real azure-servicebus SDK against a local AMQP 1.0 broker.

The listener places orders through the real service and SQLite store; faults are injected around the real
repository. Messages are sent, and dead-letter and `order-failures` queues read, with the SDK.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_asyncio
from azure.servicebus import ServiceBusMessage
from prometheus_client import REGISTRY

from deployments.cli import main as order_saga
from deployments.cli import read_orders
from deployments.servicebus_listener import client_factory_or_exit
from fulfillment.adapters.servicebus import (
    ClientFactory,
    ServiceBusFailureAnnouncer,
    ServiceBusOrderListener,
    client_factory,
)
from fulfillment.adapters.sqlite_orders import SqliteOrderRepository
from fulfillment.bootstrap import Container, bootstrap
from fulfillment.domain import Actor, Order, OrderStatus, StoreUnavailable
from fulfillment.ports import IdempotencyKey
from fulfillment.settings import Settings
from tests.conftest import SEED_ORDER
from tests.servicebus_broker import LocalServiceBus
from tests.servicebus_broker.helpers import LOCK_SECONDS, ORDER_FAILURES, eventually, receive

pytest_plugins = ["tests.servicebus_broker.fixtures"]

on_module_loop = pytest.mark.asyncio(loop_scope="module")  # the loop of the module-scoped SDK clients
ROOT = Path(__file__).resolve().parents[2]
TRUSTED = Actor.trusted("test")

BeforeAdd = Callable[[Order, int], Awaitable[None]]


class FaultyOrders:
    """The real SQLite repository, with a hook that runs before each `add` (to fail or stall it)."""

    def __init__(self, real: SqliteOrderRepository, before_add: BeforeAdd):
        self._real = real
        self._before_add = before_add
        self.add_calls = 0

    async def add(self, order: Order, *, idempotency: IdempotencyKey | None = None) -> Order:
        self.add_calls += 1
        await self._before_add(order, self.add_calls)
        return await self._real.add(order, idempotency=idempotency)

    def __getattr__(self, name: str):
        return getattr(self._real, name)


def an_order(customer: str, **item_changes) -> dict:
    order = json.loads(json.dumps(SEED_ORDER))
    order["customerId"] = customer
    order["items"][0].update(item_changes)
    return order


def a_message(body: dict | str | bytes, message_id: str | None = None) -> ServiceBusMessage:
    encoded = body if isinstance(body, str | bytes) else json.dumps(body)
    return ServiceBusMessage(encoded, message_id=message_id or str(uuid.uuid4()))


def connect_to(servicebus: LocalServiceBus, settings: Settings) -> ClientFactory:
    connect = client_factory(settings, {"ServiceBusConnection": servicebus.connection_string})
    assert connect is not None
    return connect


async def orders_of(container: Container, customer: str) -> list[Order]:
    return (await container.order_service.list_by_customer(customer, actor=TRUSTED, first=100)).orders


@pytest_asyncio.fixture(loop_scope="module")
async def make_container(settings) -> AsyncIterator[Callable[..., Container]]:
    """Builds the real service side on SQLite; `before_add` wraps the repository's `add` with a fault."""
    containers: list[Container] = []

    def make(before_add: BeforeAdd | None = None, **changes) -> Container:
        configured = settings.model_copy(update=changes)
        overrides = {}
        if before_add is not None:
            overrides["orders"] = FaultyOrders(SqliteOrderRepository(configured.data_dir / "orders.db"), before_add)
        containers.append(bootstrap(configured, **overrides))
        return containers[-1]

    yield make
    for container in containers:
        await container.aclose()


@asynccontextmanager
async def listening(container: Container, servicebus: LocalServiceBus, **options) -> AsyncIterator[asyncio.Event]:
    """Runs a listener until the block ends; the event it yields stops it early."""
    connect = connect_to(servicebus, container.settings)
    listener = ServiceBusOrderListener(container.order_service, connect, container.settings,
                                       abandon_delay_seconds=0.05, reconnect_delay_seconds=0.2, **options)
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def stat(servicebus: LocalServiceBus, name: str) -> int:
    return servicebus.stats().get(name, 0)


def all_settled(servicebus: LocalServiceBus, *, completed: int) -> bool:
    counts = servicebus.counts()
    return counts["orders"] == 0 and counts["locked"] == 0 and stat(servicebus, "completed") >= completed


# --- the listener ------------------------------------------------------------------------------


@on_module_loop
async def test_a_valid_message_becomes_an_order_with_one_saga_and_is_completed(
        empty_servicebus, orders_sender, make_container, caplog):
    caplog.set_level(logging.INFO, logger="fulfillment.servicebus")
    container = make_container()
    async with listening(container, empty_servicebus):
        await orders_sender.send_messages(a_message(an_order("cust-valid"), message_id="message-valid"))
        await eventually(lambda: stat(empty_servicebus, "completed") == 1, what="the message completed")

    (order,) = await orders_of(container, "cust-valid")
    assert order.status is OrderStatus.PROCESSING and str(order.total_amount) == "149.93"
    assert await container.outbox.pending_count() == 1
    assert empty_servicebus.counts() == {
        "orders": 0, "orders/$deadletterqueue": 0, "order-failures": 0, "order-failures/$deadletterqueue": 0,
        "locked": 0}
    (logged,) = [r for r in caplog.records if r.name == "fulfillment.servicebus" and getattr(r, "outcome", None)]
    assert (logged.message_id, logged.order_id, logged.outcome) == ("message-valid", order.id, "completed")


@on_module_loop
async def test_messages_that_cannot_become_orders_are_dead_lettered_with_an_actionable_reason(
        empty_servicebus, orders_sender, dead_letters, make_container):
    async def fail_unexpectedly_for_one_customer(order: Order, call: int) -> None:
        if order.customer_id == "cust-boom":
            raise RuntimeError("disk on fire")

    container = make_container(fail_unexpectedly_for_one_customer)
    messages = {
        "not-json": a_message(b"{customerId: cust-001", message_id="not-json"),
        "wrong-shape": a_message({"customerId": 7, "items": "none"}, message_id="wrong-shape"),
        "breaks-rules": a_message(an_order("cust-rules", quantity=0), message_id="breaks-rules"),
        "unexpected": a_message(an_order("cust-boom"), message_id="unexpected"),
    }
    counted_before = {reason: dead_letters_counted(reason) for reason in DEAD_LETTER_REASONS}
    async with listening(container, empty_servicebus):
        await orders_sender.send_messages(list(messages.values()))
        dead = {m.message_id: m for m in await receive(dead_letters, 4)}

    assert {reason: dead_letters_counted(reason) - counted_before[reason] for reason in DEAD_LETTER_REASONS} == \
        dict.fromkeys(DEAD_LETTER_REASONS, 1)
    expected = {
        "not-json": ("InvalidJson", "not valid JSON"),
        "wrong-shape": ("DeserializationFailed", "customerId: must be a valid string"),
        "breaks-rules": ("ValidationFailed", "items[0].quantity: must be between 1 and 100000, got 0"),
        "unexpected": ("ProcessingFailed", "RuntimeError: disk on fire"),
    }
    assert {key: m.dead_letter_reason for key, m in dead.items()} == {k: v[0] for k, v in expected.items()}
    for key, (_, hint) in expected.items():
        assert hint in str(dead[key].dead_letter_error_description), dead[key].dead_letter_error_description
    assert await container.outbox.pending_count() == 0


DEAD_LETTER_REASONS = ("InvalidJson", "DeserializationFailed", "ValidationFailed", "ProcessingFailed")


def dead_letters_counted(reason: str) -> float:
    return REGISTRY.get_sample_value("order_saga_dead_letters_total", {"reason": reason}) or 0.0


@on_module_loop
async def test_three_deliveries_of_one_message_make_one_order_and_one_saga(
        empty_servicebus, orders_sender, make_container):
    container = make_container()
    async with listening(container, empty_servicebus):
        for _ in range(3):
            await orders_sender.send_messages(a_message(an_order("cust-thrice"), message_id="message-thrice"))
        await eventually(lambda: stat(empty_servicebus, "completed") == 3, what="three completions")

    assert len(await orders_of(container, "cust-thrice")) == 1
    assert await container.outbox.pending_count() == 1


@on_module_loop
async def test_a_message_id_sent_again_with_another_order_is_dead_lettered_and_makes_nothing(
        empty_servicebus, orders_sender, dead_letters, make_container):
    container = make_container()
    async with listening(container, empty_servicebus):
        await orders_sender.send_messages(a_message(an_order("cust-reused"), message_id="message-reused"))
        await eventually(lambda: stat(empty_servicebus, "completed") == 1, what="the first message completed")
        await orders_sender.send_messages(a_message(an_order("cust-reused", quantity=3), message_id="message-reused"))
        (dead,) = await receive(dead_letters, 1)

    assert dead.dead_letter_reason == "ValidationFailed"
    assert "message id was already used for another order body" in str(dead.dead_letter_error_description)
    (order,) = await orders_of(container, "cust-reused")
    assert order.items[0].quantity == 2


@on_module_loop
async def test_a_store_outage_abandons_the_message_until_its_order_is_stored(
        empty_servicebus, orders_sender, make_container, caplog):
    caplog.set_level(logging.INFO, logger="fulfillment.servicebus")

    async def store_down_twice(order: Order, call: int) -> None:
        if call <= 2:
            raise StoreUnavailable("SQLite database orders.db: database is locked")

    container = make_container(store_down_twice)
    async with listening(container, empty_servicebus):
        await orders_sender.send_messages(a_message(an_order("cust-outage"), message_id="message-outage"))
        await eventually(lambda: stat(empty_servicebus, "completed") == 1, what="the message completed")

    assert (stat(empty_servicebus, "abandoned"), stat(empty_servicebus, "deliveries")) == (2, 3)
    assert len(await orders_of(container, "cust-outage")) == 1
    outcomes = [(r.outcome, r.delivery_count) for r in caplog.records if getattr(r, "outcome", None)]
    assert outcomes == [("abandoned", 0), ("abandoned", 1), ("completed", 2)]


@on_module_loop
async def test_a_slow_submission_keeps_its_lock_renewed_and_is_delivered_once(
        empty_servicebus, orders_sender, make_container):
    async def slower_than_the_lock(order: Order, call: int) -> None:
        await asyncio.sleep(LOCK_SECONDS + 1.5)

    container = make_container(slower_than_the_lock)
    async with listening(container, empty_servicebus):
        await orders_sender.send_messages(a_message(an_order("cust-slow")))
        await eventually(lambda: stat(empty_servicebus, "completed") == 1, timeout=15, what="the message completed")

    stats = empty_servicebus.stats()
    assert stats["deliveries"] == 1 and stats["renewals"] >= 1 and "lock_expired" not in stats
    assert len(await orders_of(container, "cust-slow")) == 1


@on_module_loop
async def test_stopping_finishes_messages_in_flight_and_gives_back_the_rest(
        empty_servicebus, orders_sender, make_container):
    finishing = asyncio.Event()

    async def stall(order: Order, call: int) -> None:
        if order.customer_id == "cust-stuck":
            await asyncio.Event().wait()
        if order.customer_id == "cust-finishing":
            await finishing.wait()

    container = make_container(stall, service_bus_max_concurrency=2)
    customers = ["cust-stuck", "cust-finishing", "cust-waiting", "cust-waiting", "cust-waiting"]
    async with listening(container, empty_servicebus, shutdown_grace_seconds=2.0) as stop:
        await orders_sender.send_messages([a_message(an_order(customer)) for customer in customers])
        await eventually(lambda: empty_servicebus.counts()["locked"] == 5, what="all five delivered")
        await eventually(lambda: container.orders.add_calls == 2, what="two messages in flight")
        stop.set()
        await asyncio.sleep(0.2)
        finishing.set()

    stats, counts = empty_servicebus.stats(), empty_servicebus.counts()
    assert (stats["completed"], stats["abandoned"]) == (1, 1) and stats["released"] >= 3
    assert (counts["orders"], counts["locked"], counts["orders/$deadletterqueue"]) == (4, 0, 0)
    assert len(await orders_of(container, "cust-finishing")) == 1


@on_module_loop
async def test_the_listener_reconnects_after_the_broker_restarts_and_loses_nothing(
        empty_servicebus, orders_sender, make_container):
    async def slow_for_one(order: Order, call: int) -> None:
        if order.items[0].product_name == "slow":
            await asyncio.sleep(1.0)

    container = make_container(slow_for_one)
    async with listening(container, empty_servicebus):
        await orders_sender.send_messages([a_message(an_order("cust-restart")) for _ in range(2)])
        await orders_sender.send_messages(a_message(an_order("cust-restart", productName="slow")))
        await eventually(lambda: container.orders.add_calls == 3, what="the slow message in flight")
        await asyncio.to_thread(empty_servicebus.restart, 1.0)
        await orders_sender.send_messages([a_message(an_order("cust-restart")) for _ in range(2)])
        await eventually(lambda: all_settled(empty_servicebus, completed=5), timeout=60, what="every message settled")

    assert len(await orders_of(container, "cust-restart")) == 5
    assert await container.outbox.pending_count() == 5
    assert empty_servicebus.counts()["orders/$deadletterqueue"] == 0


# --- order-failures ----------------------------------------------------------------------------


@on_module_loop
async def test_a_failed_saga_is_announced_on_order_failures(empty_servicebus, order_failures, make_container,
                                                           seed_order):
    container = make_container()
    seed_order["items"][0]["productId"] = "hazmat-001"
    placed = await container.order_service.place(seed_order, source="test", actor=TRUSTED)
    await container.saga.run(placed.id)
    failed = await container.orders.get(placed.id)
    assert failed.status is OrderStatus.FAILED

    announcer = ServiceBusFailureAnnouncer(connect_to(empty_servicebus, container.settings), ORDER_FAILURES)
    try:
        await announcer.order_failed(failed)
    finally:
        await announcer.aclose()

    (message,) = await receive(order_failures, 1)
    notice = json.loads(b"".join(message.body))
    assert message.message_id == failed.id and message.content_type == "application/json"
    assert notice["orderId"] == failed.id and notice["customerId"] == "cust-001"
    assert notice["failedStep"] == "CreateShipment" and "ShipmentRejected" in notice["reason"]
    assert notice["compensatedSteps"] == ["RefundPayment", "CompensateInventory"]
    assert notice["compensationFailures"] == [] and notice["manualInterventionRequired"] is False


# --- the submit command and the listener process ----------------------------------------------


@pytest.mark.parametrize(("text", "customers"), [
    ('{"customerId": "a", "items": []}', ["a"]),
    ('[{"customerId": "a", "items": []}, {"customerId": "b", "items": []}]', ["a", "b"]),
    ('{"customerId": "a", "items": []}\n\n{"customerId": "b", "items": []}\n', ["a", "b"]),
])
def test_submit_reads_an_object_an_array_or_json_lines(tmp_path, text, customers):
    path = tmp_path / "orders.json"
    path.write_text(text)
    assert [order["customerId"] for order in read_orders(str(path))] == customers


def test_submit_reads_standard_input_for_a_dash(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO('{"customerId": "a", "items": []}'))
    assert read_orders("-") == [{"customerId": "a", "items": []}]


@on_module_loop
async def test_submit_sends_each_order_to_the_queue_for_the_listener(
        empty_servicebus, make_container, tmp_path, monkeypatch, capsys):
    path = tmp_path / "orders.jsonl"
    path.write_text("\n".join(json.dumps(an_order("cust-submitted")) for _ in range(3)))
    monkeypatch.setenv("ServiceBusConnection", empty_servicebus.connection_string)

    await asyncio.to_thread(order_saga, ["submit", str(path)])

    assert "sent 3/3 orders to queue 'orders'" in capsys.readouterr().out
    container = make_container()
    async with listening(container, empty_servicebus):
        await eventually(lambda: stat(empty_servicebus, "completed") == 3, what="three orders placed")
    assert len(await orders_of(container, "cust-submitted")) == 3


def test_without_a_connection_the_entry_points_exit_with_what_to_set(settings):
    unnamed = settings.model_copy(update={"service_bus_connection_name": "NoSuchConnection"})
    with pytest.raises(SystemExit, match=re.escape("set NoSuchConnection to a namespace connection string")):
        client_factory_or_exit(unnamed, "test")


@on_module_loop
async def test_the_listener_process_places_orders_and_stops_cleanly_on_sigterm(
        empty_servicebus, orders_sender, tmp_path):
    environment = {**os.environ, "ServiceBusConnection": empty_servicebus.connection_string,
                   "OrderProcessing__DataDir": str(tmp_path)}
    with subprocess.Popen([sys.executable, "-m", "deployments.servicebus_listener"], cwd=ROOT, env=environment,
                          stderr=subprocess.PIPE, text=True) as process:
        try:
            await orders_sender.send_messages(a_message(an_order("cust-process"), message_id="message-process"))
            await eventually(lambda: stat(empty_servicebus, "completed") == 1, timeout=20,
                             what="the message completed")
            process.send_signal(signal.SIGTERM)
            _, errors = await asyncio.to_thread(process.communicate, timeout=20)
        finally:
            process.kill()
    assert process.returncode == 0, errors
    logged = [json.loads(line) for line in errors.splitlines() if line.startswith("{")]
    completed = [entry for entry in logged if entry.get("outcome") == "completed"]
    assert completed and completed[0]["message_id"] == "message-process" and completed[0]["order_id"]
    assert any(entry["message"] == "service bus listener stopped" for entry in logged)


# --- connections --------------------------------------------------------------------------------


@pytest.mark.parametrize(("environment", "namespace", "tls", "credential"), [
    ({"ServiceBusConnection": "Endpoint=sb://shop.servicebus.windows.net/;SharedAccessKeyName=listen;"
                              "SharedAccessKey=c2VjcmV0"},
     "shop.servicebus.windows.net", True, "ServiceBusSharedKeyCredential"),
    ({"ServiceBusConnection": "Endpoint=sb://localhost:5673;SharedAccessKeyName=RootManageSharedAccessKey;"
                              "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true"},
     "localhost:5673", False, "ServiceBusSharedKeyCredential"),
    ({"ServiceBusConnection__fullyQualifiedNamespace": "shop.servicebus.windows.net",
      "ServiceBusConnection__clientId": "00000000-0000-0000-0000-000000000001"},
     "shop.servicebus.windows.net", True, "DefaultAzureCredential"),
], ids=["namespace-sas", "emulator", "identity"])
@on_module_loop
async def test_each_kind_of_connection_reaches_its_namespace_with_its_credential(
        settings, environment, namespace, tls, credential):
    connect = client_factory(settings, environment)
    assert connect is not None
    async with connect() as client:
        # The SDK has no public view of TLS or the credential; these private fields are what distinguishes them.
        assert (client.fully_qualified_namespace, client._config.use_tls, type(client._credential).__name__) == (
            namespace, tls, credential)


def test_the_connection_name_comes_from_settings_and_nothing_set_means_not_configured(settings):
    named = settings.model_copy(update={"service_bus_connection_name": "OrdersBus"})
    sas = "Endpoint=sb://shop.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=b"
    assert client_factory(named, {"ServiceBusConnection": sas}) is None
    assert client_factory(named, {"OrdersBus": sas}) is not None
    with pytest.raises(ValueError):
        client_factory(named, {"OrdersBus": "not a connection string"})
