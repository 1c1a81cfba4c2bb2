"""The local Service Bus in tests: `fixtures` holds pytest fixtures, `helpers` constants and waiting helpers.

The broker itself ships with the product (`deployments.servicebus_broker`, for `order-saga up --with-queue`).
"""

from deployments.servicebus_broker import LocalServiceBus

__all__ = ["LocalServiceBus"]
