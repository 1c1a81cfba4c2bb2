"""The Prefect server of `make up`: `prefect server start`, with SQLite writes that wait instead of failing.

Every SQLite transaction of the server starts with `BEGIN IMMEDIATE`, so a writer that meets another one waits
for the lock instead of failing with SQLITE_BUSY and a 503 (`immediate_sqlite_transactions` in
`deployments.prefect_patches` tells why). PostgreSQL (`PREFECT_API_DATABASE_CONNECTION_URL`) is unaffected.
Run as `python -m deployments.prefect_server [ARGS]`, with the arguments of `prefect server start`.
"""

from __future__ import annotations

import sys

from deployments.prefect_patches import immediate_sqlite_transactions


def main() -> None:
    immediate_sqlite_transactions()
    from prefect.cli import app

    sys.argv = ["prefect", "server", "start", *sys.argv[1:]]
    sys.exit(app())


if __name__ == "__main__":
    main()
