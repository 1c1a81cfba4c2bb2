"""Traces and metrics read back from what was recorded: an in-memory span exporter, the Prometheus registry."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from starlette.testclient import TestClient

from fulfillment.ports import InventoryEvent
from fulfillment.service.events import low_stock_alert
from gateway.app import create_app
from tests.conftest import in_the_stack, run_saga

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(scope="module")
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_request_span_continues_the_callers_trace_and_the_order_carries_it(spans, settings, seed_order):
    spans.clear()
    headers = {"traceparent": f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"}
    with TestClient(create_app(settings)) as client:
        order_id = client.post("/api/orders", json=seed_order, headers=headers).json()["id"]
        client.get(f"/api/orders/{order_id}")
    names = {span.name: span for span in spans.get_finished_spans()}
    assert {"POST /api/orders", "GET /api/orders/{id}"} <= set(names)
    posted = names["POST /api/orders"]
    assert format(posted.context.trace_id, "032x") == CALLER_TRACE
    assert posted.attributes["http.response.status_code"] == 202

    stored = in_the_stack(settings, lambda container: container.orders.get(order_id))
    assert stored.trace_parent.split("-")[1] == CALLER_TRACE


def test_metrics_count_orders_sagas_compensations_and_steps(settings, seed_order):
    before = {
        "rest": sample("order_saga_orders_accepted_total", source="rest"),
        "failed": sample("order_saga_saga_outcomes_total", status="failed"),
        "refunds": sample("order_saga_compensations_total", compensation="RefundPayment"),
        "shipments": sample("order_saga_step_duration_seconds_count", action="CreateShipment", outcome="failed"),
    }
    hazmat = {**seed_order, "items": [{**seed_order["items"][0], "productId": "hazmat-metrics"}]}
    with TestClient(create_app(settings)) as client:
        order_id = client.post("/api/orders", json=hazmat).json()["id"]

        run_saga(settings, order_id)
        exposition = client.get("/metrics").text
    assert sample("order_saga_orders_accepted_total", source="rest") == before["rest"] + 1
    assert sample("order_saga_saga_outcomes_total", status="failed") == before["failed"] + 1
    assert sample("order_saga_compensations_total", compensation="RefundPayment") == before["refunds"] + 1
    assert sample("order_saga_step_duration_seconds_count", action="CreateShipment",
                  outcome="failed") == before["shipments"] + 1
    assert 'order_saga_orders_accepted_total{source="rest"}' in exposition


def test_a_low_stock_event_is_counted():
    before = sample("order_saga_low_stock_alerts_total")
    low_stock_alert(InventoryEvent("e1", "Inventory.LowStock", "prod-1", 2, threshold=5))
    assert sample("order_saga_low_stock_alerts_total") == before + 1
