"""`InventoryEventInbox` on SQLite, beside the orders. Applied events are kept, so redeliveries stay recognised.

`latest_stock_events` holds, per product, the mark of its latest admitted stock update (`StockTurn`): the
event's id and time, and `held_until` (epoch seconds) while it is being applied, NULL once it was.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from fulfillment.adapters.sqlite_db import SqliteDatabase
from fulfillment.adapters.sqlite_leases import LEASE_COLUMNS, LeasedQueue
from fulfillment.domain import IdempotencyKeyReused
from fulfillment.ports import InventoryEvent, StockTurn

SCHEMA = """
CREATE TABLE IF NOT EXISTS inventory_events (
    event_id TEXT PRIMARY KEY, event TEXT NOT NULL, received_at REAL NOT NULL, applied_at REAL, {LEASE_COLUMNS}
);
CREATE INDEX IF NOT EXISTS inventory_events_due ON inventory_events (available_at) WHERE applied_at IS NULL;
CREATE TABLE IF NOT EXISTS latest_stock_events (
    product_id TEXT PRIMARY KEY, event_id TEXT NOT NULL, event_time TEXT NOT NULL, held_until REAL
);
""".replace("{LEASE_COLUMNS}", LEASE_COLUMNS)
INBOX = LeasedQueue("inventory_events", "event_id", due="applied_at IS NULL")


class SqliteInventoryEventInbox:
    def __init__(self, path: Path):
        self._db = SqliteDatabase(path, SCHEMA)

    async def record(self, event: InventoryEvent) -> bool:
        def insert(db: sqlite3.Connection) -> bool:
            now = time.time()
            cursor = db.execute(
                "INSERT INTO inventory_events (event_id, event, received_at, available_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (event_id) DO NOTHING", (event.event_id, json.dumps(event.to_json()), now, now))
            if cursor.rowcount == 1:
                return True
            stored = db.execute("SELECT event FROM inventory_events WHERE event_id = ?", (event.event_id,)).fetchone()
            if not event.says_the_same_as(InventoryEvent.from_json(json.loads(stored["event"]), received_at=now)):
                raise IdempotencyKeyReused(event.event_id)
            return False

        return await self._db.write(insert)

    async def claim(self, worker_id: str, *, limit: int, lease: timedelta) -> list[tuple[InventoryEvent, int]]:
        rows = await self._db.write(lambda db: INBOX.claim(db, worker_id, limit, lease))
        return [(InventoryEvent.from_json(json.loads(row["event"]), received_at=row["received_at"]), row["attempts"])
                for row in rows]

    async def renew(self, worker_id: str, event_ids: Sequence[str], *, lease: timedelta) -> None:
        if event_ids:
            await self._db.write(lambda db: INBOX.renew(db, worker_id, event_ids, lease))

    async def release(self, worker_id: str, event_id: str, *, error: str, retry_in: timedelta) -> None:
        await self._db.write(lambda db: INBOX.release(db, worker_id, event_id, error, retry_in))

    async def done(self, event_id: str) -> None:
        await self._db.write(lambda db: db.execute(
            "UPDATE inventory_events SET applied_at = ?, claimed_by = NULL WHERE event_id = ?", (time.time(), event_id)))

    async def begin_stock_update(self, event: InventoryEvent, *, hold: timedelta) -> StockTurn:
        def begin(db: sqlite3.Connection) -> StockTurn:
            now = time.time()
            row = db.execute("SELECT event_id, event_time, held_until FROM latest_stock_events WHERE product_id = ?",
                             (event.product_id,)).fetchone()
            latest_id, latest_time, held_until = (
                (row["event_id"], datetime.fromisoformat(row["event_time"]), row["held_until"]) if row
                else (None, None, None))
            turn = StockTurn.of(event, latest_id=latest_id, latest_time=latest_time, held_until=held_until, now=now)
            if turn is StockTurn.APPLY:
                db.execute("INSERT INTO latest_stock_events VALUES (?, ?, ?, ?) ON CONFLICT (product_id) DO UPDATE"
                           " SET event_id = excluded.event_id, event_time = excluded.event_time,"
                           " held_until = excluded.held_until",
                           (event.product_id, event.event_id, event.event_time.isoformat(),
                            now + hold.total_seconds()))
            return turn

        return await self._db.write(begin)

    async def finish_stock_update(self, event: InventoryEvent) -> None:
        await self._db.write(lambda db: db.execute(
            "UPDATE latest_stock_events SET held_until = NULL WHERE product_id = ? AND event_id = ?",
            (event.product_id, event.event_id)))

    async def close(self) -> None:
        await self._db.close()
