"""The Event Grid webhook driven by the real `EventGridPublisherClient` against the gateway served by uvicorn."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

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
EVENT_TIME = "2026-01-31T12:00:00Z"


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
def client(webhook_settings):
    with TestClient(create_app(webhook_settings)) as client:
        yield client


@pytest.fixture
def publisher(gateway):
    with EventGridPublisherClient(f"{gateway}/api/events", AzureKeyCredential(KEY)) as client:
        yield client


def recorded_events(settings) -> list:
    claimed = in_the_stack(settings, lambda container: container.inventory_events.claim(
        "probe", limit=100, lease=timedelta(seconds=1)))
    return [event for event, _ in claimed]


def stock_updated(event_id=None, product="prod-eg", quantity=7, event_time=None):
    return EventGridEvent(subject=f"products/{product}", event_type="Inventory.StockUpdated", data_version="1.0",
                          data={"productId": product, "quantityAvailable": quantity, "warehouseId": "wh-1"},
                          id=event_id or str(uuid.uuid4()), **({"event_time": event_time} if event_time else {}))


def raw_event(event_id="e1", event_type="Inventory.StockUpdated", data=None, **fields) -> dict:
    """An event in Event Grid schema as JSON; `fields` replace the envelope's, None leaves one out."""
    event = {"id": event_id, "eventType": event_type, "subject": "s", "dataVersion": "1", "eventTime": EVENT_TIME,
             "data": {"productId": "p", "quantityAvailable": 3} if data is None else data, **fields}
    return {name: value for name, value in event.items() if value is not None}


def post_events(client, body):
    return client.post(f"/api/events?code={KEY}", json=body)


def test_an_event_grid_schema_stock_update_is_recorded(publisher, webhook_settings):
    happened = datetime(2026, 1, 31, 12, 0, 0, 250000, tzinfo=UTC)
    publisher.send(stock_updated(quantity=7, event_time=happened))
    (event,) = recorded_events(webhook_settings)
    assert (event.event_type, event.product_id, event.quantity_available, event.warehouse_id, event.event_time) == (
        "Inventory.StockUpdated", "prod-eg", 7, "wh-1", happened)


def test_a_cloudevents_low_stock_alert_is_recorded(publisher, webhook_settings):
    happened = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    publisher.send(CloudEvent(source="/inventory", type="Inventory.LowStock", time=happened,
                              data={"productId": "prod-low", "quantityAvailable": 2, "threshold": 5}))
    (event,) = recorded_events(webhook_settings)
    assert (event.event_type, event.product_id, event.threshold, event.event_time) == (
        "Inventory.LowStock", "prod-low", 5, happened)


def test_a_cloudevent_without_a_time_takes_its_receipt_time(client, webhook_settings):
    before = datetime.now(UTC)
    response = client.post(f"/api/events?code={KEY}", headers={"content-type": "application/cloudevents+json"},
                           json={"id": "c1", "type": "Inventory.StockUpdated", "source": "/inventory",
                                 "specversion": "1.0", "data": {"productId": "p", "quantityAvailable": 3}})
    assert response.status_code == 200
    (event,) = recorded_events(webhook_settings)
    assert before <= event.event_time <= datetime.now(UTC)


def test_an_event_time_with_an_offset_is_kept_as_the_same_instant_in_utc(client, webhook_settings):
    assert post_events(client, [raw_event(eventTime="2026-01-31T13:00:00.1234567+01:00")]).status_code == 200
    (event,) = recorded_events(webhook_settings)
    assert event.event_time == datetime(2026, 1, 31, 12, 0, 0, 123456, tzinfo=UTC)


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


