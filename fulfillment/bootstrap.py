"""The one composition root: settings in, wired adapters and services out. Nothing is built at import time."""

from __future__ import annotations

from dataclasses import dataclass

from fulfillment.adapters.prefect_monitor import PrefectMonitor
from fulfillment.adapters.sqlite_orders import SqliteOrderRepository
from fulfillment.adapters.sqlite_services import (
    EmbeddedServices,
    FaultInjector,
    SqliteInventory,
    SqlitePayments,
    SqliteShipping,
)
from fulfillment.ports import Inventory, OrderRepository, Payments, SagaMonitor, SagaOutbox, Shipping
from fulfillment.service import OrderSaga, OrderService, RetryPolicy, SagaActions
from fulfillment.settings import Settings


@dataclass
class Container:
    settings: Settings
    orders: OrderRepository
    outbox: SagaOutbox
    inventory: Inventory
    payments: Payments
    shipping: Shipping
    monitor: SagaMonitor
    order_service: OrderService
    saga_actions: SagaActions
    saga: OrderSaga
    _closers: list

    async def aclose(self) -> None:
        for close in self._closers:
            await close()


def bootstrap(settings: Settings | None = None, **overrides) -> Container:
    """Builds every adapter from `settings`; `overrides` replace single adapters (tests)."""
    settings = settings or Settings()
    orders = overrides.get("orders") or SqliteOrderRepository(settings.data_dir / "orders.db")
    embedded = EmbeddedServices(settings.data_dir / "services.db", FaultInjector(settings.transient_fault_rate))
    inventory = overrides.get("inventory") or SqliteInventory(embedded, settings.default_stock)
    payments = overrides.get("payments") or SqlitePayments(embedded, settings.credit_limit)
    shipping = overrides.get("shipping") or SqliteShipping(embedded)
    monitor = overrides.get("monitor") or PrefectMonitor(settings.prefect_api_url, settings.prefect_ui_url)
    actions = SagaActions(orders, inventory, payments, shipping,
                          RetryPolicy(settings.step_attempts, settings.retry_base_seconds))
    return Container(
        settings=settings,
        orders=orders,
        outbox=overrides.get("outbox") or orders,
        inventory=inventory,
        payments=payments,
        shipping=shipping,
        monitor=monitor,
        order_service=OrderService(orders, max_page_size=settings.page_size_max),
        saga_actions=actions,
        saga=OrderSaga(orders, actions, settings.saga_timeout_seconds),
        _closers=[orders.close, embedded.close, monitor.aclose],
    )
