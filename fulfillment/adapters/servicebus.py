"""Azure Service Bus (contract §5): the `orders` queue listener, the `order-failures` announcer, and sending orders.

Connections are resolved as Azure Functions resolves the connection named by `ServiceBusConnectionName`
(default `ServiceBusConnection`):

- `ServiceBusConnection`: a namespace connection string (`Endpoint=sb://...;SharedAccessKeyName=...;
  SharedAccessKey=...`), or the emulator's (`...;UseDevelopmentEmulator=true`);
- `ServiceBusConnection__fullyQualifiedNamespace`: `<namespace>.servicebus.windows.net`, authenticated with
  `DefaultAzureCredential` (managed identity, workload identity, Azure CLI, ...); `ServiceBusConnection__clientId`
  selects a user-assigned managed identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import DefaultAzureCredential
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage, parse_connection_string
from azure.servicebus.aio import AutoLockRenewer, ServiceBusClient, ServiceBusReceiver, ServiceBusSender
from azure.servicebus.amqp import AmqpMessageBodyType
from azure.servicebus.exceptions import MessageSizeExceededError, ServiceBusError
from opentelemetry.trace import SpanKind

from fulfillment.domain import (
    Actor,
    IdempotencyKeyReused,
    InvalidOrder,
    InvalidRequest,
    Order,
    StoreUnavailable,
    TransientFault,
)
from fulfillment.service import OrderService
from fulfillment.service.requests import decode_json
from fulfillment.settings import Settings
from fulfillment.telemetry import DEAD_LETTERS, context_from_traceparent, tracer

log = logging.getLogger("fulfillment.servicebus")
QUEUE = Actor.trusted("servicebus")  # whoever may send to the queue is trusted; its message ids are one scope

ClientFactory = Callable[[], contextlib.AbstractAsyncContextManager[ServiceBusClient]]
"""Opens a new client on each call, so that a listener can reconnect from scratch."""

RECEIVE_WAIT_SECONDS = 1.0  # also the longest a stop request waits for the receive call in progress
SHUTDOWN_GRACE_SECONDS = 10.0
MAX_RECONNECT_DELAY_SECONDS = 30.0
MAX_ABANDON_DELAY_SECONDS = 60.0
MAX_DESCRIPTION_CHARS = 1024
SETTLE_TIMEOUT_S = 10.0


def client_factory(settings: Settings, environ: Mapping[str, str]) -> ClientFactory | None:
    """How to reach the namespace, from the environment; None when no connection is configured.

    Raises ValueError for a connection string that cannot be parsed.
    """
    name = settings.service_bus_connection_name
    if connection_string := environ.get(name, "").strip():
        parse_connection_string(connection_string)
        return lambda: ServiceBusClient.from_connection_string(connection_string)
    if namespace := environ.get(f"{name}__fullyQualifiedNamespace", "").strip():
        client_id = environ.get(f"{name}__clientId") or None
        return lambda: _identity_client(namespace, client_id)
    return None


def missing_connection_message(settings: Settings) -> str:
    name = settings.service_bus_connection_name
    return (f"Service Bus is not configured: set {name} to a namespace connection string (or the emulator's, "
            f"with UseDevelopmentEmulator=true), or {name}__fullyQualifiedNamespace to use DefaultAzureCredential.")


@contextlib.asynccontextmanager
async def _identity_client(namespace: str, client_id: str | None) -> AsyncIterator[ServiceBusClient]:
    async with DefaultAzureCredential(managed_identity_client_id=client_id) as credential, \
            ServiceBusClient(namespace, credential) as client:
        yield client


# --- what becomes of a message ------------------------------------------------------------------


class BodyNotJson(ValueError):
    pass


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    description: str


def dead_letter_for(error: Exception) -> DeadLetter | None:
    """Why a message whose order could not be placed is dead-lettered; None for a transient fault, whose
    message is abandoned, to be redelivered (Service Bus dead-letters it after MaxDeliveryCount attempts)."""
    match error:
        case StoreUnavailable() | TransientFault() | ConnectionError() | TimeoutError():
            return None
        case BodyNotJson():
            return DeadLetter("InvalidJson", f"The message body is not valid JSON ({error}). Send the JSON "
                              "object of POST /api/orders, UTF-8 encoded.")
        case IdempotencyKeyReused():
            return DeadLetter("ValidationFailed", f"Its message id was already used for another order body ({error}). "
                              "Send a different order with a message id of its own.")
        case InvalidOrder():
            return DeadLetter("ValidationFailed", f"The order breaks the order rules: {error}. Correct these "
                              "fields and send the order again.")
        case InvalidRequest():
            return DeadLetter("DeserializationFailed", f"The body is JSON but not a CreateOrderRequest: {error}. "
                              'Expected {"customerId": string, "items": [{"productId": string, '
                              '"productName": string, "quantity": integer, "unitPrice": number}, ...]}.')
        case _:
            return DeadLetter("ProcessingFailed", f"The order could not be created ({type(error).__name__}: "
                              f"{error}); the listener's log has the details. Once the cause is fixed, resubmit "
                              "the message as it is: its message id keeps it from creating a second order.")


def _order_payload(message: ServiceBusReceivedMessage) -> Any:
    """The decoded JSON body; raises BodyNotJson."""
    body = message.body
    if message.body_type == AmqpMessageBodyType.DATA:
        body = b"".join(body)
    if not isinstance(body, bytes | str):
        raise BodyNotJson(f"the body is an AMQP {message.body_type.value} section, not JSON text")
    try:
        return decode_json(body)
    except ValueError as error:
        raise BodyNotJson(str(error)) from None


# --- the listener -------------------------------------------------------------------------------


class ServiceBusOrderListener:
    """Turns each message of the orders queue into an order, through the same service as `POST /api/orders`.

    Peek-lock with manual settlement: a message is completed only once its order is stored (with its saga
    enqueued), dead-lettered when it can never become an order, and abandoned on a transient fault. The message
    id is the idempotency key, so a redelivered message yields the order it already made, whichever of several
    competing listeners it reaches. Each gives its receiver a name (`order-saga-<host>-<pid>`, logged at start) as
    Service Bus's client identifier, which Service Bus puts in its errors: that tells listeners apart on both sides.
    """

    def __init__(self, orders: OrderService, connect: ClientFactory, settings: Settings, *,
                 abandon_delay_seconds: float = 1.0, reconnect_delay_seconds: float = 0.5,
                 shutdown_grace_seconds: float = SHUTDOWN_GRACE_SECONDS):
        self.name = f"order-saga-{socket.gethostname()}-{os.getpid()}"
        self._orders = orders
        self._connect = connect
        self._queue = settings.orders_queue
        self._concurrency = settings.service_bus_max_concurrency
        self._prefetch = settings.service_bus_prefetch
        self._max_lock_renewal = settings.service_bus_max_lock_renewal_seconds
        self._abandon_delay = abandon_delay_seconds
        self._reconnect_delay = reconnect_delay_seconds
        self._shutdown_grace = shutdown_grace_seconds
        self._connection_failures = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Receives until `stop` is set, reconnecting whenever the connection is lost."""
        log.info("service bus listener started", extra={"queue": self._queue, "receiver": self.name,
                                                        "concurrency": self._concurrency, "prefetch": self._prefetch})
        while not stop.is_set():
            try:
                await self._receive_until(stop)
            except (ServiceBusError, ClientAuthenticationError, OSError) as error:
                self._connection_failures += 1
                delay = min(self._reconnect_delay * 2 ** (self._connection_failures - 1), MAX_RECONNECT_DELAY_SECONDS)
                log.warning("service bus connection lost; reconnecting", extra={
                    "queue": self._queue, "error": f"{type(error).__name__}: {error}", "retry_in_s": delay})
                await _wait(stop, delay)
        log.info("service bus listener stopped", extra={"queue": self._queue})

    async def _receive_until(self, stop: asyncio.Event) -> None:
        in_flight: dict[asyncio.Task[None], ServiceBusReceivedMessage] = {}
        async with self._connect() as client, \
                client.get_queue_receiver(self._queue, prefetch_count=self._prefetch,
                                          client_identifier=self.name) as receiver, \
                AutoLockRenewer(max_lock_renewal_duration=self._max_lock_renewal) as renewer:
            try:
                while not stop.is_set():
                    free = self._concurrency - len(in_flight)
                    if free == 0:
                        await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                        continue
                    messages = await receiver.receive_messages(max_message_count=free,
                                                               max_wait_time=RECEIVE_WAIT_SECONDS)
                    self._connection_failures = 0
                    for message in messages:
                        renewer.register(receiver, message)
                        task = asyncio.create_task(self._handle(receiver, message, stop))
                        in_flight[task] = message
                        task.add_done_callback(in_flight.pop)
            finally:
                await self._drain(receiver, in_flight)

    async def _handle(self, receiver: ServiceBusReceiver, message: ServiceBusReceivedMessage,
                      stop: asyncio.Event) -> None:
        context = {"message_id": message.message_id, "delivery_count": message.delivery_count,
                   "sequence_number": message.sequence_number}
        try:
            with tracer.start_as_current_span("servicebus message", kind=SpanKind.CONSUMER, context=_sender_trace(message),
                                              attributes={"messaging.message.id": str(message.message_id)}):
                order = await self._orders.place(_order_payload(message), source="servicebus", actor=QUEUE,
                                                 idempotency_key=message.message_id or None)
        except Exception as error:  # every failure settles the message one way or another
            verdict = dead_letter_for(error)
            if verdict is None:
                await self._abandon_later(receiver, message, error, stop, context)
            else:
                DEAD_LETTERS.labels(verdict.reason).inc()
                await self._settle(receiver.dead_letter_message(message, reason=verdict.reason,
                                                                error_description=_shorten(verdict.description)),
                                   context, outcome="dead-lettered", reason=verdict.reason,
                                   error=f"{type(error).__name__}: {error}")
                if verdict.reason == "ProcessingFailed":
                    log.error("unexpected error placing an order from service bus", exc_info=error, extra=context)
        else:
            await self._settle(receiver.complete_message(message), context, outcome="completed", order_id=order.id)

    async def _abandon_later(self, receiver: ServiceBusReceiver, message: ServiceBusReceivedMessage,
                             error: Exception, stop: asyncio.Event, context: dict[str, Any]) -> None:
        """Abandons after a delay that grows with each delivery, so that a store outage of a few seconds does
        not use up MaxDeliveryCount in a few milliseconds. The lock is renewed meanwhile; a stop cuts it short."""
        delay = min(self._abandon_delay * 2 ** (message.delivery_count or 0), MAX_ABANDON_DELAY_SECONDS)
        await _wait(stop, delay)
        await self._settle(receiver.abandon_message(message), context, outcome="abandoned",
                           error=f"{type(error).__name__}: {error}", delayed_s=delay)

    async def _settle(self, settlement: Awaitable[None], context: dict[str, Any], *, outcome: str,
                      **details: Any) -> None:
        try:
            await asyncio.wait_for(settlement, SETTLE_TIMEOUT_S)  # a link dropped mid-call may never answer
        except Exception as error:  # noqa: BLE001 - lock lost, connection lost, receiver closed: the lock expires
            log.warning("could not settle the message; Service Bus redelivers it once its lock expires",
                        extra={**context, **details, "outcome": outcome, "settle_error": repr(error)})
        else:
            level = logging.INFO if outcome == "completed" else logging.WARNING
            log.log(level, f"order message {outcome}", extra={**context, **details, "outcome": outcome})

    async def _drain(self, receiver: ServiceBusReceiver,
                     in_flight: dict[asyncio.Task[None], ServiceBusReceivedMessage]) -> None:
        """Lets the messages in flight finish for a while, then abandons the rest so they are redelivered."""
        if not in_flight:
            return
        log.info("finishing messages in flight", extra={"count": len(in_flight), "queue": self._queue})
        _, unfinished = await asyncio.wait(list(in_flight), timeout=self._shutdown_grace)
        stuck = [in_flight[task] for task in unfinished]
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        for message in stuck:
            await self._settle(receiver.abandon_message(message), {"message_id": message.message_id},
                               outcome="abandoned", error="listener stopping")