def test_an_event_id_sent_again_with_another_order_is_a_poison_event_that_makes_nothing(client):
    order = {"customerId": "cust-eg-reused", "items": [
        {"productId": "prod-1", "productName": "Thing", "quantity": 1, "unitPrice": 19.99}]}
    first = raw_event("order-event-1", "Orders.OrderSubmitted", order)
    changed = raw_event("order-event-1", "Orders.OrderSubmitted", {**order, "customerId": "cust-eg-other"})
    assert post_events(client, [first]).status_code == 200
    refused = post_events(client, [changed])
    assert refused.status_code == 400
    (poison,) = refused.json()["events"]
    assert poison["id"] == "order-event-1" and poison["fields"] == ["id"] and "different request" in poison["error"]
    assert post_events(client, [first]).json() == {"outcomes": ["accepted"]}  # a redelivery is still one order
    assert len(client.get("/api/orders/customer/cust-eg-reused").json()) == 1
    assert client.get("/api/orders/customer/cust-eg-other").json() == []


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
    response = httpx.post(f"{gateway}/api/events?code={KEY}", json=[raw_event()])
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
    {"productId": "p", "quantityAvailable": 2 ** 63},
])
def test_poison_events_are_400_so_event_grid_does_not_retry(publisher, data):
    event = EventGridEvent(subject="s", event_type="Inventory.StockUpdated", data=data, data_version="1")
    with pytest.raises(HttpResponseError) as raised:
        publisher.send(event)
    assert raised.value.status_code == 400


def test_a_low_stock_event_without_threshold_is_poison(client):
    response = post_events(client, [raw_event("e2", "Inventory.LowStock")])
    assert response.status_code == 400
    assert "data.threshold" in response.json()["events"][0]["error"]


STOCK = {"productId": "p", "quantityAvailable": 3}
LOW = {**STOCK, "threshold": 5}
POISON = {
    "quantity 2**63": ("data.quantityAvailable", raw_event(data={**STOCK, "quantityAvailable": 2 ** 63})),
    "quantity above the limit": ("data.quantityAvailable", raw_event(data={**STOCK, "quantityAvailable": 10 ** 9 + 1})),
    "quantity negative": ("data.quantityAvailable", raw_event(data={**STOCK, "quantityAvailable": -1})),
    "quantity a boolean": ("data.quantityAvailable", raw_event(data={**STOCK, "quantityAvailable": True})),
    "quantity with a decimal point": ("data.quantityAvailable", raw_event(data={**STOCK, "quantityAvailable": 3.0})),
    "quantity a string": ("data.quantityAvailable", raw_event(data={**STOCK, "quantityAvailable": "3"})),
    "threshold 2**63": ("data.threshold", raw_event(event_type="Inventory.LowStock", data={**LOW, "threshold": 2 ** 63})),
    "threshold negative": ("data.threshold", raw_event(event_type="Inventory.LowStock", data={**LOW, "threshold": -1})),
    "threshold a boolean": ("data.threshold", raw_event(event_type="Inventory.LowStock", data={**LOW, "threshold": False})),
    "threshold with a decimal point": ("data.threshold",
                                       raw_event(event_type="Inventory.LowStock", data={**LOW, "threshold": 5.5})),
    "product id empty": ("data.productId", raw_event(data={**STOCK, "productId": ""})),
    "product id too long": ("data.productId", raw_event(data={**STOCK, "productId": "p" * 201})),
    "product id a number": ("data.productId", raw_event(data={**STOCK, "productId": 100})),
    "product id missing": ("data.productId", raw_event(data={"quantityAvailable": 3})),
    "id with a decimal point": ("id", raw_event(event_id=1.5)),
    "id a number": ("id", raw_event(event_id=7)),
    "id missing": ("id", raw_event(event_id=None)),
    "event time missing": ("eventTime", raw_event(eventTime=None)),
    "event time null": ("eventTime", raw_event(eventTime=None) | {"eventTime": None}),
    "event time not a time": ("eventTime", raw_event(eventTime="yesterday")),
    "event time without an offset": ("eventTime", raw_event(eventTime="2026-01-31T12:00:00")),
    "event time a number": ("eventTime", raw_event(eventTime=1769860800)),
    "event time out of range in UTC": ("eventTime", raw_event(eventTime="9999-12-31T23:59:59-01:00")),
    "event time far ahead": ("eventTime", raw_event(eventTime="2999-01-01T00:00:00Z")),
    "cloudevent time not a time": ("time", {"id": "c1", "type": "Inventory.StockUpdated", "source": "/x",
                                            "specversion": "1.0", "time": "31/01/2026", "data": STOCK}),
}


