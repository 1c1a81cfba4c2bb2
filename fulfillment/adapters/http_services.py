"""`Inventory`, `Payments` and `Shipping` over HTTP, as documented in `docs/downstream-http.md`.

Each service is reached at its own base URL (the embedded ones are mounted at `/inventory`, `/payments` and
`/shipping` of the gateway). Every effect is a `PUT` or `DELETE` keyed by order id in the path, so the saga's
retries are safe. Failures are translated here: a 409 refusal becomes `StepRefused`; timeouts, connection
failures and 5xx (and 408/429, which ask for a retry) become `TransientFault`; any other answer is outside the
contract and raises `UnexpectedResponse`, which is not worth retrying (a wrong base URL, a client bug).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from fulfillment.domain import OrderItem, StepRefused, TransientFault

DEFAULT_TIMEOUT_SECONDS = 5.0
RETRY_LATER_STATUSES = frozenset({408, 429})
TRANSPORT_FAULTS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
T = TypeVar("T")


class UnexpectedResponse(Exception):
    """The service answered outside the documented contract."""


@dataclass(frozen=True)
class _Answer:
    request: str
    body: dict[str, Any]

    def value(self, name: str, kind: type[T]) -> T:
        value = self.body.get(name)
        if not isinstance(value, kind):
            raise UnexpectedResponse(f"{self.request}: the answer has no {kind.__name__} {name!r}: {self.body}")
        return value


class _HttpService:
    def __init__(self, base_url: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS):
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/") + "/", timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> _Answer:
        request = f"{method} {self._http.base_url}{path}"
        try:
            response = await self._http.request(method, path, json=body)
        except TRANSPORT_FAULTS as error:
            raise TransientFault(f"{request}: {type(error).__name__} {error}".rstrip()) from error
        if response.is_server_error or response.status_code in RETRY_LATER_STATUSES:
            raise TransientFault(f"{request}: {_status(response)}")
        if response.status_code == 409:
            raise _refusal(request, response)
        if response.status_code != 200:
            raise UnexpectedResponse(f"{request}: unexpected {_status(response)}")
        return _Answer(request, _json_object(request, response))


class HttpInventory(_HttpService):
    async def reserve(self, order_id: str, items: Sequence[OrderItem]) -> str:
        answer = await self._call("PUT", f"reservations/{_segment(order_id)}", {"items": _items(items)})
        return answer.value("reservationId", str)

    async def release(self, order_id: str) -> bool:
        answer = await self._call("DELETE", f"reservations/{_segment(order_id)}")
        return answer.value("released", bool)

    async def set_stock(self, product_id: str, quantity: int) -> None:
        await self._call("PUT", f"stock/{_segment(product_id)}", {"quantity": quantity})

    async def available(self, product_id: str) -> int:
        answer = await self._call("GET", f"stock/{_segment(product_id)}")
        return answer.value("available", int)


class HttpPayments(_HttpService):
    async def charge(self, order_id: str, customer_id: str, amount: Decimal) -> str:
        body = {"customerId": customer_id, "amount": _money(amount)}
        answer = await self._call("PUT", f"charges/{_segment(order_id)}", body)
        return answer.value("transactionId", str)

    async def refund(self, order_id: str) -> bool:
        answer = await self._call("DELETE", f"charges/{_segment(order_id)}")
        return answer.value("refunded", bool)


class HttpShipping(_HttpService):
    async def create_shipment(self, order_id: str, customer_id: str, items: Sequence[OrderItem]) -> str:
        body = {"customerId": customer_id, "items": _items(items)}
        answer = await self._call("PUT", f"shipments/{_segment(order_id)}", body)
        return answer.value("trackingId", str)


def _segment(identifier: str) -> str:
    return quote(identifier, safe="")


def _money(amount: Decimal) -> str:
    """Plain decimal notation, never a float and never an exponent ("100", not "1E+2")."""
    return format(amount, "f")


def _items(items: Sequence[OrderItem]) -> list[dict[str, Any]]:
    return [{"productId": item.product_id, "productName": item.product_name, "quantity": item.quantity,
             "unitPrice": _money(item.unit_price)} for item in items]


def _refusal(request: str, response: httpx.Response) -> Exception:
    body = _json_object(request, response)
    code, detail = body.get("code"), body.get("detail")
    if not isinstance(code, str) or not isinstance(detail, str):
        return UnexpectedResponse(f"{request}: a 409 without a code and a detail: {_status(response)}")
    return StepRefused(code, detail)


def _json_object(request: str, response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise UnexpectedResponse(f"{request}: the answer is not a JSON object: {_status(response)}")
    return body


def _status(response: httpx.Response) -> str:
    return f"{response.status_code} {response.reason_phrase}: {response.text[:300]}"