# --- order-failures and sending orders ----------------------------------------------------------


class ServiceBusFailureAnnouncer:
    """`FailureAnnouncer` on the `order-failures` queue: one JSON message per failed order.

    Announcements are at least once (the worker retries a job whose announcement failed); the message id is
    the order id, so a queue with duplicate detection turned on drops a repeat. The sender opens on first use
    and is reused.
    """

    def __init__(self, connect: ClientFactory, queue_name: str):
        self._connect = connect
        self._queue_name = queue_name
        self._resources = contextlib.AsyncExitStack()
        self._sender: ServiceBusSender | None = None
        self._opening = asyncio.Lock()

    async def order_failed(self, order: Order) -> None:
        notice = failure_notice(order)
        sender = await self._open_sender()
        await sender.send_messages(ServiceBusMessage(
            json.dumps(notice), message_id=_notice_id(order), content_type="application/json", subject="OrderFailed",
            application_properties={"orderId": order.id, "customerId": order.customer_id,
                                    "manualInterventionRequired": notice["manualInterventionRequired"]}))
        log.info("order failure announced", extra={"order_id": order.id, "queue": self._queue_name})

    async def aclose(self) -> None:
        await self._resources.aclose()
        self._sender = None

    async def _open_sender(self) -> ServiceBusSender:
        async with self._opening:
            if self._sender is None:
                client = await self._resources.enter_async_context(self._connect())
                self._sender = await self._resources.enter_async_context(
                    client.get_queue_sender(self._queue_name))
            return self._sender


