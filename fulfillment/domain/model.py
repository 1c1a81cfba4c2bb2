"""The order and its saga: plain Python, no framework imports."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from fulfillment.domain.errors import (
    CancellationTooLate,
    FieldError,
    InvalidOrder,
    InvalidTransition,
    LostClaim,
    SagaCancelled,
    SagaClaimed,
    SagaTimedOut,
)

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


PIVOT = Step.CREATE_SHIPMENT
"""The step that cannot be undone: once it has begun, the saga only goes forward."""


@dataclass
class SagaState:
    """What one attempt of the saga did to an order, kept with the order for audit."""

    order_id: str
    attempt: int = 1
    started_at: datetime | None = None  # when the attempt first ran: its time limit counts from here
    completed_steps: list[Step] = field(default_factory=list)
    compensated_steps: list[Compensation] = field(default_factory=list)
    in_flight: Step | None = None  # begun, outcome not recorded: it may have taken effect (write-ahead)
    reservation_id: str | None = None
    transaction_id: str | None = None
    tracking_id: str | None = None
    failed_step: str | None = None
    failure_reason: str | None = None
    compensation_failures: list[CompensationFailure] = field(default_factory=list)

    @property
    def effect_id(self) -> str:
        """The id the downstream services key this attempt's effects by (docs/downstream-http.md): the order
        id for the first attempt, so a retried or re-run saga never reserves, charges or ships twice; a fresh
        id for each later attempt, whose effects must not be the first attempt's released ones."""
        return self.order_id if self.attempt == 1 else f"{self.order_id}.attempt-{self.attempt}"

    @property
    def pivot_begun(self) -> bool:
        return self.in_flight is PIVOT or PIVOT in self.completed_steps

    def outstanding_compensations(self) -> list[Compensation]:
        """Compensations still owed, in the order they run: of every completed step, and of a step in flight
        (it may have landed), in reverse."""
        begun = [*self.completed_steps, *([self.in_flight] if self.in_flight else [])]
        owed = [COMPENSATION_OF[step] for step in reversed(begun) if step in COMPENSATION_OF]
        return [compensation for compensation in owed if compensation not in self.compensated_steps]


@dataclass(frozen=True)
class SagaClaim:
    """Which run of the saga may write the order, until when. Every write of a run carries its token: a run
    that lost its claim (it paused past `expires_at` and another run took over) has its writes refused."""

    token: str
    holder: str
    expires_at: datetime


