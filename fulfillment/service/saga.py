"""The order saga: reserve inventory, process payment, create shipment; compensate in reverse on failure.

`SagaActions` holds each step and compensation as one idempotent effect keyed by the order id.
`OrderSaga` runs them in order. How each action is invoked is a parameter (`Invoke`): directly in tests,
as a Prefect task in `flows/`, so the orchestration logic is written once and tested without Prefect.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from fulfillment.domain import (
    COMPENSATION_OF,
    Compensation,
    InvalidTransition,
    Order,
    OrderResult,
    Step,
    StepRefused,
    TransientFault,
)
from fulfillment.ports import Inventory, OrderRepository, Payments, Shipping
from fulfillment.telemetry import COMPENSATION_FAILURES, COMPENSATIONS, SAGA_DURATION, SAGA_OUTCOMES, STEP_DURATION

log = logging.getLogger("fulfillment.saga")

Action = Step | Compensation
Invoke = Callable[[Action, str, float], Awaitable[object]]
"""Runs one action for an order id within a time budget (seconds); raises what the action raises."""

MANUAL_INTERVENTION = "manual intervention required"
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Transient faults are retried inside an action with exponential backoff and jitter."""

    attempts: int = 4
    base_seconds: float = 0.2

    async def call(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return await operation()
            except TransientFault as fault:
                if attempt == self.attempts:
                    raise TransientFault(f"{fault} (gave up after {attempt} attempts)") from fault
                delay = self.base_seconds * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
                log.warning("%s: transient fault, attempt %d of %d, retrying in %.2fs: %s",
                            what, attempt, self.attempts, delay, fault)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")


class SagaActions:
    """Each step and compensation: one downstream effect, then the order records it."""

    def __init__(self, orders: OrderRepository, inventory: Inventory, payments: Payments,
                 shipping: Shipping, retry: RetryPolicy):
        self._orders = orders
        self._inventory = inventory
        self._payments = payments
        self._shipping = shipping
        self._retry = retry

    async def run(self, action: Action, order_id: str) -> str | None:
        started, outcome = time.monotonic(), "failed"
        try:
            effect = self._step(action, order_id) if isinstance(action, Step) else self._compensate(action, order_id)
            reference = await effect
            outcome = "succeeded"
            return reference
        finally:
            STEP_DURATION.labels(str(action), outcome).observe(time.monotonic() - started)

    async def _step(self, step: Step, order_id: str) -> str:
        order = await self._orders.get(order_id)
        if step in order.saga.completed_steps:
            return _reference(order, step)
        reference = await self._retry.call(f"{step} {order_id}", lambda: self._perform(step, order))
        await self._orders.update(order_id, lambda o: o.record_step(step, reference))
        return reference

    async def _perform(self, step: Step, order: Order) -> str:
        match step:
            case Step.RESERVE_INVENTORY:
                return await self._inventory.reserve(order.id, order.items)
            case Step.PROCESS_PAYMENT:
                return await self._payments.charge(order.id, order.customer_id, order.total_amount)
            case Step.CREATE_SHIPMENT:
                return await self._shipping.create_shipment(order.id, order.customer_id, order.items)

    async def _compensate(self, compensation: Compensation, order_id: str) -> None:
        match compensation:
            case Compensation.REFUND_PAYMENT:
                undo = self._payments.refund
            case Compensation.COMPENSATE_INVENTORY:
                undo = self._inventory.release
        await self._retry.call(f"{compensation} {order_id}", lambda: undo(order_id))
        await self._orders.update(order_id, lambda o: o.record_compensation(compensation))
        COMPENSATIONS.labels(str(compensation)).inc()


def _reference(order: Order, step: Step) -> str:
    saga = order.saga
    return {Step.RESERVE_INVENTORY: saga.reservation_id, Step.PROCESS_PAYMENT: saga.transaction_id,
            Step.CREATE_SHIPMENT: saga.tracking_id}[step] or ""


class SagaCancelled(Exception):
    pass


class OrderSaga:
    """Runs an order's saga to a terminal status. Re-running a finished saga changes nothing."""

    def __init__(self, orders: OrderRepository, actions: SagaActions, timeout_seconds: float):
        self._orders = orders
        self._actions = actions
        self._timeout = timeout_seconds

    async def direct(self, action: Action, order_id: str, budget: float) -> object:
        """The plain `Invoke`: the action itself, bounded by the remaining time."""
        async with asyncio.timeout(budget):
            return await self._actions.run(action, order_id)

    async def run(self, order_id: str, invoke: Invoke | None = None) -> OrderResult:
        invoke = invoke or self.direct
        order = await self._orders.get(order_id)
        if order.status.is_terminal:
            return order.result()
        started = time.monotonic()
        failure = await self._run_steps(order, invoke, started + self._timeout)
        if failure is None:
            result = await self._finish(order_id, lambda o: o.complete())
        else:
            step, reason, in_doubt = failure
            log.warning("order %s: %s; compensating", order_id, reason)
            order = await self._orders.update(order_id, lambda o: o.start_compensating(step, reason))
            await self._compensate(order, invoke, in_doubt)
            result = await self._finish(order_id, lambda o: o.finish_unsuccessfully())
        SAGA_OUTCOMES.labels(str(result.status)).inc()
        SAGA_DURATION.labels(str(result.status)).observe(time.monotonic() - started)
        return result

    async def _run_steps(self, order: Order, invoke: Invoke,
                         deadline: float) -> tuple[str, str, Step | None] | None:
        """None when every step succeeded, else (failed step, reason, step whose effect is unknown)."""
        for step in Step:
            if step in order.saga.completed_steps:
                continue
            try:
                if (await self._orders.get(order.id)).cancel_requested:
                    raise SagaCancelled
                await invoke(step, order.id, max(deadline - time.monotonic(), 0.001))
            except SagaCancelled:
                return step, f"cancelled on request before {step}", None
            except StepRefused as refusal:
                return step, f"{step} failed: {refusal}", None
            except TimeoutError:
                minutes = f"{self._timeout / 60:g}"
                return step, f"saga timed out after {minutes} minutes during {step}", step
            except TransientFault as fault:
                return step, f"{step} failed: {fault}", step
            except Exception as error:  # noqa: BLE001 - any failure of a step must still compensate
                log.exception("order %s: %s failed unexpectedly", order.id, step)
                return step, f"{step} failed: {type(error).__name__}: {error}", step
        return None

    async def _compensate(self, order: Order, invoke: Invoke, in_doubt: Step | None) -> None:
        """Undoes the completed steps in reverse; a step cut short is undone too, since its effect is unknown.

        A compensation that fails is flagged for manual intervention and the others still run.
        """
        done = [*order.saga.completed_steps, *([in_doubt] if in_doubt else [])]
        for step in reversed(done):
            compensation = COMPENSATION_OF.get(step)
            if compensation is None or compensation in order.saga.compensated_steps:
                continue
            try:
                await invoke(compensation, order.id, self._timeout)
            except Exception as error:  # noqa: BLE001 - the remaining compensations must still run
                message = f"{type(error).__name__}: {error}"
                log.error("order %s: %s failed, %s: %s", order.id, compensation, MANUAL_INTERVENTION, message)
                COMPENSATION_FAILURES.labels(str(compensation)).inc()
                await self._orders.update(
                    order.id, lambda o, step=compensation, error=message: o.record_compensation_failure(step, error))

    async def _finish(self, order_id: str, change: Callable[[Order], None]) -> OrderResult:
        try:
            order = await self._orders.update(order_id, change)
        except InvalidTransition:  # another run of this saga finished it first
            order = await self._orders.get(order_id)
        return order.result()
