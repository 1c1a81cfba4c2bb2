"""The Prefect server of `make up`: Prefect's API and UI app on uvicorn, with SQLite writes that wait instead of
failing, and logs in the stack's format.

Every SQLite transaction of the server starts with `BEGIN IMMEDIATE`, so a writer that meets another one waits
for the lock instead of failing with SQLITE_BUSY and a 503 (`immediate_sqlite_transactions` in
`deployments.prefect_patches` tells why). PostgreSQL (`PREFECT_API_DATABASE_CONNECTION_URL`) is unaffected.
The app is the one `prefect server start` serves; serving it here rather than through that command leaves out
its welcome banner and uvicorn's own log configuration, so every line is in the stack's log format.

Run as `python -m deployments.prefect_server --host HOST --port PORT`; the scaled profile adds `--no-services`
(the background services run as `prefect server services start`) and `--workers N`: N API processes on one
port, which uvicorn replaces when one dies, as `prefect server start --workers N` does.
"""

from __future__ import annotations

import argparse
import os

import uvicorn

from deployments.prefect_patches import immediate_sqlite_transactions
from fulfillment.logs import configure_logging

WEBSERVER_ONLY = "PREFECT__SERVER_WEBSERVER_ONLY"  # what `prefect server start --workers N` sets for create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.prefect_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--workers", type=int, default=1, help="API processes (more than 1 needs PostgreSQL)")
    parser.add_argument("--no-services", action="store_true", help="the API and UI only, no background services")
    arguments = parser.parse_args()
    if arguments.no_services:
        os.environ[WEBSERVER_ONLY] = "1"
    from prefect.settings import PREFECT_SERVER_LOGGING_LEVEL

    uvicorn.run("deployments.prefect_server:app", factory=True, host=arguments.host, port=arguments.port,
                workers=arguments.workers, log_config=None, log_level=PREFECT_SERVER_LOGGING_LEVEL.value().lower())


def app():
    """The app, built in each API process."""
    immediate_sqlite_transactions()
    from prefect.server.api.server import create_app

    server = create_app(final=True)
    configure_logging()  # after create_app, which sets Prefect's logging up again
    return server


if __name__ == "__main__":
    main()
