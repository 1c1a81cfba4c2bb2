"""Leased work queues in SQLite: claim due rows for a while, renew, give back, finish.

Used by the saga outbox and the inventory-event inbox. A table has a key column and `available_at`,
`claimed_by`, `attempts`, `last_error`; a row is due when `available_at` has passed, and claiming it pushes
`available_at` to the end of the lease, so a dead worker's rows become due again by themselves.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from datetime import timedelta

LEASE_COLUMNS = """available_at REAL NOT NULL, claimed_by TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT"""


class LeasedQueue:
    def __init__(self, table: str, key: str, *, due: str = "1"):
        """`due` is an extra SQL condition a row must meet to be claimed (e.g. not yet done)."""
        self._table, self._key, self._due = table, key, due

    def claim(self, db: sqlite3.Connection, worker_id: str, limit: int, lease: timedelta) -> list[sqlite3.Row]:
        now = time.time()
        return db.execute(
            f"UPDATE {self._table} SET claimed_by = ?, available_at = ?, attempts = attempts + 1"
            f" WHERE {self._key} IN (SELECT {self._key} FROM {self._table} WHERE available_at <= ? AND {self._due}"
            f" ORDER BY available_at LIMIT ?) RETURNING *",
            (worker_id, now + lease.total_seconds(), now, limit)).fetchall()

    def renew(self, db: sqlite3.Connection, worker_id: str, keys: Sequence[str], lease: timedelta) -> None:
        placeholders = ",".join("?" * len(keys))
        db.execute(f"UPDATE {self._table} SET available_at = ? WHERE claimed_by = ? AND {self._key} IN ({placeholders})",
                   (time.time() + lease.total_seconds(), worker_id, *keys))

    def release(self, db: sqlite3.Connection, worker_id: str, key: str, error: str, retry_in: timedelta) -> None:
        db.execute(f"UPDATE {self._table} SET claimed_by = NULL, available_at = ?, last_error = ?"
                   f" WHERE {self._key} = ? AND claimed_by = ?",
                   (time.time() + retry_in.total_seconds(), error, key, worker_id))
