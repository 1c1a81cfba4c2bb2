"""The Event Grid webhook driven by the real `EventGridPublisherClient` against the gateway served by uvicorn."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from datetime import timedelta

import httpx
import pytest
import uvicorn
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.core.messaging import CloudEvent
from azure.eventgrid import EventGridEvent, EventGridPublisherClient
from starlette.testclient import TestClient

from gateway.app import create_app
from tests.conftest import in_the_stack

KEY = "s3cret-webhook-key"


@pytest.fixture
def webhook_settings(settings):
    return settings.model_copy(update={"event_grid_webhook_key": KEY, "max_body_bytes": 64 * 1024})


@pytest.fixture
def gateway(webhook_settings):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(webhook_settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def publisher(gateway):
    with EventGridPublisherClient(f"{gateway}/api/events", AzureKeyCredential(KEY)) as client:
        yield client


def recorded_events(settings) -> list:
    claimed = in_the_stack(settings, lambda container: container.inventory_events.claim(
        "probe", limit=100, lease=timedelta(seconds=1)))
    return [event for event, _ in claimed]


def stock_updated(event_id=None, product="prod-eg", quantity=7):
    return EventGridEvent(subject=f"products/{product}", event_type="Inventory.StockUpdated", data_version="1.0",
                          data={"productId": product, "quantityAvailable": quantity, "warehouseId": "wh-1"},
                          id=event_id or str(uuid.uuid4()))


def test_an_event_grid_schema_stock_update_is_recorded(publisher, webhook_settings):
    publisher.send(stock_updated(quantity=7))
    (event,) = recorded_events(webhook_settings)
    assert (event.event_type, event.product_id, event.quantity_available, event.warehouse_id) == (
        "Inventory.StockUpdated", "prod-eg", 7, "wh-1")


def test_a_cloudevents_low_stock_alert_is_recorded(publisher, webhook_settings):
    publisher.send(CloudEvent(source="/inventory", type="Inventory.LowStock",
                              data={"productId": "prod-low", "quantityAvailable": 2, "threshold": 5}))
    (event,) = recorded_events(webhook_settings)
    assert (event.event_type, event.product_id, event.threshold) == ("Inventory.LowStock", "prod-low", 5)


def test_a_batch_is_recorded_whole_and_a_redelivered_id_only_once(publisher, webhook_settings):
    repeated = str(uuid.uuid4())
    publisher.send([stock_updated(), stock_updated(repeated), stock_updated()])
    publisher.send(stock_updated(repeated))
    events = recorded_events(webhook_settings)
    assert len(events) == 3 and sum(e.event_id == repeated for e in events) == 1


def test_a_redelivery_after_a_restart_is_still_recognised(webhook_settings):
    body = [{"id": "evt-restart", "eventType": "Inventory.StockUpdated", "subject": "s", "dataVersion": "1",
             "eventTime": "2026-01-01T00:00:00Z", "data": {"productId": "p", "quantityAvailable": 1}}]
    outcomes = []
    for _ in range(2):  # two gateway lifetimes over the same store
        with TestClient(create_app(webhook_settings)) as client:
            outcomes += client.post(f"/api/events?code={KEY}", json=body).json()["outcomes"]
    assert outcomes == ["accepted", "duplicate"]


def test_an_order_submitted_event_places_the_order_once(publisher, gateway):
    order = {"customerId": "cust-eg", "items": [
        {"productId": "prod-1", "productName": "Thing", "quantity": 1, "unitPrice": 19.99}]}
    event = EventGridEvent(subject="orders", event_type="Orders.OrderSubmitted", data=order, data_version="1.0")
    publisher.send(event)
    publisher.send(event)
    orders = httpx.get(f"{gateway}/api/orders/customer/cust-eg").json()
    assert len(orders) == 1 and orders[0]["totalAmount"] == 19.99 and orders[0]["status"] == "processing"


@pytest.mark.parametrize("credential", [None, "wrong-key"])
def test_a_missing_or_wrong_key_is_401(gateway, credential):
    url = f"{gateway}/api/events" + (f"?code={credential}" if credential else "")
    response = httpx.post(url, json=[])
    assert response.status_code == 401
    if credential:
        with EventGridPublisherClient(f"{gateway}/api/events", AzureKeyCredential(credential)) as client, \
                pytest.raises(HttpResponseError) as raised:
            client.send(stock_updated())
        assert raised.value.status_code == 401


def test_the_key_may_come_as_the_code_query_parameter(gateway):
    response = httpx.post(f"{gateway}/api/events?code={KEY}", json=[{
        "id": "e1", "eventType": "Inventory.StockUpdated", "subject": "s", "dataVersion": "1",
        "data": {"productId": "p", "quantityAvailable": 3}}])
    assert response.status_code == 200 and response.json()["outcomes"] == ["accepted"]


def test_the_subscription_validation_handshake(gateway):
    response = httpx.post(f"{gateway}/api/events?code={KEY}", headers={"aeg-event-type": "SubscriptionValidation"},
                          json=[{"id": "v1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                                 "subject": "", "dataVersion": "2", "data": {"validationCode": "512d38b6"}}])
    assert response.status_code == 200 and response.json() == {"validationResponse": "512d38b6"}


def test_the_cloudevents_options_handshake(gateway):
    response = httpx.options(f"{gateway}/api/events?code={KEY}", headers={
        "WebHook-Request-Origin": "eventgrid.azure.net", "WebHook-Request-Rate": "120"})
    assert response.status_code == 200
    assert response.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert response.headers["WebHook-Allowed-Rate"] == "*"


@pytest.mark.parametrize("data", [
    {"quantityAvailable": 3},
    {"productId": "p", "quantityAvailable": -1},
    {"productId": "p", "quantityAvailable": "3"},
])
def test_poison_events_are_400_so_event_grid_does_not_retry(publisher, data):
    event = EventGridEvent(subject="s", event_type="Inventory.StockUpdated", data=data, data_version="1")
    with pytest.raises(HttpResponseError) as raised:
        publisher.send(event)
    assert raised.value.status_code == 400


def test_a_low_stock_event_without_threshold_is_poison(gateway):
    response = httpx.post(f"{gateway}/api/events?code={KEY}", json=[{
        "id": "e2", "eventType": "Inventory.LowStock", "subject": "s", "dataVersion": "1",
        "data": {"productId": "p", "quantityAvailable": 3}}])
    assert response.status_code == 400
    assert "data.threshold" in response.json()["events"][0]["error"]


def test_a_body_over_the_limit_is_413(gateway):
    response = httpx.post(f"{gateway}/api/events?code={KEY}", content=b"[" + b" " * 70_000 + b"]",
                          headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_unknown_event_types_are_accepted_and_ignored(gateway):
    response = httpx.post(f"{gateway}/api/events?code={KEY}", json={
        "id": "c1", "type": "Contoso.Other", "source": "/x", "specversion": "1.0", "data": {}},
        headers={"content-type": "application/cloudevents+json"})
    assert response.status_code == 200 and response.json()["outcomes"] == ["ignored"]


def test_without_a_configured_key_the_webhook_is_not_served(settings):
    with TestClient(create_app(settings)) as client:
        assert client.post("/api/events", json=[]).status_code == 404
