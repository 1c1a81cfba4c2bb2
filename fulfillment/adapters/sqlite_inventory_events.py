"""`InventoryEventInbox` on SQLite, beside the orders. Applied events are kept, so redeliveries stay recognised."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

from fulfillment.adapters.sqlite_db import SqliteDatabase
from fulfillment.adapters.sqlite_leases import LEASE_COLUMNS, LeasedQueue
from fulfillment.ports import InventoryEvent

SCHEMA = """
CREATE TABLE IF NOT EXISTS inventory_events (
    event_id TEXT PRIMARY KEY, event TEXT NOT NULL, received_at REAL NOT NULL, applied_at REAL, {LEASE_COLUMNS}
);
CREATE INDEX IF NOT EXISTS inventory_events_due ON inventory_events (available_at) WHERE applied_at IS NULL;
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
                " ON CONFLICT (event_id) DO NOTHING", (event.event_id, json.dumps(asdict(event)), now, now))
            return cursor.rowcount == 1

        return await self._db.write(insert)

    async def claim(self, worker_id: str, *, limit: int, lease: timedelta) -> list[tuple[InventoryEvent, int]]:
        rows = await self._db.write(lambda db: INBOX.claim(db, worker_id, limit, lease))
        return [(InventoryEvent(**json.loads(row["event"])), row["attempts"]) for row in rows]

    async def renew(self, worker_id: str, event_ids: Sequence[str], *, lease: timedelta) -> None:
        if event_ids:
            await self._db.write(lambda db: INBOX.renew(db, worker_id, event_ids, lease))

    async def release(self, worker_id: str, event_id: str, *, error: str, retry_in: timedelta) -> None:
        await self._db.write(lambda db: INBOX.release(db, worker_id, event_id, error, retry_in))

    async def done(self, event_id: str) -> None:
        await self._db.write(lambda db: db.execute(
            "UPDATE inventory_events SET applied_at = ?, claimed_by = NULL WHERE event_id = ?", (time.time(), event_id)))

    async def close(self) -> None:
        await self._db.close()
