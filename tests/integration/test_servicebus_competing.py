"""Competing consumers (issue #13, scale out): two listener processes on one `orders` queue and one order store.

The listeners are the real entry point (`python -m deployments.servicebus_listener`), run twice over one SQLite
data directory against the local broker, as `order-saga up --with-queue` wires one. No Prefect server is needed:
a listener only stores the order and its saga's outbox entry. What happened is read from the other side's
ledgers: the store (one order and one saga per message id), the broker (deliveries and locks by receiver, the
queues) and each listener's own JSON log (who settled which message, and when).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient, ServiceBusSender

from tests.conftest import SEED_ORDER
from tests.servicebus_broker import LocalServiceBus
from tests.servicebus_broker.helpers import LOCK_SECONDS, ORDERS, eventually, receive

pytest_plugins = ["tests.servicebus_broker.fixtures"]
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
INVALID = {  # message id: (body, the dead-letter reason of contract §5)
    "invalid-json": (b"{customerId: cust-x", "InvalidJson"),
    "invalid-shape": (json.dumps({"customerId": 7, "items": "none"}), "DeserializationFailed"),
    "invalid-rules": (json.dumps({**SEED_ORDER, "items": [{**SEED_ORDER["items"][0], "quantity": 0}]}),
                      "ValidationFailed"),
}


# --- two listener processes ---------------------------------------------------------------------


@dataclass
class Listener:
    """A listener process and the file its JSON log (stderr) goes to."""

    process: subprocess.Popen
    log: Path

    def entries(self) -> list[dict]:
        """The JSON lines of its log so far (a line cut short by SIGKILL is left out)."""
        entries = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries

    def settled(self, outcome: str) -> list[dict]:
        return [entry for entry in self.entries() if entry.get("outcome") == outcome]

    @property
    def receiver(self) -> str:
        """The name its receiver gives Service Bus (the broker's locks and deliveries are by that name)."""
        (started,) = [entry for entry in self.entries() if entry["message"] == "service bus listener started"]
        return started["receiver"]


@asynccontextmanager
async def two_listeners(servicebus: LocalServiceBus, data_dir: Path) -> AsyncIterator[tuple[Listener, Listener]]:
    """Two listener processes, receiving once the block starts; stopped with SIGTERM when it ends."""
    environment = {**os.environ, "ServiceBusConnection": servicebus.connection_string,
                   "OrderProcessing__DataDir": str(data_dir), "LOG_FORMAT": "json"}
    listeners: list[Listener] = []
    try:
        for number in (1, 2):
            log = data_dir / f"listener-{number}.log"
            with log.open("w") as stderr:
                process = subprocess.Popen([sys.executable, "-m", "deployments.servicebus_listener"], cwd=ROOT,
                                           env=environment, stderr=stderr)
            listeners.append(Listener(process, log))
        await eventually(lambda: both_asking(servicebus), timeout=30, what="both listeners asking for messages")
        yield listeners[0], listeners[1]
    finally:
        for listener in listeners:
            if listener.process.poll() is None:
                listener.process.send_signal(signal.SIGTERM)
                listener.process.send_signal(signal.SIGCONT)  # in case a test stopped it
        for listener in listeners:
            try:
                await asyncio.to_thread(listener.process.wait, timeout=20)
            except subprocess.TimeoutExpired:
                listener.process.kill()
                raise


def both_asking(servicebus: LocalServiceBus) -> bool:
    credits = servicebus.receivers(ORDERS).values()
    return len(credits) == 2 and all(credits)


# --- messages and ledgers -----------------------------------------------------------------------


def order_message(number: int) -> ServiceBusMessage:
    """Order `order-<n>` of customer `cust-<n>`: a message id, and a customer whose orders count its orders."""
    body = {**SEED_ORDER, "customerId": f"cust-{number}"}
    return ServiceBusMessage(json.dumps(body), message_id=f"order-{number}", content_type="application/json")


async def send(sender: ServiceBusSender, messages: list[ServiceBusMessage], batch: int = 100) -> None:
    for start in range(0, len(messages), batch):
        await sender.send_messages(messages[start:start + batch])


def settled_everything(servicebus: LocalServiceBus, sent: int) -> bool:
    stats, counts = servicebus.stats(), servicebus.counts()
    return (counts[ORDERS] == 0 and counts["locked"] == 0
            and stats.get("completed", 0) + stats.get("dead_lettered", 0) >= sent)


@dataclass
class StoreLedger:
    orders_by_customer: Counter[str]
    order_of_message: dict[str, str]  # message id -> the order its idempotency key made
    sagas: int


def store_ledger(data_dir: Path) -> StoreLedger:
    with closing(sqlite3.connect(data_dir / "orders.db")) as db:
        customers = Counter(dict(db.execute("SELECT customer_id, count(*) FROM orders GROUP BY customer_id")))
        keys = {key.removeprefix("servicebus:"): order_id
                for key, order_id in db.execute("SELECT key, order_id FROM idempotency_keys")}
        sagas = db.execute("SELECT count(*) FROM saga_outbox").fetchone()[0]
    return StoreLedger(customers, keys, sagas)


def assert_one_order_per_message_id(data_dir: Path, numbers: Iterable[int], listeners: Iterable[Listener]) -> None:
    """Each message id made one order (with one saga), and every completion of it answered with that order."""
    numbers = list(numbers)
    ledger = store_ledger(data_dir)
    assert ledger.orders_by_customer == Counter({f"cust-{n}": 1 for n in numbers})
    assert ledger.sagas == len(numbers)
    assert set(ledger.order_of_message) == {f"order-{n}" for n in numbers}
    answered = {(entry["message_id"], entry["order_id"])
                for listener in listeners for entry in listener.settled("completed")}
    assert {message_id for message_id, _ in answered} <= set(ledger.order_of_message)
    assert {(message_id, ledger.order_of_message[message_id]) for message_id, _ in answered} == answered


async def assert_dead_letters_are_exactly_the_invalid_ones(servicebus: LocalServiceBus, dead_letters,
                                                           listeners: Iterable[Listener]) -> None:
    assert servicebus.counts()[f"{ORDERS}/$deadletterqueue"] == len(INVALID)
    dead = await receive(dead_letters, len(INVALID))
    assert {m.message_id: m.dead_letter_reason for m in dead} == {key: reason for key, (_, reason) in INVALID.items()}
    logged = [entry["message_id"] for listener in listeners for entry in listener.settled("dead-lettered")]
    assert sorted(logged) == sorted(INVALID)  # each dead-lettered once, by one listener


async def watch_ids_held_by_both(servicebus: LocalServiceBus, seen: set[str], stop: asyncio.Event) -> None:
    """Collects the message ids locked by two receivers at the same moment, from the broker's locks."""
    while not stop.is_set():
        holders = Counter(message_id for ids in servicebus.locked_message_ids().values() for message_id in set(ids))
        seen.update(message_id for message_id, count in holders.items() if count > 1)
        await asyncio.sleep(0.02)


def split_pairs(listeners: tuple[Listener, Listener], message_ids: list[str]) -> set[str]:
    """The ids whose first two deliveries (the copies sent side by side) went one to each listener."""
    deliveries = sorted((entry["sequence_number"], number, entry["message_id"])
                        for number, listener in enumerate(listeners) for entry in listener.settled("completed")
                        if entry["message_id"] in message_ids and entry["delivery_count"] == 0)
    first_two: dict[str, list[int]] = {}
    for _, number, message_id in deliveries:
        first_two.setdefault(message_id, []).append(number)
    return {message_id for message_id, numbers in first_two.items() if set(numbers[:2]) == {0, 1}}


async def freeze_while_holding_messages(servicebus: LocalServiceBus, listener: Listener, at_least: int) -> set[str]:
    """Stops the listener (SIGSTOP) at a moment it holds `at_least` locked messages, which it can then no longer
    settle; returns their ids. A listener holds none between settling one round of messages and receiving the next."""
    def holding() -> set[str]:
        return set(servicebus.locked_message_ids().get(listener.receiver, []))

    while True:
        await eventually(lambda: len(holding()) >= at_least, what=f"the listener holding {at_least} messages")
        listener.process.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.2)  # settlements it sent before it stopped reach the broker
        if len(held := holding()) >= at_least:
            return held
        listener.process.send_signal(signal.SIGCONT)


