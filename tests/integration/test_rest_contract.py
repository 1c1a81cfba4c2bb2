"""The REST compatibility routes of contract §3, over the real app, lifespan and SQLite store."""

from __future__ import annotations

import base64
import copy
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from fulfillment.adapters.sqlite_orders import SqliteOrderRepository
from fulfillment.settings import Settings
from gateway.app import create_app

SEED_REQUEST = {
    "customerId": "cust-001",
    "items": [
        {"productId": "prod-100", "productName": "Wireless Headphones", "quantity": 2, "unitPrice": 49.99},
        {"productId": "prod-200", "productName": "USB-C Cable", "quantity": 5, "unitPrice": 9.99},
    ],
}
ORDER_KEYS = {"id", "customerId", "status", "totalAmount", "createdAt", "completedAt", "failureReason", "items",
              "manualInterventionRequired"}  # the seed sample's keys, and the operators' flag (a stuck compensation)
ITEM_KEYS = {"productId", "productName", "quantity", "unitPrice"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


def make_settings(data_dir: Path, **options) -> Settings:
    return Settings(data_dir=data_dir, prefect_api_url="http://127.0.0.1:9/api", **options)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path))) as client:
        yield client


def seed_request(**changes) -> dict:
    request = copy.deepcopy(SEED_REQUEST)
    request.update(changes)
    return request


def with_item(index: int, **changes) -> dict:
    request = seed_request()
    request["items"][index].update(changes)
    return request


def place(client: TestClient, request: dict | None = None) -> dict:
    response = client.post("/api/orders", json=request or SEED_REQUEST)
    assert response.status_code == 202, response.text
    return response.json()


