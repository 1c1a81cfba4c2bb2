"""The `orderStatusChanged` subscription over WebSocket (graphql-transport-ws).

The saga runs in another container over the same store, as the worker process does, while the subscription is
open; it runs as fast as the embedded services answer, and every status must still be reported.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from tests.conftest import run_saga

SUBSCRIPTION = "subscription($id: ID!) { orderStatusChanged(id: $id) { status saga { completedSteps } } }"
COMPLETED_PATH = ["PROCESSING", "INVENTORY_RESERVED", "PAYMENT_PROCESSED", "SHIPPED", "COMPLETED"]
HISTORY = "query($id: ID!) { order(id: $id) { statusHistory { status at } } }"
FAILED_PATH = ["PROCESSING", "INVENTORY_RESERVED", "PAYMENT_PROCESSED", "COMPENSATING", "FAILED"]


def subscribe(client: TestClient, order_id: str, after_first: Callable[[], None] = lambda: None) -> list[dict]:
    """Every message of the subscription until it ends; `after_first` runs once the first one has come."""
    with client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        ws.send_json({"type": "connection_init"})
        assert ws.receive_json()["type"] == "connection_ack"
        ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIPTION, "variables": {"id": order_id}}})
        messages = [ws.receive_json()]
        after_first()
        while messages[-1]["type"] == "next":
            messages.append(ws.receive_json())
    assert messages[-1] == {"id": "1", "type": "complete"}
    return messages


def statuses(messages: list[dict]) -> list[str]:
    return [m["payload"]["data"]["orderStatusChanged"]["status"] for m in messages if m["type"] == "next"]


@pytest.mark.parametrize("fails", [False, True], ids=["completes", "fails"])
def test_the_subscription_streams_every_status_once_in_order_until_the_order_is_terminal(settings, seed_order, fails):
    if fails:  # CreateShipment refuses it: compensations run and the order fails
        seed_order["items"][0]["productId"] = "hazmat-1"
    with TestClient(create_app(settings)) as client:
        order_id = client.post("/api/orders", json=seed_order).json()["id"]
        messages = subscribe(client, order_id, after_first=lambda: run_saga(settings, order_id))
    assert statuses(messages) == (FAILED_PATH if fails else COMPLETED_PATH)


def test_a_late_subscriber_gets_the_current_status_first(settings, seed_order):
    with TestClient(create_app(settings)) as client:
        order_id = client.post("/api/orders", json=seed_order).json()["id"]
        run_saga(settings, order_id)
        messages = subscribe(client, order_id)
        answer = client.post("/graphql", json={"query": HISTORY, "variables": {"id": order_id}}).json()
    history = answer["data"]["order"]["statusHistory"]
    assert statuses(messages) == ["COMPLETED"]
    assert messages[0]["payload"]["data"]["orderStatusChanged"]["saga"]["completedSteps"] == [
        "ReserveInventory", "ProcessPayment", "CreateShipment"]
    assert [change["status"] for change in history] == COMPLETED_PATH and all(c["at"] for c in history)
