"""Every saga path, over the real embedded SQLite adapters, with actions invoked directly (no Prefect)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from fulfillment.bootstrap import bootstrap
from fulfillment.domain import (
    Actor,
    CancellationTooLate,
    Compensation,
    LostClaim,
    OrderStatus,
    SagaClaimed,
    Step,
    StoreUnavailable,
    TransientFault,
)
from fulfillment.service.saga_runs import RunOutcome

TRUSTED = Actor.trusted("test")


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
    return await services.order_service.place(payload, source="test", actor=TRUSTED)


def item(product_id="prod-100", quantity=2, price="49.99"):
    return {"productId": product_id, "productName": "Thing", "quantity": quantity, "unitPrice": Decimal(price)}


async def kinds(services, effect_id):
    return [kind for kind, _ in await services.payments.ledger(effect_id)]


async def test_happy_path_completes_with_every_reference(services, seed_order):
    order = await place(services, seed_order)
    result = await services.saga.run(order.id)
    stored = await services.orders.get(order.id)
    assert result.success and result.status is OrderStatus.COMPLETED
    assert stored.saga.completed_steps == list(Step) and stored.saga.in_flight is None
    assert stored.saga.compensated_steps == []
    assert result.tracking_id == stored.saga.tracking_id is not None
    assert stored.saga.reservation_id and stored.saga.transaction_id
    assert stored.completed_at is not None and stored.claim is None
    assert await services.inventory.available("prod-100") == 98
    assert await services.payments.ledger(order.id) == [("charge", Decimal("149.93"))]


async def test_out_of_stock_fails_at_the_first_step_with_a_short_reason(services):
    order = await place(services, {"customerId": "c1", "items": [item(quantity=101)]})
    result = await services.saga.run(order.id)
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.FAILED
    assert result.failure_reason == "OutOfStock: prod-100: 101 wanted, 100 available"
    assert stored.saga.failed_step == "ReserveInventory"
    assert stored.saga.completed_steps == [] and stored.saga.compensated_steps == []
    assert await services.inventory.available("prod-100") == 100


async def test_declined_payment_releases_the_reservation(services):
    order = await place(services, {"customerId": "c1", "items": [item(quantity=2, price="2500.01")]})
    result = await services.saga.run(order.id)
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.FAILED and result.failure_reason.startswith("PaymentDeclined: ")
    assert stored.saga.compensated_steps == [Compensation.COMPENSATE_INVENTORY]
    assert await services.inventory.available("prod-100") == 100
    assert await services.payments.ledger(order.id) == []


async def test_rejected_shipment_refunds_then_releases_in_reverse(services):
    order = await place(services, {"customerId": "c1", "items": [item("hazmat-7"), item("prod-100")]})
    result = await services.saga.run(order.id)
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.FAILED and stored.failure_reason.startswith("ShipmentRejected: ")
    assert stored.saga.completed_steps == [Step.RESERVE_INVENTORY, Step.PROCESS_PAYMENT]
    assert stored.saga.compensated_steps == [Compensation.REFUND_PAYMENT, Compensation.COMPENSATE_INVENTORY]
    assert await services.payments.ledger(order.id) == [("charge", Decimal("199.96")), ("refund", Decimal("199.96"))]
    assert await services.inventory.available("hazmat-7") == 100


class Outage:
    """Wraps a real service; while `down`, the named operations fail transiently. With `lost_answers`, the
    operation takes effect first and only its answer is lost (a timeout after the write landed)."""

    def __init__(self, service, *operations, lost_answers=False):
        self._service, self._operations, self._lost_answers = service, operations, lost_answers
        self.down, self.calls = True, 0

    def __getattr__(self, name):
        operation = getattr(self._service, name)
        if name not in self._operations:
            return operation

        async def call(*args):
            self.calls += 1
            if not self.down:
                return await operation(*args)
            if self._lost_answers:
                await operation(*args)
            raise TransientFault(f"{name}: read timeout")

        return call


async def test_a_compensation_that_keeps_failing_leaves_the_order_compensating_until_it_succeeds(assemble, caplog):
    probe = assemble()
    refunds = Outage(probe.payments, "refund")
    services = assemble(payments=refunds)
    order = await place(services, {"customerId": "c1", "items": [item("hazmat-1")]})
    with caplog.at_level(logging.WARNING, logger="fulfillment.saga"):
        result = await services.saga.run(order.id)
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.COMPENSATING and stored.needs_manual_intervention
    assert stored.saga.compensated_steps == [Compensation.COMPENSATE_INVENTORY]
    (failure,) = stored.saga.compensation_failures
    assert failure.step == "RefundPayment" and "gave up after 6 attempts" in failure.error
    assert any("manual intervention required" in r.getMessage() and r.levelno >= logging.WARNING
               for r in caplog.records)
    refunds.down = False
    result = await services.saga.run(order.id)
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.FAILED and not stored.needs_manual_intervention
    assert await kinds(services, order.id) == ["charge", "refund"]


async def test_a_shipment_whose_answer_is_lost_is_resolved_and_never_compensated(assemble):
    probe = assemble()
    carrier = Outage(probe.shipping, "create_shipment", lost_answers=True)
    services = assemble(shipping=carrier)
    order = await place(services, {"customerId": "c1", "items": [item()]})
    result = await services.saga.run(order.id)
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.PAYMENT_PROCESSED and stored.saga.in_flight is Step.CREATE_SHIPMENT
    assert await kinds(services, order.id) == ["charge"] and await services.inventory.available("prod-100") == 98
    with pytest.raises(CancellationTooLate) as too_late:
        await services.order_service.cancel(order.id, actor=TRUSTED)
    assert too_late.value.will_end_as == "completed"
    carrier.down = False
    result = await services.saga.run(order.id)
    assert result.status is OrderStatus.COMPLETED and result.tracking_id
    assert await kinds(services, order.id) == ["charge"]


async def test_a_charge_whose_answer_is_lost_is_resolved_before_it_is_refunded(assemble):
    probe = assemble()
    payments = Outage(probe.payments, "charge", "refund", lost_answers=True)
    services = assemble(payments=payments)
    order = await place(services, {"customerId": "c1", "items": [item()]})
    result = await services.saga.run(order.id)
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.COMPENSATING and stored.failure_reason is None
    assert stored.saga.failure_reason == "payment service unavailable"
    assert await kinds(services, order.id) == ["charge"], "the charge landed although every answer was lost"
    payments.down = False
    result = await services.saga.run(order.id)
    assert result.status is OrderStatus.FAILED and result.failure_reason == "payment service unavailable"
    assert await kinds(services, order.id) == ["charge", "refund"]
    assert await services.inventory.available("prod-100") == 100


async def test_a_reservation_in_doubt_is_asked_again_then_released(assemble):
    probe = assemble()
    inventory = Outage(probe.inventory, "reserve")
    services = assemble(inventory=inventory)
    order = await place(services, {"customerId": "c1", "items": [item()]})
    assert (await services.saga.run(order.id)).status is OrderStatus.COMPENSATING
    inventory.down = False
    result = await services.saga.run(order.id)
    assert result.status is OrderStatus.FAILED and result.failure_reason == "inventory service unavailable"
    assert await services.inventory.available("prod-100") == 100


class SlowFirstCharge:
    def __init__(self, payments):
        self._payments, self.calls = payments, 0

    async def charge(self, *args):
        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(5)
        return await self._payments.charge(*args)

    def __getattr__(self, name):
        return getattr(self._payments, name)


async def test_a_saga_over_its_time_limit_compensates_and_says_it_timed_out(assemble, settings):
    probe = assemble()
    services = assemble(settings.model_copy(update={"saga_timeout_minutes": 0.01}),
                        payments=SlowFirstCharge(probe.payments))
    order = await place(services, {"customerId": "c1", "items": [item()]})
    result = await services.saga.run(order.id)
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.FAILED
    assert result.failure_reason == "saga timed out after 0.01 minutes during ProcessPayment"
    assert stored.saga.compensated_steps == [Compensation.REFUND_PAYMENT, Compensation.COMPENSATE_INVENTORY]
    assert await services.inventory.available("prod-100") == 100
    assert await kinds(services, order.id) == ["charge", "refund"]


async def test_no_step_is_invoked_once_the_time_limit_has_passed(assemble, settings, seed_order):
    probe = assemble()
    inventory = Outage(probe.inventory, "reserve")
    services = assemble(settings.model_copy(update={"saga_timeout_minutes": 1}), inventory=inventory)
    order = await place(services, seed_order)
    long_ago = datetime.now(UTC) - timedelta(minutes=2)
    await services.orders.update(order.id, lambda o: o.begin_saga(now=long_ago))
    result = await services.saga.run(order.id)
    assert result.status is OrderStatus.FAILED
    assert result.failure_reason == "saga timed out after 1 minutes before ReserveInventory"
    assert inventory.calls == 0


@pytest.mark.parametrize(("failures", "status"), [(3, OrderStatus.COMPLETED), (4, OrderStatus.FAILED)])
async def test_transient_faults_are_retried_within_the_step(assemble, settings, failures, status):
    probe = assemble()
    calls = []

    class FlakyPayments:
        async def charge(self, *args):
            calls.append(args)
            if len(calls) <= failures:
                raise TransientFault("payment API answered 503")
            return await probe.payments.charge(*args)

        refund = probe.payments.refund

    services = assemble(settings.model_copy(update={"step_attempts": 4}), payments=FlakyPayments())
    order = await place(services, {"customerId": "c1", "items": [item()]})
    result = await services.saga.run(order.id)
    assert result.status is status
    if status is OrderStatus.FAILED:
        assert result.failure_reason == "payment service unavailable"
        assert len(calls) == 5, "four attempts, then one more to resolve the charge before the refund"


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
    async with services.saga.claimed(order.id, "test") as token:
        await services.orders.update(order.id, lambda o: o.begin_saga())
        first = await services.saga_actions.run(Step.RESERVE_INVENTORY, order.id, token)
        assert await services.inventory.reserve(order.id, order.items) == first
        await services.saga_actions.run(Step.PROCESS_PAYMENT, order.id, token)
        assert await services.payments.charge(order.id, "cust-001", Decimal("149.93")) is not None
        for _ in range(2):
            await services.saga_actions.run(Compensation.REFUND_PAYMENT, order.id, token)
            await services.saga_actions.run(Compensation.COMPENSATE_INVENTORY, order.id, token)
    assert await services.inventory.available("prod-100") == 100
    assert await kinds(services, order.id) == ["charge", "refund"]


async def test_a_saga_resumed_after_a_crash_skips_completed_steps(services, seed_order):
    order = await place(services, seed_order)
    async with services.saga.claimed(order.id, "crashed run") as token:
        await services.saga_actions.run(Step.RESERVE_INVENTORY, order.id, token)
        await services.saga_actions.run(Step.PROCESS_PAYMENT, order.id, token)
    result = await services.saga.run(order.id)
    assert result.status is OrderStatus.COMPLETED
    assert await services.inventory.available("prod-100") == 98
    assert len(await services.payments.ledger(order.id)) == 1


async def test_cancelling_before_the_saga_starts_ends_cancelled_at_once(services, seed_order):
    order = await place(services, seed_order)
    cancelled = await services.order_service.cancel(order.id, actor=TRUSTED)
    assert cancelled.status is OrderStatus.CANCELLED
    result = await services.saga.run(order.id)
    assert result.status is OrderStatus.CANCELLED
    assert await services.inventory.available("prod-100") == 100


def invoking_then(services, after: Action, then):
    async def invoke(action, order_id, token, budget):
        outcome = await services.saga.direct(action, order_id, token, budget)
        if action is after:
            await then(order_id)
        return outcome

    return invoke


Action = Step | Compensation


async def test_cancelling_mid_saga_compensates_what_was_done(services, seed_order):
    order = await place(services, seed_order)
    invoke = invoking_then(services, Step.PROCESS_PAYMENT, lambda order_id: services.order_service.cancel(order_id, actor=TRUSTED))
    result = await services.saga.run(order.id, invoke=invoke)
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.CANCELLED
    assert stored.saga.compensated_steps == [Compensation.REFUND_PAYMENT, Compensation.COMPENSATE_INVENTORY]
    assert stored.failure_reason == "cancelled on request before CreateShipment"


async def test_cancelling_once_the_shipment_has_begun_is_too_late(services, seed_order):
    order = await place(services, seed_order)
    refusals = []

    async def cancel(order_id):
        with pytest.raises(CancellationTooLate) as raised:
            await services.order_service.cancel(order_id, actor=TRUSTED)
        refusals.append(raised.value)

    async def invoke(action, order_id, token, budget):
        if action is Step.CREATE_SHIPMENT:
            await cancel(order_id)
        return await services.saga.direct(action, order_id, token, budget)

    result = await services.saga.run(order.id, invoke=invoke)
    assert result.status is OrderStatus.COMPLETED
    assert [r.will_end_as for r in refusals] == ["completed"]


async def test_a_saga_resumed_while_compensating_only_finishes_the_compensation(services, seed_order):
    order = await place(services, seed_order)
    async with services.saga.claimed(order.id, "crashed run") as token:
        await services.orders.update(order.id, lambda o: o.begin_saga())
        await services.saga_actions.run(Step.RESERVE_INVENTORY, order.id, token)
        await services.saga_actions.run(Step.PROCESS_PAYMENT, order.id, token)
        await services.orders.update(order.id, lambda o: o.start_compensating("CreateShipment", "carrier down"))
    result = await services.saga.run(order.id)  # the worker died here before; this is the re-run
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.FAILED and stored.failure_reason == "carrier down"
    assert stored.saga.compensated_steps == [Compensation.REFUND_PAYMENT, Compensation.COMPENSATE_INVENTORY]
    assert stored.saga.tracking_id is None
    assert await kinds(services, order.id) == ["charge", "refund"]


async def test_a_cancellation_during_compensation_of_a_real_failure_is_too_late(services):
    order = await place(services, {"customerId": "c1", "items": [item("hazmat-9")]})
    answers = []

    async def invoke(action, order_id, token, budget):
        if isinstance(action, Compensation):
            with pytest.raises(CancellationTooLate) as raised:
                await services.order_service.cancel(order_id, actor=TRUSTED)
            answers.append(raised.value.will_end_as)
        return await services.saga.direct(action, order_id, token, budget)

    result = await services.saga.run(order.id, invoke=invoke)
    assert result.status is OrderStatus.FAILED and result.failure_reason.startswith("ShipmentRejected")
    assert set(answers) == {"failed"}


async def test_a_steps_own_timeout_is_not_reported_as_the_saga_timing_out(assemble):
    class PaymentsThatTimeOut:
        async def charge(self, *args):
            raise TimeoutError("payment API read timeout")

        async def refund(self, effect_id):
            return False

    services = assemble(payments=PaymentsThatTimeOut())
    order = await place(services, {"customerId": "c1", "items": [item()]})
    result = await services.saga.run(order.id)
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.COMPENSATING, "the charge is in doubt until the service answers"
    assert stored.saga.failure_reason == "payment service unavailable"


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
    services = assemble(orders=orders, payments=Outage(probe.payments, "refund"))
    order = await place(services, {"customerId": "c1", "items": [item("hazmat-2")]})
    result = await services.saga.run(order.id)
    stored = await services.orders.get(order.id)
    assert result.status is OrderStatus.COMPENSATING
    assert stored.saga.compensated_steps == [Compensation.COMPENSATE_INVENTORY]
    assert any("manual intervention required" in r.getMessage() for r in caplog.records)


async def test_a_run_that_was_taken_over_is_refused_every_write_and_stops(services, seed_order):
    order = await place(services, seed_order)

    async def taken_over(order_id):
        later = datetime.now(UTC) + timedelta(hours=1)  # as if this run had paused past its claim
        await services.orders.update(order_id, lambda o: o.claim_saga("other run", "other", later, now=later))

    with pytest.raises(LostClaim):
        await services.saga.run(order.id, invoke=invoking_then(services, Step.RESERVE_INVENTORY, taken_over))
    stored = await services.orders.get(order.id)
    assert stored.saga.completed_steps == [Step.RESERVE_INVENTORY] and stored.claim.holder == "other run"
    assert await services.payments.ledger(order.id) == []


async def test_a_second_run_is_refused_while_the_first_holds_the_order(services, seed_order):
    order = await place(services, seed_order)
    async with services.saga.claimed(order.id, "first run"):
        with pytest.raises(SagaClaimed):
            await services.saga.run(order.id, holder="second run")


async def test_retrying_a_cleanly_failed_order_runs_a_new_attempt_with_its_own_effect_ids(services):
    order = await place(services, {"customerId": "c1", "items": [item(quantity=150, price="10.00")]})
    await services.orders.update(order.id, lambda o: o.attach_flow_run("run-1"))
    first = await services.saga_runs.execute(order.id, "run-1")
    assert first.outcome is RunOutcome.FAILED
    await services.inventory.set_stock("prod-100", 200)
    again = await services.saga_runs.execute(order.id, "run-1")  # the UI's Retry of the order's own run
    stored = await services.orders.get(order.id)
    assert again.outcome is RunOutcome.COMPLETED and stored.saga.attempt == 2
    assert [attempt.failure_reason for attempt in stored.earlier_attempts] == [
        "OutOfStock: prod-100: 150 wanted, 100 available"]
    assert await services.payments.ledger(f"{order.id}.attempt-2") == [("charge", Decimal("1500.00"))]
    assert await services.payments.ledger(order.id) == []
    assert await services.inventory.available("prod-100") == 50


async def test_another_run_of_a_finished_order_does_nothing(services, seed_order):
    order = await place(services, seed_order)
    await services.orders.update(order.id, lambda o: o.attach_flow_run("run-1"))
    await services.saga_runs.execute(order.id, "run-1")
    quick_run = await services.saga_runs.execute(order.id, "quick-run")
    assert quick_run.outcome is RunOutcome.NOTHING_TO_DO and "already completed" in quick_run.message
    assert len(await services.payments.ledger(order.id)) == 1
    unknown = await services.saga_runs.execute("no-such-order", "quick-run")
    assert unknown.outcome is RunOutcome.NOT_FOUND and "no-such-order" in unknown.message
