"""Hypothesis against the Event Grid webhook `POST /api/events`: deliveries in Event Grid schema and CloudEvents
1.0, one event or a batch, with hostile values in every field; and hostile bodies for `POST /api/orders`. No
answer is a 5xx."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.conftest import FUZZ_SETTINGS, WEBHOOK_KEY, tally
from tests.fuzz.hostile import Raw, field, json_text, nested, order_request, texts, values

EVENT_TYPES = st.sampled_from(["Inventory.StockUpdated", "Inventory.LowStock", "Orders.OrderSubmitted",
                               "Microsoft.EventGrid.SubscriptionValidationEvent", "Other.Type"])
TIMES = st.sampled_from(["2026-01-31T12:00:00Z", "2026-01-31T12:00:00", "9999-12-31T23:59:59-23:59",
                         "0001-01-01T00:00:00+23:59", "2999-01-01T00:00:00Z", "not a time"])
IDS = st.one_of(st.uuids().map(str), st.just("evt-1"), st.sampled_from([Raw("1.5"), Raw("10" * 40), Raw("1e400")]))
STOCK = st.fixed_dictionaries({"productId": field(texts), "quantityAvailable": field(st.integers(-1, 2 * 10**9))},
                              optional={"warehouseId": field(texts), "threshold": field(st.integers(-1, 10))})
DATA = st.one_of(STOCK, order_request(), st.fixed_dictionaries({"validationCode": field(texts)}), values)

event_grid_events = st.fixed_dictionaries(
    {"id": field(IDS), "eventType": field(EVENT_TYPES), "subject": field(texts), "eventTime": field(TIMES),
     "dataVersion": field(st.just("1.0")), "data": DATA},
    optional={"topic": texts, "metadataVersion": field(st.just("1"))})
cloud_events = st.fixed_dictionaries(
    {"specversion": field(st.just("1.0")), "id": field(IDS), "type": field(EVENT_TYPES),
     "source": field(texts), "data": DATA},
    optional={"time": field(TIMES), "datacontenttype": field(st.just("application/json"))})
events = st.one_of(event_grid_events, cloud_events)
deliveries = st.one_of(events, st.lists(events, min_size=1, max_size=5), values, st.sampled_from([nested(100_000)]))
MEDIA_TYPES = st.sampled_from(["application/json", "application/cloudevents+json",
                               "application/cloudevents-batch+json; charset=utf-8"])


@FUZZ_SETTINGS
@given(delivery=deliveries, media_type=MEDIA_TYPES)
def test_no_event_grid_delivery_answers_5xx(client, delivery, media_type):
    response = client.post("/api/events", content=json_text(delivery),
                           headers={"content-type": media_type, "aeg-sas-key": WEBHOOK_KEY})
    tally("Event Grid webhook (hypothesis)").record(response.status_code)
    assert response.status_code < 500, response.text
    response.json()


@FUZZ_SETTINGS
@given(body=st.one_of(order_request(), values))
def test_no_order_body_answers_5xx(client, body):
    response = client.post("/api/orders", content=json_text(body), headers={"content-type": "application/json"})
    tally("POST /api/orders bodies (hypothesis)").record(response.status_code)
    assert response.status_code < 500, response.text
    response.json()
