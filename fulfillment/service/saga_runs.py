"""What one run of the saga does for an order, whoever started it: the dispatcher, an operator's Retry, or a
Quick/Custom run from the Prefect UI. The flow turns the outcome into the run's final state.

- An unknown order id: nothing runs (`NOT_FOUND`).
- A terminal order: nothing runs (`NOTHING_TO_DO`), except the order's own run retried after the order failed
  cleanly: that is an operator's Retry, and the saga runs again as a new attempt.
- Another live run holds the order (a Quick run beside the dispatched one): nothing runs (`BUSY`).
- This run was taken over while it ran (`LOST_CLAIM`): it stops without a word to the order or the engine.
- Otherwise the saga runs, as far as it can now: `COMPLETED`, `FAILED`, `CANCELLED`, or `PENDING` when a
  compensation or the pivot still fails (the order stays non-terminal and the saga is run again later).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fulfillment.domain import PIVOT, LostClaim, Order, OrderNotFound, OrderStatus, SagaClaimed
from fulfillment.ports import OrderRepository
from fulfillment.service.saga import MANUAL_INTERVENTION, Invoke, OrderSaga


class RunOutcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PENDING = "pending"
    NOT_FOUND = "not found"
    NOTHING_TO_DO = "nothing to do"
    BUSY = "busy"
    LOST_CLAIM = "lost claim"


@dataclass(frozen=True)
class SagaRunReport:
    outcome: RunOutcome
    message: str
    order: Order | None = None


class SagaRuns:
    def __init__(self, orders: OrderRepository, saga: OrderSaga):
        self._orders = orders
        self._saga = saga

    async def execute(self, order_id: str, flow_run_id: str, invoke: Invoke | None = None) -> SagaRunReport:
        try:
            order = await self._orders.get(order_id)
        except OrderNotFound:
            return SagaRunReport(RunOutcome.NOT_FOUND, f"order {order_id} not found; nothing was run")
        if order.status is OrderStatus.FAILED and order.flow_run_id == flow_run_id:
            order = await self._orders.update(order_id, lambda o: o.retry())
        elif order.status.is_terminal:
            return SagaRunReport(RunOutcome.NOTHING_TO_DO,
                                 f"order {order_id} is already {order.status}; nothing was done", order)
        try:
            await self._saga.run(order_id, invoke, holder=f"flow-run/{flow_run_id}")
        except SagaClaimed as busy:
            return SagaRunReport(RunOutcome.BUSY, f"{busy}; this run did nothing", order)
        except LostClaim as lost:
            return SagaRunReport(RunOutcome.LOST_CLAIM, f"this run was taken over: {lost}", order)
        return report(await self._orders.get(order_id))


def report(order: Order) -> SagaRunReport:
    """The outcome a run reports for the order as it now is."""
    match order.status:
        case OrderStatus.COMPLETED:
            return SagaRunReport(RunOutcome.COMPLETED, f"order {order.id} completed, tracking {order.saga.tracking_id}",
                                 order)
        case OrderStatus.FAILED:
            return SagaRunReport(RunOutcome.FAILED, f"order {order.id} failed: {order.failure_reason}", order)
        case OrderStatus.CANCELLED:
            return SagaRunReport(RunOutcome.CANCELLED, f"order {order.id} cancelled: {order.failure_reason}", order)
    return SagaRunReport(RunOutcome.PENDING, pending_reason(order), order)


def pending_reason(order: Order) -> str:
    saga = order.saga
    if saga.compensation_failures:
        failing = "; ".join(f"{f.step}: {f.error}" for f in saga.compensation_failures)
        return f"order {order.id} is {order.status}, {MANUAL_INTERVENTION}: {failing}; it is retried automatically"
    if saga.in_flight is PIVOT:
        return f"order {order.id}: the outcome of {PIVOT} is unknown; it is resolved on the next run"
    return f"order {order.id} stopped at {order.status}; it is run again"
