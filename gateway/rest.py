"""The REST compatibility routes of contract §3: parse, call the order service, map the result."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fulfillment.domain import FieldError, InvalidRequest, Order
from fulfillment.service.requests import decode_json
from gateway.auth import caller
from gateway.errors import ApiError, services

JSON_TYPES = ("application/json", "application/cloudevents+json", "application/cloudevents-batch+json")


async def create_order(request: Request) -> Response:
    actor = await caller(request)
    key = idempotency_key(request.headers.get("idempotency-key"), field="Idempotency-Key")
    payload = await read_json(request)
    order = await services(request).order_service.place(payload, source="rest", actor=actor, idempotency_key=key)
    return JSONResponse(order_json(order), status_code=202, headers={"Location": f"/api/orders/{order.id}"})


async def get_order(request: Request) -> Response:
    actor = await caller(request)
    order_id = parse_order_id(request.path_params["id"])
    return JSONResponse(order_json(await services(request).order_service.get(order_id, actor=actor)))


async def orders_by_customer(request: Request) -> Response:
    actor = await caller(request)
    limit = _positive_int(request.query_params.get("limit"), "limit")
    try:
        page = await services(request).order_service.list_by_customer(
            request.path_params["customerId"], actor=actor, first=limit, after=request.query_params.get("cursor"))
    except InvalidRequest as error:  # the store names the cursor `after` (GraphQL); here it is `?cursor=`
        raise InvalidRequest([FieldError("cursor" if e.field == "after" else e.field, e.message)
                              for e in error.errors]) from None
    headers = {"X-Next-Cursor": page.next_cursor} if page.next_cursor else None
    return JSONResponse([order_json(order) for order in page.orders], headers=headers)


async def read_json(request: Request, *, wrong_media_type_status: int = 415) -> Any:
    """The request body decoded as JSON, or the 415 / 400 that explains why not."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in JSON_TYPES:
        raise ApiError(wrong_media_type_status, "unsupported_media_type",
                       f"send JSON with Content-Type: application/json, not {media_type or 'no content type'}")
    try:
        return decode_json(await request.body())  # no larger than MaxBodyBytes: see gateway.limits
    except ValueError as error:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {error}") from None


MAX_IDEMPOTENCY_KEY_CHARS = 255
UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def parse_order_id(raw: str) -> str:
    """The id in its canonical form (ids are stored as lower-case UUIDs)."""
    if UUID_TEXT.fullmatch(raw):
        return raw
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise InvalidRequest([FieldError("id", f"must be a UUID, got {raw!r}")]) from None


def idempotency_key(raw: str | None, *, field: str) -> str | None:
    """A client's idempotency key as given (Stripe's rules: at most 255 characters), or None."""
    if raw is None:
        return None
    if not (1 <= len(raw) <= MAX_IDEMPOTENCY_KEY_CHARS and raw.isascii() and raw.isprintable()):
        raise InvalidRequest([FieldError(field, f"must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters")])
    return raw


def order_json(order: Order) -> dict[str, Any]:
    """An order as the seed's samples show it, and whether an operator must look at it (a compensation that keeps
    failing: the order stays `compensating` while it is retried)."""
    return {
        "id": order.id,
        "customerId": order.customer_id,
        "status": order.status.value,
        "totalAmount": json_amount(order.total_amount),
        "createdAt": iso_utc(order.created_at),
        "completedAt": iso_utc(order.completed_at) if order.completed_at else None,
        "failureReason": order.failure_reason,
        "manualInterventionRequired": order.needs_manual_intervention,
        "items": [
            {"productId": i.product_id, "productName": i.product_name, "quantity": i.quantity,
             "unitPrice": json_amount(i.unit_price)}
            for i in order.items
        ],
    }


def iso_utc(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def json_amount(amount: Decimal) -> int | float:
    """An exact amount as a JSON number: 149.93, never 149.92999... (a 2-decimal amount's float prints back
    as the same shortest decimal, since repr round-trips)."""
    return int(amount) if amount == amount.to_integral_value() else float(amount)


def _positive_int(raw: str | None, name: str) -> int | None:
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise InvalidRequest([FieldError(name, f"must be a whole number of 1 or more, got {raw!r}")])
    return int(raw)


routes = [  # status polling first: it is the most frequent request
    Route("/api/orders/{id}", get_order, methods=["GET"]),
    Route("/api/orders", create_order, methods=["POST"]),
    Route("/api/orders/customer/{customerId}", orders_by_customer, methods=["GET"]),
]
