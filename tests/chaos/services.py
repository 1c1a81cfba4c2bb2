"""Inventory, payments and shipping in memory, as three other teams would keep them: each with its own state and
lock, each idempotent per effect id, each writing to the ledger in the same critical section as its change."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from tests.chaos.bodies import Item
from tests.chaos.ledger import Ledger

REFUSED_PRODUCT_PREFIX = "hazmat-"


class Refused(Exception):
    """A business refusal, answered 409."""

    def __init__(self, code: str, detail: str):
        self.code, self.detail = code, detail
        super().__init__(f"{code}: {detail}")


@dataclass
class _Reservation:
    reservation_id: str
    units: Counter[str]
    released: bool = False


@dataclass
class _Charge:
    transaction_id: str
    amount: Decimal
    refunded: bool = False


class ChaosInventory:
    def __init__(self, ledger: Ledger, default_stock: int):
        self._ledger, self._default_stock = ledger, default_stock
        self._lock = threading.Lock()
        self._stock: dict[str, int] = {}
        self._reservations: dict[str, _Reservation] = {}

    def reserve(self, effect_id: str, items: Sequence[Item]) -> str:
        wanted = Counter[str]()
        for item in items:
            wanted[item.product_id] += item.quantity
        with self._lock:
            if effect_id in self._reservations:
                return self._reservations[effect_id].reservation_id
            short = [f"{product}: {n} wanted, {have} available" for product, n in sorted(wanted.items())
                     if (have := self._available(product)) < n]
            if short:
                raise Refused("OutOfStock", ", ".join(short))
            for product, n in wanted.items():
                self._stock[product] = self._available(product) - n
            reservation = self._reservations[effect_id] = _Reservation(f"res-{uuid.uuid4()}", wanted)
            self._ledger.record("reserve", effect_id)
            return reservation.reservation_id

    def release(self, effect_id: str) -> bool:
        with self._lock:
            reservation = self._reservations.get(effect_id)
            if reservation is None or reservation.released:
                return False
            for product, n in reservation.units.items():
                self._stock[product] = self._available(product) + n
            reservation.released = True
            self._ledger.record("release", effect_id)
            return True

    def set_stock(self, product_id: str, quantity: int) -> None:
        with self._lock:
            self._stock[product_id] = quantity

    def available(self, product_id: str) -> int:
        with self._lock:
            return self._available(product_id)

    def _available(self, product_id: str) -> int:
        return self._stock.get(product_id, self._default_stock)


class ChaosPayments:
    def __init__(self, ledger: Ledger, credit_limit: Decimal):
        self._ledger, self._credit_limit = ledger, credit_limit
        self._lock = threading.Lock()
        self._charges: dict[str, _Charge] = {}

    def charge(self, effect_id: str, customer_id: str, amount: Decimal) -> str:
        with self._lock:
            if effect_id in self._charges:
                return self._charges[effect_id].transaction_id
            if amount > self._credit_limit:
                raise Refused("PaymentDeclined",
                              f"{amount} exceeds the credit limit of {self._credit_limit} for {customer_id}")
            charge = self._charges[effect_id] = _Charge(f"txn-{uuid.uuid4()}", amount)
            self._ledger.record("charge", effect_id, amount)
            return charge.transaction_id

    def refund(self, effect_id: str) -> bool:
        with self._lock:
            charge = self._charges.get(effect_id)
            if charge is None or charge.refunded:
                return False
            charge.refunded = True
            self._ledger.record("refund", effect_id, charge.amount)
            return True


class ChaosShipping:
    def __init__(self, ledger: Ledger):
        self._ledger = ledger
        self._lock = threading.Lock()
        self._shipments: dict[str, str] = {}

    def ship(self, effect_id: str, customer_id: str, items: Sequence[Item]) -> str:
        refused = sorted({item.product_id for item in items if item.product_id.startswith(REFUSED_PRODUCT_PREFIX)})
        with self._lock:
            if effect_id in self._shipments:
                return self._shipments[effect_id]
            if refused:
                raise Refused("ShipmentRejected", f"the carrier refuses {', '.join(refused)}")
            tracking_id = self._shipments[effect_id] = f"trk-{uuid.uuid4().hex[:16]}"
            self._ledger.record("ship", effect_id)
            return tracking_id