@pytest.mark.parametrize(("field", "event"), POISON.values(), ids=POISON.keys())
def test_event_data_that_can_never_apply_is_400_naming_the_field(client, webhook_settings, field, event):
    response = post_events(client, [event])
    assert response.status_code == 400
    (poison,) = response.json()["events"]
    assert field in poison["fields"] and field in poison["error"]
    assert poison["id"] == (event["id"] if isinstance(event.get("id"), str) else None)
    assert recorded_events(webhook_settings) == []


def test_the_largest_values_that_can_apply_are_accepted(client, webhook_settings):
    data = {"productId": "p" * 200, "quantityAvailable": 10 ** 9, "threshold": 0}
    assert post_events(client, [raw_event(event_type="Inventory.LowStock", data=data)]).status_code == 200
    (event,) = recorded_events(webhook_settings)
    assert (event.product_id, event.quantity_available, event.threshold) == ("p" * 200, 10 ** 9, 0)


def test_a_batch_with_a_poison_event_is_400_and_its_valid_events_are_still_recorded(client, webhook_settings):
    batch = [raw_event("good-1"), raw_event("bad", data={**STOCK, "quantityAvailable": 2 ** 63}), raw_event("good-2")]
    response = post_events(client, batch)
    assert response.status_code == 400
    assert [(e["index"], e["id"], e["fields"]) for e in response.json()["events"]] == [
        (1, "bad", ["data.quantityAvailable"])]
    assert response.json()["outcomes"] == ["accepted", "poison", "accepted"]
    assert sorted(event.event_id for event in recorded_events(webhook_settings)) == ["good-1", "good-2"]


def post_escaped(client, body):
    """The body as JSON escaping a lone surrogate (`"\\ud800"`), which UTF-8 cannot hold."""
    return client.post(f"/api/events?code={KEY}", content=json.dumps(body).encode(),
                       headers={"content-type": "application/json"})


SURROGATES = {
    "event id": ("id", raw_event(event_id="evt-\ud800")),
    "event type": ("eventType", raw_event(event_type="Inventory.\udc00")),
    "product id": ("data.productId", raw_event(data={**STOCK, "productId": "\udfff"})),
    "warehouse id": ("data.warehouseId", raw_event(data={**STOCK, "warehouseId": "wh-\ud83d"})),
    "cloudevent source": ("source", {"id": "c1", "type": "Inventory.StockUpdated", "source": "/\ud800",
                                     "specversion": "1.0", "data": STOCK}),
    "submitted order's customer": ("customerId", raw_event(event_type="Orders.OrderSubmitted", data={
        "customerId": "\ud800", "items": [{"productId": "p", "productName": "n", "quantity": 1, "unitPrice": 1}]})),
}


@pytest.mark.parametrize(("field", "event"), SURROGATES.values(), ids=SURROGATES.keys())
def test_a_lone_surrogate_is_a_poison_event_naming_the_field_and_nothing_is_stored(client, webhook_settings, field,
                                                                                  event):
    response = post_escaped(client, [event])

    assert response.status_code == 400, response.text
    (poison,) = response.json()["events"]
    assert poison["fields"] == [field] and "lone surrogate" in poison["error"]
    assert poison["id"] == (None if field == "id" else event["id"])  # an id that is not text is not echoed back
    assert recorded_events(webhook_settings) == []


def test_a_validation_code_with_a_lone_surrogate_is_400(client):
    event = raw_event(event_type="Microsoft.EventGrid.SubscriptionValidationEvent", data={"validationCode": "\ud800"})

    assert post_escaped(client, [event]).status_code == 400


def test_a_body_nested_deeper_than_the_decoder_recurses_is_400(client):
    response = client.post(f"/api/events?code={KEY}", content="[" * 20_000 + "]" * 20_000,  # within 64 KiB
                           headers={"content-type": "application/json"})

    assert response.status_code == 400
    assert "nested too deeply" in response.json()["message"]


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
