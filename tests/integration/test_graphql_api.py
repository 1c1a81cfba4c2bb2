"""The GraphQL API of contract §4 at /graphql, over the real app, lifespan and SQLite store."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from fulfillment.adapters.prefect_monitor import PrefectMonitor
from fulfillment.adapters.sqlite_orders import SqliteOrderRepository
from fulfillment.domain import Order as DomainOrder
from fulfillment.settings import Settings
from gateway.app import create_app
from tests.conftest import in_the_stack, run_saga

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
SEED_INPUT = {
    "customerId": "cust-001",
    "items": [
        {"productId": "prod-100", "productName": "Wireless Headphones", "quantity": 2, "unitPrice": 49.99},
        {"productId": "prod-200", "productName": "USB-C Cable", "quantity": 5, "unitPrice": 9.99},
    ],
}

CREATE_ORDER = """
mutation Create($input: CreateOrderInput!) {
  createOrder(input: $input) {
    __typename
    ... on OrderCreated { order { id customerId status totalAmount createdAt completedAt failureReason } }
    ... on ValidationError { errors { field message } }
  }
}
"""
ORDER = """
query Order($id: ID!) {
  order(id: $id) {
    id customerId status totalAmount createdAt completedAt failureReason
    items { productId productName quantity unitPrice totalPrice }
    saga {
      orderId completedSteps compensatedSteps reservationId transactionId trackingId failedStep failureReason
      compensationFailures { step error manualInterventionRequired }
    }
    flowRun { id state url }
  }
}
"""
ORDERS_BY_CUSTOMER = """
query Orders($customerId: String!, $first: Int, $after: String) {
  ordersByCustomer(customerId: $customerId, first: $first, after: $after) {
    edges { cursor node { id customerId } }
    pageInfo { hasNextPage endCursor }
  }
}
"""
CANCEL_ORDER = """
mutation Cancel($id: ID!) {
  cancelOrder(id: $id) {
    __typename
    ... on OrderCancellationRequested { order { id status } }
    ... on NotFoundError { id message }
    ... on InvalidStateError { message }
    ... on ValidationError { errors { field message } }
  }
}
"""


def make_settings(data_dir: Path, **options) -> Settings:
    return Settings(data_dir=data_dir, prefect_api_url="http://127.0.0.1:9/api", **options)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def execute(client: TestClient, query: str, **variables) -> dict:
    """The whole GraphQL response (`data` and maybe `errors`), which must come with a 200."""
    response = client.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    assert "Traceback" not in response.text
    return response.json()


def data(client: TestClient, query: str, **variables) -> dict:
    result = execute(client, query, **variables)
    assert "errors" not in result, result["errors"]
    return result["data"]


def error_messages(result: dict) -> list[str]:
    return [error["message"] for error in result.get("errors", [])]


def bad_user_input(result: dict) -> list[dict]:
    """The argument errors of a result holding one BAD_USER_INPUT error (REST's 400)."""
    (error,) = result["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    return error["extensions"]["errors"]


def create_order(client: TestClient, **changes) -> dict:
    created = data(client, CREATE_ORDER, input={**SEED_INPUT, **changes})["createOrder"]
    assert created["__typename"] == "OrderCreated", created
    return created["order"]


def get_order(client: TestClient, order_id: str) -> dict | None:
    return data(client, ORDER, id=order_id)["order"]


# --- createOrder -------------------------------------------------------------------------------


def test_create_order_accepts_the_seed_sample_as_a_processing_order(client):
    order = create_order(client)

    assert str(uuid.UUID(order["id"])) == order["id"]
    assert order["customerId"] == "cust-001"
    assert order["status"] == "PROCESSING"
    assert order["totalAmount"] == 149.93
    assert TIMESTAMP.match(order["createdAt"])
    assert order["completedAt"] is None
    assert order["failureReason"] is None


def test_create_order_stores_the_order_with_exact_decimal_amounts(client):
    """With binary floats, 0.10 + 0.20 would be 0.30000000000000004."""
    items = [{"productId": "p1", "productName": "n", "quantity": 1, "unitPrice": 0.10},
             {"productId": "p2", "productName": "n", "quantity": 1, "unitPrice": 0.20}]
    order = create_order(client, items=items)

    assert order["totalAmount"] == 0.3
    assert client.get(f"/api/orders/{order['id']}").json()["totalAmount"] == 0.3


VALIDATION_CASES = {
    "empty customerId": ({"customerId": ""}, {"customerId"}),
    "no items": ({"items": []}, {"items"}),
    "quantity 0": ({"items": [{**SEED_INPUT["items"][0], "quantity": 0}]}, {"items[0].quantity"}),
    "negative price": ({"items": [{**SEED_INPUT["items"][0], "unitPrice": -1.5}]}, {"items[0].unitPrice"}),
    "price with 3 decimals": ({"items": [{**SEED_INPUT["items"][0], "unitPrice": 9.999}]}, {"items[0].unitPrice"}),
    "101 items": ({"items": [SEED_INPUT["items"][1]] * 101}, {"items"}),
    "several rules": ({"customerId": " ", "items": [{**SEED_INPUT["items"][0], "quantity": 0, "productName": ""}]},
                      {"customerId", "items[0].quantity", "items[0].productName"}),
}


@pytest.mark.parametrize(("changes", "fields"), VALIDATION_CASES.values(), ids=VALIDATION_CASES.keys())
def test_create_order_with_bad_input_is_a_validation_error_and_stores_nothing(client, changes, fields):
    result = data(client, CREATE_ORDER, input={**SEED_INPUT, **changes})["createOrder"]

    assert result["__typename"] == "ValidationError"
    assert {error["field"] for error in result["errors"]} == fields
    assert all(error["message"] for error in result["errors"])
    for customer in {SEED_INPUT["customerId"], changes.get("customerId", "")}:
        assert data(client, ORDERS_BY_CUSTOMER, customerId=customer)["ordersByCustomer"]["edges"] == []


def test_create_order_input_of_the_wrong_type_is_a_graphql_error(client):
    result = execute(client, CREATE_ORDER, input={**SEED_INPUT, "items": [{**SEED_INPUT["items"][0],
                                                                           "quantity": "two"}]})

    assert "data" not in result  # a request error: it failed before execution
    assert any("quantity" in message for message in error_messages(result))


# --- order(id) ----------------------------------------------------------------------------------


def test_an_order_has_its_items_with_totals_and_an_empty_saga_before_the_worker_ran(client):
    created = create_order(client)

    order = get_order(client, created["id"])

    assert {key: order[key] for key in created} == created
    assert order["items"] == [
        {"productId": "prod-100", "productName": "Wireless Headphones", "quantity": 2, "unitPrice": 49.99,
         "totalPrice": 99.98},
        {"productId": "prod-200", "productName": "USB-C Cable", "quantity": 5, "unitPrice": 9.99,
         "totalPrice": 49.95},
    ]
    assert order["saga"] == {
        "orderId": created["id"], "completedSteps": [], "compensatedSteps": [], "reservationId": None,
        "transactionId": None, "trackingId": None, "failedStep": None, "failureReason": None,
        "compensationFailures": [],
    }
    assert order["flowRun"] is None


def test_an_order_shows_its_completed_saga(client, settings):
    created = create_order(client)

    run_saga(settings, created["id"])

    order = get_order(client, created["id"])
    assert order["status"] == "COMPLETED"
    assert TIMESTAMP.match(order["completedAt"])
    assert order["saga"]["completedSteps"] == ["ReserveInventory", "ProcessPayment", "CreateShipment"]
    assert order["saga"]["reservationId"] and order["saga"]["transactionId"] and order["saga"]["trackingId"]
    assert order["saga"]["compensatedSteps"] == []


def test_an_order_links_its_flow_run_into_the_prefect_ui(client, settings):
    created = create_order(client)
    run_id = str(uuid.uuid4())

    async def attach(container) -> DomainOrder:
        return await container.orders.update(created["id"], lambda order: order.attach_flow_run(run_id))

    in_the_stack(settings, attach)

    flow_run = get_order(client, created["id"])["flowRun"]
    # The Prefect API of these settings is unreachable, so the state is unknown, but the link is still given.
    assert flow_run == {"id": run_id, "state": "UNKNOWN",
                        "url": f"{settings.prefect_ui_url}/runs/flow-run/{run_id}"}


def test_an_unknown_order_is_null(client):
    create_order(client)

    result = execute(client, ORDER, id=UNKNOWN_ID)

    assert result == {"data": {"order": None}}


def test_a_malformed_order_id_is_bad_user_input_naming_the_argument_as_rest_answers_400(client):
    result = execute(client, ORDER, id="not-a-uuid")

    assert result["data"] == {"order": None}
    assert bad_user_input(result) == [{"field": "id", "message": "must be a UUID, got 'not-a-uuid'"}]
    rest = client.get("/api/orders/not-a-uuid")
    assert rest.status_code == 400 and rest.json()["errors"] == bad_user_input(result)


def test_timestamps_are_date_times_in_utc(client):
    fields = data(client, '{ __type(name: "Order") { fields { name type { name ofType { name } } } } }')
    types = {f["name"]: f["type"]["name"] or f["type"]["ofType"]["name"] for f in fields["__type"]["fields"]}

    assert types["createdAt"] == types["completedAt"] == "DateTime"
    assert TIMESTAMP.match(create_order(client)["createdAt"])


def test_orders_asked_for_together_are_loaded_in_one_batch(tmp_path, settings):
    class RecordingStore(SqliteOrderRepository):
        def __init__(self, path: Path):
            super().__init__(path)
            self.batches: list[list[str]] = []

        async def get_many(self, order_ids):
            self.batches.append(list(order_ids))
            return await super().get_many(order_ids)

    store = RecordingStore(tmp_path / "orders.db")
    with TestClient(create_app(settings, orders=store)) as client:
        first, second = create_order(client)["id"], create_order(client)["id"]
        store.batches.clear()

        result = data(client, """
            query Two($a: ID!, $b: ID!, $c: ID!) {
              a: order(id: $a) { id totalAmount }
              b: order(id: $b) { id totalAmount }
              c: order(id: $c) { id }
            }""", a=first, b=second, c=UNKNOWN_ID)

    assert result == {"a": {"id": first, "totalAmount": 149.93}, "b": {"id": second, "totalAmount": 149.93},
                      "c": None}
    assert len(store.batches) == 1
    assert sorted(store.batches[0]) == sorted([first, second, UNKNOWN_ID])


def test_an_unexpected_failure_is_masked_and_leaks_nothing(tmp_path, settings):
    class BrokenStore(SqliteOrderRepository):
        async def get_many(self, order_ids):
            raise RuntimeError("secret internals of the store")

    with TestClient(create_app(settings, orders=BrokenStore(tmp_path / "orders.db"))) as client:
        result = execute(client, ORDER, id=UNKNOWN_ID)

    assert result["data"] == {"order": None}
    assert error_messages(result) == ["Unexpected error."]
    assert "secret internals" not in str(result)


# --- ordersByCustomer ---------------------------------------------------------------------------


def test_a_customers_orders_are_paged_relay_style_newest_first(client):
    placed = [create_order(client, customerId="cust-pages")["id"] for _ in range(5)]
    create_order(client, customerId="someone-else")

    seen, sizes, after = [], [], None
    while True:
        connection = data(client, ORDERS_BY_CUSTOMER, customerId="cust-pages", first=2, after=after)["ordersByCustomer"]
        nodes = [edge["node"] for edge in connection["edges"]]
        assert all(node["customerId"] == "cust-pages" for node in nodes)
        seen += [node["id"] for node in nodes]
        sizes.append(len(nodes))
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
        assert after == connection["edges"][-1]["cursor"]
        assert len(sizes) <= 5, "hasNextPage never turned false"

    assert sizes == [2, 2, 1]
    assert seen == placed[::-1]
    assert len(set(seen)) == len(seen)


def test_without_first_all_of_a_customers_orders_come_on_one_page(client):
    placed = [create_order(client, customerId="cust-all")["id"] for _ in range(3)]

    connection = data(client, ORDERS_BY_CUSTOMER, customerId="cust-all")["ordersByCustomer"]

    assert [edge["node"]["id"] for edge in connection["edges"]] == placed[::-1]
    assert connection["pageInfo"] == {"hasNextPage": False, "endCursor": connection["edges"][-1]["cursor"]}


def test_each_edges_cursor_continues_just_after_that_edge(client):
    newest_first = [create_order(client, customerId="cust-edges")["id"] for _ in range(4)][::-1]

    edges = data(client, ORDERS_BY_CUSTOMER, customerId="cust-edges", first=3)["ordersByCustomer"]["edges"]

    for position, edge in enumerate(edges):
        rest = data(client, ORDERS_BY_CUSTOMER, customerId="cust-edges", after=edge["cursor"])["ordersByCustomer"]
        assert [e["node"]["id"] for e in rest["edges"]] == newest_first[position + 1:]


def test_the_last_pages_end_cursor_continues_with_an_empty_page(client):
    create_order(client, customerId="cust-end")
    last_page = data(client, ORDERS_BY_CUSTOMER, customerId="cust-end")["ordersByCustomer"]

    after_it = data(client, ORDERS_BY_CUSTOMER, customerId="cust-end",
                    after=last_page["pageInfo"]["endCursor"])["ordersByCustomer"]

    assert after_it == {"edges": [], "pageInfo": {"hasNextPage": False, "endCursor": None}}


def test_an_unknown_customer_has_an_empty_connection(client):
    create_order(client)

    connection = data(client, ORDERS_BY_CUSTOMER, customerId="nobody", first=10)["ordersByCustomer"]

    assert connection == {"edges": [], "pageInfo": {"hasNextPage": False, "endCursor": None}}


@pytest.mark.parametrize("first", [0, -1])
def test_a_page_size_below_one_is_an_error_that_says_so(client, first):
    result = execute(client, ORDERS_BY_CUSTOMER, customerId="cust-001", first=first)

    assert result["data"] is None
    (error,) = bad_user_input(result)
    assert error["field"] == "first" and "1 or more" in error["message"]


def test_a_cursor_this_api_did_not_issue_is_an_error_that_says_so(client):
    result = execute(client, ORDERS_BY_CUSTOMER, customerId="cust-001", first=2, after="not-a-cursor")

    assert result["data"] is None
    assert bad_user_input(result) == [{"field": "after", "message": "is not a cursor returned by this API"}]


def post_escaped(client: TestClient, query: str, **variables) -> dict:
    """As `execute`, with the JSON escaping a lone surrogate (`"\\ud800"`), which UTF-8 cannot hold."""
    body = json.dumps({"query": query, "variables": variables}).encode()
    response = client.post("/graphql", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_customer_id_with_a_lone_surrogate_is_an_error_naming_it_not_an_unexpected_one(client):
    result = post_escaped(client, ORDERS_BY_CUSTOMER, customerId="cust-\ud800")

    (message,) = error_messages(result)
    assert message.startswith("customerId: ") and "lone surrogate" in message


def test_a_cursor_holding_a_lone_surrogate_is_an_error_that_says_so(client):
    cursor = base64.urlsafe_b64encode(json.dumps(["2026-01-01T00:00:00Z", "\udfff"]).encode()).decode()

    (message,) = error_messages(post_escaped(client, ORDERS_BY_CUSTOMER, customerId="cust-001", after=cursor))

    assert "after" in message and "cursor" in message


def test_create_order_with_a_lone_surrogate_is_a_validation_error_naming_the_field(client):
    input = {**SEED_INPUT, "items": [{**SEED_INPUT["items"][0], "productName": "\ud83d"}]}

    created = post_escaped(client, CREATE_ORDER, input=input)["data"]["createOrder"]

    assert created["__typename"] == "ValidationError"
    assert [error["field"] for error in created["errors"]] == ["items[0].productName"]
    assert data(client, ORDERS_BY_CUSTOMER, customerId="cust-001")["ordersByCustomer"]["edges"] == []


def test_a_body_nested_deeper_than_the_decoder_recurses_is_a_400(client):
    response = client.post("/graphql", content="[" * 100_000, headers={"content-type": "application/json"})

    assert response.status_code == 400


# --- sagaState ----------------------------------------------------------------------------------

SAGA_STATE = """
query Saga($orderId: ID!) {
  sagaState(orderId: $orderId) { orderId completedSteps compensatedSteps failedStep failureReason }
}
"""


def test_saga_state_of_a_new_order_is_empty(client):
    order_id = create_order(client)["id"]

    saga = data(client, SAGA_STATE, orderId=order_id)["sagaState"]

    assert saga == {"orderId": order_id, "completedSteps": [], "compensatedSteps": [], "failedStep": None,
                    "failureReason": None}


def test_saga_state_records_the_compensations_of_a_failed_saga(client, settings):
    """A hazmat product is refused by the carrier after inventory and payment succeeded: both are undone."""
    items = [{"productId": "hazmat-lithium", "productName": "Battery pack", "quantity": 1, "unitPrice": 20.00}]
    order_id = create_order(client, items=items)["id"]

    run_saga(settings, order_id)

    saga = data(client, SAGA_STATE, orderId=order_id)["sagaState"]
    assert saga["completedSteps"] == ["ReserveInventory", "ProcessPayment"]
    assert saga["compensatedSteps"] == ["RefundPayment", "CompensateInventory"]
    assert saga["failedStep"] == "CreateShipment"
    assert saga["failureReason"].startswith("ShipmentRejected: ")
    assert get_order(client, order_id)["status"] == "FAILED"


def test_saga_state_of_an_unknown_order_is_null(client):
    assert data(client, SAGA_STATE, orderId=UNKNOWN_ID) == {"sagaState": None}


def test_saga_state_of_a_malformed_order_id_is_bad_user_input_naming_the_argument(client):
    result = execute(client, SAGA_STATE, orderId="not-a-uuid")

    assert result["data"] == {"sagaState": None}
    assert [error["field"] for error in bad_user_input(result)] == ["orderId"]


# --- cancelOrder --------------------------------------------------------------------------------


def test_cancelling_an_order_no_step_has_touched_cancels_it_at_once(client, settings):
    order_id = create_order(client)["id"]

    requested = data(client, CANCEL_ORDER, id=order_id)["cancelOrder"]

    assert requested == {"__typename": "OrderCancellationRequested",
                         "order": {"id": order_id, "status": "CANCELLED"}}

    run_saga(settings, order_id)

    order = get_order(client, order_id)
    assert order["status"] == "CANCELLED"
    assert "cancelled" in order["failureReason"]
    assert order["saga"]["completedSteps"] == []
    assert TIMESTAMP.match(order["completedAt"])


def test_cancelling_an_order_that_is_already_cancelled_is_an_invalid_state(client, settings):
    order_id = create_order(client)["id"]
    data(client, CANCEL_ORDER, id=order_id)
    run_saga(settings, order_id)

    again = data(client, CANCEL_ORDER, id=order_id)["cancelOrder"]

    assert again["__typename"] == "InvalidStateError"
    assert order_id in again["message"] and "cancelled" in again["message"]


def test_cancelling_a_completed_order_is_an_invalid_state_and_changes_nothing(client, settings):
    order_id = create_order(client)["id"]
    run_saga(settings, order_id)

    result = data(client, CANCEL_ORDER, id=order_id)["cancelOrder"]

    assert result["__typename"] == "InvalidStateError"
    assert "completed" in result["message"]
    assert get_order(client, order_id)["status"] == "COMPLETED"


def test_cancelling_an_unknown_order_is_not_found(client):
    result = data(client, CANCEL_ORDER, id=UNKNOWN_ID)["cancelOrder"]

    assert result["__typename"] == "NotFoundError"
    assert result["id"] == UNKNOWN_ID
    assert UNKNOWN_ID in result["message"]


def test_cancelling_with_a_malformed_id_is_a_validation_error(client):
    result = data(client, CANCEL_ORDER, id="not-a-uuid")["cancelOrder"]

    assert result["__typename"] == "ValidationError"
    assert [error["field"] for error in result["errors"]] == ["id"]


# --- limits and tooling -------------------------------------------------------------------------


def test_a_query_nested_deeper_than_the_limit_is_rejected(tmp_path):
    too_deep = "{ ordersByCustomer(customerId: \"c\") { edges { node { saga { completedSteps } } } } }"
    deep_enough = "{ ordersByCustomer(customerId: \"c\") { edges { node { id } } } }"

    with TestClient(create_app(make_settings(tmp_path, graphql_max_depth=3))) as client:
        rejected = execute(client, too_deep)
        accepted = execute(client, deep_enough)

    assert "data" not in rejected or rejected["data"] is None
    assert any("exceeds maximum operation depth of 3" in message for message in error_messages(rejected))
    assert accepted == {"data": {"ordersByCustomer": {"edges": []}}}


def test_the_default_depth_limit_admits_the_deepest_query_of_the_schema(client):
    order_id = create_order(client)["id"]

    result = data(client, """
        query { ordersByCustomer(customerId: "cust-001") {
          edges { node { id saga { compensationFailures { step error manualInterventionRequired } } } } } }""")

    assert result["ordersByCustomer"]["edges"][0]["node"]["id"] == order_id


def test_introspection_is_not_limited_by_depth(client):
    result = data(client, "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { name } } } } } } } } }")

    assert result["__schema"]["types"]


def test_graphiql_is_served_to_a_browser(client):
    response = client.get("/graphql", headers={"Accept": "text/html"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "graphiql" in response.text.lower()


def test_graphiql_can_be_switched_off(tmp_path):
    with TestClient(create_app(make_settings(tmp_path, graphiql=False))) as client:
        response = client.get("/graphql", headers={"Accept": "text/html"})

    assert response.status_code == 404
    assert "graphiql" not in response.text.lower()


def test_the_flow_runs_of_orders_asked_for_together_come_in_one_prefect_call(tmp_path, prefect_api):
    class RecordingMonitor(PrefectMonitor):
        batches: list[list[str]] = []

        async def _flow_runs(self, flow_run_ids):
            self.batches.append(list(flow_run_ids))
            return await super()._flow_runs(flow_run_ids)

    settings = make_settings(tmp_path).model_copy(update={"prefect_api_url": prefect_api})
    flow = httpx.post(f"{prefect_api}/flows/", json={"name": "graphql-batching"}).json()
    runs = [httpx.post(f"{prefect_api}/flow_runs/", json={"flow_id": flow["id"], "state": {"type": "SCHEDULED"}}).json()
            for _ in range(3)]
    monitor = RecordingMonitor(prefect_api, settings.prefect_ui_url)
    with TestClient(create_app(settings, monitor=monitor)) as client:
        ids = [create_order(client)["id"] for _ in runs]
        for order_id, run in zip(ids, runs, strict=True):
            in_the_stack(settings, lambda container, o=order_id, r=run: container.orders.update(
                o, lambda order: order.attach_flow_run(r["id"])))

        result = data(client, "query($a: ID!, $b: ID!, $c: ID!) { a: order(id: $a) { flowRun { id state } } "
                              "b: order(id: $b) { flowRun { id state } } c: order(id: $c) { flowRun { id state } } }",
                      a=ids[0], b=ids[1], c=ids[2])

    assert [result[alias]["flowRun"] for alias in "abc"] == [{"id": run["id"], "state": "Scheduled"} for run in runs]
    assert [sorted(batch) for batch in monitor.batches] == [sorted(run["id"] for run in runs)]
