"""Operating sagas from the Prefect UI: each button, sent to the Prefect API as the UI sends it, acts on the
order; the stack runs against the chaos downstream, whose faults make a saga slow, fail or stall on demand."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import pytest

from tests.chaos.ledger import audit, order_of
from tests.e2e.prefect_ui import PrefectUI

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ORDER = """query($id: ID!) { order(id: $id) { status failureReason manualInterventionRequired
  saga { attempt completedSteps compensatedSteps } earlierAttempts { attempt failureReason }
  flowRun { id state } } }"""
CANCEL = """mutation($id: ID!) { cancelOrder(id: $id) { __typename
  ... on OrderCancellationRequested { order { status } } ... on CancellationTooLateError { willEndAs } } }"""
TERMINAL = ("completed", "failed", "cancelled")
PAUSE_SEEN_S = 4  # executors re-read the pool and the deployments every 3 s


@pytest.fixture
def ui(chaos_stack) -> PrefectUI:
    return PrefectUI(chaos_stack.prefect_api)


@pytest.fixture(autouse=True)
def no_faults(downstream):
    downstream.clear_faults()
    yield
    downstream.clear_faults()


def order_of_items(product: str, quantity: int = 1, price: float = 10.0) -> dict:
    return {"customerId": "cust-operator",
            "items": [{"productId": product, "productName": "Thing", "quantity": quantity, "unitPrice": price}]}


def wait_for(stack, order_id: str, *statuses: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (order := httpx.get(f"{stack.gateway}/api/orders/{order_id}", timeout=10).json())["status"] not in statuses:
        assert time.monotonic() < deadline, f"order {order_id} is {order['status']}, not one of {statuses}"
        time.sleep(0.1)
    return order


def flow_run_id(stack, order_id: str) -> str:
    deadline = time.monotonic() + 30
    while (run := stack.graphql(ORDER, id=order_id)["order"]["flowRun"]) is None:
        assert time.monotonic() < deadline, f"order {order_id} has no flow run"
        time.sleep(0.1)
    return run["id"]


def ledger_of(downstream, order_id: str, status: str, total: str) -> list[str]:
    """The downstream's audit of this one order."""
    effects = [effect for effect in downstream.effects() if order_of(effect.effect_id)[0] == order_id]
    return audit(effects, {order_id: (status, Decimal(total))})


@pytest.mark.parametrize("ui_v2", [False, True], ids=["classic-ui", "v2-ui"])
def test_retry_of_a_cleanly_failed_saga_runs_a_new_attempt_that_completes(chaos_stack, downstream, ui, ui_v2):
    product = f"retry-{ui_v2}"
    order_id = chaos_stack.post_order(order_of_items(product, quantity=1500, price=1.0))["id"]
    failed = wait_for(chaos_stack, order_id, *TERMINAL)
    assert failed["status"] == "failed" and failed["failureReason"].startswith("OutOfStock: ")
    run_id = flow_run_id(chaos_stack, order_id)
    assert ui.wait_for_state(run_id, "FAILED")["state"]["message"].endswith(failed["failureReason"])

    downstream.inventory.set_stock(product, 5000)
    ui.retry(run_id, ui_v2=ui_v2)

    wait_for(chaos_stack, order_id, "completed")  # the retried run's second attempt
    assert ui.wait_for_state(run_id, "COMPLETED")["run_count"] == 2
    order = chaos_stack.graphql(ORDER, id=order_id)["order"]
    assert order["saga"]["attempt"] == 2
    assert [a["failureReason"][:11] for a in order["earlierAttempts"]] == ["OutOfStock:"]
    assert ledger_of(downstream, order_id, "completed", "1500") == []


def test_cancel_of_a_running_saga_compensates_and_ends_the_order_and_the_run_cancelled(chaos_stack, downstream, ui):
    downstream.set_faults("charge", slow_rate=1.0, slow_seconds=2)
    order_id = chaos_stack.post_order(order_of_items("cancel-ui"))["id"]
    wait_for(chaos_stack, order_id, "inventoryReserved")
    ui.cancel(flow_run_id(chaos_stack, order_id))

    order = wait_for(chaos_stack, order_id, *TERMINAL)
    run = ui.wait_for_state(flow_run_id(chaos_stack, order_id), "CANCELLED", "COMPLETED", "FAILED")
    assert order["status"] == "cancelled" and order["failureReason"] == "cancelled on request before CreateShipment"
    assert run["state"]["type"] == "CANCELLED"
    assert ledger_of(downstream, order_id, "cancelled", "10") == []
    assert [effect.kind for effect in downstream.effects() if effect.effect_id == order_id] == [
        "reserve", "charge", "refund", "release"]


