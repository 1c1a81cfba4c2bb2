"""GraphQL object types, each built from its domain object with `from_domain`."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.types import Info

from fulfillment.domain import Order as DomainOrder
from fulfillment.domain import OrderItem as DomainItem
from fulfillment.domain import OrderStatus as DomainStatus
from fulfillment.domain import SagaState as DomainSaga
from gateway.rest import iso_utc

DateTime = strawberry.scalar(
    name="DateTime", serialize=iso_utc, parse_value=datetime.fromisoformat,
    description="A moment in UTC, in ISO 8601 to the second, as the REST routes write it: 2026-01-01T12:00:00Z.")

OrderStatus = strawberry.enum(DomainStatus, name="OrderStatus", description="Where an order is in its saga.")


@strawberry.type
class OrderItem:
    product_id: str
    product_name: str
    quantity: int
    unit_price: float
    total_price: float

    @classmethod
    def from_domain(cls, item: DomainItem) -> OrderItem:
        return cls(product_id=item.product_id, product_name=item.product_name, quantity=item.quantity,
                   unit_price=float(item.unit_price), total_price=float(item.total_price))


@strawberry.type
class CompensationFailure:
    step: str
    error: str
    manual_intervention_required: bool


@strawberry.type(description="What one attempt of the saga did to an order, for audit.")
class SagaState:
    order_id: strawberry.ID
    attempt: int = strawberry.field(description="1, then one more for each Retry of a failed order.")
    in_flight: str | None = strawberry.field(
        description="A step begun whose outcome is not known yet (it is resolved before anything else happens).")
    completed_steps: list[str]
    compensated_steps: list[str]
    reservation_id: str | None
    transaction_id: str | None
    tracking_id: str | None
    failed_step: str | None
    failure_reason: str | None
    compensation_failures: list[CompensationFailure]

    @classmethod
    def from_domain(cls, saga: DomainSaga) -> SagaState:
        return cls(
            order_id=strawberry.ID(saga.order_id),
            attempt=saga.attempt,
            in_flight=str(saga.in_flight) if saga.in_flight else None,
            completed_steps=[str(s) for s in saga.completed_steps],
            compensated_steps=[str(c) for c in saga.compensated_steps],
            reservation_id=saga.reservation_id,
            transaction_id=saga.transaction_id,
            tracking_id=saga.tracking_id,
            failed_step=saga.failed_step,
            failure_reason=saga.failure_reason,
            compensation_failures=[
                CompensationFailure(step=f.step, error=f.error,
                                    manual_intervention_required=f.manual_intervention_required)
                for f in saga.compensation_failures
            ],
        )


@strawberry.type(description="The order took `status` at `at`.")
class StatusChange:
    status: OrderStatus
    at: str


@strawberry.type(description="The order's saga run in Prefect.")
class FlowRun:
    id: strawberry.ID
    state: str
    url: str = strawberry.field(description="Opens the run in the Prefect UI.")


@strawberry.type
class Order:
    """The fields a query rarely asks for (the saga, its history) are built from `domain` when asked, not for
    every order read: building them took about 15 µs of each `order(id)` that asked for none of them."""

    id: strawberry.ID
    customer_id: str
    status: OrderStatus
    total_amount: float
    created_at: datetime
    completed_at: datetime | None
    failure_reason: str | None
    items: list[OrderItem]
    domain: strawberry.Private[DomainOrder]

    @strawberry.field
    def saga(self) -> SagaState:
        return SagaState.from_domain(self.domain.saga)

    @strawberry.field(description="Attempts before the current one, oldest first.")
    def earlier_attempts(self) -> list[SagaState]:
        return [SagaState.from_domain(saga) for saga in self.domain.earlier_attempts]

    @strawberry.field(description="A compensation keeps failing: the order stays compensating while it is retried.")
    def manual_intervention_required(self) -> bool:
        return self.domain.needs_manual_intervention

    @strawberry.field(description="Every status it has had, oldest first.")
    def status_history(self) -> list[StatusChange]:
        return [StatusChange(status=c.status, at=iso_utc(c.at)) for c in self.domain.status_history]

    @strawberry.field(description="The saga's Prefect flow run; null until the worker has started it.")
    async def flow_run(self, info: Info) -> FlowRun | None:
        if self.domain.flow_run_id is None:
            return None
        run = await info.context.flow_runs.load(self.domain.flow_run_id)
        return FlowRun(id=strawberry.ID(run.id), state=run.state, url=run.url) if run else None

    @classmethod
    def from_domain(cls, order: DomainOrder) -> Order:
        return cls(
            id=strawberry.ID(order.id),
            customer_id=order.customer_id,
            status=order.status,
            total_amount=float(order.total_amount),
            created_at=order.created_at,
            completed_at=order.completed_at,
            failure_reason=order.failure_reason,
            items=[OrderItem.from_domain(i) for i in order.items],
            domain=order,
        )


@strawberry.type
class OrderEdge:
    node: Order
    cursor: str = strawberry.field(description="Passed as `after`, the next page starts just after this order.")


@strawberry.type
class PageInfo:
    has_next_page: bool = strawberry.field(description="Whether more orders come after this page.")
    end_cursor: str | None = strawberry.field(
        description="The cursor of the page's last edge, on the last page too; null only for an empty page.")


@strawberry.type
class OrderConnection:
    edges: list[OrderEdge]
    page_info: PageInfo
