"""The Prefect server of `make up`: Prefect's API and UI app on uvicorn, with SQLite writes that wait instead of
failing, and logs in the stack's format.

Every SQLite transaction of the server starts with `BEGIN IMMEDIATE`, so a writer that meets another one waits
for the lock instead of failing with SQLITE_BUSY and a 503 (`immediate_sqlite_transactions` in
`deployments.prefect_patches` tells why). PostgreSQL (`PREFECT_API_DATABASE_CONNECTION_URL`) is unaffected.
The app is the one `prefect server start` serves; serving it here rather than through that command leaves out
its welcome banner and uvicorn's own log configuration, so every line is in the stack's log format.
Run as `python -m deployments.prefect_server --host HOST --port PORT`.
"""

from __future__ import annotations

import argparse

import uvicorn

from deployments.prefect_patches import immediate_sqlite_transactions
from fulfillment.logs import configure_logging


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.prefect_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    arguments = parser.parse_args()
    immediate_sqlite_transactions()
    from prefect.server.api.server import create_app
    from prefect.settings import PREFECT_SERVER_LOGGING_LEVEL

    app = create_app(final=True)
    configure_logging()  # after create_app, which sets Prefect's logging up again
    uvicorn.run(app, host=arguments.host, port=arguments.port, log_config=None,
                log_level=PREFECT_SERVER_LOGGING_LEVEL.value().lower())


if __name__ == "__main__":
    main()
