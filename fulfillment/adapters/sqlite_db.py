"""A SQLite database shared safely by several processes (the gateway and the worker).

WAL lets readers run beside one writer; every write transaction is `BEGIN IMMEDIATE`, so a read-then-write
transaction takes the write lock up front and waits for it (busy timeout) instead of failing half-way.
Each database object owns one write connection used from one thread, so whole write transactions run as
plain functions off the event loop, never interleaved. Reads run on the event loop's own thread with a
connection of their own: a WAL read never waits for a writer, and a point read costs less than handing it to
another thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from fulfillment.domain import StoreUnavailable

T = TypeVar("T")
BUSY_TIMEOUT_MS = 10_000
READ_TIMEOUT_S = 1.0
INIT_ATTEMPTS = 5


class SqliteDatabase:
    def __init__(self, path: Path, schema: str):
        self.path = path
        self._schema = schema
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{path.stem}")
        self._connection: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None

    async def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        try:
            if self._reader is None:
                await self.write(lambda db: None)  # the file, WAL mode and the schema exist from here on
                self._reader = sqlite3.connect(self.path, isolation_level=None, timeout=READ_TIMEOUT_S)
                self._reader.row_factory = sqlite3.Row
            return query(self._reader)
        except sqlite3.OperationalError as error:
            raise StoreUnavailable(f"SQLite database {self.path}: {error}") from error

    async def write(self, transaction: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._write, transaction)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            connection = self._connect()
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(connection)
            except BaseException:
                connection.rollback()
                raise
            connection.commit()
            return result
        except sqlite3.OperationalError as error:
            raise StoreUnavailable(f"SQLite database {self.path}: {error}") from error

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA synchronous=FULL")
            self._initialise(connection)
            self._connection = connection
        return self._connection

    def _initialise(self, connection: sqlite3.Connection) -> None:
        """WAL mode and the schema. While a new file is still in rollback-journal mode, two processes creating
        the schema at once can deadlock, and SQLite then answers "locked" at once instead of waiting: retry."""
        for attempt in range(1, INIT_ATTEMPTS + 1):
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.executescript(f"BEGIN IMMEDIATE; {self._schema} COMMIT;")
                return
            except sqlite3.OperationalError as error:
                if connection.in_transaction:
                    connection.rollback()
                if "locked" not in str(error) or attempt == INIT_ATTEMPTS:
                    raise
                time.sleep(0.05 * attempt)

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
