"""The HTTP clients against a real uvicorn server serving `downstream_routes` over the embedded SQLite services."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from fulfillment.adapters.http_services import UnexpectedResponse
from fulfillment.adapters.sqlite_services import (
    EmbeddedServices,
    FaultInjector,
    SqliteInventory,
    SqlitePayments,
    SqliteShipping,
)
from fulfillment.domain import OrderItem, StepRefused, TransientFault
from gateway.downstream import downstream_routes
from tests.downstream_clients import Clients

DEFAULT_STOCK = 100
CREDIT_LIMIT = Decimal("5000.00")
CUSTOMER = "customer-1"


def item(product_id: str, quantity: int = 1, unit_price: str = "49.31") -> OrderItem:
    return OrderItem(product_id, f"name of {product_id}", quantity, Decimal(unit_price))


def new_order_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Embedded:
    inventory: SqliteInventory
    payments: SqlitePayments
    shipping: SqliteShipping

    def app(self) -> Starlette:
        return Starlette(routes=downstream_routes(self.inventory, self.payments, self.shipping))


@asynccontextmanager
async def embedded_services(directory: Path, fault_rate: float) -> AsyncIterator[Embedded]:
    services = EmbeddedServices(directory / "services.db", FaultInjector(fault_rate, random.Random(7)))
    try:
        yield Embedded(SqliteInventory(services, DEFAULT_STOCK), SqlitePayments(services, CREDIT_LIMIT),
                       SqliteShipping(services))
    finally:
        await services.close()


@asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    """Runs `app` on a real uvicorn server at a free local port, in this event loop; yields its URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the server did not start"
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def connected(server_url: str, timeout: float = 5.0) -> AsyncIterator[Clients]:
    clients = Clients.of(server_url, timeout)
    try:
        yield clients
    finally:
        await clients.aclose()


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[Embedded]:
    async with embedded_services(tmp_path, fault_rate=0) as services:
        yield services


@pytest.fixture
async def server_url(embedded: Embedded) -> AsyncIterator[str]:
    async with serving(embedded.app()) as url:
        yield url


@pytest.fixture
async def clients(server_url: str) -> AsyncIterator[Clients]:
    async with connected(server_url) as clients:
        yield clients


# --- inventory -----------------------------------------------------------------------------------


async def test_reserving_twice_returns_the_same_reservation_and_takes_the_stock_once(clients: Clients):
    order_id = new_order_id()
    items = [item("SKU-1", 3), item("SKU-1", 2), item("SKU-2", 1)]

    first = await clients.inventory.reserve(order_id, items)
    second = await clients.inventory.reserve(order_id, items)

    assert first == second
    assert first.startswith("res-")
    assert await clients.inventory.available("SKU-1") == DEFAULT_STOCK - 5
    assert await clients.inventory.available("SKU-2") == DEFAULT_STOCK - 1


async def test_releasing_twice_returns_the_units_once(clients: Clients):
    order_id = new_order_id()
    await clients.inventory.reserve(order_id, [item("SKU-1", 4)])

    assert await clients.inventory.release(order_id) is True
    assert await clients.inventory.release(order_id) is False
    assert await clients.inventory.available("SKU-1") == DEFAULT_STOCK


async def test_releasing_an_order_that_reserved_nothing_releases_nothing(clients: Clients):
    assert await clients.inventory.release(new_order_id()) is False


async def test_reserving_more_than_available_is_refused_out_of_stock_and_reserves_nothing(clients: Clients):
    await clients.inventory.set_stock("SKU-1", 2)

    with pytest.raises(StepRefused) as refused:
        await clients.inventory.reserve(new_order_id(), [item("SKU-1", 3), item("SKU-2", 1)])

    assert refused.value.code == "OutOfStock"
    assert "SKU-1: 3 wanted, 2 available" in refused.value.detail
    assert await clients.inventory.available("SKU-1") == 2
    assert await clients.inventory.available("SKU-2") == DEFAULT_STOCK


async def test_concurrent_reservations_over_http_never_oversell(clients: Clients):
    await clients.inventory.set_stock("SKU-1", 5)

    async def reserve_one() -> bool:
        try:
            await clients.inventory.reserve(new_order_id(), [item("SKU-1")])
            return True
        except StepRefused:
            return False

    outcomes = await asyncio.gather(*(reserve_one() for _ in range(10)))

    assert outcomes.count(True) == 5
    assert await clients.inventory.available("SKU-1") == 0


