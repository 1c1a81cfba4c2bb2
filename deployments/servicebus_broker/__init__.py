"""A local Service Bus: an AMQP 1.0 broker the real azure-servicebus SDK connects to as to a namespace.

The tests run the SDK against it, and `order-saga up --with-queue` runs it (`python -m
deployments.servicebus_broker`) so that the queue path works on a laptop without an Azure account.
"""

from deployments.servicebus_broker.broker import LocalServiceBus, connection_string

__all__ = ["LocalServiceBus", "connection_string"]
