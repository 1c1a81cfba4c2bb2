"""`OrderRepository`, `OrderChanges` and `SagaOutbox` on SQLite: the embedded default order store."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from datetime import timedelta
from pathlib import Path

from fulfillment.adapters.documents import from_document, to_document
from fulfillment.adapters.order_cursors import cursor_of, position_of
from fulfillment.adapters.sqlite_changes import CommitSignal
from fulfillment.adapters.sqlite_db import SqliteDatabase
from fulfillment.adapters.sqlite_leases import LEASE_COLUMNS, LeasedQueue
from fulfillment.domain import IdempotencyKeyReused, Order, OrderNotFound
from fulfillment.ports import IdempotencyKey, OutboxEntry, Page

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    order_id TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_keys_by_expiry ON idempotency_keys (expires_at);
CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer_id, created_at DESC, id DESC);
CREATE TABLE IF NOT EXISTS saga_outbox (order_id TEXT PRIMARY KEY REFERENCES orders (id), {LEASE_COLUMNS});
CREATE INDEX IF NOT EXISTS saga_outbox_available ON saga_outbox (available_at);
""".replace("{LEASE_COLUMNS}", LEASE_COLUMNS)
OUTBOX = LeasedQueue("saga_outbox", "order_id")


class SqliteOrderRepository:
    def __init__(self, path: Path):
        self._db = SqliteDatabase(path, SCHEMA)
        self._commits = CommitSignal(self._db)

    # --- OrderRepository -----------------------------------------------------------------------

    async def add(self, order: Order, *, idempotency: IdempotencyKey | None = None) -> Order:
        def insert(db: sqlite3.Connection) -> Order:
            if idempotency is not None:
                if (earlier := _keyed_order(db, idempotency)) is not None:
                    return earlier
                db.execute("INSERT OR REPLACE INTO idempotency_keys VALUES (?, ?, ?, ?)",
                           (idempotency.scoped, idempotency.fingerprint, order.id, idempotency.expires_at.timestamp()))
            db.execute(
                "INSERT INTO orders (id, customer_id, created_at, document) VALUES (?, ?, ?, ?)",
                (order.id, order.customer_id, order.created_at.isoformat(), json.dumps(to_document(order))),
            )
            db.execute("INSERT INTO saga_outbox (order_id, available_at) VALUES (?, ?)", (order.id, time.time()))
            return order

        return await self._db.write(insert)

    async def get(self, order_id: str) -> Order:
        row = await self._db.read(lambda db: _document_row(db, order_id))
        if row is None:
            raise OrderNotFound(order_id)
        return _order(row)

    async def get_many(self, order_ids: Sequence[str]) -> list[Order | None]:
        def select(db: sqlite3.Connection) -> list[Order | None]:
            placeholders = ",".join("?" * len(order_ids))
            rows = db.execute(f"SELECT id, document FROM orders WHERE id IN ({placeholders})",
                              list(order_ids)).fetchall()
            found = {row["id"]: _order(row) for row in rows}
            return [found.get(order_id) for order_id in order_ids]

        return await self._db.read(select) if order_ids else []

    async def list_by_customer(self, customer_id: str, *, limit: int, cursor: str | None = None) -> Page:
        after = position_of(cursor) if cursor else None

        def select(db: sqlite3.Connection) -> list[sqlite3.Row]:
            if after is None:
                return db.execute(
                    "SELECT created_at, id, document FROM orders WHERE customer_id = ?"
                    " ORDER BY created_at DESC, id DESC LIMIT ?", (customer_id, limit + 1)).fetchall()
            return db.execute(
                "SELECT created_at, id, document FROM orders WHERE customer_id = ? AND (created_at, id) < (?, ?)"
                " ORDER BY created_at DESC, id DESC LIMIT ?", (customer_id, *after, limit + 1)).fetchall()

        rows = await self._db.read(select)
        orders = [_order(row) for row in rows[:limit]]
        return Page(orders=orders, cursors=[cursor_of(order) for order in orders], has_more=len(rows) > limit)

    async def update(self, order_id: str, change: Callable[[Order], None]) -> Order:
        def apply(db: sqlite3.Connection) -> Order:
            row = _document_row(db, order_id)
            if row is None:
                raise OrderNotFound(order_id)
            order = _order(row)
            change(order)
            db.execute("UPDATE orders SET document = ? WHERE id = ?", (json.dumps(to_document(order)), order_id))
            if not order.status.is_terminal:  # e.g. a failed order retried: its saga is owed again
                db.execute("INSERT OR IGNORE INTO saga_outbox (order_id, available_at) VALUES (?, ?)",
                           (order_id, time.time()))
            return order

        # BEGIN IMMEDIATE holds the write lock from the read to the write: no other writer can interleave.
        return await self._db.write(apply)

    async def close(self) -> None:
        await self._commits.close()
        await self._db.close()

    # --- OrderChanges --------------------------------------------------------------------------

    async def watch(self, order_id: str) -> AsyncIterator[Order]:
        """After each commit to the database (`CommitSignal`), a point read of the order's document; yielded
        when its text differs from the last one yielded, so commits to other rows cost no parsing."""
        last = None
        async with aclosing(self._commits.commits()) as commits:
            async for _ in commits:
                row = await self._db.read(lambda db: _document_row(db, order_id))
                if row is None:
                    raise OrderNotFound(order_id)
                if row["document"] != last:
                    last = row["document"]
                    yield _order(row)

    # --- SagaOutbox ----------------------------------------------------------------------------

    async def claim(self, worker_id: str, *, limit: int, lease: timedelta) -> list[OutboxEntry]:
        rows = await self._db.write(lambda db: OUTBOX.claim(db, worker_id, limit, lease))
        return [OutboxEntry(row["order_id"], row["attempts"]) for row in rows]

    async def renew(self, worker_id: str, order_ids: Sequence[str], *, lease: timedelta) -> None:
        if order_ids:
            await self._db.write(lambda db: OUTBOX.renew(db, worker_id, order_ids, lease))

    async def release(self, worker_id: str, order_id: str, *, error: str, retry_in: timedelta) -> None:
        await self._db.write(lambda db: OUTBOX.release(db, worker_id, order_id, error, retry_in))

    async def done(self, order_id: str) -> None:
        await self._db.write(lambda db: db.execute("DELETE FROM saga_outbox WHERE order_id = ?", (order_id,)))

    async def pending_count(self) -> int:
        return await self._db.read(lambda db: db.execute("SELECT count(*) FROM saga_outbox").fetchone()[0])


def _document_row(db: sqlite3.Connection, order_id: str) -> sqlite3.Row | None:
    return db.execute("SELECT document FROM orders WHERE id = ?", (order_id,)).fetchone()


def _order(row: sqlite3.Row) -> Order:
    return from_document(json.loads(row["document"]))


def _keyed_order(db: sqlite3.Connection, idempotency: IdempotencyKey) -> Order | None:
    """The order an unexpired key made, after dropping the keys that have expired (this one among them)."""
    db.execute("DELETE FROM idempotency_keys WHERE expires_at <= ?", (time.time(),))
    row = db.execute("SELECT fingerprint, document FROM idempotency_keys JOIN orders ON orders.id = order_id "
                     "WHERE key = ?", (idempotency.scoped,)).fetchone()
    if row is None:
        return None
    if row["fingerprint"] != idempotency.fingerprint:
        raise IdempotencyKeyReused(idempotency.key)
    return _order(row)
