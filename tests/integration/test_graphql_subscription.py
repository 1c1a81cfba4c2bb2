"""The `orderStatusChanged` subscription over WebSocket (graphql-transport-ws)."""

from __future__ import annotations

from starlette.testclient import TestClient

from gateway.app import create_app
from tests.conftest import run_saga

SUBSCRIPTION = "subscription($id: ID!) { orderStatusChanged(id: $id) { status saga { completedSteps } } }"


def test_the_subscription_streams_status_changes_until_the_order_is_terminal(settings, seed_order):
    with TestClient(create_app(settings)) as client:
        order_id = client.post("/api/orders", json=seed_order).json()["id"]
        with client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
            ws.send_json({"type": "connection_init"})
            assert ws.receive_json()["type"] == "connection_ack"
            ws.send_json({"id": "1", "type": "subscribe",
                          "payload": {"query": SUBSCRIPTION, "variables": {"id": order_id}}})
            first = ws.receive_json()
            run_saga(settings, order_id)
            messages = [first]
            while messages[-1]["type"] == "next":
                messages.append(ws.receive_json())
    statuses = [m["payload"]["data"]["orderStatusChanged"]["status"] for m in messages if m["type"] == "next"]
    assert statuses[0] == "PROCESSING" and statuses[-1] == "COMPLETED"
    assert messages[-1] == {"id": "1", "type": "complete"}
