"""End to end: orders over HTTP through the real gateway, outbox, worker, Prefect server and embedded services."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.e2e

SAGA = """query($id: ID!) { order(id: $id) { status failureReason
  saga { completedSteps compensatedSteps failedStep compensationFailures { step } }
  flowRun { id state url } } }"""


def item(product_id: str, quantity: int = 1, price: float = 10.0) -> dict:
    return {"productId": product_id, "productName": "Thing", "quantity": quantity, "unitPrice": price}


def final_flow_run_state(stack, order_id: str, timeout: float = 30) -> str:
    """The order is terminal in the store a moment before its flow run is final in Prefect."""
    deadline = time.monotonic() + timeout
    while (state := stack.graphql(SAGA, id=order_id)["order"]["flowRun"]["state"]) in ("Pending", "Running"):
        assert time.monotonic() < deadline, f"flow run of {order_id} still {state}"
        time.sleep(0.2)
    return state


def test_the_seed_sample_completes_as_a_named_flow_run_in_prefect(stack, seed_order):
    accepted = stack.post_order(seed_order)
    assert accepted["status"] == "processing" and accepted["totalAmount"] == 149.93
    order = stack.wait_terminal(accepted["id"])
    assert order["status"] == "completed" and order["completedAt"]

    assert final_flow_run_state(stack, accepted["id"]) == "Completed"
    saga = stack.graphql(SAGA, id=accepted["id"])["order"]
    assert saga["saga"]["completedSteps"] == ["ReserveInventory", "ProcessPayment", "CreateShipment"]
    run = httpx.get(f"{stack.prefect_api}/flow_runs/{saga['flowRun']['id']}", timeout=10).json()
    assert run["name"] == f"order-{accepted['id']}"
    assert "cust-001" in run["tags"]
    assert saga["flowRun"]["url"].endswith(f"/runs/flow-run/{run['id']}")


@pytest.mark.parametrize(("items", "failed_step", "reason", "compensations"), [
    ([item("prod-e2e-stock", quantity=101)], "ReserveInventory", "OutOfStock: ", []),
    ([item("prod-e2e-pay", price=5000.01)], "ProcessPayment", "PaymentDeclined: ", ["CompensateInventory"]),
    ([item("hazmat-e2e"), item("prod-e2e-ship")], "CreateShipment", "ShipmentRejected: ",
     ["RefundPayment", "CompensateInventory"]),
], ids=["out-of-stock", "payment-declined", "shipment-rejected"])
def test_each_failure_path_ends_failed_with_compensations_in_reverse(stack, items, failed_step, reason,
                                                                     compensations):
    accepted = stack.post_order({"customerId": "cust-e2e-fail", "items": items})
    order = stack.wait_terminal(accepted["id"])
    assert order["status"] == "failed" and order["failureReason"].startswith(reason)
    saga = stack.graphql(SAGA, id=accepted["id"])["order"]
    assert saga["saga"]["failedStep"] == failed_step
    assert saga["saga"]["compensatedSteps"] == compensations
    assert final_flow_run_state(stack, accepted["id"]) == "Failed"
    artifacts = httpx.post(f"{stack.prefect_api}/artifacts/filter", timeout=10,
                           json={"artifacts": {"key": {"any_": [f"saga-{accepted['id']}"]}}}).json()
    assert artifacts and f"failed step | {failed_step}" in artifacts[0]["data"]


def test_an_order_stored_before_the_stack_started_still_gets_its_saga(stack, preloaded_order):
    order = stack.wait_terminal(preloaded_order)
    assert order["status"] == "completed"


def test_a_burst_of_orders_all_complete_once(stack):
    ids = [stack.post_order({"customerId": "cust-burst", "items": [item("prod-burst")]})["id"] for _ in range(10)]
    deadline = time.monotonic() + 120
    statuses = [stack.wait_terminal(order_id, timeout=deadline - time.monotonic())["status"] for order_id in ids]
    assert statuses == ["completed"] * 10
    runs = httpx.post(f"{stack.prefect_api}/flow_runs/filter", timeout=10,
                      json={"flow_runs": {"name": {"any_": [f"order-{i}" for i in ids]}}}).json()
    assert sorted(run["name"] for run in runs) == sorted(f"order-{i}" for i in ids)


def test_health_and_readiness(stack):
    assert httpx.get(f"{stack.gateway}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.gateway}/readyz").json()
    assert ready["status"] == "ready" and ready["checks"] == {"store": "ok", "prefect": "ok"}
