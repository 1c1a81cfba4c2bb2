"""Turning untrusted input into a new `Order`, in two stages that map to distinct errors.

1. Shape (`InvalidRequest`, dead-letter reason `DeserializationFailed`): an object with the right keys and types.
2. Rules (`InvalidOrder`, dead-letter reason `ValidationFailed`): the order rules of contract §1, in the domain.

JSON must be decoded with `decode_json`, so that prices arrive as exact decimals rather than binary floats.
Every string of a request is `Text`: a lone UTF-16 surrogate (JSON allows `"\\ud800"`) cannot be stored, logged as
UTF-8 or answered back, so it is refused at the field that carries it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainValidator, ValidationError

from fulfillment.domain import FieldError, InvalidOrder, InvalidRequest, Order, OrderItem
from fulfillment.domain.model import MAX_ITEMS, item_count_error


def _exact_number(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("must be a number")
    # A float can only come from a non-JSON caller (GraphQL `Float`); its shortest repr is what was typed.
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


ExactNumber = Annotated[Decimal, PlainValidator(_exact_number)]


def unicode_problem(value: str) -> str | None:
    """Why `value` is not text that UTF-8 can hold (a lone surrogate), or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"must be Unicode text, got a lone surrogate U+{ord(value[error.start]):04X} at {error.start}"
    return None


def _text(value: Any) -> Any:
    if isinstance(value, str) and (problem := unicode_problem(value)):
        raise ValueError(problem)
    return value  # anything else is refused (or not) by the `str` validation that follows


Text = Annotated[str, BeforeValidator(_text)]


class _ItemRequest(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)
    productId: Text
    productName: Text
    quantity: int
    unitPrice: ExactNumber


class CreateOrderRequest(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)
    customerId: Text
    items: list[_ItemRequest]


def decode_json(body: bytes | str, *, parse_float: Callable[[str], Any] = Decimal) -> Any:
    """Raises `ValueError` when the body is not JSON: malformed, not UTF-8, or nested deeper than Python's
    recursion limit lets the decoder go."""
    try:
        return json.loads(body, parse_float=parse_float)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def parse_create_order(payload: Any) -> CreateOrderRequest:
    """A request that lacks required fields but is otherwise well-formed breaks the rules (`InvalidOrder`), as
    the original design has it; wrong types or a non-object are no request at all (`InvalidRequest`)."""
    items = payload.get("items") if isinstance(payload, dict) else None
    if isinstance(items, list) and len(items) > MAX_ITEMS:  # refused before thousands of items are validated
        raise InvalidOrder([item_count_error(len(items))])
    try:
        return parse(CreateOrderRequest, payload)
    except InvalidRequest as error:
        if isinstance(payload, dict) and all(e.message == "is required" for e in error.errors):
            raise InvalidOrder(error.errors) from None
        raise


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], payload: Any, *, prefix: str = "") -> M:
    """`payload` as a `model`, or `InvalidRequest` naming each wrong field (under `prefix`)."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise InvalidRequest([FieldError(_field_path((*([prefix] if prefix else []), *e["loc"])), _message(e))
                              for e in exc.errors()]) from None


def new_order(request: CreateOrderRequest) -> Order:
    """Raises `InvalidOrder` when the request breaks the order rules."""
    items = [
        OrderItem(product_id=i.productId, product_name=i.productName, quantity=i.quantity, unit_price=i.unitPrice)
        for i in request.items
    ]
    return Order.place(request.customerId, items)


def _field_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def _message(error: Any) -> str:
    if error["type"] == "missing":
        return "is required"
    if error["type"] == "model_type":
        return "must be a JSON object"
    return error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
