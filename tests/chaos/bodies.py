"""Request bodies of `docs/downstream-http.md`, read by hand: every broken field is named, none is guessed."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

MAX_ITEMS = 100
_PLAIN_DECIMAL = re.compile(r"\d{1,15}(\.\d{1,15})?")
_CENT = Decimal("0.01")


class InvalidBody(Exception):
    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors))


@dataclass(frozen=True)
class Item:
    product_id: str
    product_name: str
    quantity: int
    unit_price: Decimal


class _Reader:
    """Reads fields out of a JSON object, collecting what is wrong instead of stopping at the first error."""

    def __init__(self, raw: bytes):
        try:
            body = json.loads(raw)
        except ValueError as error:
            raise InvalidBody([("body", f"is not valid JSON: {error}")]) from None
        if not isinstance(body, dict):
            raise InvalidBody([("body", "must be a JSON object")])
        self.body: dict[str, Any] = body
        self.errors: list[tuple[str, str]] = []

    def done(self) -> None:
        if self.errors:
            raise InvalidBody(self.errors)

    def _get(self, obj: dict[str, Any], name: str, path: str) -> Any:
        if name not in obj:
            self.errors.append((path, "is required"))
        return obj.get(name)

    def text(self, obj: dict[str, Any], name: str, path: str) -> str:
        value = self._get(obj, name, path)
        if name in obj and (not isinstance(value, str) or not value.strip()):
            self.errors.append((path, "must be a non-blank string"))
        return value if isinstance(value, str) else ""

    def whole(self, obj: dict[str, Any], name: str, path: str, minimum: int) -> int:
        value = self._get(obj, name, path)
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if name in obj and (not is_int or value < minimum):
            self.errors.append((path, f"must be an integer greater than or equal to {minimum}"))
        return value if is_int else 0

    def money(self, obj: dict[str, Any], name: str, path: str) -> Decimal:
        value = self._get(obj, name, path)
        if name not in obj:
            return Decimal(0)
        if not isinstance(value, str) or not _PLAIN_DECIMAL.fullmatch(value):
            self.errors.append((path, 'must be a string holding a non-negative plain decimal number, e.g. "149.93"'))
            return Decimal(0)
        amount = Decimal(value)
        if amount != amount.quantize(_CENT):
            self.errors.append((path, f"must not hold fractions of a cent, got {value}"))
        return amount

    def items(self) -> list[Item]:
        value = self._get(self.body, "items", "items")
        if "items" in self.body and (not isinstance(value, list) or not 1 <= len(value) <= MAX_ITEMS):
            self.errors.append(("items", f"must be an array of 1 to {MAX_ITEMS} items"))
            return []
        return [self._item(entry, f"items[{index}]") for index, entry in enumerate(value or [])]

    def _item(self, entry: Any, path: str) -> Item:
        if not isinstance(entry, dict):
            self.errors.append((path, "must be an object"))
            return Item("", "", 0, Decimal(0))
        return Item(self.text(entry, "productId", f"{path}.productId"),
                    self.text(entry, "productName", f"{path}.productName"),
                    self.whole(entry, "quantity", f"{path}.quantity", 1),
                    self.money(entry, "unitPrice", f"{path}.unitPrice"))


def reservation(raw: bytes) -> list[Item]:
    reader = _Reader(raw)
    items = reader.items()
    reader.done()
    return items


def stock(raw: bytes) -> int:
    reader = _Reader(raw)
    quantity = reader.whole(reader.body, "quantity", "quantity", 0)
    reader.done()
    return quantity


def charge(raw: bytes) -> tuple[str, Decimal]:
    reader = _Reader(raw)
    customer_id = reader.text(reader.body, "customerId", "customerId")
    amount = reader.money(reader.body, "amount", "amount")
    reader.done()
    return customer_id, amount


def shipment(raw: bytes) -> tuple[str, list[Item]]:
    reader = _Reader(raw)
    customer_id, items = reader.text(reader.body, "customerId", "customerId"), reader.items()
    reader.done()
    return customer_id, items
