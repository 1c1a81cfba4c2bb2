"""Who acts, and on which orders (contract §3a): a customer on its own orders only; a trusted caller on any."""

from __future__ import annotations

from dataclasses import dataclass

from fulfillment.domain.errors import Forbidden


@dataclass(frozen=True)
class Actor:
    """`name` says who, in logs and as the scope of the caller's idempotency keys; `customer_id` is the one
    customer it acts for, or None for a trusted caller (a function key, an `Orders.Admin` token, the queue, the
    webhook, an operator, or anyone on a gateway that serves loopback only without authentication)."""

    name: str
    customer_id: str | None = None

    @classmethod
    def trusted(cls, name: str) -> Actor:
        return cls(name)

    @classmethod
    def customer(cls, name: str, customer_id: str) -> Actor:
        return cls(name, customer_id)

    def may_act_for(self, customer_id: str) -> bool:
        return self.customer_id is None or self.customer_id == customer_id

    def refusal_for(self, customer_id: str) -> Forbidden | None:
        """The error for acting for `customer_id`, or None if this actor may."""
        return None if self.may_act_for(customer_id) else Forbidden("this caller acts for its own customer only")

    def check_acts_for(self, customer_id: str) -> None:
        if refusal := self.refusal_for(customer_id):
            raise refusal
