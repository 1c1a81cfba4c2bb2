"""A local AMQP 1.0 broker that the real `azure-servicebus` SDK (>= 7.15) talks to as to a Service Bus namespace.

Written for the tests and for `order-saga up --with-queue` (the queue path on a laptop), on python-qpid-proton: queues with peek-lock, dead-letter queues, `$cbs` token exchange,
the `$management` operations the SDK needs (renew-lock, update-disposition) and the settlement echo the SDK
waits for. See shared/spec/servicebus-local-broker.md for the protocol facts this follows.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from proton import Array, Condition, Data, Delivery, Endpoint, Handler, Link, Message, symbol, timestamp
from proton.reactor import ApplicationEvent, Container, EventInjector

from deployments.servicebus_broker.amqp import messages_in_transfer, stored_message
from deployments.servicebus_broker.entities import EntityNotFound, Lock, LockLost, Namespace, Queue

T = TypeVar("T")
CREDIT = 1000
SWEEP_SECONDS = 0.1
CBS = "$cbs"
MANAGEMENT = "/$management"
LOCK_LOST = "com.microsoft:message-lock-lost"
RECEIVER_NAME = "com.microsoft:receiver-name"


def entity_of(address: str | None) -> str:
    """`amqps://host:port/Orders/$DeadLetterQueue` -> `orders/$deadletterqueue`."""
    address = address or ""
    if "://" in address:
        address = address.split("://", 1)[1].partition("/")[2]
    return address.strip("/").lower()


class _EventThread(Handler):
    """Everything that runs on proton's event thread: AMQP endpoints, deliveries, and the namespace."""

    def __init__(self, namespace: Namespace, host: str, port: int):
        super().__init__()
        self.namespace = namespace
        self.host, self.port = host, port
        self.consumers: dict[Queue, list[Link]] = {}
        self.transports: set[Any] = set()
        self.acceptor: Any = None
        self._reply_tags = 0

    # --- lifecycle -------------------------------------------------------------------------------

    def on_reactor_init(self, event) -> None:
        self.open_listener(event.container)
        event.container.schedule(SWEEP_SECONDS, self)

    def open_listener(self, container: Container) -> None:
        self.acceptor = container.listen(f"{self.host}:{self.port}")

    def drop_connections(self) -> None:
        """Like a namespace going down for an upgrade: every connection is closed with `amqp:connection:forced`
        and new ones are refused until the listener opens again."""
        self.acceptor.close()
        for transport in list(self.transports):
            connection = transport.connection
            connection.condition = Condition(symbol("amqp:connection:forced"), "the broker is restarting",
                                             {symbol("reason"): "restart"})
            connection.close()

    def on_timer_task(self, event) -> None:
        for queue in self.namespace.expire_locks():
            self._dispatch(queue)
        event.container.schedule(SWEEP_SECONDS, self)

    def on_broker_call(self, event) -> None:
        function, future = event.subject
        try:
            future.set_result(function())
        except BaseException as error:  # noqa: BLE001 - handed over to the calling thread
            future.set_exception(error)

    # --- endpoints -------------------------------------------------------------------------------

    def on_connection_bound(self, event) -> None:
        self.transports.add(event.transport)
        event.transport.sasl().allowed_mechs("ANONYMOUS")

    def on_transport_closed(self, event) -> None:
        self.transports.discard(event.transport)
        for links in self.consumers.values():
            links[:] = [link for link in links if link.connection != event.connection]

    def on_connection_remote_open(self, event) -> None:
        event.connection.open()

    def on_session_remote_open(self, event) -> None:
        event.session.open()

    def on_link_remote_open(self, event) -> None:
        link = event.link
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = Link.RCV_FIRST if link.is_receiver else link.remote_rcv_settle_mode
        try:
            queue = self._queue_of(link)
        except EntityNotFound as error:
            link.condition = _condition(error)
            link.open()
            link.close()
            return
        link.open()
        if link.is_receiver:
            link.flow(CREDIT)
        elif queue is not None:
            link.receiver_name = _receiver_name(link)
            self.consumers.setdefault(queue, []).append(link)

    def on_link_remote_close(self, event) -> None:
        for links in self.consumers.values():
            if event.link in links:
                links.remove(event.link)
        event.link.close()

    def on_session_remote_close(self, event) -> None:
        event.session.close()

    def on_connection_remote_close(self, event) -> None:
        event.connection.close()

    def on_link_flow(self, event) -> None:
        link = event.link
        if link.is_sender:
            queue = self._queue_of(link)
            if queue is not None:
                self._dispatch(queue)
            if link.drain_mode:
                link.drained()

    # --- deliveries ------------------------------------------------------------------------------

    def on_delivery(self, event) -> None:
        delivery = event.delivery
        if delivery.link.is_receiver:
            if delivery.readable and not delivery.partial:
                self._on_transfer(delivery)
        elif delivery.updated:
            self._on_settlement(delivery)

    def _on_transfer(self, delivery: Delivery) -> None:
        link = delivery.link
        payload = bytes(link.recv(delivery.pending) or b"")
        link.advance()
        node = entity_of(link.remote_target.address)
        if node == CBS:
            self._answer_cbs(link, payload)
        elif node.endswith(MANAGEMENT):
            self._answer_management(link, node.removesuffix(MANAGEMENT), payload)
        else:
            self._enqueue(self.namespace.queue(node), payload)
        delivery.update(Delivery.ACCEPTED)
        delivery.settle()
        if link.credit < CREDIT // 2:
            link.flow(CREDIT - link.credit)

    def _enqueue(self, queue: Queue, payload: bytes) -> None:
        now_ms = int(time.time() * 1000)
        for sections in messages_in_transfer(payload):
            queue.put(stored_message(sections, self.namespace.next_sequence_number(), now_ms))
        self._dispatch(queue)

    def _dispatch(self, queue: Queue) -> None:
        """Hands the available messages to the queue's receivers in turn, one message each, while any has credit.

        Competing receivers share a queue however messages come: filling one link's credit before the next would
        give the first receiver every message of a trickle, since it has credit again by the next message.
        """
        links = self.consumers.get(queue, [])
        while len(queue) > 0:
            link = next((link for link in links if link.credit > 0), None)
            if link is None:
                return
            links.remove(link)
            links.append(link)  # the next message goes to the next receiver with credit
            self._deliver(link, queue)

    def _deliver(self, link: Link, queue: Queue) -> None:
        receiver = link.receiver_name
        if link.remote_snd_settle_mode == Link.SND_SETTLED:  # RECEIVE_AND_DELETE
            message = queue.take()
            assert message is not None
            self._send(link, uuid.uuid4().bytes_le, message.encode(None), settled=True)
            self.namespace.delivered(receiver)
        else:
            lock = self.namespace.lock_next(queue, receiver)
            assert lock is not None
            delivery = self._send(link, lock.token.bytes_le, _encode_locked(lock), settled=False)
            delivery.lock_token = lock.token  # proton cannot read binary tags back

    def _on_settlement(self, delivery: Delivery) -> None:
        """Applies a receiver's outcome, then echoes it settled: since 7.15 the SDK waits for that echo."""
        outcome, remote = delivery.remote_state, delivery.remote
        token = getattr(delivery, "lock_token", None)
        status = SETTLEMENT_OF.get(outcome)
        if token is None or status is None:
            delivery.settle()
            return
        if outcome == Delivery.MODIFIED and remote.undeliverable:
            status = "defered"
        info = remote.condition.info if remote.condition else None
        info = info if isinstance(info, dict) else {}
        try:
            self._settle(token, status, str(info.get("DeadLetterReason", "")),
                         str(info.get("DeadLetterErrorDescription", "")))
            delivery.local.failed, delivery.local.undeliverable = remote.failed, remote.undeliverable
            delivery.update(outcome)
        except (LockLost, NotImplementedError) as error:
            delivery.local.condition = _condition(error)
            delivery.update(Delivery.REJECTED)
        delivery.settle()

    def _settle(self, token: uuid.UUID, status: str, reason: str = "", description: str = "") -> None:
        """Settles a lock by its `$management` disposition status (the receive link's outcomes map onto them)."""
        namespace = self.namespace
        lock = namespace.locks.get(token)
        match status:
            case "completed":
                namespace.complete(token)
            case "abandoned":
                namespace.abandon(token)
            case "released":
                namespace.release(token)
            case "suspended":
                namespace.dead_letter(token, reason, description)
            case _:
                raise NotImplementedError(f"disposition '{status}' is not implemented by this broker")
        if lock is not None:
            self._dispatch(lock.queue)

    # --- $cbs and $management --------------------------------------------------------------------

    def _answer_cbs(self, link: Link, payload: bytes) -> None:
        request = _decoded(payload)
        reply = Message(correlation_id=request.id,
                        properties={"status-code": 200, "status-description": "OK"})
        self._reply(link.connection, lambda reply_link: entity_of(reply_link.source.address) == CBS, reply)

    def _answer_management(self, link: Link, entity: str, payload: bytes) -> None:
        request = _decoded(payload)
        properties: dict[str, Any] = request.properties or {}
        operation = str(properties.get("operation", ""))
        try:
            body = self._manage(entity, operation, request.body if isinstance(request.body, dict) else {})
            reply = Message(correlation_id=request.id, body=body,
                            properties={"statusCode": 200, "statusDescription": "OK"})
        except (LockLost, EntityNotFound, NotImplementedError) as error:
            status = STATUS_OF.get(type(error), 501)
            reply = Message(correlation_id=request.id, body={},
                            properties={"statusCode": status, "statusDescription": str(error),
                                        "errorCondition": _condition(error).name})
        self._reply(link.connection, lambda reply_link: reply_link.target.address == request.reply_to, reply)

    def _manage(self, entity: str, operation: str, body: dict) -> dict:
        self.namespace.queue(entity)
        tokens = [uuid.UUID(str(token)) for token in body.get("lock-tokens", [])]
        if operation == "com.microsoft:renew-lock":
            expirations = [timestamp(int(self.namespace.renew(token) * 1000)) for token in tokens]
            return {"expirations": Array(None, Data.TIMESTAMP, *expirations)}
        if operation == "com.microsoft:update-disposition":
            for token in tokens:
                self._settle(token, str(body.get("disposition-status")), str(body.get("deadletter-reason", "")),
                             str(body.get("deadletter-description", "")))
            return {}
        raise NotImplementedError(f"{operation} is not implemented by this broker")

    def _reply(self, connection: Any, is_reply_link: Callable[[Link], bool], reply: Message) -> None:
        link = connection.link_head(Endpoint.LOCAL_ACTIVE)
        while link is not None and not (link.is_sender and is_reply_link(link)):
            link = link.next(Endpoint.LOCAL_ACTIVE)
        if link is not None:
            self._reply_tags += 1
            self._send(link, str(self._reply_tags).encode(), reply.encode(), settled=True)

    def _queue_of(self, link: Link) -> Queue | None:
        """The queue a link sends to or receives from; None for `$cbs` and `$management` links."""
        node = entity_of(link.remote_target.address if link.is_receiver else link.remote_source.address)
        if node == CBS or node.endswith(MANAGEMENT):
            return None
        return self.namespace.queue(node)

    @staticmethod
    def _send(link: Link, tag: bytes, encoded: bytes, *, settled: bool) -> Delivery:
        delivery = link.delivery(tag)  # type: ignore[arg-type] # binary tags work; proton's hint says str
        link.send(encoded)
        link.advance()
        if settled:
            delivery.settle()
        return delivery


