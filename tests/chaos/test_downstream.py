"""The chaos downstream, driven by the project's own HTTP clients: it keeps the contract of
`docs/downstream-http.md`, injects each fault as specified, and its audit finds each kind of violation."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import httpx
import pytest

from fulfillment.adapters.http_services import UnexpectedResponse
from fulfillment.domain import OrderItem, StepRefused, TransientFault
from tests.chaos.downstream import ChaosDownstream
from tests.chaos.faults import FaultPlan, Faults, Injection
from tests.chaos.ledger import Effect, Ledger, audit, effect_id_of, order_of
from tests.downstream_clients import Clients

DEFAULT_STOCK = 1000
CREDIT_LIMIT = Decimal("5000.00")
CLIENT_TIMEOUT = 0.25  # the lost-answer tests' clients; a "late" answer comes after twice this
CUSTOMER = "customer-1"


def item(product_id: str, quantity: int = 1, unit_price: str = "49.31") -> OrderItem:
    return OrderItem(product_id, f"name of {product_id}", quantity, Decimal(unit_price))


def new_order_id() -> str:
    return str(uuid.uuid4())


def kinds(downstream: ChaosDownstream, effect_id: str) -> list[str]:
    return [effect.kind for effect in downstream.effects() if effect.effect_id == effect_id]


@pytest.fixture(scope="module")
def running() -> Iterator[ChaosDownstream]:
    with ChaosDownstream(default_stock=DEFAULT_STOCK, credit_limit=CREDIT_LIMIT, seed=7,
                         client_timeout=CLIENT_TIMEOUT) as downstream:
        yield downstream


@pytest.fixture
def downstream(running: ChaosDownstream) -> ChaosDownstream:
    running.reset()
    return running


@pytest.fixture
async def clients(downstream: ChaosDownstream) -> AsyncIterator[Clients]:
    clients = Clients.of(downstream.base_url, timeout=5.0)
    yield clients
    await clients.aclose()


@pytest.fixture
async def impatient(downstream: ChaosDownstream) -> AsyncIterator[Clients]:
    """Clients that time out at CLIENT_TIMEOUT, as the downstream was told."""
    clients = Clients.of(downstream.base_url, timeout=CLIENT_TIMEOUT)
    yield clients
    await clients.aclose()


# --- effect ids ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("effect_id", "order_and_attempt"), [
    ("o-1", ("o-1", 1)),
    ("o-1.attempt-2", ("o-1", 2)),
    ("o-1.attempt-12", ("o-1", 12)),
    ("o-1.attempt-1", ("o-1.attempt-1", 1)),
    ("o-1.attempt-02", ("o-1.attempt-02", 1)),
    ("a.attempt-2.attempt-3", ("a.attempt-2", 3)),
])
def test_an_effect_id_names_its_order_and_attempt(effect_id: str, order_and_attempt: tuple[str, int]):
    assert order_of(effect_id) == order_and_attempt
    assert effect_id_of(*order_and_attempt) == effect_id


# --- inventory -----------------------------------------------------------------------------------

async def test_reserving_twice_returns_the_first_reservation_and_takes_the_stock_once(clients: Clients,
                                                                                       downstream: ChaosDownstream):
    order_id = new_order_id()

    first = await clients.inventory.reserve(order_id, [item("SKU-1", 3), item("SKU-1", 2), item("SKU-2")])
    second = await clients.inventory.reserve(order_id, [item("SKU-3", 9)])  # the body of a repeat is not compared

    assert first == second and first.startswith("res-")
    assert await clients.inventory.available("SKU-1") == DEFAULT_STOCK - 5
    assert await clients.inventory.available("SKU-2") == DEFAULT_STOCK - 1
    assert await clients.inventory.available("SKU-3") == DEFAULT_STOCK
    assert kinds(downstream, order_id) == ["reserve"]


async def test_a_release_answers_true_once_and_a_reserve_after_it_answers_the_first_reservation_and_does_nothing(
        clients: Clients, downstream: ChaosDownstream):
    order_id = new_order_id()
    reservation_id = await clients.inventory.reserve(order_id, [item("SKU-1", 4)])

    assert await clients.inventory.release(order_id) is True
    assert await clients.inventory.release(order_id) is False
    assert await clients.inventory.reserve(order_id, [item("SKU-1", 4)]) == reservation_id
    assert await clients.inventory.release(order_id) is False
    assert await clients.inventory.available("SKU-1") == DEFAULT_STOCK
    assert kinds(downstream, order_id) == ["reserve", "release"]


async def test_releasing_an_order_that_reserved_nothing_releases_nothing(clients: Clients,
                                                                         downstream: ChaosDownstream):
    assert await clients.inventory.release(new_order_id()) is False
    assert downstream.effects() == []


async def test_reserving_more_than_available_is_refused_out_of_stock_and_reserves_nothing(
        clients: Clients, downstream: ChaosDownstream):
    await clients.inventory.set_stock("SKU-1", 2)

    with pytest.raises(StepRefused) as refused:
        await clients.inventory.reserve(new_order_id(), [item("SKU-1", 3), item("SKU-2")])

    assert refused.value.code == "OutOfStock"
    assert refused.value.detail == "SKU-1: 3 wanted, 2 available"
    assert await clients.inventory.available("SKU-1") == 2
    assert await clients.inventory.available("SKU-2") == DEFAULT_STOCK
    assert downstream.effects() == []


async def test_a_product_id_that_needs_percent_encoding_names_that_product(clients: Clients,
                                                                          downstream: ChaosDownstream):
    await clients.inventory.set_stock("box/large #2?", 7)

    assert downstream.inventory.available("box/large #2?") == 7
    assert await clients.inventory.available("box/large #2?") == 7


# --- payments ------------------------------------------------------------------------------------

async def test_a_charge_above_the_credit_limit_is_declined_and_one_at_the_limit_is_accepted(
        clients: Clients, downstream: ChaosDownstream):
    declined, accepted = new_order_id(), new_order_id()

    with pytest.raises(StepRefused) as refused:
        await clients.payments.charge(declined, CUSTOMER, Decimal("5000.01"))

    assert (refused.value.code, refused.value.detail) == (
        "PaymentDeclined", "5000.01 exceeds the credit limit of 5000.00 for customer-1")
    assert (await clients.payments.charge(accepted, CUSTOMER, CREDIT_LIMIT)).startswith("txn-")
    assert [(e.kind, e.effect_id, e.amount) for e in downstream.effects()] == [("charge", accepted, CREDIT_LIMIT)]


async def test_a_refund_answers_true_once_and_a_charge_after_it_answers_the_first_transaction_and_charges_nothing(
        clients: Clients, downstream: ChaosDownstream):
    order_id = new_order_id()
    transaction_id = await clients.payments.charge(order_id, CUSTOMER, Decimal("20.50"))

    assert await clients.payments.charge(order_id, CUSTOMER, Decimal("99")) == transaction_id
    assert await clients.payments.refund(order_id) is True
    assert await clients.payments.refund(order_id) is False
    assert await clients.payments.charge(order_id, CUSTOMER, Decimal("20.50")) == transaction_id
    assert [(e.kind, e.amount) for e in downstream.effects()] == [("charge", Decimal("20.50")),
                                                                  ("refund", Decimal("20.50"))]


async def test_refunding_an_order_that_was_never_charged_refunds_nothing(clients: Clients,
                                                                         downstream: ChaosDownstream):
    assert await clients.payments.refund(new_order_id()) is False
    assert downstream.effects() == []


# --- shipping ------------------------------------------------------------------------------------

async def test_shipping_twice_returns_the_first_tracking_id_and_ships_once(clients: Clients,
                                                                           downstream: ChaosDownstream):
    order_id = new_order_id()

    first = await clients.shipping.create_shipment(order_id, CUSTOMER, [item("SKU-1", 2)])
    second = await clients.shipping.create_shipment(order_id, CUSTOMER, [item("SKU-1", 2)])

    assert first == second and first.startswith("trk-")
    assert kinds(downstream, order_id) == ["ship"]


async def test_an_order_with_a_hazmat_product_is_rejected_and_not_shipped(clients: Clients,
                                                                          downstream: ChaosDownstream):
    with pytest.raises(StepRefused) as refused:
        await clients.shipping.create_shipment(new_order_id(), CUSTOMER, [item("SKU-1"), item("hazmat-acid")])

    assert (refused.value.code, refused.value.detail) == ("ShipmentRejected", "the carrier refuses hazmat-acid")
    assert downstream.effects() == []


# --- input validation ----------------------------------------------------------------------------

VALID_ITEM = {"productId": "SKU-1", "productName": "Widget", "quantity": 1, "unitPrice": "49.31"}
BAD_REQUESTS = {
    "not JSON": ("PUT", "/payments/charges/o-1", b"{not json", ["body"]),
    "not an object": ("PUT", "/payments/charges/o-1", b"[1, 2]", ["body"]),
    "amount as a number": ("PUT", "/payments/charges/o-1", {"customerId": CUSTOMER, "amount": 149.93}, ["amount"]),
    "amount with a fraction of a cent": ("PUT", "/payments/charges/o-1",
                                         {"customerId": CUSTOMER, "amount": "1.001"}, ["amount"]),
    "amount in exponent notation": ("PUT", "/payments/charges/o-1", {"customerId": CUSTOMER, "amount": "1E+2"},
                                    ["amount"]),
    "negative amount": ("PUT", "/payments/charges/o-1", {"customerId": CUSTOMER, "amount": "-5"}, ["amount"]),
    "missing customer": ("PUT", "/payments/charges/o-1", {"amount": "5"}, ["customerId"]),
    "empty charge": ("PUT", "/payments/charges/o-1", {}, ["customerId", "amount"]),
    "blank customer": ("PUT", "/shipping/shipments/o-1", {"customerId": " ", "items": [VALID_ITEM]}, ["customerId"]),
    "no items": ("PUT", "/inventory/reservations/o-1", {"items": []}, ["items"]),
    "101 items": ("PUT", "/inventory/reservations/o-1", {"items": [VALID_ITEM] * 101}, ["items"]),
    "zero quantity": ("PUT", "/inventory/reservations/o-1", {"items": [{**VALID_ITEM, "quantity": 0}]},
                      ["items[0].quantity"]),
    "fractional quantity": ("PUT", "/inventory/reservations/o-1",
                            {"items": [VALID_ITEM, {**VALID_ITEM, "quantity": 2.0}]}, ["items[1].quantity"]),
    "boolean quantity": ("PUT", "/inventory/reservations/o-1", {"items": [{**VALID_ITEM, "quantity": True}]},
                         ["items[0].quantity"]),
    "blank product id": ("PUT", "/shipping/shipments/o-1",
                         {"customerId": CUSTOMER, "items": [{**VALID_ITEM, "productId": ""}]},
                         ["items[0].productId"]),
    "negative stock": ("PUT", "/inventory/stock/SKU-1", {"quantity": -1}, ["quantity"]),
    "stock as a string": ("PUT", "/inventory/stock/SKU-1", {"quantity": "3"}, ["quantity"]),
}


@pytest.mark.parametrize(("method", "path", "body", "fields"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_bad_input_is_answered_400_naming_each_field_and_why(downstream: ChaosDownstream, method: str,
                                                                   path: str, body, fields: list[str]):
    content = body if isinstance(body, bytes) else None
    async with httpx.AsyncClient(base_url=downstream.base_url) as http:
        response = await http.request(method, path, content=content, json=None if content else body)

    assert response.status_code == 400
    answer = response.json()
    assert answer["code"] == "InvalidRequest" and answer["detail"]
    assert [error["field"] for error in answer["errors"]] == fields
    assert all(error["message"] for error in answer["errors"])
    assert downstream.effects() == []
    assert downstream.inventory.available("SKU-1") == DEFAULT_STOCK


async def test_a_400_is_a_plain_error_in_the_client_not_a_transient_fault(clients: Clients):
    with pytest.raises(UnexpectedResponse, match="400.*amount") as error:
        await clients.payments.charge(new_order_id(), CUSTOMER, Decimal("10.005"))

    assert not isinstance(error.value, TransientFault)


def test_it_answers_other_processes_while_the_test_thread_is_blocked(downstream: ChaosDownstream):
    script = "import httpx, sys; print(httpx.get(sys.argv[1]).json()['available'])"
    result = subprocess.run([sys.executable, "-c", script, f"{downstream.inventory_url}/stock/SKU-9"],
                            capture_output=True, text=True, timeout=30)

    assert result.stdout.strip() == str(DEFAULT_STOCK), result.stderr


# --- faults --------------------------------------------------------------------------------------

EFFECT_CALLS = {
    "reserve": lambda c, order_id: c.inventory.reserve(order_id, [item("SKU-1")]),
    "release": lambda c, order_id: c.inventory.release(order_id),
    "charge": lambda c, order_id: c.payments.charge(order_id, CUSTOMER, Decimal("10.00")),
    "refund": lambda c, order_id: c.payments.refund(order_id),
    "ship": lambda c, order_id: c.shipping.create_shipment(order_id, CUSTOMER, [item("SKU-1")]),
}
UNDOES = {"release": "reserve", "refund": "charge"}


@pytest.mark.parametrize("kind", EFFECT_CALLS)
async def test_an_unavailable_route_answers_503_and_applies_nothing(clients: Clients, downstream: ChaosDownstream,
                                                                    kind: str):
    order_id = new_order_id()
    if kind in UNDOES:
        await EFFECT_CALLS[UNDOES[kind]](clients, order_id)
    downstream.set_faults(kind, unavailable_rate=1)

    with pytest.raises(TransientFault, match="503"):
        await EFFECT_CALLS[kind](clients, order_id)

    assert kind not in kinds(downstream, order_id)
    assert downstream.figures()["unavailable"] == downstream.figures()[f"unavailable.{kind}"] == 1


async def test_faults_set_for_all_routes_reach_every_route_and_clearing_them_ends_them(clients: Clients,
                                                                                      downstream: ChaosDownstream):
    downstream.set_faults(unavailable_rate=1)
    for call in EFFECT_CALLS.values():
        with pytest.raises(TransientFault, match="503"):
            await call(clients, "o-1")
    with pytest.raises(TransientFault, match="503"):
        await clients.inventory.available("SKU-1")

    downstream.clear_faults()

    assert await clients.inventory.available("SKU-1") == DEFAULT_STOCK
    assert downstream.effects() == []
    assert downstream.figures()["unavailable"] == len(EFFECT_CALLS) + 1


async def test_a_plan_for_one_route_leaves_the_others_alone(clients: Clients, downstream: ChaosDownstream):
    downstream.set_faults("charge", unavailable_rate=1)

    assert (await clients.inventory.reserve("o-1", [item("SKU-1")])).startswith("res-")
    with pytest.raises(TransientFault):
        await clients.payments.charge("o-1", CUSTOMER, Decimal("1"))


@pytest.mark.parametrize("mode", ["late", "drop"])
@pytest.mark.parametrize("kind", EFFECT_CALLS)
async def test_a_lost_answer_is_a_transient_fault_in_the_client_although_the_effect_happened(
        impatient: Clients, downstream: ChaosDownstream, kind: str, mode: str):
    order_id = new_order_id()
    if kind in UNDOES:
        await EFFECT_CALLS[UNDOES[kind]](impatient, order_id)
    downstream.set_faults(kind, lost_answer_rate=1, lost_answer_mode=mode)

    with pytest.raises(TransientFault, match="ReadTimeout" if mode == "late" else "RemoteProtocolError"):
        await EFFECT_CALLS[kind](impatient, order_id)

    assert kinds(downstream, order_id)[-1] == kind
    assert downstream.figures()["lost_answers"] == 1


async def test_a_retry_after_a_lost_answer_gets_the_first_answer_and_applies_nothing_more(
        impatient: Clients, downstream: ChaosDownstream):
    order_id = new_order_id()
    downstream.set_faults("reserve", lost_answer_rate=1, lost_answer_mode="drop")
    with pytest.raises(TransientFault):
        await impatient.inventory.reserve(order_id, [item("SKU-1", 3)])
    downstream.clear_faults()

    assert (await impatient.inventory.reserve(order_id, [item("SKU-1", 3)])).startswith("res-")
    assert kinds(downstream, order_id) == ["reserve"]
    assert downstream.inventory.available("SKU-1") == DEFAULT_STOCK - 3


async def test_a_slow_answer_comes_after_slow_seconds_with_the_effect_applied(clients: Clients,
                                                                             downstream: ChaosDownstream):
    order_id = new_order_id()
    downstream.set_faults("ship", slow_rate=1, slow_seconds=0.3)

    started = time.monotonic()
    tracking_id = await clients.shipping.create_shipment(order_id, CUSTOMER, [item("SKU-1")])

    assert time.monotonic() - started >= 0.3
    assert tracking_id.startswith("trk-")
    assert kinds(downstream, order_id) == ["ship"]
    assert downstream.figures()["slow"] == downstream.figures()["slow.ship"] == 1


def test_the_same_seed_injects_the_same_faults_in_the_same_order():
    plan = FaultPlan(unavailable_rate=0.25, lost_answer_rate=0.25, slow_rate=0.25)
    first, second = Faults(seed=3), Faults(seed=3)
    for faults in (first, second):
        faults.set(plan)

    draws = [first.draw("charge")[0] for _ in range(200)]

    assert draws == [second.draw("charge")[0] for _ in range(200)]
    assert set(draws) == {*Injection, None}
    assert first.figures()["requests"] == 200
    assert sum(first.figures()[injection.value] for injection in Injection) == sum(d is not None for d in draws)


@pytest.mark.parametrize("plan", [dict(unavailable_rate=1.5), dict(unavailable_rate=0.6, lost_answer_rate=0.6),
                                  dict(slow_seconds=-1), dict(lost_answer_mode="never")])
def test_an_impossible_fault_plan_is_refused(plan: dict):
    with pytest.raises(ValueError):
        FaultPlan(**plan)


def test_faults_for_an_unknown_route_kind_are_refused(downstream: ChaosDownstream):
    with pytest.raises(ValueError, match="unknown route kinds"):
        downstream.set_faults("reserv", unavailable_rate=1)


# --- the audit -----------------------------------------------------------------------------------

def ledger_of(*entries: str) -> list[Effect]:
    """Entries such as "reserve A", "charge A.attempt-2 20.00"."""
    ledger = Ledger()
    for entry in entries:
        kind, effect_id, *amount = entry.split()
        ledger.record(kind, effect_id, Decimal(amount[0]) if amount else None)
    return ledger.effects()


def test_a_clean_ledger_has_no_violations():
    effects = ledger_of(
        "reserve A", "charge A 20", "refund A", "release A",  # attempt 1 compensated
        "reserve A.attempt-2", "charge A.attempt-2 20", "ship A.attempt-2",  # attempt 2 completed
        "reserve B", "release B",  # failed at payment
        "reserve C", "charge C 5", "refund C", "release C",  # cancelled
        "reserve E", "charge E 7",  # still processing
    )
    expected = {"A": ("completed", Decimal("20.00")), "B": ("failed", Decimal(9)), "C": ("cancelled", Decimal(5)),
                "D": ("failed", Decimal(1)), "E": ("processing", Decimal(7))}

    assert audit(effects, expected) == []


async def test_a_ledger_written_over_http_by_a_well_behaved_saga_audits_clean(clients: Clients,
                                                                              downstream: ChaosDownstream):
    completed, failed = new_order_id(), new_order_id()
    retried = effect_id_of(completed, 2)
    for effect_id in (completed, retried):
        await clients.inventory.reserve(effect_id, [item("SKU-1", 2, "10.00")])
        await clients.payments.charge(effect_id, CUSTOMER, Decimal("20.00"))
    await clients.payments.refund(completed)
    await clients.inventory.release(completed)
    await clients.shipping.create_shipment(retried, CUSTOMER, [item("SKU-1", 2, "10.00")])
    await clients.inventory.reserve(failed, [item("hazmat-acid")])
    await clients.payments.charge(failed, CUSTOMER, Decimal("49.31"))
    with pytest.raises(StepRefused):
        await clients.shipping.create_shipment(failed, CUSTOMER, [item("hazmat-acid")])
    await clients.payments.refund(failed)
    await clients.inventory.release(failed)

    assert downstream.audit({completed: ("completed", Decimal("20.00")), failed: ("failed", Decimal("49.31"))}) == []
    assert {name: downstream.figures()[f"applied.{name}"] for name in ("reserve", "charge", "ship")} == {
        "reserve": 3, "charge": 3, "ship": 1}


COMPLETED_20 = {"A": ("completed", Decimal("20"))}
VIOLATIONS = {
    "an effect applied twice": (["reserve A", "reserve A", "charge A 20", "ship A"], COMPLETED_20,
                                ["order A attempt 1 (A): reserve applied 2 times"]),
    "completed without a shipment": (["reserve A", "charge A 20"], COMPLETED_20,
                                     ["order A is completed, but 0 of its 1 attempts hold a reservation, a standing "
                                      "charge and a shipment (expected exactly 1)"]),
    "completed by two attempts": (["reserve A", "charge A 20", "ship A", "reserve A.attempt-2",
                                   "charge A.attempt-2 20", "ship A.attempt-2"], COMPLETED_20,
                                  ["order A is completed, but 2 of its 2 attempts hold a reservation, a standing "
                                   "charge and a shipment (expected exactly 1)"]),
    "completed with a charge other than the total": (["reserve A", "charge A 15", "ship A"], COMPLETED_20,
                                                     ["order A attempt 1 (A) has a standing charge of 15, but the "
                                                      "order's total is 20"]),
    "a superseded attempt not undone": (["reserve A", "charge A 20", "release A", "reserve A.attempt-2",
                                         "charge A.attempt-2 20", "ship A.attempt-2"], COMPLETED_20,
                                        ["order A attempt 1 (A) has a standing charge of 20, though another attempt "
                                         "completed the order"]),
    "a failed order still holding stock": (["reserve A", "charge A 20", "refund A"], {"A": ("failed", Decimal(20))},
                                           ["order A attempt 1 (A) still holds its reservation, though the order is "
                                            "failed"]),
    "a cancelled order still charged": (["reserve A.attempt-3", "release A.attempt-3", "charge A.attempt-3 20"],
                                        {"A": ("cancelled", Decimal(20))},
                                        ["order A attempt 3 (A.attempt-3) has a standing charge of 20, though the "
                                         "order is cancelled"]),
    "a failed order shipped": (["reserve A", "charge A 20", "ship A", "refund A", "release A"],
                               {"A": ("failed", Decimal(20))},
                               ["order A attempt 1 (A) was shipped, though its reservation was undone by a release",
                                "order A attempt 1 (A) was shipped, though its charge was undone by a refund",
                                "order A attempt 1 (A) was shipped, though the order is failed"]),
    "a shipment after a refund": (["reserve A", "charge A 20", "refund A", "ship A"],
                                  {"A": ("processing", Decimal(20))},
                                  ["order A attempt 1 (A) was shipped, though its charge was undone by a refund"]),
    "a shipment without a charge": (["reserve A", "ship A"], {"A": ("shipped", Decimal(20))},
                                    ["order A attempt 1 (A) was shipped without a charge"]),
    "a refund without a charge": (["refund A"], {"A": ("compensating", Decimal(20))},
                                  ["order A attempt 1 (A): a refund without a charge"]),
    "effects for an order nobody placed": (["reserve X"], {}, [
        "effects were applied for order X, which the audit was not told about"]),
}


@pytest.mark.parametrize(("entries", "expected", "violations"), VIOLATIONS.values(), ids=VIOLATIONS.keys())
def test_the_audit_reports_each_kind_of_violation(entries: list[str], expected: dict, violations: list[str]):
    assert audit(ledger_of(*entries), expected) == violations


async def test_reset_forgets_state_ledger_faults_and_figures(clients: Clients, downstream: ChaosDownstream):
    await clients.inventory.reserve("o-1", [item("SKU-1")])
    downstream.set_faults("charge", unavailable_rate=1)

    downstream.reset()

    assert downstream.effects() == []
    assert (await clients.payments.charge("o-1", CUSTOMER, Decimal("1"))).startswith("txn-")
    assert await clients.inventory.available("SKU-1") == DEFAULT_STOCK
    assert downstream.figures()["requests"] == 2
