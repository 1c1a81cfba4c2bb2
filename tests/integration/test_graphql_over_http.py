"""GraphQL over HTTP (https://graphql.github.io/graphql-over-http/): the media types, the status codes of
request errors, subscriptions streamed as multipart/mixed, and graphql-http's audit against a real gateway."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from starlette.testclient import TestClient

from fulfillment.settings import Settings
from gateway.app import create_app
from gateway.graphql.over_http import response_media_type
from tests.conftest import run_saga, uncaptured
from tests.graphql_audit.audit import run_audit

GRAPHQL_RESPONSE = "application/graphql-response+json"
FUNCTION_KEY = "key-for-the-http-tests-0123"
CREATE = ("createOrder(input: {customerId: \"c\", items: [{productId: \"p\", productName: \"n\", quantity: 1, "
          "unitPrice: 1.0}]}) { __typename }")
# Each fails before execution: it does not parse, validate (our limits included) or coerce its variables.
REQUEST_ERRORS = {
    "parse": ({"query": "{"}, "Syntax Error"),
    "validation": ({"query": "{ noSuchField }"}, "Cannot query field"),
    "depth": ({"query": "{ a { b { c { d { e { f { g { h { i { j { k } } } } } } } } } } }"}, "depth"),
    "aliases": ({"query": "{ " + " ".join(f"a{n}: __typename" for n in range(16)) + " }"}, "aliases"),
    "tokens": ({"query": "{ " + "__typename " * 3000 + "}"}, "token"),
    "mutations": ({"query": "mutation { " + " ".join(f"m{n}: {CREATE}" for n in range(6)) + " }"}, "mutations"),
    "variable list": ({"query": "query($ids: [ID!]!) { __typename }", "variables": {"ids": ["x"] * 501}}, "list"),
    "variable coercion": ({"query": "query($first: Int) { ordersByCustomer(customerId: \"c\", first: $first) "
                                    "{ edges { node { id } } } }", "variables": {"first": "two"}}, "$first"),
}
SUBSCRIPTION = "subscription($id: ID!) { orderStatusChanged(id: $id) { status } }"
MULTIPART = 'multipart/mixed; subscriptionSpec="1.0", application/json'


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """The gateway served by uvicorn on a free port of 127.0.0.1 (in a thread), for the duration of the block."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


# --- media types ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("accept", "media_type"), [
    (GRAPHQL_RESPONSE, GRAPHQL_RESPONSE),
    (f"{GRAPHQL_RESPONSE}, application/json;q=0.9", GRAPHQL_RESPONSE),
    ("application/json", "application/json"),
    ("*/*", "application/json"),
    (None, "application/json"),
])
def test_the_answer_is_in_the_media_type_the_client_accepts(client, accept, media_type):
    headers = {"accept": accept} if accept else {}
    response = client.post("/graphql", json={"query": "{ __typename }"}, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.json() == {"data": {"__typename": "Query"}}


@pytest.mark.parametrize(("accept", "media_type"), [
    ("application/json, application/graphql-response+json;q=0.5", "application/json"),
    ("application/graphql-response+json;q=0, application/json;q=0.1", "application/json"),
    ("Application/GraphQL-Response+JSON; charset=utf-8", GRAPHQL_RESPONSE),
    ("text/html", "application/json"),
])
def test_the_media_type_follows_the_clients_preference(accept, media_type):
    assert response_media_type(accept) == media_type


# --- request errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", REQUEST_ERRORS)
def test_a_request_error_is_a_400_without_data_for_a_graphql_response_client(client, failure):
    body, message = REQUEST_ERRORS[failure]
    response = client.post("/graphql", json=body, headers={"accept": GRAPHQL_RESPONSE})
    assert response.status_code == 400
    assert response.headers["content-type"] == GRAPHQL_RESPONSE
    result = response.json()
    assert "data" not in result
    assert any(message.lower() in error["message"].lower() for error in result["errors"]), result


@pytest.mark.parametrize("failure", REQUEST_ERRORS)
def test_a_request_error_is_a_200_without_data_for_a_legacy_client(client, failure):
    body, message = REQUEST_ERRORS[failure]
    response = client.post("/graphql", json=body, headers={"accept": "application/json"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    result = response.json()
    assert "data" not in result
    assert any(message.lower() in error["message"].lower() for error in result["errors"]), result


def test_a_request_without_a_query_is_a_400(client):
    response = client.post("/graphql", json={"variables": {}}, headers={"accept": GRAPHQL_RESPONSE})
    assert response.status_code == 400


def test_a_field_error_is_a_200_with_data_even_for_a_graphql_response_client(client):
    query = "{ ordersByCustomer(customerId: \"c\", first: 0) { edges { node { id } } } }"
    response = client.post("/graphql", json={"query": query}, headers={"accept": GRAPHQL_RESPONSE})
    assert response.status_code == 200
    result = response.json()
    assert result["data"] is None and result["errors"][0]["path"] == ["ordersByCustomer"]


# --- subscriptions over HTTP ------------------------------------------------------------------------------


def multipart_parts(response: httpx.Response) -> Iterator[dict]:
    """The JSON body of each part of a `multipart/mixed` response as it arrives, heartbeats (`{}`) included."""
    assert response.headers["content-type"].startswith("multipart/mixed;boundary=graphql;subscriptionSpec=1.0")
    buffer = ""
    for chunk in response.iter_text():
        buffer += chunk
        *complete, buffer = buffer.split("\r\n--graphql")
        for part in complete:
            if "\r\n\r\n" in part:
                yield json.loads(part.split("\r\n\r\n", 1)[1])
    assert buffer == "--\r\n", "the stream ends with the closing boundary"


def test_a_subscription_streams_each_status_over_http_until_the_order_is_terminal(settings, seed_order):
    secured = settings.model_copy(update={"api_keys": [FUNCTION_KEY]})
    key = {"x-functions-key": FUNCTION_KEY}
    with serving(secured) as url, httpx.Client(base_url=url, headers=key, timeout=30) as http:
        order_id = http.post("/api/orders", json=seed_order).json()["id"]
        body = {"query": SUBSCRIPTION, "variables": {"id": order_id}}
        statuses = []
        with http.stream("POST", "/graphql", json=body, headers={"accept": MULTIPART}) as response:
            assert response.status_code == 200
            for part in multipart_parts(response):
                if "payload" in part:
                    statuses.append(part["payload"]["data"]["orderStatusChanged"]["status"])
                    if len(statuses) == 1:
                        run_saga(settings, order_id)
    assert statuses[0] == "PROCESSING" and statuses[-1] == "COMPLETED"


def test_a_subscription_over_http_needs_credentials(settings):
    secured = settings.model_copy(update={"api_keys": [FUNCTION_KEY]})
    with TestClient(create_app(secured)) as client:
        response = client.post("/graphql", json={"query": SUBSCRIPTION, "variables": {"id": "x"}},
                               headers={"accept": MULTIPART})
    assert response.status_code == 401


# --- graphql-http's audit ---------------------------------------------------------------------------------


def test_the_graphql_over_http_audit_passes_every_check(settings, request, report_figure):
    with serving(settings) as url:
        results = run_audit(f"{url}/graphql", progress=uncaptured(request.config))
    counts = Counter(result["status"] for result in results)
    report_figure(f"GraphQL-over-HTTP audit (graphql-http): {len(results)} audits, {counts['ok']} passed, "
                  f"{counts['notice']} notices, {counts['warn']} warnings, {counts['error']} failures")
    assert [result for result in results if result["status"] != "ok"] == []
