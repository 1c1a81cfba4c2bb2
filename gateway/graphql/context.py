"""Per-request GraphQL context: the services and a DataLoader that batches order lookups."""

from __future__ import annotations

from dataclasses import dataclass, field

from strawberry.dataloader import DataLoader

from fulfillment.bootstrap import Container
from fulfillment.domain import Order


@dataclass
class Context:
    container: Container
    orders: DataLoader[str, Order | None] = field(init=False)

    def __post_init__(self) -> None:
        self.orders = DataLoader(load_fn=self.container.order_service.get_many)
