"""Per-request GraphQL context: the services, the caller, and DataLoaders that batch order and flow-run lookups."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
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

    # Made on first use: most requests need one loader or none, and a request pays for each one made.
    @cached_property
    def orders(self) -> DataLoader[str, Order | Forbidden | None]:
        return DataLoader(load_fn=self._orders)

    @cached_property
    def flow_runs(self) -> DataLoader[str, FlowRunInfo | None]:
        return DataLoader(load_fn=self.container.monitor.flow_runs)

    @property
    def caller(self) -> Actor:
        if self.actor is None:
            raise Unauthenticated("the connection has not been authenticated")
        return self.actor

    async def _orders(self, order_ids: list[str]) -> list[Order | Forbidden | None]:
        return await self.container.order_service.get_many(order_ids, actor=self.caller)
