"""Per-request GraphQL context: the services, the caller, and DataLoaders that batch order and flow-run lookups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import HTTPConnection
from strawberry.dataloader import DataLoader

from fulfillment.bootstrap import Container
from fulfillment.domain import Actor, Forbidden, Order
from fulfillment.ports import FlowRunInfo
from gateway.auth import Unauthenticated


@dataclass
class Context:
    container: Container
    request: HTTPConnection
    actor: Actor | None
    """None on a WebSocket until its `connection_init` is accepted (`GraphQLApp.on_ws_connect`)."""
    connection_params: dict[str, Any] | None = None  # a WebSocket's `connection_init` payload, set by Strawberry
    orders: DataLoader[str, Order | Forbidden | None] = field(init=False)
    flow_runs: DataLoader[str, FlowRunInfo | None] = field(init=False)

    def __post_init__(self) -> None:
        self.orders = DataLoader(load_fn=self._orders)
        self.flow_runs = DataLoader(load_fn=self.container.monitor.flow_runs)

    @property
    def caller(self) -> Actor:
        if self.actor is None:
            raise Unauthenticated("the connection has not been authenticated")
        return self.actor

    async def _orders(self, order_ids: list[str]) -> list[Order | Forbidden | None]:
        return await self.container.order_service.get_many(order_ids, actor=self.caller)