def when(entry: dict) -> float:
    return datetime.fromisoformat(entry["time"]).timestamp()


# --- the tests ----------------------------------------------------------------------------------


async def test_the_broker_hands_a_trickle_of_messages_to_competing_receivers_in_turn(
        empty_servicebus, servicebus_client: ServiceBusClient, orders_sender):
    received: Counter[str] = Counter()
    stop = asyncio.Event()

    async def receive_until_stopped(name: str) -> None:
        async with servicebus_client.get_queue_receiver(ORDERS, prefetch_count=16) as receiver:
            while not stop.is_set():
                for message in await receiver.receive_messages(max_message_count=8, max_wait_time=0.5):
                    received[name] += 1
                    await receiver.complete_message(message)

    receivers = [asyncio.create_task(receive_until_stopped(name)) for name in ("one", "two")]
    await eventually(lambda: both_asking(empty_servicebus), what="both receivers asking for messages")
    for number in range(20):  # one at a time: each finds both receivers idle, with credit
        await orders_sender.send_messages(order_message(number))
        await asyncio.sleep(0.05)
    await eventually(lambda: settled_everything(empty_servicebus, 20), what="every message completed")
    stop.set()
    await asyncio.gather(*receivers)

    # In turn, not strictly alternately: a message that lands between two receive calls is released, and goes on.
    assert sum(received.values()) == 20 and min(received[name] for name in ("one", "two")) >= 5, received
    deliveries = empty_servicebus.deliveries_by_receiver()
    assert len(deliveries) == 2 and min(deliveries.values()) >= 5, deliveries


