"""Constants and waiting helpers for tests against `LocalServiceBus` (the fixtures live in `fixtures`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus.aio import ServiceBusReceiver

LOCK_SECONDS = 4.0  # short, so that lock renewal and expiry show within a test
ORDERS, ORDER_FAILURES = "orders", "order-failures"


async def receive(receiver: ServiceBusReceiver, count: int, timeout: float = 10) -> list[ServiceBusReceivedMessage]:
    """Exactly `count` messages, waiting up to `timeout` seconds for them."""
    messages: list[ServiceBusReceivedMessage] = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        messages += await receiver.receive_messages(max_message_count=count - len(messages), max_wait_time=0.5)
    assert len(messages) == count, f"received {len(messages)} of {count} messages in {timeout}s"
    return messages


async def eventually(condition: Callable[[], object], timeout: float = 10, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        await asyncio.sleep(0.05)
