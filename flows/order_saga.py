"""The order saga as a Prefect flow: one run per order, named `order-<orderId>`, a task per step and compensation.

The orchestration itself (order of steps, compensation in reverse, timeout, cancellation) is
`fulfillment.service.OrderSaga`; this module only makes each action a Prefect task, so it shows in the UI
with its own state, and summarises a saga that did not simply complete as an artifact.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.exceptions import Abort
from prefect.states import Cancelled, Completed, Failed, State

from flows.runtime import container
from fulfillment.domain import Compensation, Order, OrderStatus, Step
from fulfillment.service.saga import Action
from fulfillment.service.saga_runs import RunOutcome, SagaRunReport


async def _act(action: Action, order_id: str, claim: str) -> str | None:
    return await container().saga_actions.run(action, order_id, claim)


@task(name="ReserveInventory", cache_policy=NO_CACHE)
async def reserve_inventory(order_id: str, claim: str) -> str | None:
    return await _act(Step.RESERVE_INVENTORY, order_id, claim)


@task(name="ProcessPayment", cache_policy=NO_CACHE)
async def process_payment(order_id: str, claim: str) -> str | None:
    return await _act(Step.PROCESS_PAYMENT, order_id, claim)


@task(name="CreateShipment", cache_policy=NO_CACHE)
async def create_shipment(order_id: str, claim: str) -> str | None:
    return await _act(Step.CREATE_SHIPMENT, order_id, claim)


@task(name="RefundPayment", cache_policy=NO_CACHE)
async def refund_payment(order_id: str, claim: str) -> str | None:
    return await _act(Compensation.REFUND_PAYMENT, order_id, claim)


@task(name="CompensateInventory", cache_policy=NO_CACHE)
async def compensate_inventory(order_id: str, claim: str) -> str | None:
    return await _act(Compensation.COMPENSATE_INVENTORY, order_id, claim)


TASKS = {
    Step.RESERVE_INVENTORY: reserve_inventory,
    Step.PROCESS_PAYMENT: process_payment,
    Step.CREATE_SHIPMENT: create_shipment,
    Compensation.REFUND_PAYMENT: refund_payment,
    Compensation.COMPENSATE_INVENTORY: compensate_inventory,
}


async def as_task(action: Action, order_id: str, claim: str, budget_seconds: float | None) -> object:
    """The saga's `Invoke`: each action runs as its Prefect task, bounded by the saga's remaining time."""
    return await TASKS[action].with_options(timeout_seconds=budget_seconds)(order_id, claim)


@flow(name="order-saga", flow_run_name="order-{order_id}", persist_result=False, validate_parameters=False)
async def order_saga(order_id: str) -> State:
    """Reserve inventory, process payment, create shipment; on failure compensate in reverse.

    The run ends in the state that matches the order. A run that was taken over by another executor (it
    paused past its claim) raises Prefect's `Abort`: it reports nothing, since the run now belongs to another.
    """
    services = container()
    flow_run_id = str(FlowRunContext.get().flow_run.id)
    run = await services.saga_runs.execute(order_id, flow_run_id, invoke=as_task)
    if run.outcome is RunOutcome.LOST_CLAIM:
        raise Abort(run.message)
    if run.order is not None and run.outcome is not RunOutcome.COMPLETED:
        # the summary an operator needs when a saga did not simply complete; a completed one tells its story
        # in its task runs, and an artifact per saga costs the server about a sixth of a saga (BENCHMARKS.md)
        await acreate_markdown_artifact(key=f"saga-{order_id}", markdown=saga_summary(run.order),
                                        description=f"Saga of order {order_id}: {run.order.status}")
    return final_state(run)


def final_state(run: SagaRunReport) -> State:
    """Completed, Failed or Cancelled as the order ended; Failed while it still owes work (it is run again)."""
    status = run.order.status if run.order is not None else None
    if run.outcome is RunOutcome.BUSY or status is OrderStatus.CANCELLED:
        return Cancelled(message=run.message)
    if status is OrderStatus.COMPLETED:
        return Completed(message=run.message, data=run.order.result())
    return Failed(message=run.message)


def saga_summary(order: Order) -> str:
    saga = order.saga
    lines = [
        f"# Order `{order.id}`: **{order.status}**",
        "",
        "| | |",
        "|---|---|",
        f"| customer | `{order.customer_id}` |",
        f"| attempt | {saga.attempt} (effect id `{saga.effect_id}`) |",
        f"| total | {order.total_amount} |",
        f"| completed steps | {' → '.join(saga.completed_steps) or '—'} |",
        f"| compensations | {' → '.join(saga.compensated_steps) or '—'} |",
        f"| reservation | `{saga.reservation_id or '—'}` |",
        f"| payment transaction | `{saga.transaction_id or '—'}` |",
        f"| tracking | `{saga.tracking_id or '—'}` |",
    ]
    if saga.in_flight:
        lines.append(f"| in flight (outcome unknown) | {saga.in_flight} |")
    if saga.failed_step:
        lines.append(f"| failed step | {saga.failed_step}: {saga.failure_reason} |")
    lines += [f"| **manual intervention required** | {f.step}: {f.error} |" for f in saga.compensation_failures]
    return "\n".join(lines)
