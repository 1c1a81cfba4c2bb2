"""The one composition root: settings in, wired adapters and services out. Nothing is built at import time."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from fulfillment.adapters.http_services import HttpInventory, HttpPayments, HttpShipping
from fulfillment.adapters.log_failures import LogFailureAnnouncer
from fulfillment.adapters.prefect_monitor import PrefectMonitor
from fulfillment.adapters.sqlite_inventory_events import SqliteInventoryEventInbox
from fulfillment.adapters.sqlite_orders import SqliteOrderRepository
from fulfillment.adapters.sqlite_services import (
    EmbeddedServices,
    FaultInjector,
    SqliteInventory,
    SqlitePayments,
    SqliteShipping,
)
from fulfillment.ports import (
    FailureAnnouncer,
    Inventory,
    InventoryEventInbox,
    OrderRepository,
    Payments,
    SagaMonitor,
    SagaOutbox,
    Shipping,
)
from fulfillment.service import OrderSaga, OrderService, RetryPolicy, SagaActions
from fulfillment.service.events import EventService
from fulfillment.service.saga_runs import SagaRuns
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
    failures: FailureAnnouncer
    order_service: OrderService
    inventory_events: InventoryEventInbox
    events: EventService
    saga_actions: SagaActions
    saga: OrderSaga
    saga_runs: SagaRuns
    _closers: list

    async def aclose(self) -> None:
        """Closes every adapter, even when one fails to close; the first failure is raised afterwards."""
        errors = []
        for close in self._closers:
            try:
                await close()
            except Exception as error:  # noqa: BLE001 - the others must still close
                errors.append(error)
        if errors:
            raise errors[0]


@dataclass(frozen=True)
class EmbeddedDownstream:
    """The embedded inventory, payments and shipping (contract §8), over one SQLite file in the data directory."""

    inventory: SqliteInventory
    payments: SqlitePayments
    shipping: SqliteShipping
    aclose: Callable[[], Awaitable[None]]


def embedded_downstream(settings: Settings) -> EmbeddedDownstream:
    """The embedded services alone: what the saga calls when no base URL is set, and what
    `gateway.services_server` serves over HTTP."""
    store = EmbeddedServices(settings.data_dir / "services.db", FaultInjector(settings.transient_fault_rate))
    return EmbeddedDownstream(SqliteInventory(store, settings.default_stock),
                              SqlitePayments(store, settings.credit_limit), SqliteShipping(store), store.close)


def bootstrap(settings: Settings | None = None, **overrides) -> Container:
    """Builds every adapter from `settings`; `overrides` replace single adapters (tests)."""
    settings = settings or Settings()
    orders = overrides.get("orders") or _order_store(settings)
    embedded = embedded_downstream(settings)
    closers = [orders.close, embedded.aclose]

    def downstream(name, base_url, http_client, embedded_service):
        if name in overrides:
            return overrides[name]
        if base_url:
            client = http_client(base_url, timeout=settings.downstream_timeout_seconds)
            closers.append(client.aclose)
            return client
        return embedded_service

    inventory = downstream("inventory", settings.inventory_base_url, HttpInventory, embedded.inventory)
    payments = downstream("payments", settings.payment_base_url, HttpPayments, embedded.payments)
    shipping = downstream("shipping", settings.shipping_base_url, HttpShipping, embedded.shipping)
    inventory_events = overrides.get("inventory_events") or _inventory_event_inbox(settings)
    closers.append(inventory_events.close)
    monitor = overrides.get("monitor") or PrefectMonitor(settings.prefect_api_url, settings.prefect_ui_url)
    failures = overrides.get("failures") or _failure_announcer(settings)
    closers += [monitor.aclose, failures.aclose]
    order_service = OrderService(orders, overrides.get("changes") or orders, max_page_size=settings.page_size_max,
                                 idempotency_key_lifetime=timedelta(hours=settings.idempotency_key_hours))
    actions = SagaActions(orders, inventory, payments, shipping,
                          RetryPolicy(settings.step_attempts, settings.retry_base_seconds),
                          RetryPolicy(settings.compensation_attempts, settings.retry_base_seconds))
    saga = OrderSaga(orders, actions, settings.saga_timeout_seconds, settings.saga_claim_seconds)
    return Container(
        settings=settings,
        orders=orders,
        outbox=overrides.get("outbox") or orders,
        inventory=inventory,
        payments=payments,
        shipping=shipping,
        monitor=monitor,
        failures=failures,
        order_service=order_service,
        inventory_events=inventory_events,
        events=EventService(order_service, inventory_events),
        saga_actions=actions,
        saga=saga,
        saga_runs=SagaRuns(orders, saga),
        _closers=closers,
    )


def _uses_cosmos(settings: Settings) -> bool:
    return bool(settings.cosmos_connection_string or settings.cosmos_endpoint)


def _order_store(settings: Settings) -> OrderRepository:
    """Cosmos DB when a connection string or account endpoint is set, else SQLite in the data directory."""
    if _uses_cosmos(settings):
        from fulfillment.adapters.cosmos_orders import create_cosmos_repository  # the Azure SDK only when used

        return create_cosmos_repository(settings)
    return SqliteOrderRepository(settings.data_dir / "orders.db")


def _failure_announcer(settings: Settings) -> FailureAnnouncer:
    """The `order-failures` queue when Service Bus is configured, else a log line."""
    name = settings.service_bus_connection_name
    if not (os.environ.get(name) or os.environ.get(f"{name}__fullyQualifiedNamespace")):
        return LogFailureAnnouncer()
    from fulfillment.adapters.servicebus import ServiceBusFailureAnnouncer, client_factory  # the SDK when used

    connect = client_factory(settings, os.environ)
    return ServiceBusFailureAnnouncer(connect, settings.order_failures_queue) if connect else LogFailureAnnouncer()


def _inventory_event_inbox(settings: Settings) -> InventoryEventInbox:
    """In the same store as the orders, so every durable record lives in the store that is selected."""
    if _uses_cosmos(settings):
        from fulfillment.adapters.cosmos_inventory_events import create_cosmos_inventory_event_inbox

        return create_cosmos_inventory_event_inbox(settings)
    return SqliteInventoryEventInbox(settings.data_dir / "orders.db")