async def test_a_product_id_that_needs_percent_encoding_names_that_product(clients: Clients, embedded: Embedded):
    await clients.inventory.set_stock("box/large #2?", 7)

    assert await embedded.inventory.available("box/large #2?") == 7
    assert await clients.inventory.available("box/large #2?") == 7


# --- payments ------------------------------------------------------------------------------------


async def test_a_charge_above_the_credit_limit_is_declined_and_nothing_is_charged(clients: Clients,
                                                                                    embedded: Embedded):
    order_id = new_order_id()

    with pytest.raises(StepRefused) as refused:
        await clients.payments.charge(order_id, CUSTOMER, Decimal("5000.01"))

    assert refused.value.code == "PaymentDeclined"
    assert "5000.01" in refused.value.detail
    assert await embedded.payments.ledger(order_id) == []


async def test_a_charge_of_exactly_the_credit_limit_is_accepted(clients: Clients):
    assert (await clients.payments.charge(new_order_id(), CUSTOMER, CREDIT_LIMIT)).startswith("txn-")


async def test_charging_twice_records_one_charge_of_the_exact_amount(clients: Clients, embedded: Embedded):
    order_id = new_order_id()

    first = await clients.payments.charge(order_id, CUSTOMER, Decimal("149.93"))
    second = await clients.payments.charge(order_id, CUSTOMER, Decimal("149.93"))

    assert first == second
    assert await embedded.payments.ledger(order_id) == [("charge", Decimal("149.93"))]


async def test_an_amount_in_exponent_notation_is_sent_in_plain_notation(clients: Clients, embedded: Embedded):
    order_id = new_order_id()

    await clients.payments.charge(order_id, CUSTOMER, Decimal("1E+2"))

    assert await embedded.payments.ledger(order_id) == [("charge", Decimal("100"))]


async def test_refunding_twice_records_one_refund(clients: Clients, embedded: Embedded):
    order_id = new_order_id()
    await clients.payments.charge(order_id, CUSTOMER, Decimal("20.50"))

    assert await clients.payments.refund(order_id) is True
    assert await clients.payments.refund(order_id) is False
    assert await embedded.payments.ledger(order_id) == [("charge", Decimal("20.50")), ("refund", Decimal("20.50"))]


async def test_refunding_an_order_that_was_never_charged_refunds_nothing(clients: Clients, embedded: Embedded):
    order_id = new_order_id()

    assert await clients.payments.refund(order_id) is False
    assert await embedded.payments.ledger(order_id) == []


# --- shipping ------------------------------------------------------------------------------------


async def test_an_order_with_a_hazmat_product_is_rejected_by_shipping(clients: Clients):
    with pytest.raises(StepRefused) as refused:
        await clients.shipping.create_shipment(new_order_id(), CUSTOMER, [item("SKU-1"), item("hazmat-acid")])

    assert refused.value.code == "ShipmentRejected"
    assert "hazmat-acid" in refused.value.detail


async def test_shipping_twice_returns_the_same_tracking_id(clients: Clients):
    order_id = new_order_id()

    first = await clients.shipping.create_shipment(order_id, CUSTOMER, [item("SKU-1", 2)])
    second = await clients.shipping.create_shipment(order_id, CUSTOMER, [item("SKU-1", 2)])

    assert first == second
    assert first.startswith("trk-")


# --- transient faults ----------------------------------------------------------------------------

CALLS_THAT_INJECT_FAULTS = {
    "reserve": lambda c: c.inventory.reserve("order-1", [item("SKU-1")]),
    "release": lambda c: c.inventory.release("order-1"),
    "charge": lambda c: c.payments.charge("order-1", CUSTOMER, Decimal("10.00")),
    "refund": lambda c: c.payments.refund("order-1"),
    "create_shipment": lambda c: c.shipping.create_shipment("order-1", CUSTOMER, [item("SKU-1")]),
}


@pytest.mark.parametrize("call", CALLS_THAT_INJECT_FAULTS.values(), ids=CALLS_THAT_INJECT_FAULTS.keys())
async def test_an_injected_transient_fault_is_answered_503_and_raised_as_a_transient_fault(tmp_path: Path, call):
    async with (embedded_services(tmp_path, fault_rate=0.999) as services, serving(services.app()) as url,
                connected(url) as clients):
        with pytest.raises(TransientFault, match="503.*injected transient fault"):
            await call(clients)

        assert await services.inventory.available("SKU-1") == DEFAULT_STOCK
        assert await services.payments.ledger("order-1") == []