def _notice_id(order: Order) -> str:
    """One message per order and outcome: the final failure, and before it a manual-intervention notice for an
    order still compensating, which duplicate detection must not mistake for the final one."""
    return order.id if order.status.is_terminal else f"{order.id}.manual-intervention"


def failure_notice(order: Order) -> dict[str, Any]:
    saga = order.saga
    return {
        "orderId": order.id,
        "customerId": order.customer_id,
        "status": order.status.value,
        "failedStep": saga.failed_step,
        "reason": order.failure_reason or saga.failure_reason,
        "compensatedSteps": [str(step) for step in saga.compensated_steps],
        "compensationFailures": [
            {"step": str(f.step), "error": f.error, "manualInterventionRequired": f.manual_intervention_required}
            for f in saga.compensation_failures
        ],
        "manualInterventionRequired": bool(saga.compensation_failures),
        "failedAt": order.completed_at.strftime("%Y-%m-%dT%H:%M:%SZ") if order.completed_at else None,
    }


async def send_orders(connect: ClientFactory, queue_name: str, orders: Iterable[Any], *,
                      progress: Callable[[int], None] = lambda sent: None) -> list[str]:
    """Sends each order as one JSON message with a new message id, in as few batches as fit; returns the ids."""
    message_ids: list[str] = []
    async with connect() as client, client.get_queue_sender(queue_name) as sender:
        batch = await sender.create_message_batch()
        for order in orders:
            message_id = str(uuid.uuid4())
            message = ServiceBusMessage(json.dumps(order), message_id=message_id, content_type="application/json")
            try:
                batch.add_message(message)
            except MessageSizeExceededError:  # the batch is full: send it and start another
                await _send_batch(sender, batch, message_ids, progress)
                batch = await sender.create_message_batch()
                batch.add_message(message)
            message_ids.append(message_id)
        await _send_batch(sender, batch, message_ids, progress)
    return message_ids


async def _send_batch(sender: ServiceBusSender, batch: Any, message_ids: list[str],
                      progress: Callable[[int], None]) -> None:
    if len(batch):
        await sender.send_messages(batch)
        progress(len(message_ids))


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_DESCRIPTION_CHARS else text[:MAX_DESCRIPTION_CHARS - 1] + "…"


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def _sender_trace(message: ServiceBusReceivedMessage):
    """The sender's trace, when it put a W3C `traceparent` (or Diagnostic-Id) in the application properties."""
    properties = {(k.decode() if isinstance(k, bytes) else k): v for k, v in (message.application_properties or {}).items()}
    traceparent = properties.get("traceparent") or properties.get("Diagnostic-Id")
    return context_from_traceparent(traceparent.decode() if isinstance(traceparent, bytes) else traceparent)