SETTLEMENT_OF: dict[int, str] = {Delivery.ACCEPTED: "completed", Delivery.MODIFIED: "abandoned",
                                 Delivery.RELEASED: "released", Delivery.REJECTED: "suspended"}

STATUS_OF: dict[type[Exception], int] = {LockLost: 410, EntityNotFound: 404}
CONDITION_OF: dict[type[Exception], str] = {LockLost: LOCK_LOST, EntityNotFound: "amqp:not-found"}


def _receiver_name(link: Link) -> str:
    """The name the SDK gives a receiver (its `client_identifier`, or `SBReceiver-<uuid>`), else the link's name."""
    properties = link.remote_properties or {}
    return str(properties.get(symbol(RECEIVER_NAME)) or link.name)


def _condition(error: Exception) -> Condition:
    """The AMQP error for a refused operation; its info map must not be empty (the SDK reads it unconditionally)."""
    name = CONDITION_OF.get(type(error), "amqp:not-implemented")
    return Condition(symbol(name), str(error), {symbol("reason"): str(error)})


def _encode_locked(lock: Lock) -> bytes:
    return lock.message.encode(int(lock.locked_until * 1000))


def _decoded(payload: bytes) -> Message:
    message = Message()
    message.decode(payload)
    return message


class LocalServiceBus:
    """A Service Bus namespace on 127.0.0.1, for the real SDK, run on a background thread.

    Every inspection goes through `call`, which runs a function on the broker's event thread (proton's
    `Container` is not thread-safe).
    """

    def __init__(self, queues: tuple[str, ...] = ("orders", "order-failures"), *, lock_duration: float = 5.0,
                 max_delivery_count: int = 10, port: int = 0):
        self.namespace = Namespace(list(queues), lock_duration=lock_duration, max_delivery_count=max_delivery_count)
        self.port = port or _free_port()
        self._events = _EventThread(self.namespace, "127.0.0.1", self.port)
        self._container = Container(self._events)
        self._injector = EventInjector()
        self._container.selectable(self._injector)
        self._thread = threading.Thread(target=self._container.run, name="local-servicebus", daemon=True)

    @property
    def connection_string(self) -> str:
        return connection_string(self.port)

    def start(self) -> LocalServiceBus:
        self._thread.start()
        self.call(lambda: None)  # the listener opens on the first event, before this one
        return self

    def stop(self) -> None:
        self.call(self._stop)
        self._thread.join(timeout=10)

    def call(self, function: Callable[[], T]) -> T:
        future: Future[T] = Future()
        self._injector.trigger(ApplicationEvent("broker_call", subject=(function, future)))
        return future.result(timeout=10)

    def counts(self) -> dict[str, int]:
        return self.call(self.namespace.counts)

    def stats(self) -> dict[str, int]:
        return self.call(lambda: dict(self.namespace.stats))

    def receivers(self, queue: str) -> dict[str, int]:
        """The receivers attached to `queue` now, by name (`SBReceiver-<uuid>` unless the client named them), each
        with its link credit: how many more messages it asks for."""
        return self.call(lambda: {link.receiver_name: link.credit
                                  for link in self._events.consumers.get(self.namespace.queue(queue), [])})

    def deliveries_by_receiver(self) -> dict[str, int]:
        """How many messages each receiver was handed, redeliveries included, since the start or the last purge."""
        return self.call(lambda: dict(self.namespace.deliveries_by_receiver))

    def locked_message_ids(self) -> dict[str, list[str | None]]:
        """The message ids of the locks held now, by the name of the receiver holding them."""
        return self.call(self.namespace.locked_message_ids)

    def purge(self) -> None:
        self.call(self.namespace.purge)

    def restart(self, down_for: float) -> None:
        """Closes every connection (`amqp:connection:forced`) and refuses new ones for `down_for` seconds; queues
        and message locks survive, as they do in Service Bus."""
        self.call(self._events.drop_connections)
        time.sleep(down_for)
        self.call(lambda: self._events.open_listener(self._container))

    def _stop(self) -> None:
        self._events.drop_connections()
        self._injector.close()
        self._container.stop()


def connection_string(port: int) -> str:
    """The connection to a local broker on 127.0.0.1:`port`: the emulator's form, plain AMQP, any key."""
    return (f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=RootManageSharedAccessKey;"
            "SharedAccessKey=local-key;UseDevelopmentEmulator=true")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

