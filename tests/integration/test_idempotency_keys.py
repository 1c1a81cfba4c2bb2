"""How long an idempotency key is kept is the operator's option (`OrderProcessing__IdempotencyKeyHours`)."""

from __future__ import annotations

import asyncio
import copy

import pytest

from fulfillment.bootstrap import bootstrap
from fulfillment.domain import Actor, IdempotencyKeyReused
from fulfillment.settings import Settings
from tests.conftest import SEED_ORDER

CLIENT = Actor.trusted("test-client")
KEPT_S = 1.0


@pytest.fixture
async def order_service(tmp_path):
    container = bootstrap(Settings(data_dir=tmp_path, idempotency_key_hours=KEPT_S / 3600))
    yield container.order_service
    await container.aclose()


async def test_a_key_is_kept_as_long_as_the_option_says_then_names_a_new_order(order_service):
    first = await order_service.place(copy.deepcopy(SEED_ORDER), source="test", actor=CLIENT, idempotency_key="k-1")
    other = {**copy.deepcopy(SEED_ORDER), "customerId": "cust-other"}
    with pytest.raises(IdempotencyKeyReused):
        await order_service.place(other, source="test", actor=CLIENT, idempotency_key="k-1")

    await asyncio.sleep(KEPT_S + 0.2)
    second = await order_service.place(other, source="test", actor=CLIENT, idempotency_key="k-1")

    assert second.id != first.id and second.customer_id == "cust-other"
