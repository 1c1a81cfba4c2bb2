"""The embedded downstream services of contract §8: inventory, payments and shipping with real state in SQLite.

Every operation is one `BEGIN IMMEDIATE` transaction keyed by order id, so concurrent reservations never
oversell and a repeated call (a retry, a re-run saga) never reserves, charges, ships or refunds twice.
"""

from __future__ import annotations

import json
import random
import sqlite3
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from fulfillment.adapters.sqlite_db import SqliteDatabase
from fulfillment.domain import OrderItem, StepRefused, TransientFault

SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (product_id TEXT PRIMARY KEY, available INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (
    order_id TEXT PRIMARY KEY, reservation_id TEXT NOT NULL, units TEXT NOT NULL,
    released INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_held ON reservations (order_id) WHERE released = 0;
CREATE TABLE IF NOT EXISTS ledger (
    order_id TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('charge', 'refund')), customer_id TEXT NOT NULL,
    amount TEXT NOT NULL, transaction_id TEXT NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (order_id, kind)
);
CREATE TABLE IF NOT EXISTS shipments (
    order_id TEXT PRIMARY KEY, tracking_id TEXT NOT NULL, created_at TEXT NOT NULL
);
"""

REFUSED_PRODUCT_PREFIX = "hazmat-"


class FaultInjector:
    """Makes a call fail transiently with a given probability (option `TransientFaultRate`)."""

    def __init__(self, rate: float, rng: random.Random | None = None):
        self._rate = rate
        self._rng = rng or random.Random()

    def maybe_fail(self, operation: str) -> None:
        if self._rate and self._rng.random() < self._rate:
            raise TransientFault(f"{operation}: injected transient fault")


class EmbeddedServices:
    """One SQLite file beside the order store, shared by the three services."""

    def __init__(self, path: Path, faults: FaultInjector):
        self.db = SqliteDatabase(path, SCHEMA)
        self.faults = faults

    async def close(self) -> None:
        await self.db.close()


def _now() -> str:
    return datetime.now(UTC).isoformat()


class SqliteInventory:
    """Stock per product, and the reservations of orders in flight.

    A product has units on hand (in the warehouse) and, of those, units held by reservations that were neither
    released nor shipped. `stock.available` is what a new reservation can take: on hand minus held.
    - `reserve` moves units from available to held (they stay on hand); `release` moves them back.
    - A shipment consumes its order's reservation: the units leave the warehouse, so on hand and held drop
      alike and available does not change. Shipping records the shipment in this file; the inventory marks
      the reservation shipped (`released = 2`) when it next counts held units, and never releases it.
    - `Inventory.StockUpdated` (`set_stock`) is the warehouse's count of units on hand, held ones included:
      available becomes that count minus the units held now, so orders in flight keep theirs. It can fall
      below zero (the warehouse counts fewer than are held): reads then say 0, and releases add to the true
      figure. The count is taken as of when it is applied, so units shipped between the warehouse's count and
      its application are counted as on hand until the next count.
    A product nobody counted starts with `default_stock` units on hand.
    """

    # `reservations.released`: 0 held, 1 released, 2 shipped. Literals in the SQL, so the partial index on
    # held reservations serves the queries that look for them.
    _HELD_UNITS = ("SELECT COALESCE(SUM(units.value), 0) FROM reservations, json_each(reservations.units) AS units"
                   " WHERE reservations.released = 0 AND units.key = ?")
    _MARK_SHIPPED = ("UPDATE reservations SET released = 2 WHERE released = 0"
                     " AND EXISTS (SELECT 1 FROM shipments WHERE shipments.order_id = reservations.order_id)")

    def __init__(self, services: EmbeddedServices, default_stock: int):
        self._db = services.db
        self._faults = services.faults
        self._default_stock = default_stock

    async def reserve(self, order_id: str, items: Sequence[OrderItem]) -> str:
        self._faults.maybe_fail("inventory.reserve")
        wanted = Counter[str]()
        for item in items:
            wanted[item.product_id] += item.quantity

        def reserve(db: sqlite3.Connection) -> str:
            existing = db.execute("SELECT reservation_id FROM reservations WHERE order_id = ?", (order_id,)).fetchone()
            if existing is not None:
                return existing["reservation_id"]
            short = {p: (n, a) for p, n in wanted.items() if (a := self._available(db, p)) < n}
            if short:
                detail = ", ".join(f"{p}: {n} wanted, {a} available" for p, (n, a) in sorted(short.items()))
                raise StepRefused("OutOfStock", detail)
            for product_id, quantity in wanted.items():
                self._add(db, product_id, -quantity)
            reservation_id = f"res-{uuid.uuid4()}"
            db.execute("INSERT INTO reservations VALUES (?, ?, ?, 0, ?)",
                       (order_id, reservation_id, json.dumps(wanted), _now()))
            return reservation_id

        return await self._db.write(reserve)

    async def release(self, order_id: str) -> bool:
        """Returns the units of a held reservation; a shipped one has nothing left to return."""
        self._faults.maybe_fail("inventory.release")

        def release(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT units FROM reservations WHERE order_id = ? AND released = 0"
                             " AND NOT EXISTS (SELECT 1 FROM shipments WHERE order_id = ?)",
                             (order_id, order_id)).fetchone()
            if row is None:
                return False
            for product_id, quantity in json.loads(row["units"]).items():
                self._add(db, product_id, quantity)
            db.execute("UPDATE reservations SET released = 1 WHERE order_id = ?", (order_id,))
            return True

        return await self._db.write(release)

    async def set_stock(self, product_id: str, quantity: int) -> None:
        """`quantity` units on hand, as the warehouse counted them (held units included)."""
        def count(db: sqlite3.Connection) -> None:
            db.execute(self._MARK_SHIPPED)
            held = db.execute(self._HELD_UNITS, (product_id,)).fetchone()[0]
            db.execute("INSERT INTO stock VALUES (?, ?) ON CONFLICT (product_id) DO UPDATE SET available = excluded.available",
                       (product_id, quantity - held))

        await self._db.write(count)

    async def available(self, product_id: str) -> int:
        return await self._db.read(lambda db: self._available(db, product_id))

    def _available(self, db: sqlite3.Connection, product_id: str) -> int:
        row = db.execute("SELECT available FROM stock WHERE product_id = ?", (product_id,)).fetchone()
        return self._default_stock if row is None else max(row["available"], 0)

    def _add(self, db: sqlite3.Connection, product_id: str, delta: int) -> None:
        db.execute("INSERT INTO stock VALUES (?, ?) ON CONFLICT (product_id) DO UPDATE SET available = available + ?",
                   (product_id, self._default_stock + delta, delta))


class SqlitePayments:
    def __init__(self, services: EmbeddedServices, credit_limit: Decimal):
        self._db = services.db
        self._faults = services.faults
        self._credit_limit = credit_limit

    async def charge(self, order_id: str, customer_id: str, amount: Decimal) -> str:
        self._faults.maybe_fail("payments.charge")

        def charge(db: sqlite3.Connection) -> str:
            existing = db.execute("SELECT transaction_id FROM ledger WHERE order_id = ? AND kind = 'charge'",
                                  (order_id,)).fetchone()
            if existing is not None:
                return existing["transaction_id"]
            if amount > self._credit_limit:
                raise StepRefused("PaymentDeclined",
                                  f"{amount} exceeds the credit limit of {self._credit_limit} for {customer_id}")
            transaction_id = f"txn-{uuid.uuid4()}"
            db.execute("INSERT INTO ledger VALUES (?, 'charge', ?, ?, ?, ?)",
                       (order_id, customer_id, str(amount), transaction_id, _now()))
            return transaction_id

        return await self._db.write(charge)

    async def refund(self, order_id: str) -> bool:
        self._faults.maybe_fail("payments.refund")

        def refund(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "INSERT INTO ledger SELECT order_id, 'refund', customer_id, amount, ?, ? FROM ledger"
                " WHERE order_id = ? AND kind = 'charge' ON CONFLICT DO NOTHING",
                (f"rfd-{uuid.uuid4()}", _now(), order_id))
            return cursor.rowcount == 1

        return await self._db.write(refund)

    async def ledger(self, order_id: str) -> list[tuple[str, Decimal]]:
        """(kind, amount) entries for an order, oldest first: what was charged and refunded."""
        rows = await self._db.read(lambda db: db.execute(
            "SELECT kind, amount FROM ledger WHERE order_id = ? ORDER BY created_at", (order_id,)).fetchall())
        return [(row["kind"], Decimal(row["amount"])) for row in rows]


class SqliteShipping:
    def __init__(self, services: EmbeddedServices):
        self._db = services.db
        self._faults = services.faults

    async def create_shipment(self, order_id: str, customer_id: str, items: Sequence[OrderItem]) -> str:
        self._faults.maybe_fail("shipping.create_shipment")
        refused = sorted({i.product_id for i in items if i.product_id.startswith(REFUSED_PRODUCT_PREFIX)})
        tracking_id = f"trk-{uuid.uuid4().hex[:16]}"

        def ship(db: sqlite3.Connection) -> str:
            existing = db.execute("SELECT tracking_id FROM shipments WHERE order_id = ?", (order_id,)).fetchone()
            if existing is not None:
                return existing["tracking_id"]
            if refused:
                raise StepRefused("ShipmentRejected", f"the carrier refuses {', '.join(refused)}")
            db.execute("INSERT INTO shipments VALUES (?, ?, ?)", (order_id, tracking_id, _now()))
            return tracking_id

        return await self._db.write(ship)