def test_cancel_order_from_graphql_ends_the_run_cancelled_not_failed(chaos_stack, downstream, ui):
    downstream.set_faults("charge", slow_rate=1.0, slow_seconds=2)
    order_id = chaos_stack.post_order(order_of_items("cancel-graphql"))["id"]
    wait_for(chaos_stack, order_id, "inventoryReserved")
    answer = chaos_stack.graphql(CANCEL, id=order_id)["cancelOrder"]
    assert answer["__typename"] == "OrderCancellationRequested"

    assert wait_for(chaos_stack, order_id, *TERMINAL)["status"] == "cancelled"
    run = ui.wait_for_state(flow_run_id(chaos_stack, order_id), "CANCELLED", "COMPLETED", "FAILED")
    assert run["state"]["type"] == "CANCELLED" and run["state"]["name"] == "Cancelled"


def test_cancel_once_the_shipment_has_begun_answers_too_late_and_the_order_completes(chaos_stack, downstream):
    downstream.set_faults("ship", slow_rate=1.0, slow_seconds=0.8)
    order_id = chaos_stack.post_order(order_of_items("cancel-late"))["id"]
    wait_for(chaos_stack, order_id, "paymentProcessed")
    time.sleep(0.2)
    answer = chaos_stack.graphql(CANCEL, id=order_id)["cancelOrder"]
    assert answer == {"__typename": "CancellationTooLateError", "willEndAs": "COMPLETED"}
    assert wait_for(chaos_stack, order_id, *TERMINAL)["status"] == "completed"


def test_cancel_of_a_run_no_executor_has_picked_up_cancels_the_order(chaos_stack, downstream, ui):
    ui.pause_pool("order-saga")
    try:
        time.sleep(PAUSE_SEEN_S)
        order_id = chaos_stack.post_order(order_of_items("cancel-waiting"))["id"]
        run_id = flow_run_id(chaos_stack, order_id)
        assert ui.cancel(run_id)["state"]["type"] == "CANCELLED"  # Prefect cancels a run with no infrastructure
    finally:
        ui.pause_pool("order-saga", paused=False)
    order = wait_for(chaos_stack, order_id, *TERMINAL, timeout=30)
    assert order["status"] == "cancelled" and not [e for e in downstream.effects() if e.effect_id == order_id]


def test_run_with_an_unknown_order_id_fails_at_once_naming_it(chaos_stack, ui):
    run = ui.quick_run("order-saga/order-saga", {"order_id": "no-such-order"})
    finished = ui.wait_for_state(run["id"], "FAILED", "COMPLETED", "CANCELLED")
    assert finished["state"]["type"] == "FAILED" and "no-such-order" in finished["state"]["message"]


def test_run_of_a_finished_order_changes_nothing(chaos_stack, downstream, ui):
    order_id = chaos_stack.post_order(order_of_items("quick-run"))["id"]
    assert wait_for(chaos_stack, order_id, *TERMINAL)["status"] == "completed"
    charges_before = [e for e in downstream.effects() if e.effect_id == order_id]

    run = ui.quick_run("order-saga/order-saga", {"order_id": order_id})
    finished = ui.wait_for_state(run["id"], "FAILED", "COMPLETED", "CANCELLED")

    assert finished["state"]["type"] == "COMPLETED" and "nothing was done" in finished["state"]["message"]
    assert [e for e in downstream.effects() if e.effect_id == order_id] == charges_before


def test_a_refund_outage_keeps_the_order_compensating_and_flagged_until_the_refund_lands(chaos_stack, downstream, ui):
    downstream.set_faults("refund", unavailable_rate=1.0)
    order_id = chaos_stack.post_order(order_of_items("hazmat-operator"))["id"]
    stuck = wait_for(chaos_stack, order_id, "compensating")
    deadline = time.monotonic() + 30
    while not (stuck := wait_for(chaos_stack, order_id, "compensating"))["manualInterventionRequired"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    run = ui.wait_for_state(flow_run_id(chaos_stack, order_id), "FAILED")
    assert "manual intervention required" in run["state"]["message"]
    assert stuck["failureReason"] is None

    downstream.clear_faults()
    order = wait_for(chaos_stack, order_id, *TERMINAL, timeout=90)
    assert order["status"] == "failed" and not order["manualInterventionRequired"]
    assert ledger_of(downstream, order_id, "failed", "10") == []
