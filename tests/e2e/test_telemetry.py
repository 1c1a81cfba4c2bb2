"""End to end: one trace from the HTTP request through the flow run and each task; metrics at /metrics."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.e2e

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"


def test_a_trace_runs_from_the_request_through_the_flow_run_and_each_task(stack, otlp_collector, seed_order):
    response = httpx.post(f"{stack.gateway}/api/orders", json=seed_order,
                          headers={"traceparent": f"00-{CALLER_TRACE}-b7ad6b7169203331-01"})
    order_id = response.json()["id"]
    stack.wait_terminal(order_id)
    expected = {("order-saga-gateway", "POST /api/orders"), ("order-saga-worker", f"order-{order_id}")}
    expected |= {("order-saga-worker", task) for task in ("ReserveInventory", "ProcessPayment", "CreateShipment")}
    deadline = time.monotonic() + 30
    while True:
        traced = {(service, name.rsplit("-", 1)[0] if not name.startswith("order-") else name)
                  for service, name, trace_id in otlp_collector.spans if trace_id == CALLER_TRACE}
        if expected <= traced:
            break
        assert time.monotonic() < deadline, f"missing spans: {expected - traced}"
        time.sleep(0.3)


def test_metrics_show_accepted_orders_and_saga_outcomes_from_every_process(stack, seed_order):
    stack.wait_terminal(stack.post_order(seed_order)["id"])
    text = httpx.get(f"{stack.gateway}/metrics").text
    assert 'order_saga_orders_accepted_total{source="rest"}' in text
    assert 'order_saga_saga_outcomes_total{status="completed"}' in text
    assert "order_saga_step_duration_seconds_bucket" in text
