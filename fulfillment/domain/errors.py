"""Domain errors. Entry points map each to a status code, a typed GraphQL result or a dead-letter reason."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class DomainError(Exception):
    """Base of every error the domain and service layer raise on purpose."""


class InvalidRequest(DomainError):
    """The input is not a CreateOrderRequest at all (wrong types, not an object)."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))


class InvalidOrder(InvalidRequest):
    """A well-formed request that breaks the order rules (contract §1)."""


class OrderNotFound(DomainError):
    def __init__(self, order_id: str):
        self.order_id = order_id
        super().__init__(f"order {order_id} not found")


class Forbidden(DomainError):
    """A known caller acting outside its rights (another customer's orders)."""


class IdempotencyKeyReused(DomainError):
    """An idempotency key sent again with a different request: the first request's order is not this one."""

    def __init__(self, key: str):
        self.key = key
        super().__init__(f"idempotency key {key!r} was already used with a different request")


class InvalidTransition(DomainError):
    """The order's status does not allow what was asked (e.g. cancelling a completed order)."""


class ConcurrencyConflict(DomainError):
    """Another writer changed the order first; the caller re-reads and re-applies."""


class StoreUnavailable(DomainError):
    """The order store cannot be reached; worth retrying later."""


class StepRefused(DomainError):
    """A downstream service refused the step for a business reason (not retried)."""

    def __init__(self, code: str, detail: str):
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


class TransientFault(DomainError):
    """A downstream call failed in a way that may succeed if retried (timeout, 5xx)."""


class CancellationTooLate(InvalidTransition):
    """The saga is past the point where it can stop; the order will end `will_end_as` instead."""

    def __init__(self, order_id: str, will_end_as: str, why: str):
        self.order_id = order_id
        self.will_end_as = will_end_as
        super().__init__(f"too late to cancel order {order_id}: {why}; it will end {will_end_as}")


class SagaStopped(DomainError):
    """The forward steps stop before the next one (the reason is the message); the saga compensates."""


class SagaCancelled(SagaStopped):
    pass


class SagaTimedOut(SagaStopped):
    pass


class SagaClaimed(DomainError):
    """Another run of the saga holds the order (its claim has not run out)."""

    def __init__(self, order_id: str, holder: str, until: datetime):
        self.holder = holder
        super().__init__(f"order {order_id} is being processed by {holder} (claimed until {until.isoformat()})")


class LostClaim(DomainError):
    """This run's claim on the order was taken over: it must stop writing and stop running."""
