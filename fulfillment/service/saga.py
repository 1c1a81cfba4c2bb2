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
from datetime import UTC, datetime
from typing import TypeVar

from fulfillment.domain import (
    COMPENSATION_OF,
    Compensation,
    InvalidTransition,
    Order,
    OrderResult,
    OrderStatus,
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
TIMER_SLACK_S = 0.05  # a step's budget runs out this close to the saga's deadline: the saga timed out
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
        undone = await self._retry.call(f"{compensation} {order_id}", lambda: undo(order_id))
        await self._orders.update(order_id, lambda o: o.record_compensation(compensation, undid_something=undone))
        COMPENSATIONS.labels(str(compensation)).inc()


def _reference(order: Order, step: Step) -> str:
    saga = order.saga
    return {Step.RESERVE_INVENTORY: saga.reservation_id, Step.PROCESS_PAYMENT: saga.transaction_id,
            Step.CREATE_SHIPMENT: saga.tracking_id}[step] or ""


class SagaCancelled(Exception):
    pass


@dataclass(frozen=True)
class _Stop:
    """Why the forward steps stopped: the failed step (None for a cancellation), the reason, and a step that
    was cut short, so its effect is unknown and it is compensated too."""

    failed_step: Step | None
    reason: str
    in_doubt: Step | None = None


class OrderSaga:
    """Runs an order's saga to a terminal status. Re-running a finished saga changes nothing; re-running one cut
    short (a crash, a stopped worker) resumes it: completed steps are skipped, a compensation under way goes on."""

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
        order = await self._orders.update(order_id, lambda o: o.begin_saga())
        if order.status is OrderStatus.COMPENSATING:  # resumed: the step that failed may have left an effect
            in_doubt = Step(order.saga.failed_step) if order.saga.failed_step else None
        else:
            stop = await self._run_steps(order, invoke, self._deadline(order))
            if stop is None:
                return self._observed(await self._finish(order_id, lambda o: o.complete()), started)
            log.warning("order %s: %s; compensating", order_id, stop.reason, extra={"order_id": order_id})
            order = await self._orders.update(order_id,
                                              lambda o: o.start_compensating(stop.failed_step, stop.reason))
            in_doubt = stop.in_doubt
        await self._compensate(order, invoke, in_doubt)
        return self._observed(await self._finish(order_id, lambda o: o.finish_unsuccessfully()), started)

    def _deadline(self, order: Order) -> float:
        """The saga's time limit, counted from its first start, on the monotonic clock."""
        assert order.saga.started_at is not None
        elapsed = (datetime.now(UTC) - order.saga.started_at).total_seconds()
        return time.monotonic() + self._timeout - elapsed

    async def _run_steps(self, order: Order, invoke: Invoke, deadline: float) -> _Stop | None:
        """None when every step succeeded."""
        for step in Step:
            if step in order.saga.completed_steps:
                continue
            try:
                if (await self._orders.get(order.id)).cancel_requested:
                    raise SagaCancelled
                await invoke(step, order.id, max(deadline - time.monotonic(), 0.001))
            except SagaCancelled:
                return _Stop(None, f"cancelled on request before {step}")
            except StepRefused as refusal:
                return _Stop(step, f"{step} failed: {refusal}")
            except TimeoutError as timeout:
                if time.monotonic() >= deadline - TIMER_SLACK_S:
                    return _Stop(step, f"saga timed out after {self._timeout / 60:g} minutes during {step}", step)
                return _Stop(step, f"{step} failed: TimeoutError: {timeout}", step)
            except TransientFault as fault:
                return _Stop(step, f"{step} failed: {fault}", step)
            except Exception as error:  # noqa: BLE001 - any failure of a step must still compensate
                log.exception("order %s: %s failed unexpectedly", order.id, step, extra={"order_id": order.id})
                return _Stop(step, f"{step} failed: {type(error).__name__}: {error}", step)
        return None

    async def _compensate(self, order: Order, invoke: Invoke, in_doubt: Step | None) -> None:
        """Undoes the completed steps in reverse; a step cut short is undone too, since its effect is unknown.

        A compensation that fails is flagged for manual intervention and the others still run.
        """
        done = [*order.saga.completed_steps, *([in_doubt] if in_doubt and in_doubt not in order.saga.completed_steps
                                               else [])]
        for step in reversed(done):
            compensation = COMPENSATION_OF.get(step)
            if compensation is None or compensation in order.saga.compensated_steps:
                continue
            try:
                await invoke(compensation, order.id, self._timeout)
            except Exception as error:  # noqa: BLE001 - the remaining compensations must still run
                await self._flag_for_manual_intervention(order.id, compensation, f"{type(error).__name__}: {error}")

    async def _flag_for_manual_intervention(self, order_id: str, compensation: Compensation, error: str) -> None:
        log.error("order %s: %s failed, %s: %s", order_id, compensation, MANUAL_INTERVENTION, error,
                  extra={"order_id": order_id, "compensation": str(compensation)})
        COMPENSATION_FAILURES.labels(str(compensation)).inc()
        try:
            await self._orders.update(order_id, lambda o: o.record_compensation_failure(compensation, error))
        except Exception:  # noqa: BLE001 - the log line above carries it; the other compensations come first
            log.exception("could not record the failed compensation", extra={"order_id": order_id})

    @staticmethod
    def _observed(result: OrderResult, started: float) -> OrderResult:
        SAGA_OUTCOMES.labels(str(result.status)).inc()
        SAGA_DURATION.labels(str(result.status)).observe(time.monotonic() - started)
        return result

    async def _finish(self, order_id: str, change: Callable[[Order], None]) -> OrderResult:
        try:
            order = await self._orders.update(order_id, change)
        except InvalidTransition:  # another run of this saga finished it first
            order = await self._orders.get(order_id)
        return order.result()
