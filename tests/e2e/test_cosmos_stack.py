"""End to end on the Cosmos DB store: the stack started as `make up` does, against a real Cosmos DB server."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.e2e.conftest import start_stack, stop_stack

pytestmark = pytest.mark.e2e


def test_orders_complete_and_are_still_served_after_a_restart(cosmos_server, tmp_path, seed_order):
    environment = {"OrderProcessing__CosmosConnectionString": cosmos_server.connection_string,
                   "OrderProcessing__CosmosDatabaseName": f"e2e-{uuid.uuid4().hex[:8]}"}
    process, stack = start_stack(tmp_path / "var", tmp_path / "first.log", **environment)
    try:
        order_id = stack.post_order(seed_order)["id"]
        assert stack.wait_terminal(order_id)["status"] == "completed"
    finally:
        stop_stack(process, stack.log)
    assert not (tmp_path / "var" / "orders.db").exists(), "orders must live in Cosmos DB, not SQLite"

    process, stack = start_stack(tmp_path / "var", tmp_path / "second.log", **environment)
    try:
        order = httpx.get(f"{stack.gateway}/api/orders/{order_id}").json()
        unknown = httpx.get(f"{stack.gateway}/api/orders/{uuid.uuid4()}")
        listed = httpx.get(f"{stack.gateway}/api/orders/customer/cust-001").json()
    finally:
        stop_stack(process, stack.log)
    assert order["status"] == "completed" and order["totalAmount"] == 149.93
    assert unknown.status_code == 404
    assert [o["id"] for o in listed] == [order_id]
