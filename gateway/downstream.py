"""The HTTP contract of the downstream services (`docs/downstream-http.md`), served from any port implementations.

Mounted over the embedded SQLite services (`create_services_app`, served on loopback by `gateway.services_server`),
it is the real server the HTTP clients of `fulfillment.adapters.http_services` are tested against, what base URLs
can point at locally, and a reference for teams implementing the contract.
Errors are mapped here rather than in the app's exception handlers, so the routes behave the same in any app.
Ids are matched with the `path` convertor, so an id holding a percent-encoded "/" still names one resource.
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from fulfillment.bootstrap import embedded_downstream
from fulfillment.domain import FieldError, InvalidRequest, OrderItem, StepRefused, StoreUnavailable, TransientFault
from fulfillment.domain.model import CENT, MAX_ITEMS
from fulfillment.ports import Inventory, Payments, Shipping
from fulfillment.service.events import MAX_STOCK
from fulfillment.service.requests import decode_json, parse
from fulfillment.settings import Settings
from gateway import health

PLAIN_DECIMAL = re.compile(r"\d{1,15}(\.\d{1,15})?")
Body = TypeVar("Body", bound=BaseModel)
Handler = Callable[[Request], Awaitable[dict[str, Any]]]


def _money(value: Any) -> Decimal:
    if not isinstance(value, str) or not PLAIN_DECIMAL.fullmatch(value):
        raise ValueError('must be a string holding a decimal number, e.g. "149.93"')
    amount = Decimal(value)
    if amount != amount.quantize(CENT):
        raise ValueError(f"must not have fractions of a cent, got {value}")
    return amount


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Money = Annotated[Decimal, PlainValidator(_money)]
Text = Annotated[str, AfterValidator(_not_blank)]


class _Item(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)
    productId: Text
    productName: Text
    quantity: int = Field(ge=1)
    unitPrice: Money

    def to_domain(self) -> OrderItem:
        return OrderItem(self.productId, self.productName, self.quantity, self.unitPrice)


class _Reservation(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)
    items: list[_Item] = Field(min_length=1, max_length=MAX_ITEMS)


class _Stock(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)
    quantity: int = Field(ge=0, le=MAX_STOCK)


class _Charge(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)
    customerId: Text
    amount: Money


class _Shipment(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)
    customerId: Text
    items: list[_Item] = Field(min_length=1, max_length=MAX_ITEMS)


def create_services_app(settings: Settings) -> Starlette:
    """The embedded services at `/inventory`, `/payments` and `/shipping`, and `/healthz`; closed when the app stops."""
    embedded = embedded_downstream(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await embedded.aclose()

    routes = [*downstream_routes(embedded.inventory, embedded.payments, embedded.shipping),
              Route("/healthz", health.healthz)]
    return Starlette(routes=routes, lifespan=lifespan)


def downstream_routes(inventory: Inventory, payments: Payments, shipping: Shipping) -> list[BaseRoute]:
    return [
        Mount("/inventory", routes=_inventory_routes(inventory)),
        Mount("/payments", routes=_payment_routes(payments)),
        Mount("/shipping", routes=_shipping_routes(shipping)),
    ]


def _inventory_routes(inventory: Inventory) -> list[BaseRoute]:
    async def reserve(request: Request) -> dict[str, Any]:
        order_id, body = request.path_params["orderId"], await _parse(request, _Reservation)
        reservation_id = await inventory.reserve(order_id, [item.to_domain() for item in body.items])
        return {"orderId": order_id, "reservationId": reservation_id}

    async def release(request: Request) -> dict[str, Any]:
        order_id = request.path_params["orderId"]
        return {"orderId": order_id, "released": await inventory.release(order_id)}

    async def set_stock(request: Request) -> dict[str, Any]:
        product_id, body = request.path_params["productId"], await _parse(request, _Stock)
        await inventory.set_stock(product_id, body.quantity)
        return {"productId": product_id, "available": await inventory.available(product_id)}

    async def available(request: Request) -> dict[str, Any]:
        product_id = request.path_params["productId"]
        return {"productId": product_id, "available": await inventory.available(product_id)}

    return [
        _route("/reservations/{orderId:path}", "PUT", reserve),
        _route("/reservations/{orderId:path}", "DELETE", release),
        _route("/stock/{productId:path}", "PUT", set_stock),
        _route("/stock/{productId:path}", "GET", available),
    ]


def _payment_routes(payments: Payments) -> list[BaseRoute]:
    async def charge(request: Request) -> dict[str, Any]:
        order_id, body = request.path_params["orderId"], await _parse(request, _Charge)
        transaction_id = await payments.charge(order_id, body.customerId, body.amount)
        return {"orderId": order_id, "transactionId": transaction_id}

    async def refund(request: Request) -> dict[str, Any]:
        order_id = request.path_params["orderId"]
        return {"orderId": order_id, "refunded": await payments.refund(order_id)}

    return [
        _route("/charges/{orderId:path}", "PUT", charge),
        _route("/charges/{orderId:path}", "DELETE", refund),
    ]


def _shipping_routes(shipping: Shipping) -> list[BaseRoute]:
    async def ship(request: Request) -> dict[str, Any]:
        order_id, body = request.path_params["orderId"], await _parse(request, _Shipment)
        items = [item.to_domain() for item in body.items]
        return {"orderId": order_id, "trackingId": await shipping.create_shipment(order_id, body.customerId, items)}

    return [_route("/shipments/{orderId:path}", "PUT", ship)]


def _route(path: str, method: str, handler: Handler) -> Route:
    return Route(path, _mapping_errors(handler), methods=[method])


def _mapping_errors(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            return JSONResponse(await handler(request))
        except InvalidRequest as invalid:
            errors = [asdict(error) for error in invalid.errors]
            return JSONResponse({"code": "InvalidRequest", "detail": str(invalid), "errors": errors}, 400)
        except StepRefused as refusal:
            return JSONResponse({"code": refusal.code, "detail": refusal.detail}, 409)
        except (TransientFault, StoreUnavailable) as fault:
            return JSONResponse({"code": "Unavailable", "detail": str(fault)}, 503)

    return endpoint


async def _parse(request: Request, model: type[Body]) -> Body:
    try:
        payload = decode_json(await request.body())
    except ValueError as error:
        raise InvalidRequest([FieldError("body", f"is not valid JSON: {error}")]) from None
    return parse(model, payload)
