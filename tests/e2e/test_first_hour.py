"""The first hour with the stack (issue #12): the queue path on a laptop, logs a machine can read, links that
follow the configuration, metrics that exist before their first event."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import SEED_ORDER
from tests.e2e.conftest import ROOT, start_stack, stop_stack
from tests.prefect_server import free_port

pytestmark = pytest.mark.e2e

CUSTOMER = "cust-first-hour"
SERIES_AT_START = ('order_saga_dead_letters_total{reason="InvalidJson"}', 'order_saga_saga_outcomes_total{status="failed"}',
                   'order_saga_orders_accepted_total{source="servicebus"}', 'order_saga_webhook_events_total{outcome="poison"}',
                   'order_saga_compensation_failures_total{compensation="RefundPayment"}')


def order(**changes) -> dict:
    return {**SEED_ORDER, "customerId": CUSTOMER, **changes}


def json_lines(log: Path) -> list[dict]:
    """Every line of the stack's output, each of which must be one JSON object."""
    lines = log.read_text().splitlines()
    not_json = [line for line in lines if not _is_json_object(line)]
    assert not_json == [], "\n".join(not_json[:20])
    return [json.loads(line) for line in lines]


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def orders_of(stack, count: int, timeout: float = 90) -> list[dict]:
    """The customer's orders once `count` of them are terminal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        orders = httpx.get(f"{stack.gateway}/api/orders/customer/{CUSTOMER}", timeout=10).json()
        if len([o for o in orders if o["status"] in ("completed", "failed", "cancelled")]) == count:
            return orders
        time.sleep(0.3)
    raise AssertionError(f"{count} orders of {CUSTOMER} not terminal in {timeout}s\n{stack.log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def queue_stack(tmp_path_factory):
    """`order-saga up --with-queue`, with only PREFECT_API_URL saying where Prefect is, its output not a terminal."""
    directory = tmp_path_factory.mktemp("first-hour")
    process, stack = start_stack(directory / "var", directory / "stack.log", "--with-queue",
                                 OrderProcessing__LocalServiceBusPort=str(free_port()))
    yield stack
    stop_stack(process, stack.log)


def test_every_series_of_a_known_label_is_on_metrics_from_the_start(queue_stack):
    metrics = httpx.get(f"{queue_stack.gateway}/metrics", timeout=10).text
    assert [series for series in SERIES_AT_START if f"{series} 0.0" not in metrics] == []


def test_submit_sends_orders_through_the_local_queue_end_to_end(queue_stack, tmp_path):
    orders = tmp_path / "orders.json"
    orders.write_text(json.dumps([order(), order(items=[{**SEED_ORDER["items"][0], "productId": "hazmat-1"}])]))
    sent = subprocess.run([str(Path(sys.executable).parent / "order-saga"), "submit", "--local", str(orders)],
                          cwd=ROOT, env=queue_stack.env, capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert "sent 2/2 orders to queue 'orders'" in sent.stdout
    assert sorted(o["status"] for o in orders_of(queue_stack, 2)) == ["completed", "failed"]


def test_links_follow_prefect_api_url(queue_stack):
    ui = queue_stack.prefect_api.removesuffix("/api")
    placed = queue_stack.post_order(order())
    queue_stack.wait_terminal(placed["id"])
    run = queue_stack.graphql("query($id: ID!) { order(id: $id) { flowRun { id url } } }", id=placed["id"])
    assert run["order"]["flowRun"]["url"] == f"{ui}/runs/flow-run/{run['order']['flowRun']['id']}"
    banner = next(line for line in json_lines(queue_stack.log) if "order-saga is up" in line["message"])
    assert f"Prefect   {ui}  " in banner["message"]


def test_every_line_is_json_and_refusals_and_client_mistakes_carry_no_traceback(queue_stack):
    out_of_stock = queue_stack.post_order(order(items=[{**SEED_ORDER["items"][0], "productId": "prod-first-hour",
                                                        "quantity": 101}]))
    declined = queue_stack.post_order(order(items=[{**SEED_ORDER["items"][0], "quantity": 1, "unitPrice": 6000}]))
    for placed in (out_of_stock, declined):
        assert queue_stack.wait_terminal(placed["id"])["status"] == "failed"
    mistake = httpx.post(f"{queue_stack.gateway}/graphql", timeout=10, json={
        "query": f'{{ ordersByCustomer(customerId: "{CUSTOMER}", first: 0) {{ pageInfo {{ hasNextPage }} }} }}'})
    assert mistake.json()["errors"]
    time.sleep(1.5)  # Prefect's task-run lines reach the console with the flow run's end; give them a moment
    lines = json_lines(queue_stack.log)
    assert [line for line in lines if "exception" in line] == []
    refused = [line for line in lines if line["logger"] == "prefect.task_runs" and "StepRefused" in line["message"]]
    assert refused and all(line["level"] == "WARNING" for line in refused)
    assert any(line["logger"] == "gateway.graphql" and "first" in line["message"] for line in lines)
    assert {line["logger"].split(".")[0] for line in lines} >= {"prefect", "fulfillment", "deployments", "gateway"}
