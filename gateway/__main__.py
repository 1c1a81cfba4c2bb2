"""Serves the gateway with uvicorn, in `OrderProcessing__GatewayWorkers` processes: `python -m gateway`.

Each process builds its own app (and store connections) with `app`; with more than one, they share the port and
uvicorn replaces one that dies."""

import atexit
import gc

import uvicorn
from starlette.applications import Starlette

from fulfillment.logs import configure_logging
from fulfillment.settings import load_dotenv_file, load_settings, refuse_open_exposure
from fulfillment.telemetry import configure_tracing, declare_series, shutdown_tracing
from gateway.app import create_app


def main() -> None:
    load_dotenv_file()
    configure_logging()  # the parent's lines, when there are several processes
    settings = load_settings()
    refuse_open_exposure(settings)
    uvicorn.run("gateway.__main__:app", factory=True, host=settings.gateway_host, port=settings.gateway_port,
                workers=settings.gateway_workers, log_level="warning", log_config=None, access_log=False,
                ws_max_size=settings.max_body_bytes)


def app() -> Starlette:
    """The app of one gateway process, its logging and tracing set up in that process."""
    load_dotenv_file()
    configure_logging()
    configure_tracing("order-saga-gateway")
    declare_series()
    atexit.register(shutdown_tracing)  # flushes the spans when the process ends
    application = create_app(load_settings())
    gc.freeze()  # what start-up built lives as long as the process: keep it out of every later collection
    return application


if __name__ == "__main__":
    main()
