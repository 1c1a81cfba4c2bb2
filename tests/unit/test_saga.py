"""Every saga path, over the real embedded SQLite adapters, with actions invoked directly (no Prefect)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from fulfillment.bootstrap import bootstrap
from fulfillment.domain import Compensation, OrderStatus, Step, StoreUnavailable, TransientFault


@pytest.fixture
async def assemble(settings):
    """Builds containers over this test's store, with adapters replaced (`bootstrap` overrides) or other
    settings, and closes them all when the test ends."""
    built = []

    def build(with_settings=None, **overrides):
        built.append(bootstrap(with_settings or settings, **overrides))
        return built[-1]

    yield build
    for container in built:
        await container.aclose()


@pytest.fixture
def services(assemble):
    return assemble()


async def place(services, payload):
    return await services.order_service.place(payload, source="test")


def item(product_id="prod-100", quantity=2, price="49.99"):
    return {"productId": product_id, "productName": "Thing", "quantity": quantity, "unitPrice": Decimal(price)}


async def test_happy_path_completes_with_every_reference(services, seed_order):
    order = await place(services, seed_order)
    result = await services.saga.run(order.id)
    stored = await services.orders.get(order.id)
    assert result.success and result.status is OrderStatus.COMPLETED
    assert stored.saga.completed_steps == list(Step)
    assert stored.saga.compensated_steps == []
    assert result.tracking_id == stored.saga.tracking_id is not None
    assert stored.saga.reservation_id and stored.saga.transaction_id
    assert stored.completed_at is not None
    assert await services.inventory.available("prod-100") == 98
    assert await services.payments.ledger(order.id) == [("charge", Decimal("149.93"))]


async def test_out_of_stock_fails_at_the_first_step_and_compensates_nothing(services):
    order = await place(services, {"customerId": "c1", "items": [item(quantity=101)]})
    result = await services.saga.run(order.id)
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.FAILED
    assert "ReserveInventory failed: OutOfStock" in result.failure_reason
    assert stored.saga.failed_step == "ReserveInventory"
    assert stored.saga.completed_steps == [] and stored.saga.compensated_steps == []
    assert await services.inventory.available("prod-100") == 100


async def test_declined_payment_releases_the_reservation(services):
    order = await place(services, {"customerId": "c1", "items": [item(quantity=2, price="2500.01")]})
    result = await services.saga.run(order.id)
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.FAILED and "PaymentDeclined" in result.failure_reason
    assert stored.saga.compensated_steps == [Compensation.COMPENSATE_INVENTORY]
    assert await services.inventory.available("prod-100") == 100
    assert await services.payments.ledger(order.id) == []


async def test_rejected_shipment_refunds_then_releases_in_reverse(services):
    order = await place(services, {"customerId": "c1", "items": [item("hazmat-7"), item("prod-100")]})
    result = await services.saga.run(order.id)
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.FAILED and "ShipmentRejected" in stored.failure_reason
    assert stored.saga.completed_steps == [Step.RESERVE_INVENTORY, Step.PROCESS_PAYMENT]
    assert stored.saga.compensated_steps == [Compensation.REFUND_PAYMENT, Compensation.COMPENSATE_INVENTORY]
    assert await services.payments.ledger(order.id) == [("charge", Decimal("199.96")), ("refund", Decimal("199.96"))]
    assert await services.inventory.available("hazmat-7") == 100


class BrokenRefunds:
    """A payment service whose refunds always fail: a downstream outage during compensation."""

    def __init__(self, payments):
        self._payments = payments

    async def charge(self, *args):
        return await self._payments.charge(*args)

    async def refund(self, order_id):
        raise RuntimeError("payment provider rejected the refund")


async def test_a_failed_compensation_is_flagged_and_the_others_still_run(assemble, caplog):
    probe = assemble()
    services = assemble(payments=BrokenRefunds(probe.payments))
    order = await place(services, {"customerId": "c1", "items": [item("hazmat-1")]})
    with caplog.at_level(logging.WARNING, logger="fulfillment.saga"):
        result = await services.saga.run(order.id)
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.FAILED
    assert stored.saga.compensated_steps == [Compensation.COMPENSATE_INVENTORY]
    (failure,) = stored.saga.compensation_failures
    assert failure.step == "RefundPayment" and failure.manual_intervention_required
    assert "payment provider rejected the refund" in failure.error
    assert any("manual intervention required" in r.getMessage() and r.levelno >= logging.WARNING
               for r in caplog.records)


class SlowShipping:
    async def create_shipment(self, *args):
        await asyncio.sleep(5)
        return "never"


async def test_a_saga_over_its_time_limit_compensates_and_says_it_timed_out(assemble, settings):
    services = assemble(settings.model_copy(update={"saga_timeout_minutes": 0.01}), shipping=SlowShipping())
    order = await place(services, {"customerId": "c1", "items": [item()]})
    result = await services.saga.run(order.id)
    stored = await services.orders.get(order.id)
    stock = await services.inventory.available("prod-100")
    ledger = await services.payments.ledger(order.id)
    assert result.status is OrderStatus.FAILED
    assert "timed out after 0.01 minutes during CreateShipment" in result.failure_reason
    assert stored.saga.compensated_steps == [Compensation.REFUND_PAYMENT, Compensation.COMPENSATE_INVENTORY]
    assert stock == 100 and [kind for kind, _ in ledger] == ["charge", "refund"]


class FlakyShipping:
    """Fails transiently a given number of times, then delegates to the real service."""

    def __init__(self, shipping, failures):
        self._shipping, self.failures, self.calls = shipping, failures, 0

    async def create_shipment(self, *args):
        self.calls += 1
        if self.calls <= self.failures:
            raise TransientFault("carrier API answered 503")
        return await self._shipping.create_shipment(*args)


@pytest.mark.parametrize(("failures", "status"), [(3, OrderStatus.COMPLETED), (4, OrderStatus.FAILED)])
async def test_transient_faults_are_retried_within_the_step(assemble, settings, failures, status):
    probe = assemble()
    flaky = FlakyShipping(probe.shipping, failures)
    services = assemble(settings.model_copy(update={"step_attempts": 4}), shipping=flaky)
    order = await place(services, {"customerId": "c1", "items": [item()]})
    result = await services.saga.run(order.id)
    assert result.status is status
    assert flaky.calls == min(failures + 1, 4)
    if status is OrderStatus.FAILED:
        assert "gave up after 4 attempts" in result.failure_reason


async def test_business_refusals_are_not_retried(assemble):
    probe = assemble()
    calls = []

    class CountingPayments:
        async def charge(self, *args):
            calls.append(args)
            return await probe.payments.charge(*args)

        refund = probe.payments.refund

    services = assemble(payments=CountingPayments())
    order = await place(services, {"customerId": "c1", "items": [item(price="5000.01")]})
    await services.saga.run(order.id)
    assert len(calls) == 1


async def test_rerunning_a_finished_saga_changes_nothing(services, seed_order):
    order = await place(services, seed_order)
    first = await services.saga.run(order.id)
    before = await services.orders.get(order.id)
    again = await services.saga.run(order.id)
    after = await services.orders.get(order.id)
    assert again == first
    assert after.saga == before.saga and after.completed_at == before.completed_at
    assert await services.inventory.available("prod-100") == 98
    assert await services.payments.ledger(order.id) == [("charge", Decimal("149.93"))]


async def test_each_step_and_compensation_is_idempotent_per_order(services, seed_order):
    order = await place(services, seed_order)
    first = await services.saga_actions.run(Step.RESERVE_INVENTORY, order.id)
    assert await services.inventory.reserve(order.id, order.items) == first
    await services.saga_actions.run(Step.PROCESS_PAYMENT, order.id)
    assert await services.payments.charge(order.id, "cust-001", Decimal("149.93")) is not None
    for _ in range(2):
        await services.saga_actions.run(Compensation.REFUND_PAYMENT, order.id)
        await services.saga_actions.run(Compensation.COMPENSATE_INVENTORY, order.id)
    assert await services.inventory.available("prod-100") == 100
    assert [kind for kind, _ in await services.payments.ledger(order.id)] == ["charge", "refund"]


async def test_a_saga_resumed_after_a_crash_skips_completed_steps(services, seed_order):
    order = await place(services, seed_order)
    await services.saga_actions.run(Step.RESERVE_INVENTORY, order.id)
    await services.saga_actions.run(Step.PROCESS_PAYMENT, order.id)
    result = await services.saga.run(order.id)
    assert result.status is OrderStatus.COMPLETED
    assert await services.inventory.available("prod-100") == 98
    assert len(await services.payments.ledger(order.id)) == 1


async def test_cancelling_before_the_saga_starts_ends_cancelled_without_effects(services, seed_order):
    order = await place(services, seed_order)
    await services.order_service.cancel(order.id)
    result = await services.saga.run(order.id)
    assert result.status is OrderStatus.CANCELLED
    assert await services.inventory.available("prod-100") == 100


async def test_cancelling_mid_saga_compensates_what_was_done(services, seed_order):
    order = await place(services, seed_order)

    async def cancel_after_payment(action, order_id, budget):
        outcome = await services.saga.direct(action, order_id, budget)
        if action is Step.PROCESS_PAYMENT:
            await services.order_service.cancel(order_id)
        return outcome

    result = await services.saga.run(order.id, invoke=cancel_after_payment)
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.CANCELLED
    assert stored.saga.compensated_steps == [Compensation.REFUND_PAYMENT, Compensation.COMPENSATE_INVENTORY]
    assert "cancelled on request before CreateShipment" in stored.failure_reason


async def test_a_saga_resumed_while_compensating_only_finishes_the_compensation(services, seed_order):
    order = await place(services, seed_order)
    await services.saga_actions.run(Step.RESERVE_INVENTORY, order.id)
    await services.saga_actions.run(Step.PROCESS_PAYMENT, order.id)
    await services.orders.update(order.id, lambda o: o.begin_saga())
    await services.orders.update(order.id, lambda o: o.start_compensating("CreateShipment", "carrier down"))
    result = await services.saga.run(order.id)  # the worker died here before; this is the re-run
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.FAILED and stored.failure_reason == "carrier down"
    assert stored.saga.compensated_steps == [Compensation.REFUND_PAYMENT, Compensation.COMPENSATE_INVENTORY]
    assert stored.saga.tracking_id is None
    assert [kind for kind, _ in await services.payments.ledger(order.id)] == ["charge", "refund"]


async def test_a_first_step_that_gave_up_on_transient_faults_records_no_compensation(assemble):
    class DownInventory:
        async def reserve(self, *args):
            raise TransientFault("inventory API answered 503")

        async def release(self, order_id):
            return False  # nothing was reserved

    services = assemble(inventory=DownInventory())
    order = await place(services, {"customerId": "c1", "items": [item()]})
    result = await services.saga.run(order.id)
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.FAILED and "gave up" in result.failure_reason
    assert stored.saga.compensated_steps == []


async def test_a_cancellation_during_compensation_of_a_real_failure_still_ends_failed(services):
    order = await place(services, {"customerId": "c1", "items": [item("hazmat-9")]})

    async def cancel_while_compensating(action, order_id, budget):
        if isinstance(action, Compensation):
            await services.orders.update(order_id, lambda o: o.request_cancellation())
        return await services.saga.direct(action, order_id, budget)

    result = await services.saga.run(order.id, invoke=cancel_while_compensating)
    assert result.status is OrderStatus.FAILED and "ShipmentRejected" in result.failure_reason


async def test_the_time_limit_counts_from_the_first_start_not_from_a_re_run(assemble, settings, seed_order):
    services = assemble(settings.model_copy(update={"saga_timeout_minutes": 1}))
    order = await place(services, seed_order)
    long_ago = datetime.now(UTC) - timedelta(minutes=2)
    await services.orders.update(order.id, lambda o: o.begin_saga(now=long_ago))
    result = await services.saga.run(order.id)
    assert result.status is OrderStatus.FAILED
    assert "timed out after 1 minutes during ReserveInventory" in result.failure_reason


class ShippingThatTimesOut:
    async def create_shipment(self, *args):
        raise TimeoutError("carrier API read timeout")


async def test_a_steps_own_timeout_is_not_reported_as_the_saga_timing_out(assemble):
    services = assemble(shipping=ShippingThatTimesOut())
    order = await place(services, {"customerId": "c1", "items": [item()]})
    result = await services.saga.run(order.id)
    assert result.failure_reason == "CreateShipment failed: TimeoutError: carrier API read timeout"


async def test_compensations_go_on_when_recording_a_failed_one_fails_too(assemble, settings, caplog):
    probe = assemble()

    class StoreFailingOnFailureRecords(type(probe.orders)):
        """The real store, down exactly when a compensation failure is to be recorded."""

        async def update(self, order_id, change):
            preview = await self.get(order_id)
            change(preview)
            if preview.saga.compensation_failures:
                raise StoreUnavailable("store went away")
            return await super().update(order_id, change)

    orders = StoreFailingOnFailureRecords(settings.data_dir / "orders.db")
    services = assemble(orders=orders, payments=BrokenRefunds(probe.payments))
    order = await place(services, {"customerId": "c1", "items": [item("hazmat-2")]})
    result = await services.saga.run(order.id)
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.FAILED
    assert stored.saga.compensated_steps == [Compensation.COMPENSATE_INVENTORY]
    assert any("manual intervention required" in r.getMessage() for r in caplog.records)
