"""The order and its saga: plain Python, no framework imports."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum

from fulfillment.domain.errors import FieldError, InvalidOrder, InvalidTransition

MAX_ITEMS = 100
MAX_QUANTITY = 100_000
MAX_UNIT_PRICE = Decimal("1000000.00")  # with MAX_QUANTITY and MAX_ITEMS, every total stays exact as a JSON number
CENT = Decimal("0.01")


class OrderStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    INVENTORY_RESERVED = "inventoryReserved"
    PAYMENT_PROCESSED = "paymentProcessed"
    SHIPPED = "shipped"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATING = "compensating"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({OrderStatus.COMPLETED, OrderStatus.FAILED, OrderStatus.CANCELLED})


class Step(StrEnum):
    """Saga steps, in the order they run."""

    RESERVE_INVENTORY = "ReserveInventory"
    PROCESS_PAYMENT = "ProcessPayment"
    CREATE_SHIPMENT = "CreateShipment"

    @property
    def status_after(self) -> OrderStatus:
        return {
            Step.RESERVE_INVENTORY: OrderStatus.INVENTORY_RESERVED,
            Step.PROCESS_PAYMENT: OrderStatus.PAYMENT_PROCESSED,
            Step.CREATE_SHIPMENT: OrderStatus.SHIPPED,
        }[self]


class Compensation(StrEnum):
    COMPENSATE_INVENTORY = "CompensateInventory"
    REFUND_PAYMENT = "RefundPayment"


COMPENSATION_OF: dict[Step, Compensation] = {
    Step.RESERVE_INVENTORY: Compensation.COMPENSATE_INVENTORY,
    Step.PROCESS_PAYMENT: Compensation.REFUND_PAYMENT,
}
STEP_UNDONE_BY = {compensation: step for step, compensation in COMPENSATION_OF.items()}


@dataclass(frozen=True)
class OrderItem:
    product_id: str
    product_name: str
    quantity: int
    unit_price: Decimal

    @property
    def total_price(self) -> Decimal:
        return self.quantity * self.unit_price


@dataclass(frozen=True)
class CompensationFailure:
    step: str
    error: str
    manual_intervention_required: bool = True


@dataclass
class SagaState:
    """What the saga did to one order, kept with the order for audit."""

    order_id: str
    started_at: datetime | None = None  # when a saga first ran for the order: its time limit counts from here
    completed_steps: list[Step] = field(default_factory=list)
    compensated_steps: list[Compensation] = field(default_factory=list)
    reservation_id: str | None = None
    transaction_id: str | None = None
    tracking_id: str | None = None
    failed_step: str | None = None
    failure_reason: str | None = None
    compensation_failures: list[CompensationFailure] = field(default_factory=list)


@dataclass(frozen=True)
class OrderResult:
    """What the saga flow returns."""

    success: bool
    status: OrderStatus
    tracking_id: str | None = None
    failure_reason: str | None = None


@dataclass
class Order:
    id: str
    customer_id: str
    items: tuple[OrderItem, ...]
    status: OrderStatus
    created_at: datetime
    completed_at: datetime | None = None
    failure_reason: str | None = None
    cancel_requested: bool = False
    flow_run_id: str | None = None
    trace_parent: str | None = None  # W3C traceparent of the request that placed it, continued by the saga
    saga: SagaState | None = None  # a new order starts with an empty saga state

    def __post_init__(self) -> None:
        if self.saga is None:
            self.saga = SagaState(order_id=self.id)

    @property
    def total_amount(self) -> Decimal:
        return sum((item.total_price for item in self.items), Decimal(0))

    @classmethod
    def place(cls, customer_id: str, items: list[OrderItem], *, now: datetime | None = None) -> Order:
        """A new order, validated against the rules of contract §1, accepted for processing."""
        errors = _order_errors(customer_id, items)
        if errors:
            raise InvalidOrder(errors)
        return cls(
            id=str(uuid.uuid4()),
            customer_id=customer_id,
            items=tuple(items),
            status=OrderStatus.PROCESSING,
            created_at=now or datetime.now(UTC),
        )

    # --- saga progress -------------------------------------------------------------------------

    def begin_saga(self, now: datetime | None = None) -> None:
        self._require_active()
        if self.saga.started_at is None:
            self.saga.started_at = now or datetime.now(UTC)

    def record_step(self, step: Step, reference: str | None) -> None:
        self._require_active()
        if self.status is OrderStatus.COMPENSATING:
            raise InvalidTransition(f"order {self.id} is compensating; {step} cannot complete now")
        if step in self.saga.completed_steps:
            return
        self.saga.completed_steps.append(step)
        match step:
            case Step.RESERVE_INVENTORY:
                self.saga.reservation_id = reference
            case Step.PROCESS_PAYMENT:
                self.saga.transaction_id = reference
            case Step.CREATE_SHIPMENT:
                self.saga.tracking_id = reference
        self.status = step.status_after

    def start_compensating(self, failed_step: str | None, reason: str) -> None:
        """`failed_step` is None when the saga stops because it was cancelled, not because a step failed."""
        self._require_active()
        self.status = OrderStatus.COMPENSATING
        self.saga.failed_step = failed_step
        self.saga.failure_reason = reason

    @property
    def stopped_by_cancellation(self) -> bool:
        return self.status is OrderStatus.COMPENSATING and self.saga.failed_step is None

    def record_compensation(self, compensation: Compensation, *, undid_something: bool) -> None:
        """Records a compensation of a completed step, or one that found an effect to undo (a step cut short)."""
        if not (undid_something or STEP_UNDONE_BY[compensation] in self.saga.completed_steps):
            return
        if compensation not in self.saga.compensated_steps:
            self.saga.compensated_steps.append(compensation)

    def record_compensation_failure(self, compensation: Compensation, error: str) -> None:
        if all(f.step != compensation for f in self.saga.compensation_failures):
            self.saga.compensation_failures.append(CompensationFailure(step=compensation, error=error))

    def complete(self, now: datetime | None = None) -> None:
        self._require_active()
        self.status = OrderStatus.COMPLETED
        self.completed_at = now or datetime.now(UTC)

    def finish_unsuccessfully(self, now: datetime | None = None) -> None:
        """Ends a compensated saga: `cancelled` if a cancellation stopped it, otherwise `failed`."""
        self._require_active()
        self.status = OrderStatus.CANCELLED if self.stopped_by_cancellation else OrderStatus.FAILED
        self.failure_reason = self.saga.failure_reason
        self.completed_at = now or datetime.now(UTC)

    def attach_flow_run(self, flow_run_id: str) -> None:
        self.flow_run_id = flow_run_id

    def request_cancellation(self) -> None:
        if self.status.is_terminal:
            raise InvalidTransition(f"order {self.id} is already {self.status} and cannot be cancelled")
        self.cancel_requested = True

    def result(self) -> OrderResult:
        return OrderResult(
            success=self.status == OrderStatus.COMPLETED,
            status=self.status,
            tracking_id=self.saga.tracking_id,
            failure_reason=self.failure_reason,
        )

    def _require_active(self) -> None:
        if self.status.is_terminal:
            raise InvalidTransition(f"order {self.id} is already {self.status}")



def _order_errors(customer_id: str, items: list[OrderItem]) -> list[FieldError]:
    errors: list[FieldError] = []
    if not customer_id.strip():
        errors.append(FieldError("customerId", "must not be empty"))
    if not 1 <= len(items) <= MAX_ITEMS:
        errors.append(FieldError("items", f"must hold between 1 and {MAX_ITEMS} items, got {len(items)}"))
    for index, item in enumerate(items[:MAX_ITEMS]):
        errors.extend(_item_errors(f"items[{index}]", item))
    return errors


def _item_errors(path: str, item: OrderItem) -> list[FieldError]:
    errors: list[FieldError] = []
    if not item.product_id.strip():
        errors.append(FieldError(f"{path}.productId", "must not be empty"))
    if not item.product_name.strip():
        errors.append(FieldError(f"{path}.productName", "must not be empty"))
    if not 1 <= item.quantity <= MAX_QUANTITY:
        errors.append(FieldError(f"{path}.quantity", f"must be between 1 and {MAX_QUANTITY}, got {item.quantity}"))
    if not item.unit_price.is_finite() or not 0 <= item.unit_price <= MAX_UNIT_PRICE:
        errors.append(FieldError(f"{path}.unitPrice", f"must be between 0 and {MAX_UNIT_PRICE}, got {item.unit_price}"))
    elif item.unit_price != item.unit_price.quantize(CENT):
        errors.append(FieldError(f"{path}.unitPrice", f"must have at most 2 decimals, got {item.unit_price}"))
    return errors
