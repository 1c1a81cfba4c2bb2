"""End to end: Event Grid events sent with the real SDK take effect through Prefect flow runs."""

from __future__ import annotations

import time

import httpx
import pytest
from azure.core.credentials import AzureKeyCredential
from azure.eventgrid import EventGridEvent, EventGridPublisherClient

from tests.e2e.conftest import WEBHOOK_KEY

pytestmark = pytest.mark.e2e


@pytest.fixture
def publisher(stack):
    with EventGridPublisherClient(f"{stack.gateway}/api/events", AzureKeyCredential(WEBHOOK_KEY)) as client:
        yield client


def inventory_run_state(stack, name: str) -> str | None:
    """The flow run's state type; it is final a moment after the stock it set is visible."""
    runs = httpx.post(f"{stack.prefect_api}/flow_runs/filter", timeout=10,
                      json={"flow_runs": {"name": {"any_": [name]}}}).json()
    return runs[0]["state_type"] if runs else None


def big_order(customer: str) -> dict:
    return {"customerId": customer, "items": [
        {"productId": "prod-restocked", "productName": "Pallet", "quantity": 300, "unitPrice": 1.0}]}


def test_a_stock_update_lets_an_order_above_the_default_stock_complete(stack, publisher):
    publisher.send(EventGridEvent(subject="products/prod-restocked", event_type="Inventory.StockUpdated",
                                  data={"productId": "prod-restocked", "quantityAvailable": 500}, data_version="1"))
    deadline = time.monotonic() + 60
    stock = f"{stack.services}/inventory/stock/prod-restocked"
    while httpx.get(stock).json()["available"] != 500:
        assert time.monotonic() < deadline, "the stock update was not applied"
        time.sleep(0.2)
    while (state := inventory_run_state(stack, "inventory-prod-restocked")) != "COMPLETED":
        assert time.monotonic() < deadline, f"the inventory-event flow run is {state}"
        time.sleep(0.2)
    order = stack.wait_terminal(stack.post_order(big_order("cust-restock"))["id"])
    assert order["status"] == "completed"


def test_an_order_submitted_event_runs_the_same_saga(stack, publisher):
    order = {"customerId": "cust-eventgrid", "items": [
        {"productId": "prod-eg", "productName": "Thing", "quantity": 1, "unitPrice": 12.5}]}
    publisher.send(EventGridEvent(subject="orders", event_type="Orders.OrderSubmitted", data=order,
                                  data_version="1"))
    (placed,) = httpx.get(f"{stack.gateway}/api/orders/customer/cust-eventgrid").json()
    assert stack.wait_terminal(placed["id"])["status"] == "completed"
