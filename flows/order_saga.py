"""The order saga as a Prefect flow: one run per order, named `order-<orderId>`, a task per step and compensation.

The orchestration itself (order of steps, compensation in reverse, timeout, cancellation) is
`fulfillment.service.OrderSaga`; this module only makes each action a Prefect task, so it shows in the UI
with its own state, and summarises the outcome as an artifact.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State

from flows.runtime import container
from fulfillment.domain import Compensation, Order, Step
from fulfillment.service.saga import Action


async def _act(action: Action, order_id: str) -> str | None:
    return await container().saga_actions.run(action, order_id)


@task(name="ReserveInventory", cache_policy=NO_CACHE)
async def reserve_inventory(order_id: str) -> str | None:
    return await _act(Step.RESERVE_INVENTORY, order_id)


@task(name="ProcessPayment", cache_policy=NO_CACHE)
async def process_payment(order_id: str) -> str | None:
    return await _act(Step.PROCESS_PAYMENT, order_id)


@task(name="CreateShipment", cache_policy=NO_CACHE)
async def create_shipment(order_id: str) -> str | None:
    return await _act(Step.CREATE_SHIPMENT, order_id)


@task(name="RefundPayment", cache_policy=NO_CACHE)
async def refund_payment(order_id: str) -> str | None:
    return await _act(Compensation.REFUND_PAYMENT, order_id)


@task(name="CompensateInventory", cache_policy=NO_CACHE)
async def compensate_inventory(order_id: str) -> str | None:
    return await _act(Compensation.COMPENSATE_INVENTORY, order_id)


TASKS = {
    Step.RESERVE_INVENTORY: reserve_inventory,
    Step.PROCESS_PAYMENT: process_payment,
    Step.CREATE_SHIPMENT: create_shipment,
    Compensation.REFUND_PAYMENT: refund_payment,
    Compensation.COMPENSATE_INVENTORY: compensate_inventory,
}


async def as_task(action: Action, order_id: str, budget_seconds: float) -> object:
    """The saga's `Invoke`: each action runs as its Prefect task, bounded by the saga's remaining time."""
    return await TASKS[action].with_options(timeout_seconds=budget_seconds)(order_id)


@flow(name="order-saga", flow_run_name="order-{order_id}", persist_result=False, validate_parameters=False)
async def order_saga(order_id: str) -> State:
    """Reserve inventory, process payment, create shipment; on failure compensate in reverse."""
    services = container()
    result = await services.saga.run(order_id, invoke=as_task)
    order = await services.orders.get(order_id)
    await acreate_markdown_artifact(key=f"saga-{order_id}", markdown=saga_summary(order),
                                    description=f"Saga of order {order_id}: {order.status}")
    if result.success:
        return Completed(message=f"order {order_id} completed, tracking {result.tracking_id}", data=result)
    return Failed(message=f"order {order_id} {result.status}: {result.failure_reason}", data=result)


def saga_summary(order: Order) -> str:
    saga = order.saga
    lines = [
        f"# Order `{order.id}`: **{order.status}**",
        "",
        "| | |",
        "|---|---|",
        f"| customer | `{order.customer_id}` |",
        f"| total | {order.total_amount} |",
        f"| completed steps | {' → '.join(saga.completed_steps) or '—'} |",
        f"| compensations | {' → '.join(saga.compensated_steps) or '—'} |",
        f"| reservation | `{saga.reservation_id or '—'}` |",
        f"| payment transaction | `{saga.transaction_id or '—'}` |",
        f"| tracking | `{saga.tracking_id or '—'}` |",
    ]
    if saga.failed_step:
        lines.append(f"| failed step | {saga.failed_step}: {saga.failure_reason} |")
    lines += [f"| **manual intervention required** | {f.step}: {f.error} |" for f in saga.compensation_failures]
    return "\n".join(lines)
