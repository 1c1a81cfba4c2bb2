"""`GET /openapi.json`: the OpenAPI 3.1 document of the REST routes (contract §3, §3a, §6).

The request body of `POST /api/orders` is generated from `CreateOrderRequest` (its shape) with the order rules
of the domain added (its bounds); everything else is written here, as `gateway.rest.order_json` and
`gateway.errors` answer. The webhook is in the document only when it is served (a webhook key is set).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fulfillment.domain import OrderStatus
from fulfillment.domain.model import MAX_ITEMS, MAX_QUANTITY, MAX_UNIT_PRICE
from fulfillment.service.requests import CreateOrderRequest
from gateway.errors import services

REF = "#/components/schemas/{model}"
NON_EMPTY = {"type": "string", "minLength": 1, "pattern": r"\S"}


def _schema(name: str) -> dict:
    return {"$ref": REF.format(model=name)}


def _json(name: str, description: str, headers: dict | None = None) -> dict:
    response = {"description": description, "content": {"application/json": {"schema": _schema(name)}}}
    return {**response, "headers": headers} if headers else response


def _error(description: str, headers: dict | None = None) -> dict:
    return _json("Error", description, headers)


def _header(description: str, schema: dict | None = None) -> dict:
    return {"description": description, "schema": schema or {"type": "string"}}


AUTH_RESPONSES = {
    "401": _error("No valid credentials.", {"WWW-Authenticate": _header("The scheme to authenticate with.")}),
    "403": _error("The credentials do not allow this (a customer's token acts for its own customer only)."),
}
UNAVAILABLE = {"503": _error("The order store is unavailable; retry.",
                             {"Retry-After": _header("Seconds to wait.", {"type": "string"})})}
ORDER_SECURITY = [{"functionKey": []}, {"functionKeyQuery": []}, {"bearer": []}]
WEBHOOK_SECURITY = [{"eventGridKey": []}, {"eventGridKeyQuery": []}]


def _create_order_request() -> tuple[dict, dict]:
    """`CreateOrderRequest` and its item, as pydantic generates them, with the order rules of contract §1."""
    generated = CreateOrderRequest.model_json_schema(ref_template=REF.format(model="{model}"))
    item = generated.pop("$defs")["_ItemRequest"]
    generated["properties"]["customerId"] = NON_EMPTY
    generated["properties"]["items"].update(minItems=1, maxItems=MAX_ITEMS)
    item["properties"].update(
        productId=NON_EMPTY, productName=NON_EMPTY,
        quantity={"type": "integer", "minimum": 1, "maximum": MAX_QUANTITY},
        unitPrice={"type": "number", "minimum": 0, "maximum": float(MAX_UNIT_PRICE), "multipleOf": 0.01,
                   "description": "At most 2 decimals."})
    generated["properties"]["items"]["items"] = _schema("OrderItemRequest")  # a public name for `_ItemRequest`
    for model in (generated, item):
        model.pop("title")
        for field in model["properties"].values():
            field.pop("title", None)
    return generated, item


def _components(events: bool) -> dict:
    create_order, item = _create_order_request()
    schemas = {
        "CreateOrderRequest": create_order,
        "OrderItemRequest": item,
        "Order": {
            "type": "object", "additionalProperties": False,
            "required": ["id", "customerId", "status", "totalAmount", "createdAt", "completedAt", "failureReason",
                         "manualInterventionRequired", "items"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "customerId": {"type": "string"},
                "status": {"type": "string", "enum": [status.value for status in OrderStatus]},
                "totalAmount": {"type": "number", "minimum": 0},
                "createdAt": {"type": "string", "format": "date-time"},
                "completedAt": {"type": ["string", "null"], "format": "date-time"},
                "failureReason": {"type": ["string", "null"]},
                "manualInterventionRequired": {
                    "type": "boolean", "description": "A compensation keeps failing; an operator must look."},
                "items": {"type": "array", "items": _schema("OrderItem")},
            },
        },
        "OrderItem": {
            "type": "object", "additionalProperties": False,
            "required": ["productId", "productName", "quantity", "unitPrice"],
            "properties": {"productId": {"type": "string"}, "productName": {"type": "string"},
                           "quantity": {"type": "integer"}, "unitPrice": {"type": "number"}},
        },
        "Error": {
            "type": "object", "additionalProperties": False, "required": ["error", "message"],
            "properties": {
                "error": {"type": "string", "examples": ["validation_failed"]},
                "message": {"type": "string"},
                "errors": {"type": "array", "items": _schema("FieldError")},
            },
        },
        "FieldError": {
            "type": "object", "additionalProperties": False, "required": ["field", "message"],
            "properties": {"field": {"type": "string", "examples": ["items[0].quantity"]},
                           "message": {"type": "string"}},
        },
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
        "Readiness": {
            "type": "object", "additionalProperties": False, "required": ["status", "checks", "sagaBacklog"],
            "properties": {
                "status": {"enum": ["ready", "not ready"]},
                "checks": {"type": "object", "additionalProperties": {"type": "string"},
                           "description": "`ok`, or what is wrong, per dependency (`store`, `prefect`)."},
                "sagaBacklog": {"type": ["integer", "null"], "description": "Sagas waiting to be run."},
            },
        },
    }
    security = {
        "functionKey": {"type": "apiKey", "in": "header", "name": "x-functions-key"},
        "functionKeyQuery": {"type": "apiKey", "in": "query", "name": "code"},
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "description": "An OIDC / Entra ID token: acts for its own customer, or any with `Orders.Admin`."},
    }
    if events:
        schemas |= _event_schemas()
        security |= {
            "eventGridKey": {"type": "apiKey", "in": "header", "name": "aeg-sas-key"},
            "eventGridKeyQuery": {"type": "apiKey", "in": "query", "name": "code"},
        }
    return {"schemas": schemas, "securitySchemes": security}


def _event_schemas() -> dict:
    return {
        "EventDelivery": {
            "description": "One event or a batch, in Event Grid schema or CloudEvents 1.0.",
            "anyOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}],
        },
        "EventOutcomes": {
            "type": "object", "additionalProperties": False, "required": ["outcomes"],
            "properties": {"outcomes": {"type": "array", "items": _schema("EventOutcome")}},
        },
        "EventOutcome": {"enum": ["accepted", "duplicate", "ignored", "poison"]},
        "ValidationResponse": {
            "type": "object", "additionalProperties": False, "required": ["validationResponse"],
            "properties": {"validationResponse": {"type": "string"}},
        },
        "PoisonEvents": {
            "type": "object", "additionalProperties": False, "required": ["error", "message", "events", "outcomes"],
            "properties": {
                "error": {"const": "poison_events"},
                "message": {"type": "string"},
                "events": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False, "required": ["index", "id", "error", "fields"],
                    "properties": {"index": {"type": "integer"}, "id": {"type": ["string", "null"]},
                                   "error": {"type": "string"},
                                   "fields": {"type": "array", "items": {"type": "string"}}}}},
                "outcomes": {"type": "array", "items": _schema("EventOutcome")},
            },
        },
    }


def _order_paths() -> dict:
    return {
        "/api/orders": {"post": {
            "operationId": "createOrder", "summary": "Place an order and start its saga.",
            "security": ORDER_SECURITY,
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                            "description": "The same key with the same body answers the same order "
                                           "(printable ASCII, kept `OrderProcessing__IdempotencyKeyHours`)."}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _schema("CreateOrderRequest")}}},
            "responses": {
                "202": _json("Order", "Accepted: the order, `processing`.",
                             {"Location": _header("`/api/orders/{id}` of the order.")}),
                "400": _error("Not JSON (`invalid_json`), not a CreateOrderRequest (`invalid_request`), or one that "
                              "breaks the order rules (`validation_failed`); `errors` names each field."),
                **AUTH_RESPONSES,
                "413": _error("The body is too large."),
                "415": _error("The body is not sent as JSON."),
                "422": _error("The Idempotency-Key was used before with a different body."),
                **UNAVAILABLE,
            },
        }},
        "/api/orders/{id}": {"get": {
            "operationId": "getOrder", "summary": "An order by id.", "security": ORDER_SECURITY,
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}],
            "responses": {"200": _json("Order", "The order."), "400": _error("The id is not a UUID."),
                          **AUTH_RESPONSES, "404": _error("No order has this id."), **UNAVAILABLE},
        }},
        "/api/orders/customer/{customerId}": {"get": {
            "operationId": "listCustomerOrders", "summary": "A customer's orders, newest first.",
            "security": ORDER_SECURITY,
            "parameters": [
                {"name": "customerId", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
                 "description": "Orders per page (at most `MaxPageSize`)."},
                {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "The `X-Next-Cursor` of the previous page."},
            ],
            "responses": {
                "200": {"description": "A page of the customer's orders (`[]` for an unknown customer).",
                        "headers": {"X-Next-Cursor": _header("Present when there are more: pass it as `cursor`.")},
                        "content": {"application/json": {"schema": {"type": "array", "items": _schema("Order")}}}},
                "400": _error("A bad `limit` or `cursor`."), **AUTH_RESPONSES, **UNAVAILABLE,
            },
        }},
    }


def _health_paths() -> dict:
    return {
        "/healthz": {"get": {"operationId": "healthz", "summary": "Liveness.", "security": [],
                             "responses": {"200": _json("Health", "The process runs.")}}},
        "/readyz": {"get": {"operationId": "readyz", "summary": "Readiness: the store answers, Prefect is reachable.",
                            "security": [],
                            "responses": {"200": _json("Readiness", "Ready, with the saga backlog."),
                                          "503": _json("Readiness", "Not ready: `checks` names what is down.")}}},
    }


def _event_paths() -> dict:
    return {"/api/events": {
        "post": {
            "operationId": "receiveEvents", "summary": "Event Grid deliveries (HandleInventoryEvent).",
            "security": WEBHOOK_SECURITY,
            "requestBody": {"required": True, "content": {
                media: {"schema": _schema("EventDelivery")}
                for media in ("application/json", "application/cloudevents+json",
                              "application/cloudevents-batch+json")}},
            "responses": {
                "200": {"description": "Each event's outcome, or the answer to the subscription validation.",
                        "content": {"application/json": {"schema": {
                            "anyOf": [_schema("EventOutcomes"), _schema("ValidationResponse")]}}}},
                "400": {"description": "Poison events (never retried), each named, or a malformed delivery.",
                        "content": {"application/json": {"schema": {
                            "anyOf": [_schema("PoisonEvents"), _schema("Error")]}}}},
                "401": _error("A missing or wrong webhook key."),
                "413": _error("The body is too large."),
                **UNAVAILABLE,
            },
        },
        "options": {
            "operationId": "eventsHandshake", "summary": "The CloudEvents abuse-protection handshake.",
            "security": WEBHOOK_SECURITY,
            "parameters": [
                {"name": "WebHook-Request-Origin", "in": "header", "required": True, "schema": {"type": "string"}},
                {"name": "WebHook-Request-Rate", "in": "header", "required": False, "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {"description": "Deliveries from the origin are allowed.", "headers": {
                    "WebHook-Allowed-Origin": _header("The origin asked for."),
                    "WebHook-Allowed-Rate": _header("`*` when a rate was asked for.")}},
                "400": _error("No WebHook-Request-Origin header."),
                "401": _error("A missing or wrong webhook key."),
            },
        },
    }}


@cache
def document(events: bool) -> dict[str, Any]:
    """The OpenAPI document; `events`: the webhook is served."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "order-saga", "version": "1.0.0",
                 "description": "REST routes of the order-saga gateway; GraphQL is at `/graphql`."},
        "paths": {**_order_paths(), **(_event_paths() if events else {}), **_health_paths()},
        "components": _components(events),
    }


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(document(bool(services(request).settings.event_grid_webhook_key)))


routes = [Route("/openapi.json", openapi, methods=["GET"])]
