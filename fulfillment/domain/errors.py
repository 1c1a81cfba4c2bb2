"""Domain errors. Entry points map each to a status code, a typed GraphQL result or a dead-letter reason."""

from __future__ import annotations

from dataclasses import dataclass


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
