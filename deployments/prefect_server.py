"""The Prefect server of `make up`: `prefect server start`, with SQLite writes that wait instead of failing.

Prefect's server opens SQLite write transactions as `BEGIN DEFERRED`. A read-then-write transaction (creating
a flow run, recording a task run) that meets another writer then fails at once with SQLITE_BUSY, which the
API answers with 503 and the client retries after 2, 4, 8, 16, 32 s (PrefectHQ/prefect#18934): sagas stall
for tens of seconds under load. The server's own `BEGIN IMMEDIATE` path (`with_for_update=True`) takes the
write lock up front and waits for it; this wrapper sends every transaction down that path. PostgreSQL
(`PREFECT_API_DATABASE_CONNECTION_URL`) is unaffected. Run as `python -m deployments.prefect_server [ARGS]`,
with the arguments of `prefect server start`.
"""

from __future__ import annotations

import sys

from prefect.server.database.configurations import AioSqliteConfiguration


def _always_immediate(begin_transaction):
    def begin_immediate_transaction(self, session, with_for_update: bool = False):
        return begin_transaction(self, session, with_for_update=True)

    return begin_immediate_transaction


def main() -> None:
    AioSqliteConfiguration.begin_transaction = _always_immediate(AioSqliteConfiguration.begin_transaction)
    from prefect.cli import app

    sys.argv = ["prefect", "server", "start", *sys.argv[1:]]
    sys.exit(app())


if __name__ == "__main__":
    main()