async def test_a_server_that_went_down_is_a_transient_fault(embedded: Embedded):
    async with serving(embedded.app()) as url:
        clients = Clients.of(url)
        await clients.inventory.available("SKU-1")  # leaves a pooled connection to the server about to stop
    try:
        with pytest.raises(TransientFault, match=f"PUT {url}/inventory/reservations/"):
            await clients.inventory.reserve(new_order_id(), [item("SKU-1")])
        with pytest.raises(TransientFault, match="ConnectError"):
            await clients.payments.refund(new_order_id())
    finally:
        await clients.aclose()


async def test_a_server_that_does_not_answer_in_time_is_a_transient_fault():
    accepted: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()

    async with await asyncio.start_server(never_answer, "127.0.0.1", 0) as silent:
        port = silent.sockets[0].getsockname()[1]
        async with connected(f"http://127.0.0.1:{port}", timeout=0.2) as clients:
            with pytest.raises(TransientFault, match="ReadTimeout"):
                await clients.payments.charge(new_order_id(), CUSTOMER, Decimal("10.00"))
        for writer in accepted:
            writer.close()
            await writer.wait_closed()


# --- answers outside the contract ----------------------------------------------------------------


async def test_an_amount_with_fractions_of_a_cent_is_rejected_as_a_plain_error_not_retried(clients: Clients):
    with pytest.raises(UnexpectedResponse, match="400.*amount") as error:
        await clients.payments.charge(new_order_id(), CUSTOMER, Decimal("10.005"))

    assert not isinstance(error.value, TransientFault)


async def test_a_wrong_base_url_is_a_plain_error_not_a_transient_fault(server_url: str):
    async with connected(f"{server_url}/no-such-service") as clients:
        with pytest.raises(UnexpectedResponse, match="404"):
            await clients.inventory.release(new_order_id())


# --- input validation ----------------------------------------------------------------------------

VALID_ITEM = {"productId": "SKU-1", "productName": "Widget", "quantity": 1, "unitPrice": "49.31"}
BAD_REQUESTS = {
    "not JSON": ("PUT", "/payments/charges/o-1", b"{not json", "body"),
    "not an object": ("PUT", "/payments/charges/o-1", b"[1, 2]", "body"),
    "amount as a number": ("PUT", "/payments/charges/o-1", {"customerId": CUSTOMER, "amount": 149.93}, "amount"),
    "amount with a fraction of a cent": ("PUT", "/payments/charges/o-1",
                                         {"customerId": CUSTOMER, "amount": "1.001"}, "amount"),
    "negative amount": ("PUT", "/payments/charges/o-1", {"customerId": CUSTOMER, "amount": "-5"}, "amount"),
    "missing customer": ("PUT", "/payments/charges/o-1", {"amount": "5"}, "customerId"),
    "blank customer": ("PUT", "/shipping/shipments/o-1", {"customerId": " ", "items": [VALID_ITEM]}, "customerId"),
    "no items": ("PUT", "/inventory/reservations/o-1", {"items": []}, "items"),
    "zero quantity": ("PUT", "/inventory/reservations/o-1", {"items": [{**VALID_ITEM, "quantity": 0}]},
                      "items[0].quantity"),
    "fractional quantity": ("PUT", "/inventory/reservations/o-1",
                            {"items": [VALID_ITEM, {**VALID_ITEM, "quantity": 1.5}]}, "items[1].quantity"),
    "blank product id": ("PUT", "/shipping/shipments/o-1",
                         {"customerId": CUSTOMER, "items": [{**VALID_ITEM, "productId": ""}]}, "items[0].productId"),
    "negative stock": ("PUT", "/inventory/stock/SKU-1", {"quantity": -1}, "quantity"),
    "stock as a string": ("PUT", "/inventory/stock/SKU-1", {"quantity": "3"}, "quantity"),
}


@pytest.mark.parametrize(("method", "path", "body", "field"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_bad_input_is_answered_400_naming_the_field_and_why(server_url: str, embedded: Embedded,
                                                                   method: str, path: str, body, field: str):
    content = body if isinstance(body, bytes) else None
    async with httpx.AsyncClient(base_url=server_url) as http:
        response = await http.request(method, path, content=content, json=None if content else body)

    assert response.status_code == 400
    answer = response.json()
    assert answer["code"] == "InvalidRequest"
    assert [error["field"] for error in answer["errors"]] == [field]
    assert all(error["message"] for error in answer["errors"])
    assert "Traceback" not in response.text
    assert await embedded.inventory.available("SKU-1") == DEFAULT_STOCK
    assert await embedded.payments.ledger("o-1") == []
