"""The order saga: reserve inventory, process payment, create shipment; compensate in reverse on failure.

`SagaActions` holds each step and compensation as one idempotent downstream effect, keyed by the attempt's
effect id (`SagaState.effect_id`). `OrderSaga` runs them in order. How each action is invoked is a parameter
(`Invoke`): directly in tests, as a Prefect task in `flows/`, so the orchestration is written once.

What keeps it correct under faults (docs/saga-faults.md walks through each window):
- **One run at a time.** A run claims the order (`Order.claim_saga`) and renews the claim while it runs;
  every write it makes carries the claim's token, so a run that paused past its claim and was taken over has
  its writes refused (`LostClaim`) and stops.
- **Write-ahead.** A forward step is recorded as begun (`Order.begin_step`) before it is invoked, in the same
  atomic write that checks the order is still on the forward path and within its time limit. A step begun and
  not recorded is *in doubt*: it may have landed.
- **Resolve before deciding.** An in-doubt step is undone by asking again first (the idempotent call answers
  the first result, or does it now), then undoing: a charge or reservation still in flight cannot land after
  its refund or release. The pivot (`CreateShipment`) is never undone: once begun, it is resolved until the
  carrier answers, and only a refusal sends the saga back.
- **Compensations finish.** A compensation that keeps failing is flagged for manual intervention and the
  order stays `compensating`; the run ends and the saga is run again later. No order ends `failed` or
  `cancelled` while it owes one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from fulfillment.domain import (
    PIVOT,
    STEP_UNDONE_BY,
    Compensation,
    InvalidTransition,
    LostClaim,
    Order,
    OrderResult,
    OrderStatus,
    SagaCancelled,
    SagaStopped,
    Step,
    StepRefused,
    TransientFault,
)
from fulfillment.ports import Inventory, OrderRepository, Payments, Shipping
from fulfillment.telemetry import COMPENSATION_FAILURES, COMPENSATIONS, SAGA_DURATION, SAGA_OUTCOMES, STEP_DURATION

log = logging.getLogger("fulfillment.saga")

Action = Step | Compensation
Invoke = Callable[[Action, str, str, float | None], Awaitable[object]]
"""Runs one action for (order id, claim token) within a time budget in seconds (None: no limit of the saga's
own; the retry policy and the client's timeouts bound it); raises what the action raises."""

MANUAL_INTERVENTION = "manual intervention required"
TIMER_SLACK = timedelta(milliseconds=50)  # a step's budget runs out this close to the deadline: the saga timed out
SERVICE_OF = {Step.RESERVE_INVENTORY: "inventory service", Step.PROCESS_PAYMENT: "payment service",
              Step.CREATE_SHIPMENT: "shipping service"}
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Transient faults are retried inside an action with capped exponential backoff and jitter."""

    attempts: int = 4
    base_seconds: float = 0.2
    max_delay_seconds: float = 5.0

    async def call(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return await operation()
            except TransientFault as fault:
                if attempt == self.attempts:
                    raise TransientFault(f"{fault} (gave up after {attempt} attempts)") from fault
                delay = min(self.base_seconds * 2 ** (attempt - 1), self.max_delay_seconds) * random.uniform(0.5, 1.5)
                log.warning("%s: transient fault, attempt %d of %d, retrying in %.2fs: %s",
                            what, attempt, self.attempts, delay, fault)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")


class SagaActions:
    """Each step and compensation: one downstream effect, then the order records it (fenced by the claim)."""

    def __init__(self, orders: OrderRepository, inventory: Inventory, payments: Payments,
                 shipping: Shipping, retry: RetryPolicy, compensation_retry: RetryPolicy | None = None):
        self._orders = orders
        self._inventory = inventory
        self._payments = payments
        self._shipping = shipping
        self._retry = retry
        self._compensation_retry = compensation_retry or retry

    async def run(self, action: Action, order_id: str, token: str) -> str | None:
        started, outcome = time.monotonic(), "failed"
        try:
            if isinstance(action, Step):
                reference = await self._step(action, order_id, token)
            else:
                reference = await self._compensate(action, order_id, token)
            outcome = "succeeded"
            return reference
        finally:
            STEP_DURATION.labels(str(action), outcome).observe(time.monotonic() - started)

    async def _step(self, step: Step, order_id: str, token: str) -> str:
        order = await self._orders.get(order_id)
        order.check_claim(token)
        if step in order.saga.completed_steps:
            return _reference(order, step)
        try:
            reference = await self._retry.call(f"{step} {order_id}", lambda: self._perform(step, order))
        except StepRefused:
            await self._write(order_id, token, lambda o: o.record_step_refused(step))
            raise
        await self._write(order_id, token, lambda o: o.record_step(step, reference))
        return reference

    async def _perform(self, step: Step, order: Order) -> str:
        effect_id = order.saga.effect_id
        match step:
            case Step.RESERVE_INVENTORY:
                return await self._inventory.reserve(effect_id, order.items)
            case Step.PROCESS_PAYMENT:
                return await self._payments.charge(effect_id, order.customer_id, order.total_amount)
            case Step.CREATE_SHIPMENT:
                return await self._shipping.create_shipment(effect_id, order.customer_id, order.items)

    async def _compensate(self, compensation: Compensation, order_id: str, token: str) -> None:
        """Undoes the step; a step whose outcome is unknown is first asked again, so that the answer is final
        before the undo (a refusal then means there is nothing to undo)."""
        order = await self._orders.get(order_id)
        order.check_claim(token)
        step = STEP_UNDONE_BY[compensation]
        retry = self._compensation_retry
        if step not in order.saga.completed_steps:
            try:
                await retry.call(f"resolve {step} {order_id}", lambda: self._perform(step, order))
            except StepRefused:
                await self._write(order_id, token, lambda o: o.record_compensation(compensation, undid_something=False))
                return
        match compensation:
            case Compensation.REFUND_PAYMENT:
                undo = self._payments.refund
            case Compensation.COMPENSATE_INVENTORY:
                undo = self._inventory.release
        undone = await retry.call(f"{compensation} {order_id}", lambda: undo(order.saga.effect_id))
        await self._write(order_id, token, lambda o: o.record_compensation(compensation, undid_something=undone))
        COMPENSATIONS.labels(str(compensation)).inc()

    async def _write(self, order_id: str, token: str, change: Callable[[Order], None]) -> Order:
        return await fenced_update(self._orders, order_id, token, change)


async def fenced_update(orders: OrderRepository, order_id: str, token: str, change: Callable[[Order], None]) -> Order:
    """`orders.update`, refused with `LostClaim` unless `token` still holds the order's claim."""

    def checked(order: Order) -> None:
        order.check_claim(token)
        change(order)

    return await orders.update(order_id, checked)


def _reference(order: Order, step: Step) -> str:
    saga = order.saga
    return {Step.RESERVE_INVENTORY: saga.reservation_id, Step.PROCESS_PAYMENT: saga.transaction_id,
            Step.CREATE_SHIPMENT: saga.tracking_id}[step] or ""


def customer_reason(step: Step, error: BaseException) -> str:
    """What the customer reads in `failureReason`: the refusal, or which service failed; details go to logs."""
    if isinstance(error, StepRefused):
        return f"{error.code}: {error.detail}"
    return f"{SERVICE_OF[step]} unavailable"


@dataclass(frozen=True)
class _Stop:
    """Why the forward steps stopped: the failed step (None for a cancellation) and the reason."""

    failed_step: Step | None
    reason: str


class OrderSaga:
    """Runs an order's saga to a terminal status, or as far as it can go now (a compensation or the pivot
    still failing leaves the order non-terminal, to be run again). Re-running a finished saga changes nothing;
    re-running one cut short resumes it."""

    def __init__(self, orders: OrderRepository, actions: SagaActions, timeout_seconds: float,
                 claim_seconds: float = 30.0):
        self._orders = orders
        self._actions = actions
        self._timeout = timedelta(seconds=timeout_seconds)
        self._claim_seconds = claim_seconds

    async def direct(self, action: Action, order_id: str, token: str, budget: float | None) -> object:
        """The plain `Invoke`: the action itself, bounded by the budget."""
        async with asyncio.timeout(budget):
            return await self._actions.run(action, order_id, token)

    async def run(self, order_id: str, invoke: Invoke | None = None, *, holder: str | None = None) -> OrderResult:
        """Raises `SagaClaimed` when another live run holds the order, `LostClaim` when this run was taken over."""
        order = await self._orders.get(order_id)
        if order.status.is_terminal:
            return order.result()
        started = time.monotonic()
        async with self.claimed(order_id, holder or f"direct-{uuid.uuid4()}") as token:
            result = await self._run_claimed(order_id, invoke or self.direct, token)
        if result.status.is_terminal:
            SAGA_OUTCOMES.labels(str(result.status)).inc()
            SAGA_DURATION.labels(str(result.status)).observe(time.monotonic() - started)
        return result

    @contextlib.asynccontextmanager
    async def claimed(self, order_id: str, holder: str) -> AsyncIterator[str]:
        """Claims the order for `holder` and renews the claim until the block ends; yields the token."""
        token = str(uuid.uuid4())
        now = datetime.now(UTC)
        await self._orders.update(order_id, lambda o: o.claim_saga(holder, token, self._claim_end(), now))
        renewal = asyncio.create_task(self._renew(order_id, token))
        try:
            yield token
        finally:
            renewal.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await renewal
            with contextlib.suppress(Exception):
                await self._orders.update(order_id, lambda o: o.release_claim(token))

    def _claim_end(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self._claim_seconds)

    async def _renew(self, order_id: str, token: str) -> None:
        while True:
            await asyncio.sleep(self._claim_seconds / 3)
            try:
                await fenced_update(self._orders, order_id, token, lambda o: o.renew_claim(token, self._claim_end()))
            except LostClaim as lost:
                log.warning("order %s: claim lost: %s", order_id, lost, extra={"order_id": order_id})
                return
            except InvalidTransition:
                return  # the order has ended
            except Exception:  # noqa: BLE001 - a busy store: try again well before the claim runs out
                log.exception("order %s: could not renew the claim", order_id, extra={"order_id": order_id})

    async def _run_claimed(self, order_id: str, invoke: Invoke, token: str) -> OrderResult:
        order = await fenced_update(self._orders, order_id, token, lambda o: o.begin_saga())
        if order.status is not OrderStatus.COMPENSATING:
            stop = await self._forward(order, invoke, token)
            order = await self._orders.get(order_id)
            if order.status.is_terminal:  # cancelled before any step took effect
                return order.result()
            if stop is None and order.status is OrderStatus.SHIPPED:
                return await self._finish(order_id, token, lambda o: o.complete())
            if stop is None:  # the pivot's outcome is still unknown: never compensate it, resolve it later
                return order.result()
            log.warning("order %s: %s; compensating", order_id, stop.reason, extra={"order_id": order_id})
            order = await fenced_update(self._orders, order_id, token,
                                        lambda o: o.start_compensating(stop.failed_step, stop.reason))
        await self._compensate(order, invoke, token)
        order = await self._orders.get(order_id)
        if order.saga.outstanding_compensations():
            return order.result()
        return await self._finish(order_id, token, lambda o: o.finish_unsuccessfully())

    async def _forward(self, order: Order, invoke: Invoke, token: str) -> _Stop | None:
        """None when every step succeeded, or when the pivot was begun and its outcome is still unknown."""
        for step in Step:
            if step in order.saga.completed_steps:
                continue
            try:
                order = await fenced_update(self._orders, order.id, token,
                                            lambda o, s=step: o.begin_step(s, datetime.now(UTC), self._timeout))
            except SagaStopped as stopped:
                return _Stop(None if isinstance(stopped, SagaCancelled) else step, str(stopped))
            except InvalidTransition:
                return None  # the order ended meanwhile (cancelled at once): nothing more to do
            budget = None if step is PIVOT else (order.deadline(self._timeout) - datetime.now(UTC)).total_seconds()
            try:
                await invoke(step, order.id, token, max(budget, 0.001) if budget is not None else None)
            except LostClaim:
                raise
            except StepRefused as refusal:
                return _Stop(step, customer_reason(step, refusal))
            except Exception as error:  # noqa: BLE001 - any failure of a step must still be resolved or compensated
                self._log_step_failure(order.id, step, error)
                if step is PIVOT:
                    return None
                if isinstance(error, TimeoutError) and datetime.now(UTC) >= order.deadline(self._timeout) - TIMER_SLACK:
                    minutes = self._timeout.total_seconds() / 60
                    return _Stop(step, f"saga timed out after {minutes:g} minutes during {step}")
                return _Stop(step, customer_reason(step, error))
        return None

    @staticmethod
    def _log_step_failure(order_id: str, step: Step, error: BaseException) -> None:
        expected = isinstance(error, TransientFault | TimeoutError)
        outcome = "outcome unknown, it will be resolved" if step is PIVOT else "it will be resolved and undone"
        log.log(logging.WARNING if expected else logging.ERROR, "order %s: %s failed (%s): %s: %s",
                order_id, step, outcome, type(error).__name__, error,
                exc_info=None if expected else error, extra={"order_id": order_id, "step": str(step)})

    async def _compensate(self, order: Order, invoke: Invoke, token: str) -> None:
        """Runs every compensation owed, in reverse; one that fails is flagged and the others still run."""
        for compensation in order.saga.outstanding_compensations():
            try:
                await invoke(compensation, order.id, token, None)
            except LostClaim:
                raise
            except Exception as error:  # noqa: BLE001 - the remaining compensations must still run
                await self._flag_for_manual_intervention(order.id, token, compensation,
                                                         f"{type(error).__name__}: {error}")

    async def _flag_for_manual_intervention(self, order_id: str, token: str, compensation: Compensation,
                                            error: str) -> None:
        log.error("order %s: %s failed, %s (it is retried until it succeeds): %s", order_id, compensation,
                  MANUAL_INTERVENTION, error, extra={"order_id": order_id, "compensation": str(compensation)})
        COMPENSATION_FAILURES.labels(str(compensation)).inc()
        try:
            await fenced_update(self._orders, order_id, token,
                                lambda o: o.record_compensation_failure(compensation, error))
        except LostClaim:
            raise
        except Exception:  # noqa: BLE001 - the log line above carries it; the other compensations come first
            log.exception("could not record the failed compensation", extra={"order_id": order_id})

    async def _finish(self, order_id: str, token: str, change: Callable[[Order], None]) -> OrderResult:
        try:
            order = await fenced_update(self._orders, order_id, token, change)
        except InvalidTransition:  # another run of this saga finished it first
            order = await self._orders.get(order_id)
        return order.result()
