"""A local Service Bus for tests: an AMQP 1.0 broker the real azure-servicebus SDK connects to.

`LocalServiceBus` is the broker; `fixtures` holds pytest fixtures and helpers to import into a test module.
"""

from tests.servicebus_broker.broker import LocalServiceBus

__all__ = ["LocalServiceBus"]
