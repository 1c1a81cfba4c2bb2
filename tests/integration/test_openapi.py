"""`GET /openapi.json`: the OpenAPI 3.1 document of the REST routes (the fuzz suite checks answers against it)."""

from __future__ import annotations

from starlette.testclient import TestClient

from fulfillment.settings import Settings
from gateway.app import create_app


def document(tmp_path, **options) -> dict:
    settings = Settings(data_dir=tmp_path, prefect_api_url="http://127.0.0.1:9/api", **options)
    with TestClient(create_app(settings)) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def test_the_document_covers_the_order_and_health_routes_and_declares_their_auth(tmp_path):
    served = document(tmp_path)

    assert served["openapi"] == "3.1.0"
    assert set(served["paths"]) == {"/api/orders", "/api/orders/{id}", "/api/orders/customer/{customerId}",
                                    "/healthz", "/readyz"}
    assert set(served["components"]["securitySchemes"]) == {"functionKey", "functionKeyQuery", "bearer"}
    create = served["paths"]["/api/orders"]["post"]
    assert {"202", "400", "401", "403", "413", "415", "422", "503"} <= set(create["responses"])
    assert [p["name"] for p in create["parameters"]] == ["Idempotency-Key"]


def test_the_webhook_is_in_the_document_only_when_it_is_served(tmp_path):
    served = document(tmp_path, event_grid_webhook_key="k")

    assert set(served["paths"]["/api/events"]) == {"post", "options"}


def test_the_order_request_schema_carries_the_order_rules(tmp_path):
    schemas = document(tmp_path)["components"]["schemas"]

    assert schemas["CreateOrderRequest"]["required"] == ["customerId", "items"]
    assert schemas["CreateOrderRequest"]["properties"]["items"]["maxItems"] == 100
    assert schemas["OrderItemRequest"]["properties"]["quantity"] == {"type": "integer", "minimum": 1,
                                                                     "maximum": 100_000}
