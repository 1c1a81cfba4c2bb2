"""End to end: orders sent to the Service Bus queue with the real SDK, through the listener `make up` starts."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusReceiveMode

from tests.servicebus_broker.helpers import ORDER_FAILURES, ORDERS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(servicebus):
    with ServiceBusClient.from_connection_string(servicebus.connection_string) as client:
        yield client


def placed_order(stack, customer: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while not (orders := httpx.get(f"{stack.gateway}/api/orders/customer/{customer}").json()):
        assert time.monotonic() < deadline, f"no order for {customer} after {timeout}s"
        time.sleep(0.2)
    (order,) = orders
    return order


def test_a_queued_order_completes_and_a_failed_one_is_announced(stack, client):
    def order(customer: str, product: str) -> ServiceBusMessage:
        return ServiceBusMessage(json.dumps({"customerId": customer, "items": [
            {"productId": product, "productName": "Thing", "quantity": 1, "unitPrice": 5.0}]}))

    with client.get_queue_sender(ORDERS) as sender:
        sender.send_messages([order("cust-sb-ok", "prod-sb"), order("cust-sb-fail", "hazmat-sb")])
    assert stack.wait_terminal(placed_order(stack, "cust-sb-ok")["id"])["status"] == "completed"
    failed = stack.wait_terminal(placed_order(stack, "cust-sb-fail")["id"])
    assert failed["status"] == "failed"
    with client.get_queue_receiver(ORDER_FAILURES, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE,
                                   max_wait_time=20) as receiver:
        announcements = [json.loads(str(m)) for m in receiver.receive_messages(max_message_count=10,
                                                                               max_wait_time=20)]
    assert failed["id"] in [a["orderId"] for a in announcements]


def test_a_message_that_is_not_json_is_dead_lettered_with_its_reason(stack, client):
    with client.get_queue_sender(ORDERS) as sender:
        sender.send_messages(ServiceBusMessage("{not json"))
    with client.get_queue_receiver(ORDERS, sub_queue="deadletter", max_wait_time=20,
                                   receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver:
        (message,) = receiver.receive_messages(max_message_count=1, max_wait_time=20)
    assert message.dead_letter_reason == "InvalidJson"
