"""Pytest fixtures around `LocalServiceBus`: load them with `pytest_plugins = ["tests.servicebus_broker.fixtures"]`.

The broker and the SDK clients are module-scoped (opening a sender or receiver costs about half a second, and
closing it as much again), so the async ones live on the module's event loop: mark the tests that use them
with `pytest.mark.asyncio(loop_scope="module")`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from azure.servicebus import ServiceBusReceiveMode
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender

from deployments.servicebus_broker.broker import LocalServiceBus
from tests.servicebus_broker.helpers import LOCK_SECONDS, ORDER_FAILURES, ORDERS


@pytest.fixture(scope="module")
def servicebus() -> Iterator[LocalServiceBus]:
    broker = LocalServiceBus((ORDERS, ORDER_FAILURES), lock_duration=LOCK_SECONDS).start()
    yield broker
    broker.stop()


@pytest.fixture
def empty_servicebus(servicebus: LocalServiceBus) -> LocalServiceBus:
    servicebus.purge()
    return servicebus


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def servicebus_client(servicebus: LocalServiceBus) -> AsyncIterator[ServiceBusClient]:
    async with ServiceBusClient.from_connection_string(servicebus.connection_string) as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def orders_sender(servicebus_client: ServiceBusClient) -> AsyncIterator[ServiceBusSender]:
    async with servicebus_client.get_queue_sender(ORDERS) as sender:
        yield sender


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dead_letters(servicebus_client: ServiceBusClient) -> AsyncIterator[ServiceBusReceiver]:
    """Takes messages off the orders dead-letter queue."""
    async with servicebus_client.get_queue_receiver(
            ORDERS, sub_queue="deadletter", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver:
        yield receiver


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def order_failures(servicebus_client: ServiceBusClient) -> AsyncIterator[ServiceBusReceiver]:
    async with servicebus_client.get_queue_receiver(
            ORDER_FAILURES, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver:
        yield receiver
