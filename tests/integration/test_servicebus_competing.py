"""Competing consumers (issue #13, scale out): several receivers on one `orders` queue of the local broker."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from tests.conftest import SEED_ORDER
from tests.servicebus_broker import LocalServiceBus
from tests.servicebus_broker.helpers import ORDERS, eventually

pytest_plugins = ["tests.servicebus_broker.fixtures"]
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]


def both_asking(servicebus: LocalServiceBus) -> bool:
    credits = servicebus.receivers(ORDERS).values()
    return len(credits) == 2 and all(credits)


def order_message(number: int) -> ServiceBusMessage:
    """Order `order-<n>` of customer `cust-<n>`: a message id, and a customer whose orders count its orders."""
    body = {**SEED_ORDER, "customerId": f"cust-{number}"}
    return ServiceBusMessage(json.dumps(body), message_id=f"order-{number}", content_type="application/json")


def settled_everything(servicebus: LocalServiceBus, sent: int) -> bool:
    stats, counts = servicebus.stats(), servicebus.counts()
    return (counts[ORDERS] == 0 and counts["locked"] == 0
            and stats.get("completed", 0) + stats.get("dead_lettered", 0) >= sent)


# --- the tests ----------------------------------------------------------------------------------


async def test_the_broker_hands_a_trickle_of_messages_to_competing_receivers_in_turn(
        empty_servicebus, servicebus_client: ServiceBusClient, orders_sender):
    received: Counter[str] = Counter()
    stop = asyncio.Event()

    async def receive_until_stopped(name: str) -> None:
        async with servicebus_client.get_queue_receiver(ORDERS, prefetch_count=16) as receiver:
            while not stop.is_set():
                for message in await receiver.receive_messages(max_message_count=8, max_wait_time=0.5):
                    received[name] += 1
                    await receiver.complete_message(message)

    receivers = [asyncio.create_task(receive_until_stopped(name)) for name in ("one", "two")]
    await eventually(lambda: both_asking(empty_servicebus), what="both receivers asking for messages")
    for number in range(20):  # one at a time: each finds both receivers idle, with credit
        await orders_sender.send_messages(order_message(number))
        await asyncio.sleep(0.05)
    await eventually(lambda: settled_everything(empty_servicebus, 20), what="every message completed")
    stop.set()
    await asyncio.gather(*receivers)

    # In turn, not strictly alternately: a message that lands between two receive calls is released, and goes on.
    assert sum(received.values()) == 20 and min(received[name] for name in ("one", "two")) >= 5, received
    deliveries = empty_servicebus.deliveries_by_receiver()
    assert len(deliveries) == 2 and min(deliveries.values()) >= 5, deliveries
