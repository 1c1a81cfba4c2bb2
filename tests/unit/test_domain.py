import json
from decimal import Decimal

import pytest

from fulfillment.domain import InvalidOrder, InvalidRequest, InvalidTransition, OrderStatus, Step
from fulfillment.service.requests import decode_json, new_order, parse_create_order


def place(payload):
    return new_order(parse_create_order(payload))


def test_total_amount_is_exact_decimal_arithmetic(seed_order):
    order = place(decode_json(json.dumps(seed_order)))
    assert order.total_amount == Decimal("149.93")
    assert [item.total_price for item in order.items] == [Decimal("99.98"), Decimal("49.95")]


def test_a_new_order_is_processing_with_no_completion(seed_order):
    order = place(seed_order)
    assert order.status is OrderStatus.PROCESSING
    assert order.completed_at is None and order.failure_reason is None


@pytest.mark.parametrize(("change", "field"), [
    (lambda o: o.update(customerId=" "), "customerId"),
    (lambda o: o.update(items=[]), "items"),
    (lambda o: o["items"][0].update(quantity=0), "items[0].quantity"),
    (lambda o: o["items"][1].update(unitPrice=Decimal("-1")), "items[1].unitPrice"),
    (lambda o: o["items"][1].update(unitPrice=Decimal("1.005")), "items[1].unitPrice"),
    (lambda o: o["items"][0].update(productId=""), "items[0].productId"),
    (lambda o: o["items"][0].update(productName=""), "items[0].productName"),
    (lambda o: o.update(items=o["items"] * 51), "items"),
    (lambda o: o.pop("customerId"), "customerId"),
    (lambda o: o["items"][0].update(quantity=100_001), "items[0].quantity"),
    (lambda o: o["items"][0].update(unitPrice=Decimal("1e30")), "items[0].unitPrice"),
])
def test_rule_breaking_requests_name_the_field(seed_order, change, field):
    change(seed_order)
    with pytest.raises(InvalidOrder) as raised:
        place(seed_order)
    assert field in [error.field for error in raised.value.errors]


@pytest.mark.parametrize(("payload", "field"), [
    ([], "body"),
    ({"customerId": 7, "items": []}, "customerId"),
    ({"customerId": "c", "items": [{"productId": "p", "productName": "n", "quantity": "2", "unitPrice": 1}]},
     "items[0].quantity"),
    ({"customerId": "c", "items": [{"productId": "p", "productName": "n", "quantity": True, "unitPrice": 1}]},
     "items[0].quantity"),
    ({"customerId": "c", "items": [{"productId": "p", "productName": "n", "quantity": 1, "unitPrice": "1"}]},
     "items[0].unitPrice"),
])
def test_wrongly_shaped_requests_are_not_orders_at_all(payload, field):
    with pytest.raises(InvalidRequest) as raised:
        place(payload)
    assert not isinstance(raised.value, InvalidOrder)
    assert field in [error.field for error in raised.value.errors]


def test_steps_advance_the_status_and_a_terminal_order_cannot_change(seed_order):
    order = place(seed_order)
    for step in Step:
        order.record_step(step, f"ref-{step}")
    assert order.status is OrderStatus.SHIPPED
    order.complete()
    assert order.status is OrderStatus.COMPLETED and order.completed_at is not None
    with pytest.raises(InvalidTransition):
        order.request_cancellation()
    with pytest.raises(InvalidTransition):
        order.record_step(Step.CREATE_SHIPMENT, "again")


def test_a_cancelled_saga_ends_cancelled_not_failed(seed_order):
    order = place(seed_order)
    order.request_cancellation()
    order.start_compensating(None, "cancelled on request")
    order.finish_unsuccessfully()
    assert order.status is OrderStatus.CANCELLED
    assert order.failure_reason == "cancelled on request"