def assert_error(response, status: int, code: str) -> dict:
    """Every failure is a JSON `{"error", "message"}` body with the given status, never a stack trace."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


def error_fields(body: dict) -> set[str]:
    return {error["field"] for error in body["errors"]}


# --- POST /api/orders ---------------------------------------------------------------------------


def test_the_seed_sample_is_accepted_as_a_processing_order_with_its_location(client):
    response = client.post("/api/orders", json=SEED_REQUEST)

    assert response.status_code == 202
    order = response.json()
    assert response.headers["location"] == f"/api/orders/{order['id']}"
    assert str(uuid.UUID(order["id"])) == order["id"]
    assert order["customerId"] == "cust-001"
    assert order["status"] == "processing"
    assert order["completedAt"] is None
    assert order["failureReason"] is None
    assert order["items"] == SEED_REQUEST["items"]


def test_the_order_has_exactly_the_shape_of_the_seed_sample(client):
    order = place(client)

    assert set(order) == ORDER_KEYS
    assert all(set(item) == ITEM_KEYS for item in order["items"])
    assert TIMESTAMP.match(order["createdAt"])


def test_the_total_amount_is_written_with_exact_cents(client):
    response = client.post("/api/orders", json=SEED_REQUEST)

    assert response.status_code == 202
    assert '"totalAmount":149.93' in response.text
    assert '"unitPrice":49.99' in response.text
    assert '"unitPrice":9.99' in response.text


def test_amounts_are_summed_as_decimals_not_binary_floats(client):
    """With binary floats, 0.10 + 0.20 would be written as 0.30000000000000004."""
    items = [{"productId": "p1", "productName": "n", "quantity": 1, "unitPrice": 0.10},
             {"productId": "p2", "productName": "n", "quantity": 1, "unitPrice": 0.20}]

    placed = client.post("/api/orders", json=seed_request(items=items))

    assert placed.status_code == 202, placed.text
    assert '"totalAmount":0.3,' in placed.text


def test_a_whole_amount_is_written_as_a_json_number(client):
    order = place(client, seed_request(items=[{"productId": "p", "productName": "n", "quantity": 3,
                                               "unitPrice": 10}]))

    assert order["totalAmount"] == 30
    assert isinstance(order["totalAmount"], int | float)


def test_each_order_gets_its_own_id(client):
    assert place(client)["id"] != place(client)["id"]


def test_a_json_media_type_with_parameters_is_accepted(client):
    response = client.post("/api/orders", content=json.dumps(SEED_REQUEST),
                           headers={"Content-Type": "application/json; charset=utf-8"})

    assert response.status_code == 202, response.text


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_a_body_that_is_not_declared_as_json_is_refused_with_415(client, content_type):
    response = client.post("/api/orders", content=json.dumps(SEED_REQUEST), headers={"Content-Type": content_type})

    body = assert_error(response, 415, "unsupported_media_type")
    assert content_type in body["message"]


def test_a_body_without_a_content_type_is_refused_with_415(client):
    response = client.post("/api/orders", content=json.dumps(SEED_REQUEST).encode())

    assert_error(response, 415, "unsupported_media_type")


def test_a_body_larger_than_the_limit_is_refused_with_413(tmp_path):
    large = seed_request(customerId="c" * 2048)
    with TestClient(create_app(make_settings(tmp_path, max_body_bytes=1024))) as client:
        response = client.post("/api/orders", json=large)
        listed = client.get(f"/api/orders/customer/{large['customerId']}")

    body = assert_error(response, 413, "payload_too_large")
    assert "1024" in body["message"]
    assert listed.json() == []


def test_a_chunked_body_larger_than_the_limit_is_refused_with_413(tmp_path):
    """Without a Content-Length the limit still holds: the body is counted as it streams in."""

    def chunks() -> Iterator[bytes]:
        yield b'{"customerId": "'
        for _ in range(64):
            yield b"c" * 64
        yield b'", "items": []}'

    with TestClient(create_app(make_settings(tmp_path, max_body_bytes=1024))) as client:
        response = client.post("/api/orders", content=chunks(), headers={"Content-Type": "application/json"})

    assert_error(response, 413, "payload_too_large")


def test_a_body_within_the_limit_is_accepted(tmp_path):
    with TestClient(create_app(make_settings(tmp_path, max_body_bytes=1024))) as client:
        response = client.post("/api/orders", json=SEED_REQUEST)

    assert response.status_code == 202, response.text


@pytest.mark.parametrize("body", ['{"customerId": "cust-001", "items": [', "not json", "", "{'customerId': 1}"])
def test_a_body_that_is_not_valid_json_is_refused_with_400(client, body):
    response = client.post("/api/orders", content=body, headers={"Content-Type": "application/json"})

    assert_error(response, 400, "invalid_json")


def test_a_body_nested_deeper_than_the_decoder_recurses_is_refused_with_400(client):
    body = "[" * 100_000 + "]" * 100_000

    response = client.post("/api/orders", content=body, headers={"Content-Type": "application/json"})

    assert "nested too deeply" in assert_error(response, 400, "invalid_json")["message"]


@pytest.mark.parametrize(("request_body", "field"), [
    (seed_request(customerId="cust-\ud800"), "customerId"),
    (with_item(1, productId="\udfff"), "items[1].productId"),
    (with_item(0, productName="Headphones \udc00"), "items[0].productName"),
])
def test_a_lone_surrogate_is_refused_naming_the_field_and_nothing_is_stored(client, tmp_path, request_body, field):
    body = json.dumps(request_body).encode()  # JSON may escape a lone surrogate (`"\\ud800"`); UTF-8 cannot hold one

    response = client.post("/api/orders", content=body, headers={"Content-Type": "application/json"})

    error = assert_error(response, 400, "invalid_request")
    assert error_fields(error) == {field} and "lone surrogate" in error["message"]
    assert client.get("/api/orders/customer/cust-001").json() == []


def test_a_customer_id_that_is_not_text_lists_no_orders(client):
    place(client)

    assert client.get("/api/orders/customer/%ED%A0%80").json() == []  # not UTF-8: decoded with U+FFFD, unknown


VALIDATION_CASES = {
    "empty customerId": (seed_request(customerId=""), "customerId"),
    "blank customerId": (seed_request(customerId="   "), "customerId"),
    "no items": (seed_request(items=[]), "items"),
    "101 items": (seed_request(items=[SEED_REQUEST["items"][1]] * 101), "items"),
    "quantity 0": (with_item(0, quantity=0), "items[0].quantity"),
    "negative price": (with_item(1, unitPrice=-0.01), "items[1].unitPrice"),
    "price with 3 decimals": (with_item(1, unitPrice=9.999), "items[1].unitPrice"),
    "empty productId": (with_item(0, productId=""), "items[0].productId"),
    "empty productName": (with_item(1, productName=""), "items[1].productName"),
    "missing customerId": ({"items": SEED_REQUEST["items"]}, "customerId"),
    "quantity above the maximum": (with_item(0, quantity=100_001), "items[0].quantity"),
    "price above the maximum": (with_item(0, unitPrice=1e30), "items[0].unitPrice"),
}


@pytest.mark.parametrize(("request_body", "field"), VALIDATION_CASES.values(), ids=VALIDATION_CASES.keys())
def test_an_order_that_breaks_a_rule_is_refused_with_400_naming_the_field(client, request_body, field):
    response = client.post("/api/orders", json=request_body)

    body = assert_error(response, 400, "validation_failed")
    assert field in error_fields(body)
    assert all(error["message"] for error in body["errors"])
    assert client.get(f"/api/orders/customer/{SEED_REQUEST['customerId']}").json() == []


def test_exactly_100_items_are_allowed(client):
    order = place(client, seed_request(items=[SEED_REQUEST["items"][1]] * 100))

    assert len(order["items"]) == 100
    assert '"totalAmount":4995' in client.get(f"/api/orders/{order['id']}").text


def test_every_broken_rule_is_reported_at_once(client):
    request = seed_request(customerId="", items=[{**SEED_REQUEST["items"][0], "quantity": 0, "unitPrice": -1}])

    body = assert_error(client.post("/api/orders", json=request), 400, "validation_failed")

    assert {"customerId", "items[0].quantity", "items[0].unitPrice"} <= error_fields(body)


SHAPE_CASES = {
    "quantity as a string": (with_item(0, quantity="2"), "items[0].quantity"),
    "quantity as a fraction": (with_item(0, quantity=1.5), "items[0].quantity"),
    "price as a string": (with_item(0, unitPrice="49.99"), "items[0].unitPrice"),
    "price as a boolean": (with_item(0, unitPrice=True), "items[0].unitPrice"),
    "items not a list": (seed_request(items={"productId": "p"}), "items"),
    "body is an array": ([SEED_REQUEST], "body"),
    "body is a string": ("an order", "body"),
    "body is null": (None, "body"),
}


@pytest.mark.parametrize(("request_body", "field"), SHAPE_CASES.values(), ids=SHAPE_CASES.keys())
def test_a_body_that_is_not_a_create_order_request_is_refused_with_400_naming_the_field(client, request_body, field):
    response = client.post("/api/orders", content=json.dumps(request_body), headers={"Content-Type": "application/json"})

    body = assert_error(response, 400, "invalid_request")
    assert field in error_fields(body)
    assert client.get(f"/api/orders/customer/{SEED_REQUEST['customerId']}").json() == []


# --- GET /api/orders/{id} -----------------------------------------------------------------------


def test_an_accepted_order_can_be_read_back_by_id(client):
    placed = client.post("/api/orders", json=SEED_REQUEST)

    response = client.get(placed.headers["location"])

    assert response.status_code == 200
    assert response.json() == placed.json()
    assert '"totalAmount":149.93' in response.text


def test_an_order_id_is_accepted_in_any_uuid_spelling(client):
    order = place(client)

    assert client.get(f"/api/orders/{order['id'].upper()}").json()["id"] == order["id"]


def test_an_unknown_order_is_404(client):
    body = assert_error(client.get(f"/api/orders/{UNKNOWN_ID}"), 404, "not_found")

    assert UNKNOWN_ID in body["message"]


@pytest.mark.parametrize("raw_id", ["not-a-uuid", "12345", "a1b2c3d4-e5f6-7890-abcd-ef123456789"])
def test_a_malformed_order_id_is_400(client, raw_id):
    body = assert_error(client.get(f"/api/orders/{raw_id}"), 400, "invalid_request")

    assert error_fields(body) == {"id"}


def test_an_unexpected_failure_is_a_500_without_a_stack_trace(tmp_path):
    class BrokenStore(SqliteOrderRepository):
        async def get(self, order_id):
            raise RuntimeError("secret internals of the store")

    settings = make_settings(tmp_path)
    app = create_app(settings, orders=BrokenStore(tmp_path / "orders.db"))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get(f"/api/orders/{UNKNOWN_ID}")

    assert_error(response, 500, "internal_error")
    assert "secret internals" not in response.text


def test_an_unknown_route_is_a_json_404(client):
    assert_error(client.get("/api/nothing-here"), 404, "http_error")


# --- GET /api/orders/customer/{customerId} ----------------------------------------------------------


def test_a_customers_orders_are_listed_newest_first(client):
    placed = [place(client, seed_request(customerId="cust-a"))["id"] for _ in range(3)]
    place(client, seed_request(customerId="cust-b"))

    response = client.get("/api/orders/customer/cust-a")

    assert response.status_code == 200
    orders = response.json()
    assert [order["id"] for order in orders] == placed[::-1]
    assert all(order["customerId"] == "cust-a" for order in orders)
    assert all(set(order) == ORDER_KEYS for order in orders)
    assert "x-next-cursor" not in response.headers


def test_an_unknown_customer_has_no_orders(client):
    place(client)

    response = client.get("/api/orders/customer/nobody")

    assert response.status_code == 200
    assert response.json() == []
    assert response.text == "[]"


def test_pages_follow_the_next_cursor_until_every_order_is_seen_once(client):
    placed = [place(client, seed_request(customerId="cust-pages"))["id"] for _ in range(5)]

    seen, sizes, url = [], [], "/api/orders/customer/cust-pages?limit=2"
    while url:
        response = client.get(url)
        assert response.status_code == 200
        page = [order["id"] for order in response.json()]
        seen += page
        sizes.append(len(page))
        cursor = response.headers.get("x-next-cursor")
        url = f"/api/orders/customer/cust-pages?limit=2&cursor={cursor}" if cursor else None
        assert len(sizes) <= 5, "the cursor never ran out"

    assert sizes == [2, 2, 1]
    assert seen == placed[::-1]
    assert len(set(seen)) == len(seen)


def test_a_limit_as_large_as_the_list_has_no_next_cursor(client):
    for _ in range(2):
        place(client, seed_request(customerId="cust-exact"))

    response = client.get("/api/orders/customer/cust-exact?limit=2")

    assert len(response.json()) == 2
    assert "x-next-cursor" not in response.headers


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "", "1.5"])
def test_a_bad_limit_is_400(client, limit):
    body = assert_error(client.get(f"/api/orders/customer/cust-001?limit={limit}"), 400, "invalid_request")

    assert error_fields(body) == {"limit"}


NESTED_CURSOR = base64.urlsafe_b64encode(b"[" * 5_000 + b"]" * 5_000).decode()
SURROGATE_CURSOR = base64.urlsafe_b64encode(json.dumps(["2026-01-01T00:00:00Z", "\ud800"]).encode()).decode()


@pytest.mark.parametrize("cursor", ["not-a-cursor", "!!!", "bm90IGpzb24", NESTED_CURSOR, SURROGATE_CURSOR],
                         ids=["text", "punctuation", "not json", "nested too deeply", "a lone surrogate"])
def test_a_bad_cursor_is_400_naming_the_cursor_parameter(client, cursor):
    place(client)

    body = assert_error(client.get(f"/api/orders/customer/cust-001?cursor={cursor}"), 400, "invalid_request")

    assert error_fields(body) == {"cursor"}
