"""Contract §3a over the real app: function keys, bearer JWTs from a local OIDC issuer (its own HTTP server and
keys), what each caller may do, idempotency keys, and the gateway that refuses to serve open beyond loopback."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from fulfillment.settings import Settings, refuse_open_exposure
from gateway.app import create_app
from gateway.auth import REFETCH_FLOOR_S
from tests.conftest import SEED_ORDER
from tests.oidc_issuer import AUDIENCE, Issuer, SigningKey, running_issuer

FUNCTION_KEY = "function-key-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]
CREATE_ORDER = """
mutation Create($input: CreateOrderInput!, $key: String) {
  createOrder(input: $input, idempotencyKey: $key) {
    __typename
    ... on OrderCreated { order { id customerId } }
    ... on ForbiddenError { message }
    ... on IdempotencyKeyReusedError { idempotencyKey message }
  }
}"""
CANCEL_ORDER = "mutation($id: ID!) { cancelOrder(id: $id) { __typename ... on ForbiddenError { message } } }"
ORDER = "query($id: ID!) { order(id: $id) { id customerId } }"
ORDERS_OF = "query($c: String!) { ordersByCustomer(customerId: $c) { edges { node { id } } } }"
SUBSCRIPTION = "subscription($id: ID!) { orderStatusChanged(id: $id) { status } }"


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with running_issuer() as issuer:
        yield issuer


@pytest.fixture
def secured(tmp_path, issuer) -> Settings:
    return Settings(data_dir=tmp_path, prefect_api_url="http://127.0.0.1:9/api", api_keys=[FUNCTION_KEY],
                    jwt_issuer=issuer.url, jwt_audience=AUDIENCE)


@pytest.fixture
def client(secured) -> Iterator[TestClient]:
    with TestClient(create_app(secured)) as client:
        yield client


def order_of(customer: str, quantity: int = 2) -> dict:
    order = copy.deepcopy(SEED_ORDER)
    order["customerId"] = customer
    order["items"][0]["quantity"] = quantity
    return order


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def graphql(client: TestClient, query: str, headers: dict, **variables) -> dict:
    response = client.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


# --- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize("method, path", [("POST", "/api/orders"), ("GET", f"/api/orders/{'0' * 8}-0000-4000-8000-{'0' * 12}"),
                                          ("GET", "/api/orders/customer/cust-001"), ("POST", "/graphql")])
def test_a_request_without_credentials_is_401_with_a_bearer_challenge(client, method, path):
    response = client.request(method, path, json={"query": "{ __typename }"} if path == "/graphql" else SEED_ORDER)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="order-saga"'
    assert response.json()["error"] == "unauthorized"


def test_the_graphiql_page_itself_needs_no_credentials(client):
    page = client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()
    assert client.get("/graphql", params={"query": "{ __typename }"}).status_code == 401


def test_health_checks_need_no_credentials(client):
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("where", ["header", "query"])
def test_a_function_key_acts_for_any_customer(client, where):
    headers, params = ({"x-functions-key": FUNCTION_KEY}, None) if where == "header" else ({}, {"code": FUNCTION_KEY})
    for customer in ("cust-a", "cust-b"):
        placed = client.post("/api/orders", json=order_of(customer), headers=headers, params=params)
        assert placed.status_code == 202, placed.text
        assert client.get(f"/api/orders/{placed.json()['id']}", headers=headers, params=params).status_code == 200


def test_a_wrong_function_key_is_401(client):
    response = client.post("/api/orders", json=SEED_ORDER, headers={"x-functions-key": "not-the-key-0123456789"})
    assert response.status_code == 401 and "function key" in response.json()["message"]


def test_a_customer_token_places_reads_lists_and_cancels_its_own_orders_only(client, issuer):
    mine, theirs = bearer(issuer.token("cust-a")), bearer(issuer.token("cust-b"))
    placed = client.post("/api/orders", json=order_of("cust-a"), headers=mine)
    assert placed.status_code == 202
    order_id = placed.json()["id"]

    assert client.post("/api/orders", json=order_of("cust-a"), headers=theirs).status_code == 403
    assert client.get(f"/api/orders/{order_id}", headers=mine).status_code == 200
    forbidden = client.get(f"/api/orders/{order_id}", headers=theirs)
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"
    assert len(client.get("/api/orders/customer/cust-a", headers=mine).json()) == 1
    assert client.get("/api/orders/customer/cust-a", headers=theirs).status_code == 403

    assert graphql(client, ORDER, theirs, id=order_id)["errors"][0]["extensions"] == {"code": "FORBIDDEN"}
    assert graphql(client, ORDERS_OF, theirs, c="cust-a")["errors"][0]["extensions"] == {"code": "FORBIDDEN"}
    assert graphql(client, CREATE_ORDER, theirs, input=order_of("cust-a"))["data"]["createOrder"]["__typename"] == \
        "ForbiddenError"
    assert graphql(client, CANCEL_ORDER, theirs, id=order_id)["data"]["cancelOrder"]["__typename"] == "ForbiddenError"
    assert client.get(f"/api/orders/{order_id}", headers=mine).json()["status"] == "processing"
    assert graphql(client, CANCEL_ORDER, mine, id=order_id)["data"]["cancelOrder"]["__typename"] == \
        "OrderCancellationRequested"


def test_the_admin_role_acts_on_any_order(client, issuer):
    admin = bearer(issuer.token("operator-1", roles=["Orders.Admin"]))
    placed = client.post("/api/orders", json=order_of("cust-z"), headers=admin)
    assert placed.status_code == 202
    assert client.get("/api/orders/customer/cust-z", headers=admin).status_code == 200


def test_the_customer_claim_is_configurable(secured, issuer):
    with TestClient(create_app(secured.model_copy(update={"jwt_customer_claim": "extension_customerId"}))) as client:
        token = issuer.token("user-object-id", extension_customerId="cust-claim")
        assert client.post("/api/orders", json=order_of("cust-claim"), headers=bearer(token)).status_code == 202
        assert client.post("/api/orders", json=order_of("user-object-id"), headers=bearer(token)).status_code == 403
        no_claim = client.post("/api/orders", json=order_of("cust-claim"), headers=bearer(issuer.token("u")))
        assert no_claim.status_code == 401 and "extension_customerId" in no_claim.json()["message"]


def bad_tokens(issuer: Issuer) -> dict[str, str]:
    stranger = SigningKey.generate()
    return {
        "expired": issuer.token(lifetime_s=-120),
        "not yet valid": issuer.token(not_before_s=600),
        "another audience": issuer.token(aud="api://someone-else"),
        "another issuer": issuer.token(iss="https://evil.example"),
        "signed by a key the issuer never published": issuer.token(key=stranger),
        "signed with a shared secret": jwt.encode({"iss": issuer.url, "aud": AUDIENCE, "sub": "cust-001",
                                                   "exp": 9999999999}, "x" * 32, algorithm="HS256",
                                                  headers={"kid": issuer.published[0].kid}),
        "unsigned": jwt.encode({"iss": issuer.url, "aud": AUDIENCE, "sub": "cust-001", "exp": 9999999999}, None,
                               algorithm="none"),
        "not a JWT": "garbage",
    }


def test_a_bad_token_is_401_invalid_token_and_says_why(client, issuer):
    for why, token in bad_tokens(issuer).items():
        response = client.post("/api/orders", json=SEED_ORDER, headers=bearer(token))
        assert response.status_code == 401, why
        assert 'error="invalid_token"' in response.headers["www-authenticate"], why


def test_keys_come_from_discovery_and_a_rotated_key_is_fetched_once_on_its_first_token(client, issuer):
    issuer.fetches.clear()
    assert client.post("/api/orders", json=order_of("cust-r"), headers=bearer(issuer.token("cust-r"))).status_code == 202
    assert issuer.fetches == ["/.well-known/openid-configuration", "/keys"]

    rotated = issuer.rotate()
    with pytest.MonkeyPatch.context() as patch:  # as if REFETCH_FLOOR_S had passed since the first fetch
        patch.setattr("gateway.auth.REFETCH_FLOOR_S", 0.0)
        token = issuer.token("cust-r", key=rotated)
        assert client.post("/api/orders", json=order_of("cust-r"), headers=bearer(token)).status_code == 202
    assert issuer.fetches == ["/.well-known/openid-configuration", "/keys", "/keys"]

    made_up = [issuer.token("cust-r", key=SigningKey.generate()) for _ in range(5)]
    for token in made_up:
        assert client.post("/api/orders", json=order_of("cust-r"), headers=bearer(token)).status_code == 401
    assert issuer.fetches.count("/keys") <= 3, f"made-up key ids refetched within {REFETCH_FLOOR_S} s"


def test_an_explicit_jwks_url_skips_discovery(secured, issuer):
    issuer.fetches.clear()
    with TestClient(create_app(secured.model_copy(update={"jwt_jwks_url": f"{issuer.url}/keys"}))) as client:
        assert client.post("/api/orders", json=SEED_ORDER, headers=bearer(issuer.token())).status_code == 202
    assert issuer.fetches == ["/keys"]


def test_an_unreachable_issuer_is_503_not_401(secured, issuer):
    settings = secured.model_copy(update={"jwt_issuer": "http://127.0.0.1:9", "jwt_jwks_url": ""})
    with TestClient(create_app(settings)) as client:
        token = jwt.encode({"iss": "http://127.0.0.1:9", "aud": AUDIENCE, "sub": "c", "exp": 9999999999},
                           issuer.published[0].private, algorithm="RS256", headers={"kid": "k"})
        response = client.post("/api/orders", json=SEED_ORDER, headers=bearer(token))
    assert response.status_code == 503 and response.headers["retry-after"]


def test_a_subscription_authenticates_with_its_connection_init(client, issuer):
    placed = client.post("/api/orders", json=order_of("cust-ws"), headers=bearer(issuer.token("cust-ws")))
    order_id = placed.json()["id"]
    with client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        ws.send_json({"type": "connection_init", "payload": {"Authorization": f"Bearer {issuer.token('cust-ws')}"}})
        assert ws.receive_json()["type"] == "connection_ack"
        ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIPTION, "variables": {"id": order_id}}})
        assert ws.receive_json()["payload"]["data"]["orderStatusChanged"]["status"] == "PROCESSING"
    with client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        ws.send_json({"type": "connection_init", "payload": {"x-functions-key": FUNCTION_KEY}})
        assert ws.receive_json()["type"] == "connection_ack"
        ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIPTION, "variables": {"id": order_id}}})
        assert ws.receive_json()["type"] == "next"
    with client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        ws.send_json({"type": "connection_init", "payload": {"Authorization": f"Bearer {issuer.token('cust-x')}"}})
        assert ws.receive_json()["type"] == "connection_ack"
        ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIPTION, "variables": {"id": order_id}}})
        refused = ws.receive_json()["payload"]
        assert refused["data"] is None and refused["errors"][0]["extensions"] == {"code": "FORBIDDEN"}


@pytest.mark.parametrize("payload", [{}, {"Authorization": "Bearer garbage"}, {"x-functions-key": "wrong-key-0123456789"}])
def test_a_subscription_without_good_credentials_is_closed_4403(client, payload):
    with client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
        ws.send_json({"type": "connection_init", "payload": payload})
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 4403


# --- idempotency keys ---------------------------------------------------------------------------------


def test_the_same_idempotency_key_and_body_answer_the_same_order_and_another_body_422(client, issuer):
    headers = {**bearer(issuer.token("cust-i")), "Idempotency-Key": "retry-1"}
    answers = [client.post("/api/orders", json=order_of("cust-i"), headers=headers) for _ in range(5)]
    assert {(a.status_code, a.json()["id"]) for a in answers} == {(202, answers[0].json()["id"])}
    reused = client.post("/api/orders", json=order_of("cust-i", quantity=3), headers=headers)
    assert reused.status_code == 422
    assert reused.json()["error"] == "idempotency_key_reused" and "'retry-1'" in reused.json()["message"]
    assert len(client.get("/api/orders/customer/cust-i", headers=headers).json()) == 1


def test_idempotency_keys_are_scoped_to_the_caller(client, issuer):
    key = {"Idempotency-Key": "same-key"}
    by_key = client.post("/api/orders", json=order_of("cust-s"), headers={**key, "x-functions-key": FUNCTION_KEY})
    by_token = client.post("/api/orders", json=order_of("cust-s"), headers={**key, **bearer(issuer.token("cust-s"))})
    assert by_key.json()["id"] != by_token.json()["id"]


def test_graphql_create_order_honours_its_idempotency_key(client, issuer):
    headers = bearer(issuer.token("cust-g"))
    first, again = (graphql(client, CREATE_ORDER, headers, input=order_of("cust-g"), key="gql-1")["data"]["createOrder"]
                    for _ in range(2))
    assert first["__typename"] == "OrderCreated" and again == first
    reused = graphql(client, CREATE_ORDER, headers, input=order_of("cust-g", quantity=9), key="gql-1")
    assert reused["data"]["createOrder"]["__typename"] == "IdempotencyKeyReusedError"
    assert reused["data"]["createOrder"]["idempotencyKey"] == "gql-1"


@pytest.mark.parametrize("key", [b"", b"k" * 256, "naïve".encode(), b"tab\there"])
def test_a_malformed_idempotency_key_is_400(client, key):
    response = client.post("/api/orders", json=SEED_ORDER,
                           headers={b"x-functions-key": FUNCTION_KEY.encode(), b"Idempotency-Key": key})
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "Idempotency-Key"


# --- exposure -------------------------------------------------------------------------------------------


def test_without_authentication_a_loopback_gateway_is_open(tmp_path):
    settings = Settings(data_dir=tmp_path, prefect_api_url="http://127.0.0.1:9/api")
    refuse_open_exposure(settings)
    with TestClient(create_app(settings)) as client:
        assert client.post("/api/orders", json=SEED_ORDER).status_code == 202


@pytest.mark.parametrize("options, refused", [
    ({"OrderProcessing__GatewayHost": "0.0.0.0"}, True),
    ({"OrderProcessing__GatewayHost": "::"}, True),
    ({"OrderProcessing__GatewayHost": "0.0.0.0", "OrderProcessing__AllowAnonymous": "true"}, False),
    ({"OrderProcessing__GatewayHost": "0.0.0.0", "OrderProcessing__ApiKeys": FUNCTION_KEY}, False),
    ({"OrderProcessing__GatewayHost": "localhost"}, False),
    ({"OrderProcessing__GatewayHost": "::1"}, False),
])
def test_without_authentication_only_loopback_is_served_unless_anonymous_is_allowed(options, refused):
    if refused:
        with pytest.raises(SystemExit, match="OrderProcessing__AllowAnonymous=true"):
            refuse_open_exposure(Settings(**options))
    else:
        refuse_open_exposure(Settings(**options))


def test_the_gateway_process_refuses_an_open_address_in_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "OrderProcessing__GatewayHost": "0.0.0.0",
           "OrderProcessing__DataDir": str(tmp_path), "OrderProcessing__GatewayPort": "0"}
    done = subprocess.run([sys.executable, "-m", "gateway"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "order-saga gateway: refusing to serve 0.0.0.0 without authentication; set OrderProcessing__ApiKeys or "
        "OrderProcessing__JwtIssuer, or OrderProcessing__AllowAnonymous=true to serve it open"]


def test_order_saga_up_refuses_an_open_address_before_it_starts_anything(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "OrderProcessing__GatewayHost": "0.0.0.0", "OrderProcessing__DataDir": str(tmp_path)}
    done = subprocess.run([str(Path(sys.executable).parent / "order-saga"), "up"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "refusing to serve 0.0.0.0 without authentication" in done.stderr
    assert done.stdout == "" and not (tmp_path / "prefect").exists()  # no process was started


def test_a_short_function_key_or_an_issuer_without_audience_is_a_configuration_error(issuer):
    with pytest.raises(ValueError, match="at least 16 characters"):
        Settings(OrderProcessing__ApiKeys="short")
    with pytest.raises(ValueError, match="JwtAudience must be set"):
        Settings(OrderProcessing__JwtIssuer=issuer.url)