@dataclass(frozen=True)
class StatusChange:
    """The order took `status` at `at`. An order keeps every change, in order, written with the status itself,
    so a watcher that reads the order late still sees each status it went through."""

    status: OrderStatus
    at: datetime


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
    claim: SagaClaim | None = None
    earlier_attempts: list[SagaState] = field(default_factory=list)
    status_history: list[StatusChange] = field(default_factory=list)  # oldest first; the last is `status`

    def __post_init__(self) -> None:
        if self.saga is None:
            self.saga = SagaState(order_id=self.id)
        if not self.status_history:  # a new order, or one stored before orders kept their history
            self.status_history.append(StatusChange(self.status, self.created_at))

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

    # --- who runs the saga ---------------------------------------------------------------------

    def claim_saga(self, holder: str, token: str, expires_at: datetime, now: datetime) -> None:
        """Lets the run `holder` write the order until `expires_at`; refused while another holder's claim
        lasts. A holder claiming again (its run retried) gets a new token."""
        self._require_active()
        current = self.claim
        if current is not None and current.holder != holder and current.expires_at > now:
            raise SagaClaimed(self.id, current.holder, current.expires_at)
        self.claim = SagaClaim(token=token, holder=holder, expires_at=expires_at)

    def renew_claim(self, token: str, expires_at: datetime) -> None:
        self.check_claim(token)
        self.claim = SagaClaim(token=token, holder=self.claim.holder, expires_at=expires_at)

    def release_claim(self, token: str) -> None:
        if self.claim is not None and self.claim.token == token:
            self.claim = None

    def check_claim(self, token: str) -> None:
        """Raises `LostClaim` unless `token` is the current claim's."""
        if self.claim is None or self.claim.token != token:
            holder = self.claim.holder if self.claim else "nobody"
            raise LostClaim(f"order {self.id} is now claimed by {holder}")

    # --- saga progress -------------------------------------------------------------------------

    def begin_saga(self, now: datetime | None = None) -> None:
        self._require_active()
        if self.saga.started_at is None:
            self.saga.started_at = now or datetime.now(UTC)

    def deadline(self, timeout: timedelta) -> datetime:
        assert self.saga.started_at is not None, "the saga has not begun"
        return self.saga.started_at + timeout

    def begin_step(self, step: Step, now: datetime, timeout: timedelta) -> None:
        """Records that `step` is about to be invoked (write-ahead). A forward step is only invoked on the
        forward path and within the time limit; the pivot, once begun, is resolved whatever the time."""
        self._require_active()
        if step is PIVOT and self.saga.in_flight is PIVOT:
            return
        if self.status is OrderStatus.COMPENSATING:
            raise InvalidTransition(f"order {self.id} is compensating; {step} cannot run now")
        if self.cancel_requested:
            raise SagaCancelled(f"cancelled on request before {step}")
        if now >= self.deadline(timeout):
            raise SagaTimedOut(f"saga timed out after {timeout.total_seconds() / 60:g} minutes before {step}")
        self.saga.in_flight = step

    def record_step(self, step: Step, reference: str | None) -> None:
        self._require_active()
        if self.status is OrderStatus.COMPENSATING:
            raise InvalidTransition(f"order {self.id} is compensating; {step} cannot complete now")
        if self.saga.in_flight is step:
            self.saga.in_flight = None
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
        self._move_to(step.status_after)

    def record_step_refused(self, step: Step) -> None:
        """The service refused `step` (a definite answer): nothing of it is in flight any more."""
        if self.saga.in_flight is step:
            self.saga.in_flight = None

    def start_compensating(self, failed_step: str | None, reason: str) -> None:
        """`failed_step` is None when the saga stops because it was cancelled, not because a step failed."""
        self._require_active()
        if self.saga.pivot_begun:
            raise InvalidTransition(f"order {self.id}: {PIVOT} has begun; the saga can only go forward")
        self._move_to(OrderStatus.COMPENSATING)
        self.saga.failed_step = failed_step
        self.saga.failure_reason = reason

    @property
    def stopped_by_cancellation(self) -> bool:
        return self.status is OrderStatus.COMPENSATING and self.saga.failed_step is None

    def record_compensation(self, compensation: Compensation, *, undid_something: bool) -> None:
        """Records that `compensation` is done: what it owed is undone, or there was nothing to undo."""
        if compensation not in self.saga.compensated_steps:
            self.saga.compensated_steps.append(compensation)
        if STEP_UNDONE_BY[compensation] is self.saga.in_flight:
            self.saga.in_flight = None
        self.saga.compensation_failures = [f for f in self.saga.compensation_failures if f.step != compensation]

    def record_compensation_failure(self, compensation: Compensation, error: str) -> None:
        if all(f.step != compensation for f in self.saga.compensation_failures):
            self.saga.compensation_failures.append(CompensationFailure(step=compensation, error=error))

    @property
    def needs_manual_intervention(self) -> bool:
        return bool(self.saga.compensation_failures)

    def complete(self, now: datetime | None = None) -> None:
        self._require_active()
        self.completed_at = now or datetime.now(UTC)
        self._move_to(OrderStatus.COMPLETED, self.completed_at)
        self.claim = None

    def finish_unsuccessfully(self, now: datetime | None = None) -> None:
        """Ends a compensated saga: `cancelled` if a cancellation stopped it, otherwise `failed`. Refused while
        a compensation is still owed: no order ends with a charge standing or stock held."""
        self._require_active()
        owed = self.saga.outstanding_compensations()
        if owed:
            raise InvalidTransition(f"order {self.id} still owes {', '.join(owed)}")
        self.failure_reason = self.saga.failure_reason
        self.completed_at = now or datetime.now(UTC)
        ending = OrderStatus.CANCELLED if self.stopped_by_cancellation else OrderStatus.FAILED
        self._move_to(ending, self.completed_at)
        self.claim = None

    def attach_flow_run(self, flow_run_id: str) -> None:
        self.flow_run_id = flow_run_id

    def request_cancellation(self, now: datetime | None = None) -> None:
        """Cancels at once an order whose saga has not invoked anything yet; otherwise asks the saga to stop
        at its next step boundary and compensate. Too late once the shipment has begun, or once the saga is
        compensating a failure: `CancellationTooLate` names the status the order will end in."""
        if self.status.is_terminal:
            raise InvalidTransition(f"order {self.id} is already {self.status} and cannot be cancelled")
        if self.saga.pivot_begun:
            raise CancellationTooLate(self.id, OrderStatus.COMPLETED, f"{PIVOT} has begun")
        if self.status is OrderStatus.COMPENSATING and not self.stopped_by_cancellation:
            raise CancellationTooLate(self.id, OrderStatus.FAILED, "the saga is already compensating a failure")
        self.cancel_requested = True
        if not self.saga.completed_steps and self.saga.in_flight is None:
            self.saga.failure_reason = self.failure_reason = "cancelled on request before any step"
            self.completed_at = now or datetime.now(UTC)
            self._move_to(OrderStatus.CANCELLED, self.completed_at)
            self.claim = None

    def retry(self) -> None:
        """An operator's retry of a failed order: a new attempt from the first step, the earlier one kept."""
        if self.status is not OrderStatus.FAILED:
            raise InvalidTransition(f"order {self.id} is {self.status}; only a failed order runs again")
        self.earlier_attempts.append(self.saga)
        self.saga = SagaState(order_id=self.id, attempt=self.saga.attempt + 1)
        self._move_to(OrderStatus.PROCESSING)
        self.failure_reason = self.completed_at = None
        self.cancel_requested = False

    def result(self) -> OrderResult:
        return OrderResult(
            success=self.status == OrderStatus.COMPLETED,
            status=self.status,
            tracking_id=self.saga.tracking_id,
            failure_reason=self.failure_reason,
        )

    def _move_to(self, status: OrderStatus, now: datetime | None = None) -> None:
        """The one way the status changes after placing: each change is appended to `status_history`."""
        if status is not self.status:
            self.status = status
            self.status_history.append(StatusChange(status, now or datetime.now(UTC)))

    def _require_active(self) -> None:
        if self.status.is_terminal:
            raise InvalidTransition(f"order {self.id} is already {self.status}")


def item_count_error(count: int) -> FieldError | None:
    if 1 <= count <= MAX_ITEMS:
        return None
    return FieldError("items", f"must hold between 1 and {MAX_ITEMS} items, got {count}")


def _order_errors(customer_id: str, items: list[OrderItem]) -> list[FieldError]:
    errors: list[FieldError] = []
    if not customer_id.strip():
        errors.append(FieldError("customerId", "must not be empty"))
    if error := item_count_error(len(items)):
        errors.append(error)
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
