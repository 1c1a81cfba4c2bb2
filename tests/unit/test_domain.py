import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from fulfillment.domain import (
    CancellationTooLate,
    Compensation,
    InvalidOrder,
    InvalidRequest,
    InvalidTransition,
    LostClaim,
    OrderStatus,
    SagaCancelled,
    SagaClaimed,
    SagaTimedOut,
    Step,
)
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


def test_an_order_keeps_each_status_it_takes_in_order_with_its_time(seed_order):
    order = place(seed_order)
    order.record_step(Step.RESERVE_INVENTORY, "res-1")
    order.record_step(Step.RESERVE_INVENTORY, "res-1")  # a repeat is no change
    order.start_compensating(Step.PROCESS_PAYMENT, "PaymentDeclined")
    order.record_compensation(Compensation.COMPENSATE_INVENTORY, undid_something=True)
    order.finish_unsuccessfully()
    order.retry()
    assert [change.status for change in order.status_history] == [
        OrderStatus.PROCESSING, OrderStatus.INVENTORY_RESERVED, OrderStatus.COMPENSATING, OrderStatus.FAILED,
        OrderStatus.PROCESSING]
    times = [change.at for change in order.status_history]
    assert times == sorted(times) and times[0] == order.created_at


def test_a_cancelled_saga_ends_cancelled_not_failed(seed_order):
    order = started(place(seed_order))
    order.record_step(Step.RESERVE_INVENTORY, "res-1")
    order.request_cancellation()
    order.start_compensating(None, "cancelled on request")
    with pytest.raises(InvalidTransition, match="still owes CompensateInventory"):
        order.finish_unsuccessfully()
    order.record_compensation(Compensation.COMPENSATE_INVENTORY, undid_something=True)
    order.finish_unsuccessfully()
    assert order.status is OrderStatus.CANCELLED
    assert order.failure_reason == "cancelled on request"


TIMEOUT = timedelta(minutes=5)


def started(order):
    order.begin_saga()
    return order


def test_an_order_no_step_has_touched_is_cancelled_at_once(seed_order):
    order = started(place(seed_order))
    order.request_cancellation()
    assert order.status is OrderStatus.CANCELLED and order.completed_at is not None


def test_cancelling_once_the_pivot_has_begun_is_too_late_and_names_the_outcome(seed_order):
    order = started(place(seed_order))
    for step in (Step.RESERVE_INVENTORY, Step.PROCESS_PAYMENT):
        order.begin_step(step, datetime.now(UTC), TIMEOUT)
        order.record_step(step, "ref")
    order.begin_step(Step.CREATE_SHIPMENT, datetime.now(UTC), TIMEOUT)
    with pytest.raises(CancellationTooLate) as raised:
        order.request_cancellation()
    assert raised.value.will_end_as == "completed"
    with pytest.raises(InvalidTransition):
        order.start_compensating("CreateShipment", "carrier down")


def test_a_step_in_flight_is_owed_a_compensation_since_it_may_have_landed(seed_order):
    order = started(place(seed_order))
    order.begin_step(Step.RESERVE_INVENTORY, datetime.now(UTC), TIMEOUT)
    order.record_step(Step.RESERVE_INVENTORY, "res-1")
    order.begin_step(Step.PROCESS_PAYMENT, datetime.now(UTC), TIMEOUT)
    assert order.saga.outstanding_compensations() == [Compensation.REFUND_PAYMENT, Compensation.COMPENSATE_INVENTORY]


def test_no_step_begins_past_the_time_limit_or_off_the_forward_path(seed_order):
    order = place(seed_order)
    order.begin_saga(now=datetime.now(UTC) - timedelta(minutes=6))
    with pytest.raises(SagaTimedOut):
        order.begin_step(Step.RESERVE_INVENTORY, datetime.now(UTC), TIMEOUT)
    fresh = started(place(seed_order))
    fresh.begin_step(Step.RESERVE_INVENTORY, datetime.now(UTC), TIMEOUT)
    fresh.request_cancellation()
    with pytest.raises(SagaCancelled):
        fresh.begin_step(Step.PROCESS_PAYMENT, datetime.now(UTC), TIMEOUT)


def test_a_claim_excludes_other_runs_until_it_runs_out_and_fences_their_writes(seed_order):
    order = place(seed_order)
    now = datetime.now(UTC)
    order.claim_saga("run-a", "token-a", now + timedelta(seconds=30), now)
    with pytest.raises(SagaClaimed):
        order.claim_saga("run-b", "token-b", now + timedelta(seconds=30), now)
    order.claim_saga("run-b", "token-b", now + timedelta(seconds=90), now + timedelta(seconds=31))
    with pytest.raises(LostClaim):
        order.check_claim("token-a")
    order.check_claim("token-b")


def test_a_retried_order_starts_a_new_attempt_and_keeps_the_old_one(seed_order):
    order = started(place(seed_order))
    order.start_compensating("ReserveInventory", "OutOfStock: none left")
    order.finish_unsuccessfully()
    order.retry()
    assert order.status is OrderStatus.PROCESSING and order.saga.attempt == 2
    assert order.saga.effect_id == f"{order.id}.attempt-2"
    assert [a.failure_reason for a in order.earlier_attempts] == ["OutOfStock: none left"]