async def test_two_listeners_share_the_queue_and_each_message_id_makes_one_order(
        empty_servicebus, orders_sender, dead_letters, tmp_path, report_figure):
    """310 order messages for 240 message ids, and 3 invalid bodies: two copies of one id side by side in a batch,
    which the two listeners race on, and copies sent again later, after 100 messages have completed."""
    servicebus = empty_servicebus
    first: list[ServiceBusMessage] = []
    for number in range(200):
        first += [order_message(number)] * (2 if number < 30 else 1)  # 0-29: two copies, side by side
        if number % 60 == 59:
            message_id = list(INVALID)[number // 60]
            first.append(ServiceBusMessage(INVALID[message_id][0], message_id=message_id))
    later = [order_message(number) for number in [*range(200, 240), *range(30, 60), *range(10)]]
    held_by_both: set[str] = set()
    watching = asyncio.Event()

    async with two_listeners(servicebus, tmp_path) as listeners:
        watcher = asyncio.create_task(watch_ids_held_by_both(servicebus, held_by_both, watching))
        started = time.monotonic()
        await send(orders_sender, first)
        await eventually(lambda: servicebus.stats().get("completed", 0) >= 100, timeout=30, what="100 completed")
        await send(orders_sender, later)
        await eventually(lambda: settled_everything(servicebus, len(first) + len(later)), timeout=40,
                         what="every message settled")
        elapsed = time.monotonic() - started
        watching.set()
        await watcher

    stats = servicebus.stats()
    assert (stats["completed"], stats["dead_lettered"]) == (len(first) + len(later) - len(INVALID), len(INVALID))
    assert "abandoned" not in stats and "lock_expired" not in stats
    assert_one_order_per_message_id(tmp_path, range(240), listeners)
    await assert_dead_letters_are_exactly_the_invalid_ones(servicebus, dead_letters, listeners)

    completed = [len(listener.settled("completed")) for listener in listeners]
    assert sum(completed) == stats["completed"]
    assert min(completed) >= stats["completed"] // 4, f"one listener did little of the work: {completed}"
    raced = split_pairs(listeners, [f"order-{number}" for number in range(30)])
    assert len(raced) >= 5, f"only {len(raced)} of the 30 pairs sent side by side went one copy to each listener"
    assert held_by_both, "the broker never showed one message id locked by both listeners at once"
    assert all(listener.process.returncode == 0 for listener in listeners)
    total = len(first) + len(later)
    report_figure(f"servicebus, two listener processes: {total} messages in {elapsed:.1f}s "
                  f"({total / elapsed:.0f} msg/s), completed {completed[0]} / {completed[1]}; of 30 pairs sent side "
                  f"by side {len(raced)} went one copy to each, {len(held_by_both)} ids seen locked by both at once")


async def test_a_listener_killed_while_holding_messages_loses_none_and_doubles_none(
        empty_servicebus, orders_sender, tmp_path, report_figure):
    servicebus = empty_servicebus
    count = 240
    async with two_listeners(servicebus, tmp_path) as (doomed, survivor):
        await send(orders_sender, [order_message(number) for number in range(count)], batch=60)
        await eventually(lambda: servicebus.stats().get("completed", 0) >= 60, timeout=30, what="60 completed")
        frozen_holding = await freeze_while_holding_messages(servicebus, doomed, at_least=3)
        doomed.process.kill()  # SIGKILL: no drain, no abandon; its locks stay until they expire
        killed_at = time.time()
        await eventually(lambda: list(servicebus.receivers(ORDERS)) == [survivor.receiver],
                         what="the broker seeing the killed listener's link gone")
        held = set(servicebus.locked_message_ids().get(doomed.receiver, []))  # no lock can go to it any more
        assert held >= frozen_holding
        await eventually(lambda: settled_everything(servicebus, count), timeout=40, what="every message settled")

    stats = servicebus.stats()
    assert stats["lock_expired"] == len(held) and "abandoned" not in stats and "dead_lettered" not in stats
    redelivered = {entry["message_id"]: entry for entry in survivor.settled("completed") if entry["delivery_count"]}
    assert set(redelivered) == held
    assert all(entry["delivery_count"] == 1 for entry in redelivered.values())
    assert_one_order_per_message_id(tmp_path, range(count), [doomed, survivor])
    assert servicebus.counts()[f"{ORDERS}/$deadletterqueue"] == 0
    assert survivor.process.returncode == 0

    redelivered_after = max(when(entry) for entry in redelivered.values()) - killed_at
    assert redelivered_after <= LOCK_SECONDS + 5
    accepted_by_doomed = {entry["order_id"] for entry in doomed.entries() if entry["message"] == "order accepted"}
    stored_before_death = sum(entry["order_id"] in accepted_by_doomed for entry in redelivered.values())
    report_figure(f"servicebus, a listener SIGKILLed holding {len(held)} locked message(s): all redelivered to the "
                  f"other and completed within {redelivered_after:.1f}s of the kill (lock {LOCK_SECONDS:.0f}s); "
                  f"{stored_before_death} already stored by the killed one, answered from the idempotency key")
