"""Serves the gateway with uvicorn: `python -m gateway`."""

import gc

import uvicorn

from fulfillment.logs import configure_logging
from fulfillment.settings import load_dotenv_file, load_settings, refuse_open_exposure
from fulfillment.telemetry import configure_tracing, declare_series, shutdown_tracing
from gateway.app import create_app


def main() -> None:
    load_dotenv_file()
    configure_logging()
    configure_tracing("order-saga-gateway")
    declare_series()
    settings = load_settings()
    refuse_open_exposure(settings)
    app = create_app(settings)
    gc.freeze()  # what start-up built lives as long as the process: keep it out of every later collection
    try:
        uvicorn.run(app, host=settings.gateway_host, port=settings.gateway_port, log_level="warning",
                    log_config=None, access_log=False, ws_max_size=settings.max_body_bytes)
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    main()
